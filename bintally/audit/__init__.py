"""Inventory reconciliation: rank bins by how likely their record is wrong, recount them blind, review, and
feed approved recounts back as training labels.

    run.py        `audit_run`: score snapshots (sharded over RANK/WORLD_SIZE), select the recount worklist
    scoring.py    `score_bins`: p_record, the score of the chosen ranker and an explanation per bin
    record_scorer.py  the record-aware scorer: P(record wrong | photo, record lines), its features and JSON file
    fit_scorer.py `bintally audit fit-scorer`: fit it on developer photos and simulated record errors
    simulate.py   the record error generator (warehouse error mixes)
    explain.py    one plain line per bin saying why its record looks wrong
    snapshots.py  where snapshots come from: a bucket-layout folder or a bin_id,image,record_qty CSV
    workflow.py   the task states, blind counts and reviews, by total or per SKU line (409-style conflicts under concurrency)
    queries.py    runs with their metrics, worklists, the counter's blind view, exports and labels
    store.py      the database (SQLite by default, or PostgreSQL), schema upgraded by Alembic on open
    schema.py     the tables
    uploads.py    photos uploaded over HTTP, kept in the store by their SHA-256
    config.py     `AuditConfig`

Names load on first use, so that the command line reads `AuditConfig` without importing SQLAlchemy.
"""

from importlib import import_module

LAZY = {"AuditConfig": "config", "AuditResult": "run", "audit_run": "run", "select_tasks": "run", "discrepancy_scores": "scoring",
        "score_bins": "scoring", "corrupt_records": "simulate", "load_scorer": "record_scorer",
        "Store": "store", "database_url": "store", "open_store": "store"}
LAZY |= dict.fromkeys(["counter_view", "export_run", "get_run_summary", "list_runs", "list_tasks", "task_detail", "write_labels",
                        "write_line_labels"], "queries")
LAZY |= dict.fromkeys(["OUTCOMES", "REASONS", "STATUSES", "Conflict", "NotFound", "assign", "review", "submit_count"], "workflow")

__all__ = sorted(LAZY)


def __getattr__(name: str):
    if name in LAZY:
        return getattr(import_module(f"bintally.audit.{LAZY[name]}"), name)
    raise AttributeError(f"module 'bintally.audit' has no attribute {name!r}")
