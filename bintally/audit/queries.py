"""What the audit store answers: runs with their metrics, worklists, the blind counter view, exports and labels.

Every reader (CLI, HTTP, dashboard) uses these, so each question has one answer.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select

from bintally.audit.schema import AuditRun, CountObservation, Photo, Resolution, ResolutionLine, RunShard, Score, Snapshot, SnapshotLine, Task
from bintally.audit.scoring import p_record_of
from bintally.audit.snapshots import UPLOAD_SCHEME
from bintally.audit.store import Store
from bintally.audit.workflow import COUNTABLE, STATUSES, get_run, get_task, record_lines
from bintally.errors import ConfigError, DataError
from bintally.io import atomic_path, check_output_file, csv_text, write_csv, write_frame_csv

LABEL_OUTCOMES = ("record_correct", "record_wrong")  # approved counts of a usable photo of an unchanged bin
LINE_LABEL_COLUMNS = ["bin_id", "image", "sku", "final_qty", "record_qty", "variance", "task_id", "approved_at"]
LINE_SIZE = ("length_in", "width_in", "height_in", "weight_lb")


def iso(value) -> str | None:
    return value.isoformat(timespec="seconds") + "Z" if value else None


def run_row(run: AuditRun) -> dict:
    return {"id": run.id, "name": run.name, "status": run.status, "model": {"name": run.model_name, "version": run.model_version},
            "source": run.source, "settings": {k: v for k, v in run.settings.items() if k != "snapshots"},
            "created_by": run.created_by, "created_at": iso(run.created_at), "opened_at": iso(run.opened_at)}


def list_runs(store: Store) -> list[dict]:
    with store.session() as session:
        runs = session.scalars(select(AuditRun).order_by(AuditRun.id)).all()
        return [run_row(run) | {"metrics": metrics_of(session, run)} for run in runs]


def get_run_summary(store: Store, run_id: int) -> dict:
    with store.session() as session:
        run = get_run(session, run_id)
        return run_row(run) | {"metrics": metrics_of(session, run)}


def metrics_of(session, run: AuditRun) -> dict:
    """Bins, flagged, counted, confirmed errors, and errors found per 100 counts: model-selected against control."""
    scored = session.scalar(select(func.count()).select_from(Score).where(Score.run_id == run.id, Score.score.is_not(None)))
    unreadable = session.scalar(select(func.count()).select_from(Score).where(Score.run_id == run.id, Score.problem.is_not(None)))
    rows = session.execute(select(Task.selected_by, Task.status, Resolution.decision, Resolution.outcome)
                           .outerjoin(Resolution, Resolution.task_id == Task.id).where(Task.run_id == run.id)).all()
    shards = session.scalar(select(func.count()).select_from(RunShard).where(RunShard.run_id == run.id))
    groups = {}
    for group in ("model", "control"):
        mine = [r for r in rows if r.selected_by == group]
        counted = [r for r in mine if r.status not in COUNTABLE or r.status == "recount_requested"]
        approved = [r for r in mine if r.decision == "approved"]
        errors = sum(r.outcome == "record_wrong" for r in approved)
        groups[group] = {"tasks": len(mine), "counted": len(counted), "approved": len(approved), "confirmed_errors": errors,
                         "errors_per_100_counts": round(100 * errors / len(approved), 1) if approved else None}
    statuses = {s: sum(r.status == s for r in rows) for s in STATUSES}
    control_rate = groups["control"]["confirmed_errors"] / groups["control"]["approved"] if groups["control"]["approved"] else None
    unflagged = max(0, scored - groups["model"]["tasks"])
    return {"bins": scored, "unreadable": unreadable, "shards_done": shards, "shards": run.world_size,
            "flagged": groups["model"]["tasks"], "control": groups["control"]["tasks"],
            "counted": groups["model"]["counted"] + groups["control"]["counted"],
            "confirmed_errors": groups["model"]["confirmed_errors"] + groups["control"]["confirmed_errors"],
            "by_selection": groups, "statuses": statuses,
            "estimated_missed_errors": round(control_rate * unflagged, 1) if control_rate is not None else None}


def task_rows(session, query) -> list[dict]:
    rows = session.execute(query).all()
    return [task_row(task, snapshot) for task, snapshot in rows]


def task_row(task: Task, snapshot: Snapshot) -> dict:
    """A task as a reviewer sees it: record, prediction, score and probabilities."""
    return {"id": task.id, "run_id": task.run_id, "rank": task.rank, "bin_id": snapshot.bin_id, "image": snapshot.image_uri,
            "snapshot_id": snapshot.id, "record_qty": snapshot.record_qty, "captured_at": iso(snapshot.captured_at),
            "score": round(task.score, 4), "p_record": round(p_record_of(task.probabilities, snapshot.record_qty), 4),
            "predicted": task.predicted,
            "expected": task.expected, "probabilities": task.probabilities, "selected_by": task.selected_by,
            "explanation": task.explanation, "status": task.status, "assignee": task.assignee, "updated_at": iso(task.updated_at)}


def list_tasks(store: Store, run_id: int | None = None, status: str | None = None, limit: int | None = None,
               assignee: str | None = None) -> list[dict]:
    """Tasks, most suspicious first within each run (model-selected before control)."""
    if status is not None and status not in STATUSES:
        raise ConfigError(f"unknown status {status!r}: use one of {', '.join(STATUSES)}")
    with store.session() as session:
        if run_id is not None:
            get_run(session, run_id)
        query = select(Task, Snapshot).join(Snapshot, Snapshot.id == Task.snapshot_id)
        if run_id is not None:
            query = query.where(Task.run_id == run_id)
        if status is not None:
            query = query.where(Task.status == status)
        if assignee is not None:
            query = query.where(Task.assignee == assignee)
        query = query.order_by(Task.run_id, Task.selected_by.desc(), Task.rank)  # "model" sorts after "control" reversed
        if limit:
            query = query.limit(limit)
        return task_rows(session, query)


def counter_view(store: Store, task_id: int) -> dict:
    """What a counter sees: the bin and its photo, the status, which count is asked for and, for a record with SKU
    lines, the SKUs to count with one unit's size and weight; never a recorded quantity, the record's total, the
    model's prediction, the explanation or an earlier count (blind counting)."""
    with store.session() as session:
        task = get_task(session, task_id)
        snapshot = session.get(Snapshot, task.snapshot_id)
        lines = [{"sku": line.sku} | {k: getattr(line, k) for k in LINE_SIZE} for line in record_lines(session, snapshot.id)]
        return {"id": task.id, "run_id": task.run_id, "bin_id": snapshot.bin_id, "snapshot_id": snapshot.id,
                "status": task.status, "assignee": task.assignee, "count_index": COUNTABLE.get(task.status), "accepts_count": task.status in COUNTABLE,
                "lines": lines}


