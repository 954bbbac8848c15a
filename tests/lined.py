"""Audit runs over snapshots whose record has SKU lines: real sample photos with their ABID BIN_FCSKU_DATA lines,
built as `SnapshotIn(..., lines=...)` and scored with `audit_run(snapshots=...)` (what a source with lines hands it)."""

from __future__ import annotations

import json
from dataclasses import replace

from bintally.audit import AuditConfig, audit_run
from bintally.audit.snapshots import SnapshotIn
from bintally.data.records import SkuLine, metadata_lines
from bintally.paths import SAMPLE_DIR

# sample photos whose records list 2-3 SKUs, every one with its size
TWO_LINES = "00450"  # B008LT0NUO x2, B00ABVSMQC x1
THREE_LINES = "00451"  # B001P3NU30 x1, B008LT0NUO x2, B00ABVSMQC x1


def record_lines_of(stem: str) -> tuple[SkuLine, ...]:
    meta = SAMPLE_DIR / "metadata" / f"{stem}.json"
    return metadata_lines(json.loads(meta.read_text()), str(meta))


def lined_snapshot(stem: str, bin_id: str | None = None, lines: tuple[SkuLine, ...] | None = None) -> SnapshotIn:
    """The sample photo `stem` with its record's SKU lines (or `lines`); the record total is their sum."""
    lines = record_lines_of(stem) if lines is None else lines
    return SnapshotIn(bin_id or f"bin-{stem}", str(SAMPLE_DIR / "bin-images" / f"{stem}.jpg"), sum(line.qty for line in lines),
                      lines=lines)


def totals_snapshot(stem: str, bin_id: str | None = None) -> SnapshotIn:
    """The sample photo `stem` with its record's total only (no lines)."""
    return replace(lined_snapshot(stem, bin_id), lines=())


def lined_run(db: str, model, snapshots: list[SnapshotIn], counter=None, store=None, name: str = "lined", tolerance: int = 0):
    """An open run recounting every snapshot (budget 1, no control)."""
    config = AuditConfig(model=str(model), data=f"{name}.csv", db=db, name=name, budget=1.0, control=0.0, tolerance=tolerance,
                         backend="torch", progress=False)
    result = audit_run(config, snapshots=snapshots, counter=counter, store=store, shard=(0, 1))
    assert result.status == "open" and result.tasks == len(snapshots), result
    return result


def query(url: str, sql: str, **params) -> list[tuple]:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return [tuple(r) for r in connection.execute(text(sql), params).all()]
    finally:
        engine.dispose()
