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
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from bintally.audit.schema import AuditRun, CountObservation, Resolution, Snapshot, Task, utcnow
from bintally.audit.store import Store
from bintally.errors import ConfigError

STATUSES = ("requested", "recount_requested", "in_review", "approved", "rejected")
COUNTABLE = {"requested": 0, "recount_requested": 1}  # status -> the count index it waits for
OUTCOMES = ("record_correct", "record_wrong", "bin_changed", "image_unusable")
REASONS = ("lost", "found", "damaged", "misplaced", "data_entry", "other")
MAX_QTY = 10**6


class NotFound(ConfigError):
    """An unknown task or run (HTTP 404)."""


class Conflict(ConfigError):
    """A transition the task's state does not allow, or lost to a concurrent writer (HTTP 409)."""


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


def check_person(name: str, option: str = "by") -> str:
    name = (name or "").strip()
    if not name or len(name) > 100:
        raise ConfigError(f"{option}: give a name of 1-100 characters")
    return name


def check_qty(qty, what: str = "qty") -> int:
    if isinstance(qty, bool) or not isinstance(qty, int):
        raise ConfigError(f"{what} must be a whole number, got {qty!r}")
    if not 0 <= qty <= MAX_QTY:
        raise ConfigError(f"{what} must be from 0 to {MAX_QTY:,}, got {qty}")
    return qty


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


def submit_count(store: Store, task_id: int, qty: int, by: str, comment: str | None = None,
                 idempotency_key: str | None = None, count_index: int = 0) -> CountOutcome:
    """Record a blind count of the task's bin; a first count off the record by more than the run's tolerance asks for a recount.

    `count_index` says which count this is (0 the count, 1 the recount): two people sending the same count at
    once both say 0, and the second is refused instead of silently becoming the recount.
    """
    qty, by = check_qty(qty), check_person(by)
    if isinstance(count_index, bool) or count_index not in (0, 1):
        raise ConfigError(f"count_index must be 0 (the count) or 1 (the recount), got {count_index!r}")
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= 200:
        raise ConfigError("the idempotency key must be 1-200 characters")
    try:
        with store.session() as session:
            if idempotency_key is not None:
                earlier = session.scalar(select(CountObservation).where(CountObservation.idempotency_key == idempotency_key))
                if earlier is not None:
                    return replay(session, earlier, task_id, qty)
            task = get_task(session, task_id)
            if task.status not in COUNTABLE:
                raise Conflict(f"task {task_id} is {task.status}: it takes no count now"
                               + (" (it waits for a review)" if task.status == "in_review" else " (it is closed)"))
            index = COUNTABLE[task.status]
            if index != count_index:
                raise WrongCount(index, f"task {task_id} waits for its recount (count_index 1), and its count is already recorded"
                               if index == 1 else f"task {task_id} waits for its first count (count_index 0), not a recount")
            session.add(CountObservation(task_id=task.id, count_index=index, counted_qty=qty, counted_by=by, comment=comment,
                                         idempotency_key=idempotency_key))
            session.flush()  # the unique (task, count index) refuses a second writer here
            record = session.scalar(select(Snapshot.record_qty).where(Snapshot.id == task.snapshot_id))
            tolerance = session.scalar(select(AuditRun.settings).where(AuditRun.id == task.run_id)).get("tolerance", 0)
            status = "recount_requested" if index == 0 and abs(qty - record) > tolerance else "in_review"
            transition(session, task, status)
            return CountOutcome(task.id, index, status)
    except IntegrityError:
        raise Conflict(f"task {task_id} was counted by someone else at the same time; reload it and try again") from None


def replay(session, earlier: CountObservation, task_id: int, qty: int) -> CountOutcome:
    if earlier.task_id != task_id or earlier.counted_qty != qty:
        raise Conflict("this idempotency key was already used for another count; use a new key for a new count")
    task = get_task(session, task_id)
    return CountOutcome(task.id, earlier.count_index, task.status, replayed=True)


def assign(store: Store, task_id: int, assignee: str | None) -> str:
    """Give an open task to a person (None: to nobody); the task's status."""
    assignee = check_person(assignee, "assignee") if assignee is not None else None
    with store.session() as session:
        task = get_task(session, task_id)
        if task.status in ("approved", "rejected"):
            raise Conflict(f"task {task_id} is {task.status}: a closed task is not assigned")
        transition(session, task, task.status, assignee=assignee)
        return task.status


def review(store: Store, task_id: int, approve: bool, by: str, final: int | None = None, reason: str | None = None,
           outcome: str | None = None, comment: str | None = None) -> Resolution:
    """Approve (with the final quantity) or reject the counts of a task in review; the resolution is written once."""
    by = check_person(by)
    if approve and final is None:
        raise ConfigError("approving needs the final quantity (final)")
    if final is not None:
        final = check_qty(final, "final")
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
            record = session.scalar(select(Snapshot.record_qty).where(Snapshot.id == task.snapshot_id))
            variance = final - record if final is not None else None
            if outcome is None and final is not None:
                outcome = "record_correct" if variance == 0 else "record_wrong"
            if approve and variance and reason is None and outcome == "record_wrong":
                raise ConfigError(f"the final quantity {final} differs from the record {record}: give a reason "
                                  f"({', '.join(REASONS)})")
            now = utcnow()
            resolution = Resolution(task_id=task.id, decision="approved" if approve else "rejected", final_qty=final,
                                    record_qty=record, variance=variance, outcome=outcome, reason=reason, comment=comment,
                                    reviewed_by=by, reviewed_at=now, approved_by=by if approve else None,
                                    approved_at=now if approve else None)
            session.add(resolution)
            session.flush()
            transition(session, task, "approved" if approve else "rejected")
            return resolution
    except IntegrityError:
        raise Conflict(f"task {task_id} was reviewed by someone else at the same time") from None
