"""`bintally tune`: an Optuna study over training settings, scored on the validation split.

Each trial is an ordinary single `bintally train` run whose per-epoch validation accuracy (counts
0-N) is reported to Optuna, so the median or Hyperband pruner can stop it early; the trial's value
is the same accuracy of the model the run kept. In frozen mode the
trials train heads on the cached backbone features, which is what makes hundreds of trials cheap.
The study lives in a database (SQLite by default, any Optuna storage URL), so re-running with the
same study name adds trials to it, and workers on other machines can share it.
"""

from __future__ import annotations

import itertools
import json
import logging
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from multiprocessing import connection, resource_tracker
from pathlib import Path

import optuna
import torch
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from bintally.data.manifest import write_manifest
from bintally.errors import ConfigError, DataError
from bintally.io import write_frame_csv
from bintally.models.artifact import read_artifact
from bintally.progress import progress_bar
from bintally.training.data import training_manifest
from bintally.training.engine import Interrupted, prepare_features, train_single_run
from bintally.tuning.config import TuneConfig, trial_config

log = logging.getLogger("bintally.tune")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
HELPER_GRACE_S = 60  # after a stop, how long a helper worker may take to end its trial before it is killed


# ---------------------------------------------------------------- the search space


def suggest_settings(trial: optuna.Trial, tc: TuneConfig) -> dict:
    """One trial's training settings. Backbone, image size and features change the cache, so only the listed ones are tried."""
    settings = {
        "lr": trial.suggest_float("lr", 1e-4, 3e-2, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-5, 0.2, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [32, 64, 128]),
        "epochs": trial.suggest_int("epochs", tc.min_epochs, tc.max_epochs),
        "head": trial.suggest_categorical("head", ["linear", "mlp", "ordinal"]),
        "label_smoothing": trial.suggest_float("label_smoothing", 0.0, 0.2),
        "dropout": trial.suggest_float("dropout", 0.0, 0.6),
        "balance": trial.suggest_categorical("balance", ["none", "weights", "sampler"]),
        "backbone": trial.suggest_categorical("backbone", tc.backbones),
        "image_size": trial.suggest_categorical("image_size", tc.image_sizes),
        "features": trial.suggest_categorical("features", tc.features),
    }
    if tc.mode == "partial":
        settings["unfreeze"] = trial.suggest_int("unfreeze", 1, 4)
    return settings


# ---------------------------------------------------------------- the study


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The study database; SQLite waits for the lock instead of failing when several workers write."""
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=30, grace_period=120)
    except Exception as e:  # SQLAlchemy, a missing driver or the database itself: all mean "cannot open"
        raise ConfigError(f"cannot open the study storage {url!r}: {e.__class__.__name__}: {e}") from None


def make_pruner(tc: TuneConfig) -> optuna.pruners.BasePruner:
    if tc.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=3)
    if tc.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=3, max_resource=tc.max_epochs, reduction_factor=3)
    return optuna.pruners.NopPruner()


def load_study(tc: TuneConfig, worker: int = 0) -> optuna.Study:
    """Create the study or open it (the same name resumes it); each worker samples with its own seed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats, multivariate TPE
        sampler = optuna.samplers.TPESampler(seed=tc.seed * 1000 + worker, multivariate=True)
        return optuna.create_study(study_name=tc.study, storage=open_storage(tc.storage_url), direction="maximize",
                                   sampler=sampler, pruner=make_pruner(tc), load_if_exists=True)


def finished_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


class StopSignals:
    """SIGINT and SIGTERM ask the study to stop: the running trial ends at its next training step, no new one starts.

    While trials run, a signal only sets a flag: a KeyboardInterrupt in the middle of a database write
    could leave SQLite locked. While `interruptible` (setting up, summarising) it raises KeyboardInterrupt.
    """

    def __init__(self, on_stop=lambda: None, leave_ignored: bool = False):
        self.on_stop, self.leave_ignored = on_stop, leave_ignored  # leave_ignored: for a process about to exit
        self.requested, self.interruptible, self.previous = False, False, {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # only it may set handlers
            self.previous = {sig: signal.signal(sig, self.handle) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, signal.SIG_IGN if self.leave_ignored else handler)

    def handle(self, signum, frame) -> None:
        self.request()
        if self.interruptible:
            raise KeyboardInterrupt(f"stopped by signal {signum}")

    def request(self) -> None:
        if not self.requested:
            self.requested = True
            self.on_stop()


class StopRequested(Exception):
    """The stop signal came before the trial's training had set its own handlers."""


def objective(trial: optuna.Trial, tc: TuneConfig, data: str, stop: StopSignals) -> float:
    """Validation accuracy on counts 0-N of the model the trial kept (its --select epoch); each epoch reports the same metric.

    A trial stopped by a signal is recorded as pruned, with the user attribute stopped_by_signal.
    """
    settings = suggest_settings(trial, tc)
    trial.set_user_attr("worker_pid", os.getpid())
    accuracy, rmse = f"val_accuracy_0_{tc.max_count}", f"val_rmse_0_{tc.max_count}"

    def report(epoch: int, metrics: dict) -> None:
        trial.report(metrics[accuracy], epoch)
        if stop.requested:
            raise StopRequested
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch}")

    try:
        if stop.requested:
            raise StopRequested
        with tempfile.TemporaryDirectory(prefix="bintally-trial-") as run_dir:
            result = train_single_run(trial_config(tc, settings, data, run_dir), on_epoch=report)
            kept = read_artifact(result.run).metrics
    except (Interrupted, StopRequested):
        stop.request()
        trial.set_user_attr("stopped_by_signal", True)
        raise optuna.TrialPruned("stopped by a signal") from None
    trial.set_user_attr("val_rmse_0_n", kept[rmse])
    trial.set_user_attr("wall_time_s", result.wall_time_s)
    return kept[accuracy]