def countable_by(session, task: Task, name: str | None) -> bool:
    """May `name` count `task` now: it waits for a count, is open or assigned to them, and (a recount, when the store
    separates count and recount) they did not count it first. None: anyone (no users)."""
    from bintally.audit.people import SEPARATE_RECOUNT, setting

    if task.status not in COUNTABLE:
        return False
    if name is None:
        return True
    if task.assignee not in (None, name):
        return False
    return task.status != "recount_requested" or not setting(session, SEPARATE_RECOUNT) or name not in counted_by(session, task.id)


def counted_by(session, task_id: int) -> set[str]:
    return set(session.scalars(select(CountObservation.counted_by).where(CountObservation.task_id == task_id)))


def counter_tasks(store: Store, name: str | None, run_id: int | None = None) -> list[dict]:
    """The counter views of the tasks `name` may count now (`countable_by`), in worklist order."""
    with store.session() as session:
        if run_id is not None:
            get_run(session, run_id)
        query = select(Task.id).where(Task.status.in_(list(COUNTABLE))).order_by(Task.run_id, Task.selected_by.desc(), Task.rank)
        if run_id is not None:
            query = query.where(Task.run_id == run_id)
        ids = [i for i in session.scalars(query) if countable_by(session, session.get(Task, i), name)]
    return [counter_view(store, task_id) for task_id in ids]


