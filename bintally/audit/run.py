"""`bintally audit run`: score every bin snapshot with the model, then write the ranked recount worklist.

A run is sharded the way torchrun shards training: each process (RANK of WORLD_SIZE, from the launcher's
environment; 0 of 1 when run alone) scores every WORLD_SIZE-th snapshot and commits each batch to the shared
store, so a killed process loses at most one batch and the same command resumes. The process that finishes
the last shard selects the tasks in one transaction: the top `budget` share of bins by score (or every bin
over `threshold`) plus a uniformly random `control` share of the rest, which estimates the errors the model
misses without selection bias. Re-running on the same snapshots finds the run and changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from sqlalchemy import and_, func, or_, select, update

from bintally.audit.config import AuditConfig
from bintally.audit.people import Principal, local_owner, record_event, require
from bintally.audit.schema import AuditRun, RunShard, Score, Snapshot, SnapshotLine, Task, utcnow
from bintally.audit.scoring import score_bins
from bintally.audit.snapshots import PhotoReader, SnapshotIn, read_source
from bintally.audit.store import Store, insert_ignoring_duplicates, open_store
from bintally.audit.workflow import Conflict
from bintally.data.records import SkuLine
from bintally.errors import ConfigError, DataError
from bintally.inference.prediction import Prediction
from bintally.progress import progress_bar

SELECTION_KEYS = ("score", "budget", "threshold", "control", "tolerance", "seed", "snapshots", "scorer")
NAMED_WHEN_SET = ("scorer",)  # added after runs were named: a run without it (None) keeps the name it had


@dataclass
class AuditResult:
    run_id: int
    name: str
    status: str  # scoring (other shards still working) | open (worklist written)
    bins: int  # snapshots this process was given (its shard)
    scored: int  # scored by this process now (0 on a re-run)
    unreadable: list[str]  # "photo: problem" for each photo of this shard that could not be read
    reused: bool  # the run already existed
    tasks: int = 0  # model-selected tasks, once the run is open
    control: int = 0  # control tasks, once the run is open

    def to_json(self) -> dict:
        return asdict(self)


def shard_of_environment() -> tuple[int, int]:
    """(RANK, WORLD_SIZE) as torchrun, Slurm wrappers or any launcher set them; (0, 1) alone."""
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError(f"RANK={os.environ.get('RANK')!r} and WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} must be whole numbers") from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} and WORLD_SIZE={world}: need 0 <= RANK < WORLD_SIZE")
    return rank, world


def snapshots_digest(snapshots: list[SnapshotIn]) -> str:
    """What the snapshots are: bins, photos, records and times, and the SKU lines of those that have them (a source
    without lines digests as it did before records had lines)."""
    digest = hashlib.sha256()
    for s in snapshots:
        lines = f"\x1f{s.lines_key()}" if s.lines else ""
        digest.update(f"{s.bin_id}\x1f{s.image}\x1f{s.record_qty}\x1f{s.captured_at or ''}{lines}\x1e".encode())
    return digest.hexdigest()


def run_settings(config: AuditConfig, snapshots: list[SnapshotIn], temperature: float) -> dict:
    return {"score": config.score, "budget": config.budget, "threshold": config.threshold, "control": config.control, "tolerance": config.tolerance,
            "seed": config.seed, "snapshots": snapshots_digest(snapshots), "bins": len(snapshots), "backend": config.backend,
            "temperature": temperature, "lines": config.lines, "scorer": scorer_digest(config.score)}


def scorer_digest(score: str) -> str | None:
    """What ranks the bins besides the model: the record-aware scorer's file (a refitted scorer is another audit)."""
    from bintally.audit.record_scorer import DEFAULT_SCORER

    return hashlib.sha256(DEFAULT_SCORER.read_bytes()).hexdigest()[:16] if score == "auto" else None


def default_name(source: str, model_version: str, settings: dict) -> str:
    chosen = json.dumps({k: settings[k] for k in SELECTION_KEYS if k not in NAMED_WHEN_SET or settings[k] is not None}, sort_keys=True)
    digest = hashlib.sha256(f"{model_version}\x1f{chosen}".encode()).hexdigest()[:10]
    return f"{Path(source).stem or 'audit'}-{digest}"


# ---------------------------------------------------------------- the run


