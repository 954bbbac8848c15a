"""The count-and-review workflow of a recount task, the one place its states change.

    requested --count--> in_review                      (the count is within the tolerance of the record)
    requested --count--> recount_requested --recount--> in_review
    in_review --review--> approved | rejected

A count is blind (the counter's view has neither record nor prediction: `counter_view`). Every transition is
a conditional UPDATE on the task's version inside one transaction, and counts are unique per (task, count
index): each submission names the count it is (0 the count, 1 the recount), so of two people submitting
the same count at once, one succeeds and the other gets a `Conflict` (HTTP 409), and nothing is counted
twice. A retried request with the same idempotency key gets the first answer again. Only approved
resolutions become training labels.

A task whose snapshot has the record's SKU lines is counted per line: `lines` gives every recorded SKU's
quantity (0 when none is in the bin; a SKU not on the record is refused, so a typo is never a new line), and
`found` the SKUs the counter found that the record does not list (1 or more each). The count's total is their
sum (a `qty` given as well must equal it). A recount is asked for when the total, or any line (a found SKU
against 0), is further than the tolerance from the record. Approving a lined task needs `final_lines`: every
recorded SKU's final quantity, plus any SKU a count found; the resolution's final quantity is their sum and
each line keeps its record, final and variance. A task without lines is counted and reviewed by its total.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from bintally.audit.errors import Conflict, NotFound
from bintally.audit.people import SEPARATE_APPROVAL, SEPARATE_RECOUNT, Forbidden, Principal, record_event, require, setting
from bintally.audit.schema import AuditRun, CountLine, CountObservation, Resolution, ResolutionLine, Snapshot, SnapshotLine, Task, User, utcnow
from bintally.audit.store import Store
from bintally.data.records import MAX_LINES
from bintally.errors import ConfigError
from bintally.text import TextError, check_text

STATUSES = ("requested", "recount_requested", "in_review", "approved", "rejected")
COUNTABLE = {"requested": 0, "recount_requested": 1}  # status -> the count index it waits for
OUTCOMES = ("record_correct", "record_wrong", "bin_changed", "image_unusable")
REASONS = ("lost", "found", "damaged", "misplaced", "data_entry", "other")
MAX_QTY = 10**6
MAX_SKU = 200  # characters of a SKU, as snapshot_lines stores it


class WrongCount(Conflict):
    """A count sent as the count while the task waits for its recount, or the reverse."""

    def __init__(self, expected: int, message: str):
        super().__init__(message)
        self.expected = expected


@dataclass
class CountOutcome:
    task_id: int
    count_index: int
    status: str  # the task's status after the count
    replayed: bool = False  # the same idempotency key was seen before: nothing new was written


def checked_text(value: str | None, what: str, multiline: bool = False) -> str | None:
    """`value` unchanged (None stays None), or ConfigError naming `what` when it holds a control character: a name, SKU
    or comment is stored as given or refused, never quietly changed."""
    try:
        return None if value is None else check_text(value, what, multiline)
    except TextError as e:
        raise ConfigError(str(e)) from None


def check_person(name: str, option: str = "by") -> str:
    name = checked_text(name if isinstance(name, str) else "", option).strip()
    if not name or len(name) > 100:
        raise ConfigError(f"{option}: give a name of 1-100 characters")
    return name


def check_comment(comment: str | None) -> str | None:
    """A note on a count or review: any text, line breaks included, but no other control character."""
    return checked_text(comment, "comment", multiline=True) if isinstance(comment, str) else comment


def check_qty(qty, what: str = "qty") -> int:
    if isinstance(qty, bool) or not isinstance(qty, int):
        raise ConfigError(f"{what} must be a whole number, got {qty!r}")
    if not 0 <= qty <= MAX_QTY:
        raise ConfigError(f"{what} must be from 0 to {MAX_QTY:,}, got {qty}")
    return qty


def check_line_counts(lines, what: str, low: int = 0) -> dict[str, int]:
    """{SKU: quantity} as given (lines, found, final_lines): an object of 1-200 character SKUs and whole quantities."""
    if not isinstance(lines, dict):
        raise ConfigError(f"{what} must be an object of SKU: quantity, got {type(lines).__name__}")
    if len(lines) > MAX_LINES:
        raise ConfigError(f"{what}: {len(lines):,} SKUs, more than the limit of {MAX_LINES:,}")
    checked = {}
    for sku, qty in lines.items():
        name = checked_text(sku, f"{what}: SKU {sku[:40]!r}").strip() if isinstance(sku, str) else ""
        if not 1 <= len(name) <= MAX_SKU:
            raise ConfigError(f"{what}: a SKU must be text of 1-{MAX_SKU} characters, got {str(sku)[:40]!r}")
        if name in checked:
            raise ConfigError(f"{what}: SKU {name!r} given twice")
        checked[name] = check_qty(qty, f"{what} quantity of SKU {name!r}")
        if checked[name] < low:
            raise ConfigError(f"{what} quantity of SKU {name!r} must be at least {low}, got {checked[name]}")
    return checked


def record_lines(session, snapshot_id: int) -> list[SnapshotLine]:
    """The record's SKU lines of a snapshot in the record's order; [] for a totals-only snapshot."""
    return list(session.scalars(select(SnapshotLine).where(SnapshotLine.snapshot_id == snapshot_id).order_by(SnapshotLine.position)))


def skus_of(names) -> str:
    names = list(names)
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def line_total(task_id: int, recorded: list[SnapshotLine], qty: int | None, lines: dict | None,
               found: dict | None) -> tuple[int, dict[str, int]]:
    """(total, {SKU: quantity}) of a count of the task: its qty alone when the record has no lines, else its lines
    checked against the record's (every recorded SKU counted, none unknown) and its found SKUs (none on the record)."""
    if not recorded:
        if lines is not None or found:
            raise ConfigError(f"task {task_id} has no SKU lines on its record: count it by its total quantity (qty) alone")
        return qty, {}
    skus = [line.sku for line in recorded]
    if lines is None:
        raise ConfigError(f"task {task_id} is counted per SKU line: give each line's quantity (lines; SKUs {skus_of(skus)})")
    unknown, missing = [s for s in lines if s not in skus], [s for s in skus if s not in lines]
    if unknown:
        raise ConfigError(f"task {task_id}: SKU(s) {skus_of(unknown)} not on the record; give a SKU found in the bin under found")
    if missing:
        raise ConfigError(f"task {task_id}: count every SKU line of the record (0 when none is in the bin); missing {skus_of(missing)}")
    recounted = [s for s in found or {} if s in skus]
    if recounted:
        raise ConfigError(f"task {task_id}: SKU(s) {skus_of(recounted)} are on the record: count them under lines, not found")
    counted = lines | (found or {})
    total = sum(counted.values())
    if qty is not None and qty != total:
        raise ConfigError(f"task {task_id}: qty {qty} is not the sum of the SKU lines ({total})")
    return total, counted