def counter_may_see(store: Store, task_id: int, name: str) -> bool:
    """A counter sees the blind view of a task they may count now or have counted."""
    with store.session() as session:
        task = get_task(session, task_id)
        return countable_by(session, task, name) or name in counted_by(session, task.id)


def counter_may_see_photo(store: Store, snapshot_id: int, name: str) -> bool:
    """A counter sees the photo of a snapshot only while one of its tasks is theirs to count."""
    with store.session() as session:
        tasks = session.scalars(select(Task).where(Task.snapshot_id == snapshot_id)) if 0 < snapshot_id < 2**31 else []
        return any(countable_by(session, task, name) for task in tasks)


def task_detail(store: Store, task_id: int) -> dict:
    """A reviewer's view: the task, every count, the resolution and, for a record with SKU lines, each line's
    record, count, recount, final quantity and variance."""
    with store.session() as session:
        task = get_task(session, task_id)
        detail = task_row(task, session.get(Snapshot, task.snapshot_id))
        counts = session.scalars(select(CountObservation).where(CountObservation.task_id == task_id)
                                 .order_by(CountObservation.count_index)).all()
        detail["counts"] = [{"count_index": c.count_index, "qty": c.counted_qty, "by": c.counted_by, "at": iso(c.counted_at),
                             "comment": c.comment, "lines": {line.sku: line.counted_qty for line in c.lines}} for c in counts]
        resolution = session.scalar(select(Resolution).where(Resolution.task_id == task_id))
        detail["resolution"] = resolution_row(resolution) if resolution else None
        detail["lines"] = reviewer_lines(record_lines(session, task.snapshot_id), counts, resolution)
        return detail


def reviewer_lines(recorded: list[SnapshotLine], counts: list[CountObservation], resolution: Resolution | None) -> list[dict]:
    """Per SKU: the record (0 for a SKU only a count found), size and weight, count, recount, final quantity and variance."""
    by_count = [{line.sku: line.counted_qty for line in c.lines} for c in counts]
    finals = {line.sku: line for line in resolution.lines} if resolution else {}
    rows = {line.sku: {"sku": line.sku, "on_record": True, "record_qty": line.record_qty} | {k: getattr(line, k) for k in LINE_SIZE}
            for line in recorded}
    for sku in sorted({sku for counted in by_count for sku in counted} | set(finals)):
        rows.setdefault(sku, {"sku": sku, "on_record": False, "record_qty": 0} | dict.fromkeys(LINE_SIZE))
    for row in rows.values():
        counted = [c.get(row["sku"]) for c in by_count] + [None, None]
        final = finals.get(row["sku"])
        row |= {"count": counted[0], "recount": counted[1], "final_qty": final.final_qty if final else None,
                "variance": final.variance if final else None}
    return list(rows.values())


def resolution_row(r: Resolution) -> dict:
    return {"decision": r.decision, "final_qty": r.final_qty, "record_qty": r.record_qty, "variance": r.variance,
            "outcome": r.outcome, "reason": r.reason, "comment": r.comment, "reviewed_by": r.reviewed_by,
            "reviewed_at": iso(r.reviewed_at), "approved_by": r.approved_by, "approved_at": iso(r.approved_at),
            "lines": [{"sku": line.sku, "record_qty": line.record_qty, "final_qty": line.final_qty, "variance": line.variance}
                      for line in r.lines]}


def snapshot_photo(store: Store, snapshot_id: int) -> tuple[str, bytes | None, str | None]:
    """(image URI, bytes if it was uploaded, media type) of a snapshot's photo."""
    with store.session() as session:
        snapshot = session.get(Snapshot, snapshot_id) if 0 < snapshot_id < 2**31 else None  # ids are INTEGER (32-bit on PostgreSQL)
        if snapshot is None:
            from bintally.audit.workflow import NotFound

            raise NotFound(f"no snapshot {snapshot_id} in the audit store")
        photo = uploaded_photo(session, snapshot.image_uri)
        return snapshot.image_uri, photo.data if photo else None, photo.media_type if photo else None