def audit_run(config: AuditConfig, actor: Principal | None = None, snapshots: list[SnapshotIn] | None = None, counter=None,
              store: Store | None = None, uploads: dict | None = None, shard: tuple[int, int] | None = None) -> AuditResult:
    """Score this process's shard of the snapshots and, when every shard is done, write the worklist.

    `actor` (an auditor) creates the run; None: the local owner of the store, named by config.created_by.

    `snapshots` (else read from config.data), `counter` (else loaded from config.model) and `store` (else opened
    at config.db) let the server reuse what it already holds; `uploads` maps sha256 -> bytes of uploaded photos.
    """
    from bintally.inference import Counter

    config.validate()
    actor = require(actor or local_owner(config.created_by), "auditor")
    rank, world = shard or shard_of_environment()
    reader = PhotoReader(config.source_policy(), uploads)
    snapshots = snapshots if snapshots is not None else read_source(config.data, config.lines)
    counter = counter or Counter.load(config.model, config.backend)
    if config.score != "auto":  # the record-aware scorer gives such records a tail or a floor probability
        warn_about_records_without_class(counter.labels, snapshots)
    own_store = store is None
    store = store or open_store(config.db)
    try:
        settings = run_settings(config, snapshots, counter.artifact.temperature)
        run, reused = find_or_create_run(store, config, counter.artifact, settings, world, actor)
        mine = snapshots[rank::world]
        result = AuditResult(run.id, run.name, run.status, len(mine), 0, [], reused)
        if run.status == "scoring":
            result.scored, result.unreadable = score_shard(store, run.id, mine, counter, reader, config)
            mark_shard_done(store, run.id, rank, result.scored, len(result.unreadable))
            open_run_when_complete(store, run.id)
        return describe_result(store, result)
    finally:
        if own_store:
            store.close()


def warn_about_records_without_class(space, snapshots: list[SnapshotIn]) -> None:
    """Records the model has no class for all score 1: say so, since they crowd the top of the worklist."""
    import logging

    outside = int((space.class_of([s.record_qty for s in snapshots]) < 0).sum())
    if outside:
        logging.getLogger("bintally.audit").warning(
            "%d record(s) lie outside the model's label space (%s): the model gives them no probability, so they all score 1; "
            "audit with a model that has an overflow class (--overflow class) to rank them", outside, space.description)


def find_or_create_run(store: Store, config: AuditConfig, artifact, settings: dict, world: int,
                       actor: Principal) -> tuple[AuditRun, bool]:
    """The run of this name (checked to be the same audit), else a new one; (run, existed)."""
    from sqlalchemy.exc import IntegrityError

    name = config.name or default_name(config.data, artifact.version, settings)
    for _ in range(2):  # a second try after losing a race to create it
        with store.session() as session:
            run = session.scalar(select(AuditRun).where(AuditRun.name == name))
            if run is not None:
                check_same_audit(run, artifact, settings, world)
                return run, True
        try:
            with store.session() as session:
                run = AuditRun(name=name, model_name=artifact.name, model_version=artifact.version, source=str(config.data),
                               settings=settings, world_size=world, status="scoring", created_by=actor.name)
                session.add(run)
                session.flush()
                record_event(session, actor, "run.create", f"run {run.id}", {"name": name, "model": artifact.version})
            return run, False
        except IntegrityError:
            continue
    raise ConfigError(f"cannot create the audit run {name!r}: another process keeps replacing it")


def check_same_audit(run: AuditRun, artifact, settings: dict, world: int) -> None:
    if run.model_version != artifact.version:
        raise Conflict(f"audit run {run.name!r} exists, scored by model version {run.model_version} (this model is "
                          f"{artifact.version}): choose another name")
    changed = [k for k in SELECTION_KEYS if run.settings.get(k) != settings[k]]
    if changed:
        what = "other snapshots" if "snapshots" in changed else "other settings (" + ", ".join(
            f"{k} {run.settings.get(k)} here {settings[k]}" for k in changed) + ")"
        raise Conflict(f"audit run {run.name!r} exists with {what}: choose another name (runs are never overwritten)")
    if run.status == "scoring" and run.world_size != world:
        raise ConfigError(f"audit run {run.name!r} was started by {run.world_size} process(es) (WORLD_SIZE); "
                          f"resume it with WORLD_SIZE={run.world_size}, not {world}")


def score_shard(store: Store, run_id: int, mine: list[SnapshotIn], counter, reader: PhotoReader,
                config: AuditConfig) -> tuple[int, list[str]]:
    """Score the snapshots of this shard not yet scored in the run, one committed batch at a time."""
    with store.session() as session:
        done = set(session.execute(select(Snapshot.bin_id, Snapshot.image_uri).join(Score, Score.snapshot_id == Snapshot.id)
                                   .where(Score.run_id == run_id)).all())
    todo = [s for s in mine if (s.bin_id, s.image) not in done]
    scored, unreadable = 0, []
    bar = progress_bar(total=len(todo), desc="scoring bins", unit="bin", enabled=config.progress)
    with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
        for start in range(0, len(todo), config.batch_size):
            batch = todo[start:start + config.batch_size]
            photos = reader.read_many([s.image for s in batch])
            loaded = list(pool.map(lambda pair: decode_photo(*pair, counter), zip(batch, photos)))
            good = [i for i, (_, array, _) in enumerate(loaded) if array is not None]
            prediction = counter.predict(np.stack([loaded[i][1] for i in good])) if good else None
            rows = score_rows(prediction, [batch[i] for i in good], config.score)
            save_batch(store, run_id, batch, loaded, good, rows)
            scored += len(good)
            unreadable += [f"{batch[i].image}: {problem}" for i, (_, _, problem) in enumerate(loaded) if problem]
            bar.update(len(batch))
    bar.close()
    return scored, unreadable


