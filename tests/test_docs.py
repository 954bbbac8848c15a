"""The option tables in docs/ are the commands' own: generated from the settings' fields, never edited by hand."""

from __future__ import annotations

import typing

import pytest

from bintally.audit.config import AuditConfig
from bintally.cli.docs import DOCS, TABLE, click_command, option_table, stale_tables
from bintally.data.config import CheckConfig, FetchConfig, IndexConfig
from bintally.data.split_config import SplitConfig
from bintally.export.config import ExportConfig
from bintally.inference.config import CalibrateConfig, EvaluateConfig, PredictConfig
from bintally.serving.config import ServeConfig
from bintally.settings import described_settings
from bintally.training.config import TrainConfig
from bintally.tuning.config import TuneConfig


def test_option_tables_match_the_commands():
    assert not stale_tables(), "option tables out of date (run: python -m bintally.cli.docs): " + ", ".join(stale_tables())


def test_the_serve_table_lists_every_setting_with_its_default():
    assert TABLE.search((DOCS / "serving.md").read_text()).group("command") == "bintally serve"
    table = option_table("bintally serve")
    for row in ("| `--backend` | `onnx` |", "| `--port` | $SAGEMAKER_BIND_TO_PORT, else 8080 |", "| `--timeout` | 30 |",
                "| `--max-body-mb` | 20 |", "| `--allow-s3-bucket` | none |", "| `--max-pixels` (global) | 50,000,000 |"):
        assert row in table, row
    assert "SQLAlchemy" not in table  # the audit store runs on SQLite or PostgreSQL only


COMMAND_CONFIGS = [("bintally train", TrainConfig), ("bintally tune", TuneConfig), ("bintally data split", SplitConfig),
                   ("bintally serve", ServeConfig), ("bintally audit run", AuditConfig), ("bintally evaluate", EvaluateConfig),
                   ("bintally predict", PredictConfig), ("bintally calibrate", CalibrateConfig), ("bintally export", ExportConfig),
                   ("bintally data index", IndexConfig), ("bintally data check", CheckConfig), ("bintally data fetch", FetchConfig)]


def test_every_command_with_settings_has_an_option_table():
    documented = {m.group("command") for path in DOCS.glob("*.md") for m in TABLE.finditer(path.read_text())}
    assert {path for path, _ in COMMAND_CONFIGS} | {"bintally data report"} <= documented


@pytest.mark.parametrize("path, settings_type", COMMAND_CONFIGS)
def test_every_setting_is_an_option_with_the_configs_help_choices_and_range(path, settings_type):
    options = {p.name: p for p in click_command(path).params}
    for f, spec in described_settings(settings_type):
        if not spec.cli:  # the command's own option, if any, sets it
            continue
        option = options[f.name]
        assert option.help == (spec.help or None), f.name
        if (spec.choices or spec.words) and spec.separator is None:  # (a comma-separated list is checked item by item by the config)
            assert typing.get_args(option.type_descriptor.annotation) == tuple(str(c) for c in spec.choices or spec.words), f.name
        if spec.separator is None and (spec.low, spec.high) != (None, None):
            assert (option.min, option.max) == (spec.low, spec.high), f.name


def test_every_option_generated_from_a_setting_has_help():
    for _, settings_type in COMMAND_CONFIGS:
        assert [f.name for f, spec in described_settings(settings_type) if spec.cli and not spec.help] == [], settings_type.__name__