def uploaded_photo(session, image_uri: str) -> Photo | None:
    """The stored bytes of a photo uploaded over HTTP (upload:<sha256>); None for any other image or a missing one."""
    return session.get(Photo, image_uri[len(UPLOAD_SCHEME):]) if image_uri.startswith(UPLOAD_SCHEME) else None


# ---------------------------------------------------------------- exports

EXPORT_COLUMNS = ["task_id", "run_id", "rank", "bin_id", "image", "captured_at", "record_qty", "score", "p_record", "predicted",
                  "expected", "selected_by", "status", "count_1", "count_1_by", "count_2", "count_2_by", "decision", "final_qty",
                  "variance", "outcome", "reason", "reviewed_by", "approved_by", "approved_at", "explanation"]


def export_rows(store: Store, run_id: int) -> list[dict]:
    """One row per task of the run: the snapshot, the scores, both counts and the resolution."""
    with store.session() as session:
        get_run(session, run_id)
        tasks = session.execute(select(Task, Snapshot).join(Snapshot, Snapshot.id == Task.snapshot_id)
                                .where(Task.run_id == run_id).order_by(Task.rank)).all()
        counts = {}
        for c in session.scalars(select(CountObservation).join(Task, Task.id == CountObservation.task_id).where(Task.run_id == run_id)):
            counts[(c.task_id, c.count_index)] = c
        resolutions = {r.task_id: r for r in session.scalars(select(Resolution).join(Task, Task.id == Resolution.task_id)
                                                              .where(Task.run_id == run_id))}
    rows = []
    for task, snapshot in tasks:
        row = task_row(task, snapshot)
        first, second, r = counts.get((task.id, 0)), counts.get((task.id, 1)), resolutions.get(task.id)
        rows.append({"task_id": task.id, **{k: row[k] for k in ("run_id", "rank", "bin_id", "image", "captured_at", "record_qty", "score",
                                                                   "p_record", "predicted", "expected", "selected_by", "status")},
                     "count_1": first.counted_qty if first else None, "count_1_by": first.counted_by if first else None,
                     "count_2": second.counted_qty if second else None, "count_2_by": second.counted_by if second else None,
                     "decision": r.decision if r else None, "final_qty": r.final_qty if r else None,
                     "variance": r.variance if r else None, "outcome": r.outcome if r else None, "reason": r.reason if r else None,
                     "reviewed_by": r.reviewed_by if r else None, "approved_by": r.approved_by if r else None,
                     "approved_at": iso(r.approved_at) if r else None, "explanation": task.explanation})
    return rows


def export_run(store: Store, run_id: int, out: str | Path, fmt: str | None = None) -> Path:
    """Write the run's tasks as CSV or Parquet (format from --format, else the file's suffix); never half a file."""
    out = Path(out)
    fmt = fmt or out.suffix.lstrip(".").lower()
    if fmt not in ("csv", "parquet"):
        raise DataError(out, f"unknown export format {fmt!r}: use csv or parquet (--format, or the file's suffix)")
    check_output_file(out, (f".{fmt}",))
    import pandas as pd

    frame = pd.DataFrame(export_rows(store, run_id), columns=EXPORT_COLUMNS)
    for column in ("count_1", "count_2", "final_qty", "variance"):  # whole numbers, empty where not counted yet
        frame[column] = frame[column].astype("Int64")
    if fmt == "csv":
        return write_frame_csv(out, frame)
    with atomic_path(out) as tmp:
        frame.to_parquet(tmp, index=False)
    return out


def approved_labels(store: Store) -> list[dict]:
    """Every approved resolution of a usable photo: the photo, its bin and the counted quantity (newest last)."""
    with store.session() as session:
        rows = session.execute(select(Snapshot.image_uri, Snapshot.bin_id, Resolution.final_qty, Resolution.record_qty,
                                      Resolution.approved_at, Task.id)
                               .join(Task, Task.id == Resolution.task_id).join(Snapshot, Snapshot.id == Task.snapshot_id)
                               .where(Resolution.decision == "approved", Resolution.outcome.in_(LABEL_OUTCOMES))
                               .order_by(Resolution.approved_at, Task.id)).all()
    latest = {}
    for image, bin_id, final, record, approved_at, task_id in rows:  # the same photo approved twice: the later decision wins
        latest[image] = {"image": image, "bin_id": bin_id, "count": final, "record_qty": record, "approved_at": iso(approved_at),
                         "task_id": task_id}
    return list(latest.values())