def decode_photo(snapshot: SnapshotIn, data: bytes | DataError, counter) -> tuple[str, np.ndarray | None, str]:
    """(sha256, pre-processed photo, problem): the problem is "" for a readable photo."""
    from bintally.data.images import decode_image

    if isinstance(data, DataError):
        return "", None, data.problem
    sha = hashlib.sha256(data).hexdigest()
    try:
        return sha, counter.preprocess(decode_image(data, name=snapshot.image)), ""
    except DataError as e:
        return sha, None, e.problem


def score_rows(prediction: Prediction | None, snapshots: list[SnapshotIn], score: str = "auto") -> list[dict]:
    if prediction is None:
        return []
    scores = score_bins(prediction, snapshots, score)
    probabilities = prediction.class_probabilities(digits=5)
    explanations = scores.get("explanation")
    return [{"p_record": float(scores["p_record"][i]), "score": float(scores["score"][i]), "predicted": int(scores["predicted"][i]),
             "expected": round(float(scores["expected"][i]), 4), "probabilities": probabilities[i],
             "explanation": explanation_text(explanations[i] if explanations is not None else None)} for i in range(len(snapshots))]


def explanation_text(explanation) -> str | None:
    """A scorer's explanation of one bin as stored: its sentences joined; None when it gave none."""
    if explanation is None:
        return None
    parts = [explanation] if isinstance(explanation, str) else list(explanation)
    return "; ".join(text for text in (str(part).strip() for part in parts) if text) or None


def save_batch(store: Store, run_id: int, batch: list[SnapshotIn], loaded: list, good: list[int], rows: list[dict]) -> None:
    """One transaction: the batch's snapshots (shared across runs) and their scores (unreadable ones with their problem)."""
    by_index = dict(zip(good, rows))
    with store.session() as session:
        for i, snapshot in enumerate(batch):
            sha, _, problem = loaded[i]
            snapshot_id = upsert_snapshot(session, store, snapshot, sha)
            row = {"p_record": None, "score": None, "predicted": None, "expected": None, "probabilities": None,
                   "explanation": None} | by_index.get(i, {})
            session.execute(insert_ignoring_duplicates(store, Score).values(run_id=run_id, snapshot_id=snapshot_id, problem=problem or None, **row)
                            .on_conflict_do_nothing())  # the same shard run twice at once: the first score stays


def upsert_snapshot(session, store: Store, snapshot: SnapshotIn, sha: str) -> int:
    """The snapshot's id, inserting it (and its record lines) unless a run (maybe another process, right now) already did."""
    check_one_photo_per_moment(session, snapshot, sha)
    key = snapshot.key(sha)
    session.execute(insert_ignoring_duplicates(store, Snapshot).values(key=key, bin_id=snapshot.bin_id, image_uri=snapshot.image, sha256=sha,
                                            captured_at=snapshot.captured_at, record_qty=snapshot.record_qty, created_at=utcnow())
                    .on_conflict_do_nothing(index_elements=["key"]))
    snapshot_id = session.scalar(select(Snapshot.id).where(Snapshot.key == key))
    lines = merged_lines(snapshot.lines)
    if lines:  # the key holds the lines: whoever inserts them inserts the same rows, and a duplicate is ignored
        session.execute(insert_ignoring_duplicates(store, SnapshotLine).values([
            {"snapshot_id": snapshot_id, "position": position, "sku": line.sku, "record_qty": line.qty, "length_in": line.length_in,
             "width_in": line.width_in, "height_in": line.height_in, "weight_lb": line.weight_lb}
            for position, line in enumerate(lines)]).on_conflict_do_nothing())
    return snapshot_id


def check_one_photo_per_moment(session, snapshot: SnapshotIn, sha: str) -> None:
    """A Conflict naming both photos when the store holds another photo of this bin at the same captured_at."""
    if snapshot.captured_at is None:
        return
    other_photo = Snapshot.image_uri != snapshot.image
    if sha:
        other_photo = or_(other_photo, and_(Snapshot.sha256 != "", Snapshot.sha256 != sha))
    other = session.execute(select(Snapshot.image_uri, Snapshot.sha256).where(
        Snapshot.bin_id == snapshot.bin_id, Snapshot.captured_at == snapshot.captured_at, other_photo).limit(1)).first()
    if other is not None:
        changed = "" if other.image_uri != snapshot.image else f" (sha256 {other.sha256[:12]}..., now {sha[:12]}...: the file changed)"
        raise Conflict(f"bin {snapshot.bin_id!r} captured at {snapshot.captured_at.isoformat()}: the audit store holds photo "
                       f"{other.image_uri}{changed} of it at that time, this source {snapshot.image}; one bin has one photo "
                       f"at one time: correct the source's image or captured_at")


