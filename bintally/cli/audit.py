"""`bintally audit ...`: score bins against their records, list the worklist, count, review, export, labels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from bintally.audit.config import AuditConfig
from bintally.audit.fit_scorer import FitScorerConfig
from bintally.cli.app import HELP, Opt, app, command, echo_err, echo_stopped, show_progress
from bintally.cli.identity import TokenFileOpt, cli_principal, store_as
from bintally.cli.options import settings_options
from bintally.cli.strict import exclusive
from bintally.text import whole_number

audit_app = typer.Typer(help="Reconcile bin photos with the inventory record: a ranked recount worklist, blind counts, "
                             "reviews, and approved recounts as training labels.", no_args_is_help=True, context_settings=HELP)
app.add_typer(audit_app, name="audit")

DbOpt = Annotated[Optional[str], Opt("--db", envvar="BINTALLY_AUDIT_DB",
                                     help="Audit store: a SQLite file path or a PostgreSQL URL (postgresql+psycopg://...). "
                                          "Default: ./audit.db.")]
JsonOpt = Annotated[bool, Opt("--json", help="Print JSON instead of a table.")]
ByOpt = Annotated[Optional[str], Opt("--by", help="Who does it, on a SQLite store without a token (default: your login "
                                                 "name); with a token, its user.")]
STATUS_NAMES = Literal["requested", "recount_requested", "in_review", "approved", "rejected"]


def positive_id(value: int, what: str) -> int:
    if value < 1:
        raise typer.BadParameter(f"{value} is not a {what} id (ids start at 1)", param_hint=what.upper())
    return value


def line_quantities(values: list[str] | None, option: str) -> dict[str, int] | None:
    """{SKU: quantity} from repeated SKU=QTY options; None when none was given."""
    if not values:
        return None
    lines: dict[str, int] = {}
    for value in values:
        sku, equals, qty = value.rpartition("=")
        sku = sku.strip()
        if not equals or not sku:
            raise typer.BadParameter(f"{value!r}: write SKU=QTY (a SKU, an equals sign, a whole number)", param_hint=option)
        number = whole_number(qty)
        if number is None:
            raise typer.BadParameter(f"{value!r}: the quantity {qty.strip()!r} is not a whole number (digits 0-9)", param_hint=option)
        if number < 0:
            raise typer.BadParameter(f"{value!r}: the quantity must be 0 or more", param_hint=option)
        if sku in lines:
            raise typer.BadParameter(f"SKU {sku!r} given twice", param_hint=option)
        lines[sku] = number
    return lines


@command(audit_app, "run")
@settings_options(AuditConfig)
def run_cmd(settings: dict, db: DbOpt = None, json_out: JsonOpt = False, token_file: TokenFileOpt = None):
    """Score every bin snapshot and write a recount worklist ranked by how likely the record is wrong.

    Under torchrun (or any launcher setting RANK and WORLD_SIZE) each process scores its share into the same store.
    """
    from bintally.audit import audit_run

    show_progress(settings["progress"])
    config = AuditConfig(**settings, db=db)
    actor = run_actor(config, token_file)
    try:
        result = audit_run(config, actor)
    except KeyboardInterrupt:
        echo_stopped("stopped; the bins scored so far are kept in the audit store (one batch at most is lost), "
                     "and the same command goes on with the rest")
        raise
    for problem in result.unreadable:
        echo_err(f"skipped {problem}")
    nothing_read = bool(result.unreadable) and not result.scored and not result.reused
    if json_out:
        typer.echo(json.dumps(result.to_json(), indent=2))
        raise typer.Exit(1 if nothing_read else 0)
    if result.reused and not result.scored:
        typer.echo(f"audit run {result.run_id} ({result.name}) already holds these snapshots: nothing to do")
    else:
        skipped = f", {len(result.unreadable)} unreadable photo(s) skipped" if result.unreadable else ""
        typer.echo(f"scored {result.scored} of {result.bins} bin(s){skipped}")
    if result.status == "open":
        typer.echo(f"audit run {result.run_id} ({result.name}): {result.tasks} bin(s) to recount by score, {result.control} "
                   f"at random (control); see `bintally audit list --run {result.run_id}`")
    else:
        typer.echo(f"audit run {result.run_id} ({result.name}): this shard is done; the worklist is written when every "
                   f"shard has finished")
    if nothing_read:
        echo_err(f"no photo of the source could be read ({len(result.unreadable)} skipped): nothing was scored")
        raise typer.Exit(1)


def run_actor(config: AuditConfig, token_file):
    """Who creates the run (an auditor): the local owner (--by) of a SQLite store without a token, else the token's
    user, or the owner of a PostgreSQL store that has no users yet (the store is opened only for these)."""
    from bintally.audit import database_url, open_store
    from bintally.audit.config import default_user
    from bintally.audit.people import local_owner, require
    from bintally.cli.identity import read_token

    config.validate()
    by = None if config.created_by == default_user() else config.created_by  # with a token, --by left out signs as its user
    if read_token(token_file) is None and database_url(config.db).startswith("sqlite"):
        return require(local_owner(config.created_by), "auditor")
    store = open_store(config.db)
    try:
        return require(cli_principal(store, by, token_file), "auditor")
    finally:
        store.close()


@command(audit_app, "fit-scorer")
@settings_options(FitScorerConfig)
def fit_scorer_cmd(settings: dict):
    """Fit the record-aware scorer (--score auto/record) on a model's developer photos and simulated record errors.

    Its cross-validated ROC AUC and 10%-budget recall are printed beside the mismatch and distance rankers.
    """
    from bintally.audit.fit_scorer import fit_scorer

    show_progress(settings["progress"])
    config = FitScorerConfig(**settings)
    training = fit_scorer(config)
    typer.echo(f"{training['photos']} developer photos, probabilities {training['probabilities']}; {training['seeds']} "
               f"corrupted copies at {training['rate']:.0%} wrong. Cross-validated at 5% wrong (mean over seeds):")
    typer.echo(f"{'ranker':<16} {'AUC':>6} {'recall@10%':>11}   {'AUC shifted':>11} {'recall shifted':>14}")
    for name, row in training["cross_validation"].items():
        d, s = row["default"], row["shifted"]
        typer.echo(f"{name:<16} {d['roc_auc']['mean']:>6.3f} {d['recall_at_10']['mean']:>11.3f}   "
                   f"{s['roc_auc']['mean']:>11.3f} {s['recall_at_10']['mean']:>14.3f}")
    chosen = ", ".join(f"{name} {kind}" for name, kind in training["kinds"].items())
    typer.echo(f"chosen by AUC on the default mix: {chosen}")
    typer.echo(f"wrote {config.out} (random selection catches 0.100 at a 10% budget)")


@command(audit_app, "list")
@exclusive("runs", "run")
@exclusive("runs", "status")
@exclusive("runs", "assignee")
@exclusive("runs", "limit")
def list_cmd(
    run: Annotated[Optional[int], Opt("--run", help="Only this run's tasks.")] = None,
    status: Annotated[Optional[STATUS_NAMES], Opt(help="Only tasks in this state.")] = None,
    assignee: Annotated[Optional[str], Opt(help="Only tasks assigned to this person.")] = None,
    runs: Annotated[bool, Opt("--runs", help="List the runs with their metrics instead of tasks.")] = False,
    limit: Annotated[Optional[int], Opt(min=1, help="At most this many tasks.")] = None,
    db: DbOpt = None,
    json_out: JsonOpt = False,
    token_file: TokenFileOpt = None,
):
    """The runs (--runs) or the recount tasks, most suspicious first: record, prediction, score, status (a reviewer or auditor)."""
    from bintally.audit import list_runs, list_tasks

    with store_as(db, None, token_file, "reviewer", "auditor") as (store, _):
        if runs:
            rows = list_runs(store)
            if json_out:
                typer.echo(json.dumps(rows, indent=2))
            for r in [] if json_out else rows:
                m = r["metrics"]
                typer.echo(f"run {r['id']:>3}  {r['name']}  {r['status']:<8} bins {m['bins']}  flagged {m['flagged']}  control "
                           f"{m['control']}  counted {m['counted']}  confirmed errors {m['confirmed_errors']}")
            return
        rows = list_tasks(store, positive_id(run, "run") if run is not None else None, status, limit, assignee)
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo("no tasks" + (f" in run {run}" if run is not None else "") + (f" with status {status}" if status else ""))
        return
    typer.echo(f"{'task':>5} {'run':>4} {'rank':>5} {'bin':<12} {'record':>6} {'pred':>5} {'score':>6}  {'why':<8} {'status':<17} "
               f"{'assignee':<10} explanation")
    for t in rows:
        typer.echo(f"{t['id']:>5} {t['run_id']:>4} {t['rank']:>5} {t['bin_id'][:12]:<12} {t['record_qty']:>6} {t['predicted']:>5} "
                   f"{t['score']:>6.3f}  {t['selected_by']:<8} {t['status']:<17} {t['assignee'] or '-':<10} {t['explanation'] or '-'}")


@command(audit_app, "show")
def show_cmd(
    task: Annotated[int, typer.Argument(help="Task id.")],
    blind: Annotated[bool, Opt("--blind", help="Only what a counter may see (no record, no prediction, no earlier count; "
                                               "a lined record's SKUs without their quantities).")] = False,
    db: DbOpt = None,
    token_file: TokenFileOpt = None,
):
    """One task as JSON: the reviewer's view (record, prediction, explanation, counts, per-line record, counts and final,
    resolution; a reviewer or auditor) or the counter's blind view (a counter sees tasks that wait for a count, assigned
    to them or to nobody)."""
    from bintally.audit import counter_view, task_detail
    from bintally.audit.workflow import check_counter_may_see

    task = positive_id(task, "task")
    with store_as(db, None, token_file, *(() if blind else ("reviewer", "auditor"))) as (store, principal):
        if blind:
            check_counter_may_see(store, task, principal)
        view = counter_view(store, task) if blind else task_detail(store, task)
    typer.echo(json.dumps(view, indent=2))


@command(audit_app, "assign")
@exclusive("to", "nobody", required=True)
def assign_cmd(
    task: Annotated[int, typer.Argument(help="Task id.")],
    to: Annotated[Optional[str], Opt("--to", help="Who counts it (leave out with --nobody).")] = None,
    nobody: Annotated[bool, Opt("--nobody", help="Take the task back from whoever has it.")] = False,
    by: ByOpt = None,
    db: DbOpt = None,
    token_file: TokenFileOpt = None,
):
    """Give an open task to a counter (their worklist: `bintally audit list --assignee NAME`; a reviewer or auditor)."""
    from bintally.audit import assign

    with store_as(db, by, token_file) as (store, principal):
        status = assign(store, positive_id(task, "task"), to, principal)
    typer.echo(f"task {task} ({status}) is now " + (f"assigned to {to.strip()}" if to else "assigned to nobody"))


@command(audit_app, "count")
def count_cmd(
    task: Annotated[int, typer.Argument(help="Task id.")],
    by: ByOpt = None,
    qty: Annotated[Optional[int], Opt("--qty", min=0, help="How many items the counter found in the bin (with --line: their sum, "
                                                           "or leave it out).")] = None,
    line: Annotated[Optional[list[str]], Opt("--line", metavar="SKU=QTY", help="SKU=QTY: how many of a recorded SKU are in the bin (repeatable; a "
                                                            "task whose record has SKU lines needs every line, 0 when none).")] = None,
    found: Annotated[Optional[list[str]], Opt("--found", metavar="SKU=QTY", help="SKU=QTY: a SKU found in the bin that the record does not list "
                                                              "(repeatable; with --line).")] = None,
    recount: Annotated[bool, Opt("--recount", help="This is the recount the task asks for (a second, independent count).")] = False,
    comment: Annotated[Optional[str], Opt(help="A note on the count.")] = None,
    db: DbOpt = None,
    token_file: TokenFileOpt = None,
):
    """Record a blind count (a counter), by total (--qty) or per SKU line (--line); a first count that differs from the
    record (in total or on any line, beyond the run's tolerance) asks for a recount, by someone else."""
    from bintally.audit import submit_count
    from bintally.audit.workflow import Conflict, WrongCount

    lines, found_lines = line_quantities(line, "--line"), line_quantities(found, "--found")
    if found_lines is not None and lines is None:
        raise typer.BadParameter("a SKU found off the record is counted per SKU line: give --line SKU=QTY for each recorded "
                                 "SKU too", param_hint="--found")
    if qty is None and lines is None:
        raise typer.BadParameter("say how many items are in the bin: --qty N, or --line SKU=QTY for each SKU line", param_hint="--qty")
    with store_as(db, by, token_file) as (store, principal):
        try:
            outcome = submit_count(store, positive_id(task, "task"), qty, principal, comment, count_index=int(recount), lines=lines,
                                   found=found_lines)
        except WrongCount as e:
            raise Conflict(f"{e}; {'pass --recount' if e.expected == 1 else 'leave out --recount'}") from None
    which = "count" if outcome.count_index == 0 else "recount"
    after = {"recount_requested": "it differs from the record: a recount is requested",
             "in_review": "the task waits for a review"}[outcome.status]
    total = qty if lines is None else sum(lines.values()) + sum((found_lines or {}).values())
    per_line = f" ({len(lines) + len(found_lines or {})} SKU line(s))" if lines is not None else ""
    typer.echo(f"task {outcome.task_id}: {which} of {total}{per_line} recorded; {after}")


@command(audit_app, "review")
@exclusive("approve", "reject", required=True)
@exclusive("reject", "final")
@exclusive("reject", "final_line")
@exclusive("reject", "reason")
def review_cmd(
    task: Annotated[int, typer.Argument(help="Task id.")],
    approve: Annotated[bool, Opt("--approve", help="Approve the counts (they become a label).")] = False,
    reject: Annotated[bool, Opt("--reject", help="Reject the counts (with --outcome, why: e.g. image_unusable).")] = False,
    final: Annotated[Optional[int], Opt(min=0, help="The final quantity in the bin (needed to approve a task without SKU lines).")] = None,
    final_line: Annotated[Optional[list[str]], Opt("--final-line", metavar="SKU=QTY", help="SKU=QTY: a SKU's final quantity (repeatable; approving a "
                                                                       "task with SKU lines needs every recorded SKU, and any SKU "
                                                                       "a count found).")] = None,
    reason: Annotated[Optional[Literal["lost", "found", "damaged", "misplaced", "data_entry", "other"]],
                      Opt(help="Why the record was wrong (needed when the final quantity differs from it).")] = None,
    outcome: Annotated[Optional[Literal["record_correct", "record_wrong", "bin_changed", "image_unusable"]],
                       Opt(help="Default: record_correct when the final quantity equals the record, else record_wrong.")] = None,
    by: ByOpt = None,
    comment: Annotated[Optional[str], Opt(help="A note on the decision.")] = None,
    db: DbOpt = None,
    token_file: TokenFileOpt = None,
):
    """Approve or reject a task someone else counted (a reviewer); approved record_correct/record_wrong resolutions
    become training labels."""
    from bintally.audit import review

    final_lines = line_quantities(final_line, "--final-line")
    with store_as(db, by, token_file) as (store, principal):
        resolution = review(store, positive_id(task, "task"), approve, principal, final, reason, outcome, comment, final_lines=final_lines)
    if resolution.decision == "approved":
        off = [f"{line.sku} {line.variance:+d}" for line in resolution.lines if line.variance]
        typer.echo(f"task {task}: approved, final quantity {resolution.final_qty} against a record of {resolution.record_qty} "
                   f"(variance {resolution.variance:+d}, {resolution.outcome})"
                   + (f"; {len(resolution.lines)} SKU line(s), off the record: {', '.join(off) or 'none'}" if resolution.lines else ""))
    else:
        typer.echo(f"task {task}: rejected")


@command(audit_app, "export")
def export_cmd(
    run: Annotated[int, Opt("--run", help="The run to export.")],
    out: Annotated[Path, Opt("--out", "-o", help="Output file (.csv or .parquet).")],
    format: Annotated[Optional[Literal["csv", "parquet"]], Opt("--format", help="Default: from the file's suffix.")] = None,
    overwrite: Annotated[bool, Opt(help="Replace an existing file.")] = False,
    db: DbOpt = None,
    token_file: TokenFileOpt = None,
):
    """Write a run's tasks with scores, both counts and the resolution, one row per task (an auditor)."""
    from bintally.audit import export_run
    from bintally.errors import DataError

    suffix = out.suffix.lstrip(".").lower()
    if format is not None and suffix in ("csv", "parquet") and suffix != format:
        raise typer.BadParameter(f"--format {format} contradicts the .{suffix} file given to --out: give one of them", param_hint="--format")
    if out.exists() and not overwrite:
        raise DataError(out, "exists: pass --overwrite to replace it")
    with store_as(db, None, token_file, "auditor") as (store, _):
        written = export_run(store, positive_id(run, "run"), out, format)
    typer.echo(f"wrote {written}")


@command(audit_app, "labels")
def labels_cmd(
    out: Annotated[Path, Opt("--out", "-o", help="The path,count CSV to write (`bintally data index` reads it).")],
    lines: Annotated[bool, Opt("--lines", help="Instead: one row per SKU line of each approved lined recount "
                                               "(bin_id,image,sku,final_qty,record_qty,variance,task_id,approved_at).")] = False,
    overwrite: Annotated[bool, Opt(help="Replace an existing file.")] = False,
    db: DbOpt = None,
    token_file: TokenFileOpt = None,
):
    """Approved recounts as training labels: a path,count CSV for `bintally data index` (or, with --lines, per SKU line;
    an auditor)."""
    from bintally.audit import write_labels, write_line_labels

    with store_as(db, None, token_file, "auditor") as (store, _):
        if lines:
            written, n = write_line_labels(store, out, overwrite)
            typer.echo(f"wrote {n} SKU line label(s) to {written}" + ("" if n else " (no approved per-line recounts yet)"))
            return
        written, n, skipped = write_labels(store, out, overwrite)
    for image in skipped:
        echo_err(f"left out {image}: not a local file (fetch it, then index it with its count)")
    typer.echo(f"wrote {n} label(s) to {written}" + ("" if n else " (no approved recounts yet)"))