def labels_csv(labels: list[dict]) -> str:
    return csv_text(labels, ["image", "bin_id", "count", "record_qty", "approved_at", "task_id"])


def approved_line_labels(store: Store) -> list[dict]:
    """Per SKU line, every approved resolution of a lined task with a usable photo: bin, photo, SKU, final and
    recorded quantity, variance (the same photo approved twice: only the later decision, as in the labels)."""
    with store.session() as session:
        rows = session.execute(select(Snapshot.bin_id, Snapshot.image_uri, ResolutionLine.sku, ResolutionLine.final_qty,
                                      ResolutionLine.record_qty, ResolutionLine.variance, Task.id, Resolution.approved_at)
                               .join(Resolution, Resolution.id == ResolutionLine.resolution_id)
                               .join(Task, Task.id == Resolution.task_id).join(Snapshot, Snapshot.id == Task.snapshot_id)
                               .where(Resolution.decision == "approved", Resolution.outcome.in_(LABEL_OUTCOMES))
                               .order_by(Resolution.approved_at, Task.id, ResolutionLine.id)).all()
    latest = {label["task_id"] for label in approved_labels(store)}  # a photo's later approval, with lines or without, wins
    return [dict(zip(LINE_LABEL_COLUMNS, (r.bin_id, r.image_uri, r.sku, r.final_qty, r.record_qty, r.variance, r.id, iso(r.approved_at))))
            for r in rows if r.id in latest]


def line_labels_csv(labels: list[dict]) -> str:
    return csv_text(labels, LINE_LABEL_COLUMNS)


def write_line_labels(store: Store, out: str | Path, overwrite: bool = False) -> tuple[Path, int]:
    """Approved per-line recounts as a CSV of bin_id,image,sku,final_qty,record_qty,variance,task_id,approved_at; (file, rows)."""
    out = check_output_file(out, (".csv",))
    if out.exists() and not overwrite:
        raise DataError(out, "exists: pass --overwrite to replace it")
    labels = approved_line_labels(store)
    write_csv(out, labels, LINE_LABEL_COLUMNS)
    return out, len(labels)


def write_labels(store: Store, out: str | Path, overwrite: bool = False) -> tuple[Path, int, list[str]]:
    """Approved recounts as a path,count CSV that `bintally data index` reads; (file, labels written, images left out).

    Uploaded photos are written beside it (OUT_photos/<sha256>.jpg); photos behind s3:// or https:// URIs are
    left out (named in the result): fetch them first, then index them with their counts.
    """
    out = check_output_file(out, (".csv",))
    if out.exists() and not overwrite:
        raise DataError(out, "exists: pass --overwrite to replace it")
    labels, skipped, lines = approved_labels(store), [], []
    photos_dir = out.with_name(out.stem + "_photos")
    for label in labels:
        image = label["image"]
        if image.startswith(UPLOAD_SCHEME):
            digest = image[len(UPLOAD_SCHEME):]
            with store.session() as session:
                photo = uploaded_photo(session, image)
            if photo is None:
                skipped.append(image)
                continue
            data, media = photo.data, photo.media_type
            photos_dir.mkdir(parents=True, exist_ok=True)
            path = photos_dir / f"{digest}.{'png' if media == 'image/png' else 'jpg'}"
            if not path.exists():
                with atomic_path(path) as tmp:
                    tmp.write_bytes(data)
            image = str(path.resolve())
        elif image.lower().startswith("file://"):
            from urllib.parse import unquote, urlsplit

            image = unquote(urlsplit(image).path)
        elif "://" in image:
            skipped.append(image)
            continue
        lines.append({"path": image, "count": label["count"]})
    write_csv(out, lines, ["path", "count"])
    return out, len(lines), skipped