def merged_lines(lines: tuple[SkuLine, ...]) -> list[SkuLine]:
    """One line per SKU, in the record's order: a SKU listed twice is one line holding both quantities (counts are per SKU)."""
    merged: dict[str, SkuLine] = {}
    for line in lines:
        earlier = merged.get(line.sku)
        merged[line.sku] = line if earlier is None else replace(earlier, qty=earlier.qty + line.qty)
    return list(merged.values())


def mark_shard_done(store: Store, run_id: int, rank: int, scored: int, unreadable: int) -> None:
    """Record that shard `rank` finished (what this attempt scored; an attempt that was killed records nothing)."""
    with store.session() as session:
        session.execute(insert_ignoring_duplicates(store, RunShard)
                        .values(run_id=run_id, rank=rank, scored=0, unreadable=0, host=socket.gethostname()[:200], finished_at=utcnow())
                        .on_conflict_do_nothing())  # the same rank finishing twice at once: one row
        session.execute(update(RunShard).where(RunShard.run_id == run_id, RunShard.rank == rank)
                        .values(scored=RunShard.scored + scored, unreadable=RunShard.unreadable + unreadable, finished_at=utcnow()))


def select_tasks(scores: np.ndarray, budget: float | None, threshold: float | None, control: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(model-selected, control) indices into `scores`: the highest scores (a share, or those over a threshold),
    and a uniformly random share of all bins drawn from the rest."""
    scores = np.asarray(scores, dtype=float)
    order = np.argsort(-scores, kind="stable")
    if threshold is not None:
        chosen = order[scores[order] >= threshold]
    else:
        chosen = order[:min(len(scores), math.ceil(budget * len(scores) - 1e-9))]
    rest = np.setdiff1d(np.arange(len(scores)), chosen)
    n_control = min(len(rest), math.ceil(control * len(scores) - 1e-9))
    picked = np.sort(rng.choice(rest, size=n_control, replace=False)) if n_control else np.empty(0, int)
    return chosen, picked


def open_run_when_complete(store: Store, run_id: int) -> bool:
    """If every shard is done, select the tasks and open the run (exactly once, whichever process gets here first)."""
    with store.session() as session:
        run = session.get(AuditRun, run_id)
        shards = session.scalar(select(func.count()).select_from(RunShard).where(RunShard.run_id == run_id))
        if run.status != "scoring" or shards < run.world_size:
            return False
        claimed = session.execute(update(AuditRun).where(AuditRun.id == run_id, AuditRun.status == "scoring")
                                  .values(status="open", opened_at=utcnow())).rowcount
        if claimed != 1:  # another shard opened it between our read and this update
            return False
        rows = session.execute(select(Score.snapshot_id, Score.score, Score.probabilities, Score.predicted, Score.expected,
                                      Score.explanation, Snapshot.key)
                               .join(Snapshot, Snapshot.id == Score.snapshot_id)
                               .where(Score.run_id == run_id, Score.score.is_not(None))).all()
        # highest score first; ties (every record a model has no class for scores 1) in an order that is random but the
        # same on every database and re-run, not by bin id
        rows.sort(key=lambda r: (-r.score, hashlib.sha256(f"{run.name}\x1f{r.key}".encode()).hexdigest()))
        settings = run.settings
        seed = int(hashlib.sha256(f"{run.name}\x1f{settings['seed']}".encode()).hexdigest()[:8], 16)
        chosen, control = select_tasks(np.array([r.score for r in rows]), settings["budget"], settings["threshold"],
                                       settings["control"], np.random.default_rng(seed))
        for indices, why in ((chosen, "model"), (control, "control")):
            session.add_all(Task(run_id=run_id, snapshot_id=rows[i].snapshot_id, rank=int(i) + 1, score=rows[i].score,
                                 probabilities=rows[i].probabilities, predicted=rows[i].predicted, expected=rows[i].expected,
                                 selected_by=why, status="requested", explanation=rows[i].explanation) for i in indices)
        return True


def describe_result(store: Store, result: AuditResult) -> AuditResult:
    with store.session() as session:
        run = session.get(AuditRun, result.run_id)
        result.status = run.status
        counts = dict(session.execute(select(Task.selected_by, func.count()).where(Task.run_id == run.id)
                                      .group_by(Task.selected_by)).all())
    result.tasks, result.control = counts.get("model", 0), counts.get("control", 0)
    return result
