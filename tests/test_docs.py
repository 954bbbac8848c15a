"""The option tables in docs/ are the commands' own: generated from the settings' fields, never edited by hand."""

from __future__ import annotations

from bintally.cli.docs import DOCS, TABLE, option_table, stale_tables


def test_option_tables_match_the_commands():
    assert not stale_tables(), "option tables out of date (run: python -m bintally.cli.docs): " + ", ".join(stale_tables())


def test_the_serve_table_lists_every_setting_with_its_default():
    assert TABLE.search((DOCS / "serving.md").read_text()).group("command") == "bintally serve"
    table = option_table("bintally serve")
    for row in ("| `--backend` | `onnx` |", "| `--port` | $SAGEMAKER_BIND_TO_PORT, else 8080 |", "| `--timeout` | 30 |",
                "| `--max-body-mb` | 20 |", "| `--allow-s3-bucket` | none |", "| `--max-pixels` (global) | 50,000,000 |"):
        assert row in table, row
    assert "SQLAlchemy" not in table  # the audit store runs on SQLite or PostgreSQL only
