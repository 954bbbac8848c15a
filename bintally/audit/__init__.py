"""Inventory reconciliation: rank bins by how likely their record is wrong, recount them blind, review, and
feed approved recounts back as training labels.

    run.py        `audit_run`: score snapshots (sharded over RANK/WORLD_SIZE), select the recount worklist
    scoring.py    p_record and the discrepancy score from the model's calibrated probabilities
    snapshots.py  where snapshots come from: a bucket-layout folder or a bin_id,image,record_qty CSV
    workflow.py   the task states, blind counts and reviews (409-style conflicts under concurrency)
    queries.py    runs with their metrics, worklists, the counter's blind view, exports and labels
    store.py      the database (SQLite by default, or PostgreSQL), schema upgraded by Alembic on open
    schema.py     the tables
"""

from bintally.audit.queries import counter_view, export_run, get_run_summary, list_runs, list_tasks, task_detail, write_labels
from bintally.audit.run import AuditConfig, AuditResult, audit_run, select_tasks
from bintally.audit.scoring import discrepancy_scores, record_probability
from bintally.audit.store import Store, database_url, open_store
from bintally.audit.workflow import OUTCOMES, REASONS, STATUSES, Conflict, NotFound, assign, review, submit_count

__all__ = ["AuditConfig", "AuditResult", "Conflict", "assign", "NotFound", "OUTCOMES", "REASONS", "STATUSES", "Store", "audit_run",
           "counter_view", "database_url", "discrepancy_scores", "export_run", "get_run_summary", "list_runs", "list_tasks",
           "open_store", "record_probability", "review", "select_tasks", "submit_count", "task_detail", "write_labels"]