def run_worker(tc: TuneConfig, data: str, target: int, threads: int, stop: StopSignals, worker: int = 0,
               study: optuna.Study | None = None, give_up=lambda: False) -> None:
    """Run trials until the study holds `target` finished trials (all workers together), time is up, or a stop comes."""
    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # its warning for a failed trial is a traceback; ours is one line
    with quiet_loggers("bintally.train", "bintally.health"):  # per-trial notes would drown the progress bar
        run_trials(tc, data, target, threads, stop, worker, study, give_up)


@contextmanager
def quiet_loggers(*names: str):
    """Only errors from these loggers while the block runs; their levels as they were after (the process may go on)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def run_trials(tc: TuneConfig, data: str, target: int, threads: int, stop: StopSignals, worker: int,
               study: optuna.Study | None, give_up) -> None:
    study = study or load_study(tc, worker)
    show_progress = tc.progress and worker == 0
    bar = progress_bar(total=target, initial=finished_trials(study), desc=f"study {tc.study}", unit="trial", enabled=show_progress)

    def update(study: optuna.Study, trial) -> None:
        bar.n = finished_trials(study)
        try:
            bar.set_postfix(best=f"{study.best_value:.3f}")
        except ValueError:  # no complete trial yet
            bar.refresh()

    def check_stop(study: optuna.Study, trial) -> None:
        if stop.requested or give_up():
            study.stop()

    try:
        if not stop.requested:
            study.optimize(lambda t: objective(t, tc, data, stop), timeout=tc.timeout, catch=(),
                           callbacks=[update, MaxTrialsCallback(target, states=FINISHED), check_stop])
    finally:
        bar.close()


# ---------------------------------------------------------------- helper worker processes


def helper_worker(tc: TuneConfig, data: str, target: int, threads: int, worker: int, ready, reports) -> None:
    """A helper process: exits 0 when the study is done or a stop signal came; an error goes to the leader as a report."""
    with StopSignals(leave_ignored=True) as stop:  # a late stop request from the leader must not kill it as it exits
        ready.value = 1
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked since it started (Helpers.start)
        try:
            run_worker(tc, data, target, threads, stop, worker)
        except Exception as e:
            if os.environ.get("BINTALLY_DEBUG"):
                traceback.print_exc()
            reports.put(failure_report(worker, e))
            sys.exit(1)


def failure_report(worker: int, e: Exception) -> tuple:
    """What the leader needs to raise the error again (DataError cannot be pickled as it is)."""
    if isinstance(e, DataError):
        return worker, "data", e.path, e.problem
    if isinstance(e, ConfigError):
        return worker, "config", str(e)
    return worker, "failed", f"{e.__class__.__name__}: {' '.join(str(e).split())}"


def reported_error(report: tuple) -> Exception:
    worker, kind, *details = report
    if kind == "data":
        return DataError(*details)
    if kind == "config":
        return ConfigError(*details)
    return RuntimeError(f"tuning worker {worker} failed: {details[0]}")


class Helpers:
    """The leader's helper worker processes: spawned, they share nothing with it but the study database."""

    def __init__(self, count: int):
        self.count, self.processes, self.ready, self.reports = count, [], [], None
        self.stopping, self.killed_unready = False, set()
        self.context = multiprocessing.get_context("spawn")

    def start(self, tc: TuneConfig, data: str, target: int, threads: int) -> None:
        if not self.count:
            return
        self.reports = self.context.SimpleQueue()
        resource_tracker.ensure_running()  # starting it later would unblock the signals blocked below
        # a helper inherits the blocked signals: a stop signal waits until its handlers are set instead of killing it
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            for worker in range(1, self.count + 1):
                ready = self.context.RawValue("b", 0)  # no lock: the leader reads it in its signal handler
                process = self.context.Process(target=helper_worker, name=f"tuning worker {worker}",
                                               args=(tc, data, target, threads, worker, ready, self.reports))
                process.start()
                self.processes.append(process)
                self.ready.append(ready)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def stop(self) -> None:
        """Ask each helper to end its running trial and stop: to them SIGTERM is a request, not a kill.

        One still starting up has not touched the study yet: it is killed rather than waited for.
        """
        self.stopping = True
        for process, ready in zip(self.processes, self.ready):
            if ready.value:
                process.terminate()
            else:
                self.killed_unready.add(process.name)
                process.kill()

    def failed(self) -> bool:
        return self.reports is not None and not self.reports.empty()

    def wait(self) -> None:
        """Wait for the helpers; once they are stopping, each has HELPER_GRACE_S to end its trial, then is killed."""
        running = list(self.processes)
        while running and not self.stopping:
            if self.failed():
                self.stop()
            connection.wait([p.sentinel for p in running], timeout=1)
            running = [p for p in running if p.is_alive()]
        deadline = time.monotonic() + HELPER_GRACE_S
        for process in running:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("%s did not stop within %d s: killed", process.name, HELPER_GRACE_S)
                process.kill()
                process.join()

    def errors(self) -> list[Exception]:
        """What went wrong in the helpers: their reports, and any that died without one."""
        reports = []
        while self.failed():
            reports.append(self.reports.get())
        reported = {r[0] for r in reports}
        died = [RuntimeError(f"{p.name} died (exit code {p.exitcode})") for worker, p in enumerate(self.processes, 1)
                if p.exitcode and worker not in reported and p.name not in self.killed_unready]
        return [reported_error(r) for r in reports] + died