def off_record(total: int, record: int, counted: dict[str, int], recorded: list[SnapshotLine], tolerance: int) -> bool:
    """Whether a count asks for a recount: its total, or any line (a found SKU against 0), is off the record by more than the tolerance."""
    by_sku = {line.sku: line.record_qty for line in recorded}
    return abs(total - record) > tolerance or any(abs(qty - by_sku.get(sku, 0)) > tolerance for sku, qty in counted.items())


def get_task(session, task_id: int) -> Task:
    task = session.get(Task, task_id) if isinstance(task_id, int) and 0 < task_id < 2**31 else None  # ids are INTEGER (32-bit on PostgreSQL)
    if task is None:
        raise NotFound(f"no task {task_id} in the audit store")
    return task


def get_run(session, run_id: int) -> AuditRun:
    run = session.get(AuditRun, run_id) if isinstance(run_id, int) and 0 < run_id < 2**31 else None
    if run is None:
        raise NotFound(f"no audit run {run_id} in the audit store")
    return run


def transition(session, task: Task, new_status: str, **values) -> None:
    """Move `task` to `new_status` unless someone else moved it since it was read (then Conflict)."""
    changed = session.execute(update(Task).where(Task.id == task.id, Task.version == task.version)
                              .values(status=new_status, version=Task.version + 1, updated_at=utcnow(), **values)).rowcount
    if changed != 1:
        raise Conflict(f"task {task.id} was changed by someone else at the same time; reload it and try again")


