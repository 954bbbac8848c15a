"""The audit store's tables (SQLAlchemy 2). Alembic migrations in migrations/ create and change them.

snapshots           one bin photo with the quantity the inventory record held when it was taken
photos              the bytes of photos uploaded over HTTP (content-addressed), for the dashboard and labels
audit_runs          one scoring of a set of snapshots by one model, with its settings and status
run_shards          which processes (RANK of WORLD_SIZE) finished scoring their share of a run
scores              every scored snapshot of a run: P(record), score, predicted and expected count, probabilities
tasks               the recount worklist: the selected snapshots, their rank, why selected, workflow status
count_observations  append-only: each blind count of a task (count_index 0 = count, 1 = recount)
resolutions         a reviewer's decision on a task: final quantity, variance, outcome, reason, approval
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Snapshot(Base):
    __tablename__ = "snapshots"
    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 of bin id, photo digest, record and time: re-runs reuse it
    bin_id: Mapped[str] = mapped_column(String(200), index=True)
    image_uri: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    captured_at: Mapped[datetime | None] = mapped_column(DateTime)
    record_qty: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Photo(Base):
    __tablename__ = "photos"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    media_type: Mapped[str] = mapped_column(String(40))
    data: Mapped[bytes] = mapped_column(LargeBinary)


class AuditRun(Base):
    __tablename__ = "audit_runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    model_name: Mapped[str] = mapped_column(String(100))
    model_version: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(Text)
    settings: Mapped[dict] = mapped_column(JSON)
    world_size: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[str] = mapped_column(String(20), default="scoring")  # scoring -> open
    created_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    opened_at: Mapped[datetime | None] = mapped_column(DateTime)


class RunShard(Base):
    __tablename__ = "run_shards"
    run_id: Mapped[int] = mapped_column(ForeignKey("audit_runs.id"), primary_key=True)
    rank: Mapped[int] = mapped_column(Integer, primary_key=True)
    scored: Mapped[int] = mapped_column(Integer)
    unreadable: Mapped[int] = mapped_column(Integer)
    host: Mapped[str] = mapped_column(String(200))
    finished_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Score(Base):
    __tablename__ = "scores"
    run_id: Mapped[int] = mapped_column(ForeignKey("audit_runs.id"), primary_key=True)
    snapshot_id: Mapped[int] = mapped_column(ForeignKey("snapshots.id"), primary_key=True)
    p_record: Mapped[float | None] = mapped_column(Float)
    score: Mapped[float | None] = mapped_column(Float, index=True)
    predicted: Mapped[int | None] = mapped_column(Integer)
    expected: Mapped[float | None] = mapped_column(Float)
    probabilities: Mapped[dict | None] = mapped_column(JSON)
    problem: Mapped[str | None] = mapped_column(Text)  # an unreadable photo: why (and no score)


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (UniqueConstraint("run_id", "snapshot_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("audit_runs.id"), index=True)
    snapshot_id: Mapped[int] = mapped_column(ForeignKey("snapshots.id"))
    rank: Mapped[int] = mapped_column(Integer)  # 1 = the run's most suspicious bin
    score: Mapped[float] = mapped_column(Float)
    probabilities: Mapped[dict] = mapped_column(JSON)
    predicted: Mapped[int] = mapped_column(Integer)
    expected: Mapped[float] = mapped_column(Float)
    selected_by: Mapped[str] = mapped_column(String(10))  # model | control
    status: Mapped[str] = mapped_column(String(20), default="requested", index=True)
    assignee: Mapped[str | None] = mapped_column(String(100))
    version: Mapped[int] = mapped_column(Integer, default=0)  # bumped by every transition: concurrent writers conflict
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class CountObservation(Base):
    __tablename__ = "count_observations"
    __table_args__ = (UniqueConstraint("task_id", "count_index"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    count_index: Mapped[int] = mapped_column(Integer)
    counted_qty: Mapped[int] = mapped_column(Integer)
    counted_by: Mapped[str] = mapped_column(String(100))
    counted_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    comment: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)


class Resolution(Base):
    __tablename__ = "resolutions"
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), unique=True)
    decision: Mapped[str] = mapped_column(String(10))  # approved | rejected
    final_qty: Mapped[int | None] = mapped_column(Integer)
    record_qty: Mapped[int] = mapped_column(Integer)  # the record at count time
    variance: Mapped[int | None] = mapped_column(Integer)  # final - record
    outcome: Mapped[str | None] = mapped_column(String(20))
    reason: Mapped[str | None] = mapped_column(String(20))
    comment: Mapped[str | None] = mapped_column(Text)
    reviewed_by: Mapped[str] = mapped_column(String(100))
    reviewed_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    approved_by: Mapped[str | None] = mapped_column(String(100))
    approved_at: Mapped[datetime | None] = mapped_column(DateTime)