# ---------------------------------------------------------------- the whole command


@dataclass
class TuneResult:
    study: str
    storage: str
    trials: int
    complete: int
    pruned: int
    best_value: float | None
    best_params: dict
    best_config: str | None
    outputs: dict


def prepare_data(tc: TuneConfig) -> str:
    """A split manifest every trial reads, made once (a folder is indexed and split here, not in every trial)."""
    if tc.data is not None and tc.data.endswith(".parquet"):
        return tc.data
    df = training_manifest(tc.data, tc.max_count, None)
    path = tc.study_dir / "manifest.parquet"
    write_manifest(df, path, info=df.attrs["info"])
    return str(path)


def tune(tc: TuneConfig) -> TuneResult:
    """Add `n_trials` trials to the study (creating or resuming it), then write the best config and plots.

    SIGINT or SIGTERM (to this process or its whole group) ends the running trials cleanly, stops the
    helper workers and raises KeyboardInterrupt; the same call later goes on with the study.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    helpers = Helpers(tc.jobs - 1)
    with StopSignals(on_stop=helpers.stop) as stop:
        stop.interruptible = True  # setting up (and summarising) may stop at once: no trial is open
        study = load_study(tc)  # fails fast on a bad storage URL
        data = prepare_data(tc)
        if tc.mode == "frozen":
            for backbone, size, features in itertools.product(tc.backbones, tc.image_sizes, tc.features):
                prepare_features(trial_config(tc, {"backbone": backbone, "image_size": size, "features": features}, data,
                                              str(tc.study_dir)))
        target = finished_trials(study) + tc.n_trials
        stop.interruptible = False
        run_workers(tc, data, target, study, stop, helpers)
        stop.interruptible = True
        return summarize(study, tc, data)


def run_workers(tc: TuneConfig, data: str, target: int, study: optuna.Study, stop: StopSignals, helpers: Helpers) -> None:
    """This process and `tc.jobs - 1` helpers run trials; a stop signal raises KeyboardInterrupt once all have stopped."""
    threads = max(1, (os.cpu_count() or 1) // tc.jobs)
    try:
        helpers.start(tc, data, target, threads)
        run_worker(tc, data, target, threads, stop, study=study, give_up=helpers.failed)
    except BaseException:
        helpers.stop()  # the study ends with this error
        raise
    finally:
        helpers.wait()
    errors = helpers.errors()
    if stop.requested:
        for error in errors:
            log.warning("%s", error)
        raise KeyboardInterrupt("stopped by a signal")
    if errors:
        raise errors[0]


def summarize(study: optuna.Study, tc: TuneConfig, data: str) -> TuneResult:
    from bintally.tuning.plots import write_plots

    out = tc.study_dir
    out.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    write_frame_csv(out / "trials.csv", study.trials_dataframe())
    outputs = {"trials": str(out / "trials.csv"), **write_plots(study, out)}
    best_config = None
    if complete:
        best = study.best_trial
        config = trial_config(tc, best.params, data, f"runs/{tc.study}-best")
        config.progress = True
        best_config = str(out / "best_config.json")
        config.save(Path(best_config))
        (out / "best.json").write_text(json.dumps({"value": best.value, "params": best.params, "trial": best.number,
                                                   "user_attrs": best.user_attrs, "tune_config": asdict(tc)}, indent=2))
    return TuneResult(study=tc.study, storage=tc.storage_url, trials=len(trials), complete=len(complete),
                      pruned=sum(t.state == TrialState.PRUNED for t in trials),
                      best_value=study.best_value if complete else None, best_params=study.best_params if complete else {},
                      best_config=best_config, outputs=outputs)
