"""`bintally tune`: a real Optuna study in SQLite (and PostgreSQL), two worker processes sharing it, resume, stop signals, bad input."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch
from optuna.trial import TrialState
from typer.testing import CliRunner

from bintally.cli import app
from bintally.errors import ConfigError, DataError
from bintally.training.config import read_config_file
from bintally.tuning import TuneConfig, search, tune
from tests.helpers import process_group, wait_for
from tests.training_helpers import TINY

FIXED = TINY | {"workers": 0}


def tiny_tune(manifest, out, **changes) -> TuneConfig:
    settings = dict(fixed=FIXED, backbones=[FIXED["backbone"]], image_sizes=[64], min_epochs=2, max_epochs=4, progress=False)
    return TuneConfig(data=str(manifest), out=str(out), **(settings | changes))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_workers_share_a_study_and_a_rerun_resumes_it(tiny_manifest, tmp_path, request, backend):
    storage = request.getfixturevalue("fresh_pg_db") if backend == "postgresql" else None  # None: sqlite:///<out>/optuna.db
    config = tiny_tune(tiny_manifest, tmp_path, study="shared", n_trials=6, jobs=2, storage=storage)
    first = tune(config)
    study = optuna.load_study(study_name="shared", storage=config.storage_url)
    trials = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(trials) >= 6 and first.trials == len(study.trials)
    assert len({t.user_attrs.get("worker_pid") for t in trials if t.state == TrialState.COMPLETE} - {None}) == 2
    for t in trials:  # every epoch was reported to the pruner
        expected = t.params["epochs"] if t.state == TrialState.COMPLETE else len(t.intermediate_values)
        assert sorted(t.intermediate_values) == list(range(1, expected + 1))

    second = tune(tiny_tune(tiny_manifest, tmp_path, study="shared", n_trials=2, storage=storage))
    assert second.trials >= first.trials + 2
    assert optuna.load_study(study_name="shared", storage=config.storage_url)._study_id == study._study_id

    best = json.loads((tmp_path / "shared" / "best.json").read_text())
    assert best["value"] == pytest.approx(second.best_value)
    for name in ("history.png", "importance.png", "trials.csv"):
        assert (tmp_path / "shared" / name).stat().st_size > 0


def test_the_spatial_head_is_tuned_on_cached_stride16_maps(tiny_manifest, tmp_path):
    config = tiny_tune(tiny_manifest, tmp_path, study="spatial", n_trials=2, pruner="none", features=["stride16"])
    result = tune(config)
    study = optuna.load_study(study_name="spatial", storage=config.storage_url)
    assert [t.params["features"] for t in study.trials] == ["stride16", "stride16"]
    assert read_config_file(result.best_config)["features"] == "stride16"


def test_best_config_trains_with_one_command(tiny_manifest, tmp_path):
    result = tune(tiny_tune(tiny_manifest, tmp_path, study="cfg", n_trials=2, pruner="none"))
    saved = read_config_file(result.best_config)
    assert {k: saved[k] for k in result.best_params} == result.best_params
    out = CliRunner().invoke(app, ["train", "--config", result.best_config, "--out", str(tmp_path / "run"), "--max-steps", "1"])
    assert out.exit_code == 0, out.output
    assert json.loads((tmp_path / "run" / "config.json").read_text())["lr"] == result.best_params["lr"]


def test_trials_are_scored_on_the_metric_they_report_and_the_cli_names(tiny_manifest, tmp_path):
    """With --max-count 3 a trial's value is the 0-3 accuracy its epochs reported to the pruner (it was the 0-5 one)."""
    (tmp_path / "fixed.json").write_text(json.dumps(FIXED | {"select": "last"}))
    out = CliRunner().invoke(app, ["tune", "--data", str(tiny_manifest), "--out", str(tmp_path), "--study", "n3", "--n-trials", "2",
                                   "--pruner", "none", "--max-count", "3", "--config", str(tmp_path / "fixed.json"),
                                   "--backbones", FIXED["backbone"], "--image-sizes", "64", "--min-epochs", "2", "--max-epochs", "2",
                                   "--no-progress"])
    assert out.exit_code == 0, out.output
    study = optuna.load_study(study_name="n3", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 2
    for t in trials:  # --select last keeps the last epoch: the value is what that epoch reported
        assert t.value == t.intermediate_values[2]
    assert f"best validation accuracy (counts 0-3): {study.best_value:.4f} with" in out.output


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


@pytest.mark.parametrize("changes, message", [
    ({"n_trials": 0}, "n_trials must be in"),
    ({"jobs": -1}, "jobs must be in"),
    ({"n_trials": "5"}, "n_trials: expected a whole number"),
    ({"timeout": -1.0}, "timeout must be in"),
    ({"image_sizes": [64, "big"]}, "image_sizes: expected a list"),
    ({"image_sizes": [8]}, "image_sizes must be in"),
    ({"image_sizes": []}, "at least one backbone and one image size"),
    ({"backbones": []}, "at least one backbone and one image size"),
    ({"backbones": ["resnet18", "no_such_net"]}, "unknown backbone 'no_such_net'"),
    ({"features": ["pooled", "bogus"]}, "unknown features 'bogus'"),
    ({"min_epochs": 5, "max_epochs": 3}, r"min_epochs \(5\) is more than max_epochs \(3\)"),
    ({"fixed": FIXED | {"bogus": 1}}, "unknown settings"),
    ({"fixed": FIXED | {"folds": 3}}, "each trial is a single run: tune without folds"),
])
def test_bad_tune_settings_are_one_line_config_errors(tiny_manifest, tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message) as error:
        tiny_tune(tiny_manifest, tmp_path, **changes)
    assert "\n" not in str(error.value)


# ---------------------------------------------------------------- stop signals and failing trials


@pytest.fixture
def stop_handlers():
    """The test's own SIGINT/SIGTERM handlers, put back afterwards (a helper worker run in-process leaves them ignored)."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield saved
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def assert_signal_handling_restored(handlers: dict) -> None:
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers
    assert signal.set_wakeup_fd(-1) == -1


def trials_of(storage: str, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=storage).get_trials()


def train_then(monkeypatch, action, at_epoch: int) -> None:
    """Trials train for real, and call `action` just after epoch `at_epoch` has been reported."""
    real_train = search.train_single_run

    def train(config, on_epoch):
        def report(epoch, metrics):
            if epoch == at_epoch:
                action()
            on_epoch(epoch, metrics)
        return real_train(config, on_epoch=report)

    monkeypatch.setattr(search, "train_single_run", train)


@pytest.mark.parametrize("at_epoch, state", [(1, TrialState.PRUNED), (2, TrialState.COMPLETE)])
def test_a_signal_during_a_trial_ends_it_cleanly_and_stops_the_study(tiny_manifest, tmp_path, monkeypatch, stop_handlers,
                                                                     at_epoch, state):
    """A signal after epoch 1 of 2 stops the trial at its next step (pruned); one after the last step lets it complete."""
    train_then(monkeypatch, lambda: os.kill(os.getpid(), signal.SIGTERM), at_epoch)
    config = tiny_tune(tiny_manifest, tmp_path, n_trials=5, min_epochs=2, max_epochs=2, pruner="none")
    with pytest.raises(KeyboardInterrupt):
        tune(config)
    [trial] = trials_of(config.storage_url, config.study)
    assert trial.state == state
    assert trial.user_attrs.get("stopped_by_signal", False) == (state == TrialState.PRUNED)
    assert sorted(trial.intermediate_values) == list(range(1, at_epoch + 1))
    assert_signal_handling_restored(stop_handlers)


def test_a_signal_during_the_validation_of_a_pruned_epoch_still_stops_the_study(tiny_manifest, tmp_path, monkeypatch,
                                                                              stop_handlers):
    """Training has the signal but ends by the pruner's exception: the stop must not be lost with it."""
    monkeypatch.setattr(search, "make_pruner", lambda tc: optuna.pruners.ThresholdPruner(lower=2.0))  # prunes every epoch
    train_then(monkeypatch, lambda: os.kill(os.getpid(), signal.SIGTERM), at_epoch=1)
    config = tiny_tune(tiny_manifest, tmp_path, n_trials=3)
    with pytest.raises(KeyboardInterrupt):
        tune(config)
    assert [t.state for t in trials_of(config.storage_url, config.study)] == [TrialState.PRUNED]
    assert_signal_handling_restored(stop_handlers)


@pytest.mark.parametrize("error", [DataError("photos/7.jpg", "cannot decode the image"),
                                   ConfigError("batch size 128 is larger than the train split")])
def test_bad_data_or_settings_in_a_trial_stop_the_study_with_that_error(tiny_manifest, tmp_path, monkeypatch, error):
    def fail():
        raise error

    train_then(monkeypatch, fail, at_epoch=1)
    config = tiny_tune(tiny_manifest, tmp_path, n_trials=5)
    with pytest.raises(type(error), match=re.escape(str(error))):
        tune(config)
    assert [t.state for t in trials_of(config.storage_url, config.study)] == [TrialState.FAIL]


@pytest.mark.parametrize("error, expected", [
    (DataError("photos/7.jpg", "cannot decode the image"), DataError("photos/7.jpg", "cannot decode the image")),
    (ValueError("bad\nshape"), RuntimeError("tuning worker 1 failed: ValueError: bad shape")),
])
def test_a_helper_worker_reports_its_error_in_one_line(tiny_manifest, tmp_path, monkeypatch, stop_handlers, error, expected):
    def fail():
        raise error

    train_then(monkeypatch, fail, at_epoch=1)
    config = tiny_tune(tiny_manifest, tmp_path, n_trials=5)
    reports, ready, threads = [], SimpleNamespace(value=0), torch.get_num_threads()
    with pytest.raises(SystemExit) as exit_:
        search.helper_worker(config, str(tiny_manifest), 5, threads, 1, ready, SimpleNamespace(put=reports.append))
    assert exit_.value.code == 1 and ready.value == 1
    assert signal.set_wakeup_fd(-1) == -1
    [report] = reports
    again = search.reported_error(report)
    assert type(again) is type(expected) and str(again) == str(expected)


def tune_command(manifest, out: Path, jobs: int, mode: str = "frozen", workers: int = 0) -> list[str]:
    (out / "fixed.json").write_text(json.dumps(FIXED | {"workers": workers}))
    return [sys.executable, "-m", "bintally", "tune", "--data", str(manifest), "--out", str(out), "--study", "stop",
            "--config", str(out / "fixed.json"), "--backbones", FIXED["backbone"], "--image-sizes", "64",
            "--min-epochs", "2", "--max-epochs", "3", "--mode", mode, "--jobs", str(jobs), "--no-progress"]


def trial_counts(db: Path) -> dict[str, int]:
    """Trials by state, read straight from the SQLite file (cheap enough to poll while workers write to it)."""
    try:
        with sqlite3.connect(db, timeout=10) as connection:
            return dict(connection.execute("SELECT state, COUNT(*) FROM trials GROUP BY state").fetchall())
    except sqlite3.OperationalError:  # not created yet
        return {}


def loader_workers(pgid: int) -> int:
    """Data-loader workers are forks of a trial's process: same command line as their parent."""
    members = process_group(pgid)
    return sum(members.get(ppid, (0, b""))[1] == command for ppid, command in members.values())


def wait_for_tune(condition, process: subprocess.Popen, what: str, timeout: float = 240) -> None:
    if not wait_for(condition, timeout, process):
        if process.poll() is not None:
            pytest.fail(f"tune exited ({process.returncode}) before {what}: {process.communicate()[0]}")
        pytest.fail(f"no {what} within {timeout} s")


@pytest.fixture
def in_new_group():
    """Start a command as the leader of a new process group; whatever a failed test leaves of the group is killed."""
    started = []

    def start(command: list[str]) -> subprocess.Popen:
        started.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True))
        return started[-1]

    yield start
    for process in started:
        if process_group(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()


@pytest.mark.parametrize("signum, jobs, workers", [
    (signal.SIGINT, 1, 0),  # Ctrl-C
    (signal.SIGTERM, 2, 2),  # a preemption: the helper worker and the trials' data-loader workers get it too
])
def test_a_group_signal_keeps_the_study_leaves_no_process_and_the_same_command_goes_on(tiny_manifest, tmp_path, in_new_group,
                                                                                        signum, jobs, workers):
    command = tune_command(tiny_manifest, tmp_path, jobs, mode="full" if workers else "frozen", workers=workers)
    db = tmp_path / "optuna.db"
    process = in_new_group(command + ["--n-trials", "200"])

    def finished() -> int:
        return sum(trial_counts(db).get(state, 0) for state in ("COMPLETE", "PRUNED"))

    if workers:
        wait_for_tune(lambda: trial_counts(db).get("RUNNING") == jobs and loader_workers(process.pid) >= 2, process,
                 "every worker in a trial, with data-loader workers")
    else:
        wait_for_tune(lambda: finished() >= 1 and trial_counts(db).get("RUNNING") == jobs, process,
                 "a finished trial and every worker in a trial")
    finished_before = finished()
    os.killpg(process.pid, signum)
    output = process.communicate(timeout=180)[0]

    assert process.returncode == 130, output
    assert "Traceback" not in output and "tuning worker" not in output, output  # no worker failed or died
    assert output.strip().splitlines()[-1] == (f"stopped; the finished trials are kept in sqlite:///{db}. "
                                               "Run the same command to go on.")
    deadline = time.monotonic() + 10
    while process_group(process.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not process_group(process.pid), "processes left behind"
    trials = trials_of(f"sqlite:///{db}", "stop")
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}  # none left RUNNING, none FAIL
    assert all(t.state == TrialState.PRUNED for t in trials if t.user_attrs.get("stopped_by_signal"))
    assert finished() >= finished_before
    if workers:  # trials seconds long: at least one was stopped in the middle
        assert any(t.user_attrs.get("stopped_by_signal") for t in trials)
    else:
        subprocess.run(command + ["--n-trials", "2"], check=True, capture_output=True, timeout=240)
        assert finished() >= len(trials) + 2


def spawned_children() -> set[int]:
    return {pid for pid, (ppid, command) in process_group(os.getpgid(0)).items()
            if ppid == os.getpid() and b"spawn_main" in command}


@pytest.mark.parametrize("helper_busy", [True, False], ids=["helper in a trial", "helper starting up"])
def test_a_signal_to_the_leader_alone_stops_its_helper_worker(tiny_manifest, tmp_path, monkeypatch, stop_handlers, caplog,
                                                              helper_busy):
    """The leader (this process) alone gets SIGTERM while its helper, a real spawned process, trains or starts up."""
    config = tiny_tune(tiny_manifest, tmp_path, n_trials=200, jobs=2, min_epochs=2, max_epochs=2, pruner="none")
    helpers, helper_trials = set(), set()

    def signal_the_leader():
        deadline = time.monotonic() + 240
        while helper_busy and not helper_trials and time.monotonic() < deadline:
            time.sleep(0.2)
            helper_trials.update(t.number for t in trials_of(config.storage_url, config.study)
                                 if t.state == TrialState.RUNNING and t.user_attrs.get("worker_pid") != os.getpid())
        helpers.update(spawned_children())
        os.kill(os.getpid(), signal.SIGTERM)

    train_then(monkeypatch, signal_the_leader, at_epoch=1)
    with pytest.raises(KeyboardInterrupt):
        tune(config)
    assert len(helpers) == 1 and not Path(f"/proc/{helpers.pop()}").exists()
    assert bool(helper_trials) == helper_busy
    trials = trials_of(config.storage_url, config.study)
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert [t.user_attrs.get("stopped_by_signal") for t in trials if t.user_attrs["worker_pid"] == os.getpid()] == [True]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], "a helper was reported as failed"
    assert_signal_handling_restored(stop_handlers)