def submit_count(store: Store, task_id: int, qty: int | None, actor: Principal, comment: str | None = None,
                 count_index: int = 0, idempotency_key: str | None = None, lines: dict | None = None,
                 found: dict | None = None) -> CountOutcome:
    """Record `actor`'s blind count of the task's bin; a first count off the record by more than the run's tolerance asks
    for a recount (by someone else, while the store separates them).

    `count_index` says which count this is (0 the count, 1 the recount): two people sending the same count at
    once both say 0, and the second is refused instead of silently becoming the recount. A task whose record
    has SKU lines takes `lines` ({SKU: quantity}, every recorded SKU) and `found` (SKUs off the record); `qty`
    may then be left out (it is their sum).
    """
    require(acting(actor), "counter")
    qty, comment = check_qty(qty) if qty is not None else None, check_comment(comment)
    lines = check_line_counts(lines, "lines") if lines is not None else None
    found = check_line_counts(found, "found", low=1) if found is not None else None
    if qty is None and lines is None:
        raise ConfigError("give the number of items counted (qty), or each SKU line's quantity (lines)")
    if isinstance(count_index, bool) or count_index not in (0, 1):
        raise ConfigError(f"count_index must be 0 (the count) or 1 (the recount), got {count_index!r}")
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= 200:
        raise ConfigError("the idempotency key must be 1-200 characters")
    try:
        with store.session() as session:
            if idempotency_key is not None:
                earlier = session.scalar(select(CountObservation).where(CountObservation.idempotency_key == idempotency_key))
                if earlier is not None:
                    return replay(session, earlier, task_id, qty, None if lines is None else lines | (found or {}), actor)
            return write_count(session, get_task(session, task_id), count_index, qty, lines, found, comment, idempotency_key, actor)
    except IntegrityError:
        raise Conflict(f"task {task_id} was counted by someone else at the same time; reload it and try again") from None


def write_count(session, task: Task, count_index: int, qty, lines, found, comment, idempotency_key, actor: Principal) -> CountOutcome:
    """The count, the task's next state and its event, in the caller's transaction (the checks see what the write sees)."""
    check_may_count(task, actor)
    index = countable_index(task, count_index)
    check_recounter(session, task, index, actor)
    recorded = record_lines(session, task.snapshot_id)
    total, counted = line_total(task.id, recorded, qty, lines, found)
    session.add(CountObservation(task_id=task.id, count_index=index, counted_qty=total, counted_by=actor.name, comment=comment,
                                 idempotency_key=idempotency_key, lines=[CountLine(sku=s, counted_qty=q) for s, q in counted.items()]))
    session.flush()  # the unique (task, count index) refuses a second writer here
    record = session.scalar(select(Snapshot.record_qty).where(Snapshot.id == task.snapshot_id))
    tolerance = session.scalar(select(AuditRun.settings).where(AuditRun.id == task.run_id)).get("tolerance", 0)
    status = "recount_requested" if index == 0 and off_record(total, record, counted, recorded, tolerance) else "in_review"
    handed_back = status == "recount_requested" and task.assignee == actor.name and setting(session, SEPARATE_RECOUNT)
    transition(session, task, status, **({"assignee": None} if handed_back else {}))  # the recount is someone else's
    record_event(session, actor, "task.count", f"task {task.id}", {"count_index": index, "status": status})
    return CountOutcome(task.id, index, status)


def acting(actor) -> Principal:
    """`actor` when it is a Principal: a name typed by a caller never stands for a person here."""
    if not isinstance(actor, Principal):
        raise TypeError(f"the workflow takes the acting Principal, not {type(actor).__name__}")
    return actor


def check_may_count(task: Task, actor: Principal) -> None:
    """A task assigned to someone else is theirs to count."""
    if task.assignee is not None and task.assignee != actor.name:
        raise Forbidden(f"task {task.id} is assigned to {task.assignee}: {actor.name} may not count it "
                        f"(a reviewer or auditor reassigns it with `bintally audit assign {task.id} --to NAME`)")


def check_counter_may_see(store: Store, task_id: int, actor: Principal) -> None:
    """Forbidden unless `actor` may see the task's blind view: a reviewer or auditor any task; a counter a task that
    waits for a count and is assigned to them or to nobody."""
    if actor.has("reviewer") or actor.has("auditor"):
        return
    require(actor, "counter")
    with store.session() as session:
        task = get_task(session, task_id)
        if task.status not in COUNTABLE:
            raise Forbidden(f"task {task.id} is {task.status}: a counter sees only tasks that wait for a count")
        check_may_count(task, actor)


