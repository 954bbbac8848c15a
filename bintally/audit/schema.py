"""The audit store's tables (SQLAlchemy 2). Alembic migrations in migrations/ create and change them.

snapshots           one bin photo with the quantity the inventory record held when it was taken
snapshot_lines      the record's SKU lines of a snapshot (a source with lines): SKU, quantity, one unit's size and weight
photos              the bytes of photos uploaded over HTTP (content-addressed), for the dashboard and labels
audit_runs          one scoring of a set of snapshots by one model, with its settings and status
run_shards          which processes (RANK of WORLD_SIZE) finished scoring their share of a run
scores              every scored snapshot of a run: P(record), score, predicted and expected count, probabilities,
                    and the scorer's explanation in plain words when it gives one
tasks               the recount worklist: the selected snapshots, their rank, why selected (and the explanation), status
count_observations  append-only: each blind count of a task (count_index 0 = count, 1 = recount)
count_lines         a count's quantity per SKU line of a lined snapshot (and SKUs the counter found off the record)
resolutions         a reviewer's decision on a task: final quantity, variance, outcome, reason, approval
resolution_lines    a lined task's resolution per SKU: record, final quantity and variance
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


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


class SnapshotLine(Base):
    __tablename__ = "snapshot_lines"
    snapshot_id: Mapped[int] = mapped_column(ForeignKey("snapshots.id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)  # the line's place in the record, from 0
    sku: Mapped[str] = mapped_column(String(200))
    record_qty: Mapped[int] = mapped_column(Integer)
    length_in: Mapped[float | None] = mapped_column(Float)
    width_in: Mapped[float | None] = mapped_column(Float)
    height_in: Mapped[float | None] = mapped_column(Float)
    weight_lb: Mapped[float | None] = mapped_column(Float)


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
    explanation: Mapped[str | None] = mapped_column(Text)  # why the bin looks wrong, in plain words (when the scorer says)


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
    explanation: Mapped[str | None] = mapped_column(Text)  # the score's explanation, copied when the task is selected


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
    lines: Mapped[list["CountLine"]] = relationship(lazy="selectin", order_by="CountLine.id")  # per SKU, for a lined snapshot


class CountLine(Base):
    __tablename__ = "count_lines"
    __table_args__ = (UniqueConstraint("observation_id", "sku"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    observation_id: Mapped[int] = mapped_column(ForeignKey("count_observations.id"), index=True)
    sku: Mapped[str] = mapped_column(String(200))
    counted_qty: Mapped[int] = mapped_column(Integer)


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
    lines: Mapped[list["ResolutionLine"]] = relationship(lazy="selectin", order_by="ResolutionLine.id")  # per SKU, for a lined task


class ResolutionLine(Base):
    __tablename__ = "resolution_lines"
    __table_args__ = (UniqueConstraint("resolution_id", "sku"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    resolution_id: Mapped[int] = mapped_column(ForeignKey("resolutions.id"), index=True)
    sku: Mapped[str] = mapped_column(String(200))
    record_qty: Mapped[int] = mapped_column(Integer)  # 0 for a SKU found in the bin but not on the record
    final_qty: Mapped[int] = mapped_column(Integer)
    variance: Mapped[int] = mapped_column(Integer)  # final - record


# ---------------------------------------------------------------- people (migration 0003): users, roles, tokens, events


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    roles: Mapped[str] = mapped_column(String(100))  # comma-separated, sorted: "counter,reviewer"
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(100))
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime)


class Token(Base):
    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    lookup: Mapped[str] = mapped_column(String(32), unique=True)  # the token's public part: finds the row, proves nothing
    salt: Mapped[str] = mapped_column(String(32))
    digest: Mapped[str] = mapped_column(String(128))  # scrypt of the secret part (hex)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime)


class AuditEvent(Base):
    """Append-only (triggers refuse UPDATE and DELETE): who changed what, when, from where."""
    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(100))
    actor_kind: Mapped[str] = mapped_column(String(20))  # token | local | proxy
    origin: Mapped[str] = mapped_column(String(200))  # "cli pid P on HOST (os user U)" or "http 127.0.0.1:5342"
    action: Mapped[str] = mapped_column(String(40))  # run.create, task.count, task.review, task.assign, user.add, ...
    target: Mapped[str | None] = mapped_column(String(100))  # "task 7", "run 2", "user ann"
    detail: Mapped[dict | None] = mapped_column(JSON)


class StoreSetting(Base):
    __tablename__ = "store_settings"
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))


class DashboardSession(Base):
    __tablename__ = "dashboard_sessions"
    id: Mapped[int] = mapped_column(primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 of the cookie's secret
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("tokens.id"))  # the token it was opened with: rotating it ends the session
    csrf: Mapped[str] = mapped_column(String(64))  # sent back in X-CSRF-Token by the dashboard's state-changing requests
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime)
