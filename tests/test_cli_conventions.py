"""Command-line conventions: -h everywhere, every choice listed, --no-progress hides every bar, findings printed once."""

from __future__ import annotations

import re

import pytest

from bintally.training.config import PRESETS
from tests.cli_helpers import run_cli
from tests.training_helpers import TINY

COMMANDS = [["export"], ["serve"], ["data", "index"], ["data", "split"], ["data", "check"], ["data", "report"], ["data", "fetch"],
            ["train"], ["evaluate"], ["predict"], ["tune"], ["data"], []]
BAR = re.compile(r"\d+%\|")  # tqdm's "37%|####" bar


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "bintally")
def test_every_command_takes_short_help(command):
    result = run_cli(*command, "-h")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout and "--help" in result.stdout


def test_every_choice_is_listed_in_its_option_help(monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one line per option, so that a list of choices is not wrapped
    help_text = " ".join(run_cli("train", "-h").stdout.split())
    for preset in PRESETS:
        assert preset in help_text, preset
    for choices in ("frozen|partial|full", "linear|mlp|ordinal", "adam|adamw|sgd", "cosine|sgdr|step", "none|sampler|weights",
                    "class|exclude", "auto|argmax|median|expected"):
        assert choices in help_text.replace(" ", ""), choices
    assert "median|hyperband|none" in " ".join(run_cli("tune", "-h").stdout.split()).replace(" ", "")


def test_no_progress_hides_every_bar(small_bucket, tmp_path):
    shown = run_cli("data", "index", small_bucket, "--out", tmp_path / "a.parquet", "--workers", 1)
    assert shown.returncode == 0 and BAR.search(shown.stderr), shown.stderr  # the check can fail
    hidden = run_cli("data", "index", small_bucket, "--out", tmp_path / "b.parquet", "--workers", 1, "--no-progress")
    assert hidden.returncode == 0 and not BAR.search(hidden.stderr), hidden.stderr


def test_training_bars_and_health_findings(tiny_manifest, tmp_path):
    args = ["train", "--data", tiny_manifest, "--backbone", TINY["backbone"], "--random-init", "--image-size", "64",
            "--batch-size", "16", "--workers", "0", "--epochs", "2", "--lr", "9", "--warmup-epochs", "0",
            "--optimizer", "sgd", "--no-channels-last"]
    result = run_cli(*args, "--out", tmp_path / "quiet", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert not BAR.search(result.stderr), result.stderr
    output = result.stdout + result.stderr
    findings = re.findall(r"health: ([a-z -]+):", output)
    assert findings, output  # lr 9 with SGD makes the gradients explode
    assert len(findings) == len(set(findings)), findings  # each finding printed once
    assert "health.json" in result.stdout