def first_counter(session, task_id: int) -> str | None:
    return session.scalar(select(CountObservation.counted_by).where(CountObservation.task_id == task_id,
                                                                    CountObservation.count_index == 0))


def check_recounter(session, task: Task, index: int, actor: Principal) -> None:
    """Separation of duties: a recount is someone else's than the first count (unless the store allows it)."""
    if index == 1 and first_counter(session, task.id) == actor.name and setting(session, SEPARATE_RECOUNT):
        raise Forbidden(f"{actor.name} counted task {task.id} first: its recount is someone else's (separation of duties; "
                        f"an admin may turn it off: `bintally audit settings set {SEPARATE_RECOUNT} false`)")


def check_reviewer(session, task: Task, actor: Principal) -> None:
    """Separation of duties: no one reviews a task they counted (unless the store allows it)."""
    counters = set(session.scalars(select(CountObservation.counted_by).where(CountObservation.task_id == task.id)))
    if actor.name in counters and setting(session, SEPARATE_APPROVAL):
        raise Forbidden(f"{actor.name} counted task {task.id}: someone else reviews it (separation of duties; "
                        f"an admin may turn it off: `bintally audit settings set {SEPARATE_APPROVAL} false`)")


def countable_index(task: Task, count_index: int) -> int:
    """The count index the task waits for, which must be the one the counter meant (else Conflict / WrongCount)."""
    if task.status not in COUNTABLE:
        raise Conflict(f"task {task.id} is {task.status}: it takes no count now"
                       + (" (it waits for a review)" if task.status == "in_review" else " (it is closed)"))
    index = COUNTABLE[task.status]
    if index != count_index:
        raise WrongCount(index, f"task {task.id} waits for its recount (count_index 1), and its count is already recorded"
                         if index == 1 else f"task {task.id} waits for its first count (count_index 0), not a recount")
    return index


def replay(session, earlier: CountObservation, task_id: int, qty: int | None, counted: dict[str, int] | None,
           actor: Principal) -> CountOutcome:
    earlier_lines = {line.sku: line.counted_qty for line in earlier.lines}
    same = (earlier.task_id == task_id and earlier.counted_by == actor.name and (qty is None or earlier.counted_qty == qty)
            and (counted or {}) == earlier_lines)
    if not same:
        raise Conflict("this idempotency key was already used for another count; use a new key for a new count")
    task = get_task(session, task_id)
    return CountOutcome(task.id, earlier.count_index, task.status, replayed=True)


def assign(store: Store, task_id: int, assignee: str | None, actor: Principal) -> str:
    """Give an open task to a person (None: to nobody); the task's status. On a store with users, the assignee is an
    enabled user who counts; a recount is not given to the task's first counter while the store separates them."""
    require(acting(actor), "reviewer", "auditor")
    assignee = check_person(assignee, "assignee") if assignee is not None else None
    with store.session() as session:
        task = get_task(session, task_id)
        if task.status in ("approved", "rejected"):
            raise Conflict(f"task {task_id} is {task.status}: a closed task is not assigned")
        if assignee is not None:
            check_assignee(session, task, assignee)
        transition(session, task, task.status, assignee=assignee)
        record_event(session, actor, "task.assign", f"task {task.id}", {"assignee": assignee})
        return task.status


def check_assignee(session, task: Task, assignee: str) -> None:
    if session.scalar(select(User.id).limit(1)) is not None:
        user = session.scalar(select(User).where(User.name == assignee))
        if user is None or user.disabled_at is not None or "counter" not in user.roles.split(","):
            raise ConfigError(f"assignee {assignee!r}: not an enabled user with the role counter (see `bintally audit user list`)")
    if task.status == "recount_requested" and first_counter(session, task.id) == assignee and setting(session, SEPARATE_RECOUNT):
        raise Forbidden(f"{assignee} counted task {task.id} first: its recount goes to someone else (separation of duties)")


