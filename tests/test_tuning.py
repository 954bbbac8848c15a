"""`bintally tune`: a real Optuna study in SQLite, two worker processes sharing it, resume, bad storage."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from bintally.cli import app
from bintally.errors import ConfigError
from bintally.training.config import read_config_file
from bintally.tuning import TuneConfig, tune
from tests.training_helpers import TINY

FIXED = TINY | {"workers": 0}


def tiny_tune(manifest, out, **changes) -> TuneConfig:
    return TuneConfig(data=str(manifest), out=str(out), fixed=FIXED, backbones=[FIXED["backbone"]], image_sizes=[64],
                      min_epochs=2, max_epochs=4, progress=False, **changes)


def test_two_workers_share_a_study_and_a_rerun_resumes_it(tiny_manifest, tmp_path):
    config = tiny_tune(tiny_manifest, tmp_path, study="shared", n_trials=6, jobs=2)
    first = tune(config)
    study = optuna.load_study(study_name="shared", storage=config.storage_url)
    trials = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(trials) >= 6 and first.trials == len(study.trials)
    assert len({t.user_attrs.get("worker_pid") for t in trials if t.state == TrialState.COMPLETE} - {None}) == 2
    for t in trials:  # every epoch was reported to the pruner
        expected = t.params["epochs"] if t.state == TrialState.COMPLETE else len(t.intermediate_values)
        assert sorted(t.intermediate_values) == list(range(1, expected + 1))

    second = tune(tiny_tune(tiny_manifest, tmp_path, study="shared", n_trials=2))
    assert second.trials >= first.trials + 2
    assert optuna.load_study(study_name="shared", storage=config.storage_url)._study_id == study._study_id

    best = json.loads((tmp_path / "shared" / "best.json").read_text())
    assert best["value"] == pytest.approx(second.best_value)
    for name in ("history.png", "importance.png", "trials.csv"):
        assert (tmp_path / "shared" / name).stat().st_size > 0


def finished(storage: str, study: str) -> int:
    try:
        return len(optuna.load_study(study_name=study, storage=storage).get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)))
    except KeyError:  # not created yet
        return 0


def test_an_interrupted_study_keeps_its_trials_and_the_same_command_goes_on(tiny_manifest, tmp_path):
    (tmp_path / "fixed.json").write_text(json.dumps(FIXED))
    command = [sys.executable, "-m", "bintally", "tune", "--data", str(tiny_manifest), "--out", str(tmp_path), "--study", "stop",
               "--config", str(tmp_path / "fixed.json"), "--backbones", FIXED["backbone"], "--image-sizes", "64",
               "--min-epochs", "1", "--max-epochs", "2", "--no-progress"]
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    process = subprocess.Popen(command + ["--n-trials", "200"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while finished(storage, "stop") < 1 and time.time() < deadline and process.poll() is None:
        time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 130, output
    assert "Run the same command to go on" in output
    kept = finished(storage, "stop")
    assert kept >= 1
    subprocess.run(command + ["--n-trials", "2"], check=True, capture_output=True, timeout=120)
    assert finished(storage, "stop") >= kept + 2


def test_best_config_trains_with_one_command(tiny_manifest, tmp_path):
    result = tune(tiny_tune(tiny_manifest, tmp_path, study="cfg", n_trials=2, pruner="none"))
    saved = read_config_file(result.best_config)
    assert {k: saved[k] for k in result.best_params} == result.best_params
    out = CliRunner().invoke(app, ["train", "--config", result.best_config, "--out", str(tmp_path / "run"), "--max-steps", "1"])
    assert out.exit_code == 0, out.output
    assert json.loads((tmp_path / "run" / "config.json").read_text())["lr"] == result.best_params["lr"]


@pytest.mark.parametrize("url", ["bogus://nowhere/db", "sqlite:////proc/no/such/dir/optuna.db",
                                 "postgresql+psycopg2://user@127.0.0.1:1/none"])
def test_a_storage_that_cannot_be_opened_is_refused(tiny_manifest, tmp_path, url):
    with pytest.raises(ConfigError, match="cannot open the study storage"):
        tune(tiny_tune(tiny_manifest, tmp_path, storage=url, n_trials=1))


def test_bad_tune_settings_are_refused(tiny_manifest, tmp_path):
    with pytest.raises(ConfigError, match="unknown pruner"):
        tiny_tune(tiny_manifest, tmp_path, pruner="asha")
    out = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "missing.json")], standalone_mode=False)
    assert isinstance(out.exception, ConfigError) and "no such config file" in str(out.exception)