def review(store: Store, task_id: int, approve: bool, actor: Principal, final: int | None = None, reason: str | None = None,
           outcome: str | None = None, comment: str | None = None, final_lines: dict | None = None) -> Resolution:
    """`actor`'s approval (with the final quantity, or for a lined task each SKU's in `final_lines`) or rejection of
    the counts of a task in review, by someone who did not count it (while the store separates them); written once."""
    require(acting(actor), "reviewer")
    by, comment = actor.name, check_comment(comment)
    final = check_qty(final, "final") if final is not None else None
    final_lines = check_line_counts(final_lines, "final_lines") if final_lines is not None else None
    if reason is not None and reason not in REASONS:
        raise ConfigError(f"unknown reason {reason!r}: use one of {', '.join(REASONS)}")
    if outcome is not None and outcome not in OUTCOMES:
        raise ConfigError(f"unknown outcome {outcome!r}: use one of {', '.join(OUTCOMES)}")
    try:
        with store.session() as session:
            task = get_task(session, task_id)
            if task.status != "in_review":
                raise Conflict(f"task {task_id} is {task.status}: only a task in_review can be reviewed"
                               + (" (count it first)" if task.status in COUNTABLE else " (it is closed)"))
            check_reviewer(session, task, actor)
            record = session.scalar(select(Snapshot.record_qty).where(Snapshot.id == task.snapshot_id))
            final, lines = final_of(session, task, approve, final, final_lines)
            variance = final - record if final is not None else None
            if outcome is None and final is not None:
                outcome = "record_correct" if variance == 0 and not any(line.variance for line in lines) else "record_wrong"
            if approve and (variance or any(line.variance for line in lines)) and reason is None and outcome == "record_wrong":
                raise ConfigError(f"the final quantity {final} differs from the record {record}"
                                  + (" (or a SKU line differs from its record)" if lines else "") + f": give a reason ({', '.join(REASONS)})")
            now = utcnow()
            resolution = Resolution(task_id=task.id, decision="approved" if approve else "rejected", final_qty=final,
                                    record_qty=record, variance=variance, outcome=outcome, reason=reason, comment=comment,
                                    reviewed_by=by, reviewed_at=now, approved_by=by if approve else None,
                                    approved_at=now if approve else None, lines=lines)
            session.add(resolution)
            session.flush()
            transition(session, task, "approved" if approve else "rejected")
            record_event(session, actor, "task.review", f"task {task.id}", {"decision": resolution.decision, "final_qty": final})
            return resolution
    except IntegrityError:
        raise Conflict(f"task {task_id} was reviewed by someone else at the same time") from None


def final_of(session, task: Task, approve: bool, final: int | None, final_lines: dict[str, int] | None) -> tuple[int | None, list[ResolutionLine]]:
    """(final quantity, resolution lines) of a review: the total as given for a task without lines; for a lined task
    the sum of final_lines, which name every recorded SKU and no SKU that neither the record nor a count holds."""
    recorded = record_lines(session, task.snapshot_id)
    if not recorded:
        if final_lines is not None:
            raise ConfigError(f"task {task.id} has no SKU lines on its record: give its final quantity (final) alone")
        if approve and final is None:
            raise ConfigError("approving needs the final quantity (final)")
        return final, []
    if final_lines is None:
        if approve or final is not None:
            raise ConfigError(f"task {task.id} is counted per SKU line: give each SKU's final quantity (final_lines)")
        return None, []
    by_sku = {line.sku: line.record_qty for line in recorded}
    found = set(session.scalars(select(CountLine.sku).join(CountObservation, CountObservation.id == CountLine.observation_id)
                                .where(CountObservation.task_id == task.id))) - set(by_sku)
    unknown, missing = [s for s in final_lines if s not in by_sku and s not in found], [s for s in by_sku if s not in final_lines]
    if unknown:
        raise ConfigError(f"task {task.id}: SKU(s) {skus_of(unknown)} are neither on the record nor found by a count")
    if missing:
        raise ConfigError(f"task {task.id}: give the final quantity of every SKU line of the record; missing {skus_of(missing)}")
    total = sum(final_lines.values())
    if final is not None and final != total:
        raise ConfigError(f"task {task.id}: final {final} is not the sum of final_lines ({total})")
    order = list(by_sku) + sorted(s for s in final_lines if s not in by_sku)
    return total, [ResolutionLine(sku=s, record_qty=by_sku.get(s, 0), final_qty=final_lines[s], variance=final_lines[s] - by_sku.get(s, 0))
                   for s in order]
