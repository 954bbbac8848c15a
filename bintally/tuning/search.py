"""`bintally tune`: an Optuna study over training settings, scored on the validation split.

Each trial is an ordinary `bintally train` run whose per-epoch validation accuracy (counts 0-N)
is reported to Optuna, so the median or Hyperband pruner can stop it early. In frozen mode the
trials train heads on the cached backbone features, which is what makes hundreds of trials cheap.
The study lives in a database (SQLite by default, any SQLAlchemy URL), so re-running with the
same study name adds trials to it, and workers on other machines can share it.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import tempfile
import threading
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import optuna
import torch
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState
from bintally.progress import progress_bar

from bintally.data.manifest import write_manifest
from bintally.errors import ConfigError
from bintally.training.config import MODES, TrainConfig, check_choice, resolve_config
from bintally.training.data import training_manifest
from bintally.training.engine import prepare_features, train

PRUNERS = ("median", "hyperband", "none")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass
class TuneConfig:
    data: str | None = None  # manifest, bucket folder, class folders or CSV; None: the bundled sample
    study: str = "bintally"
    storage: str | None = None  # SQLAlchemy URL; None: sqlite:///<out>/optuna.db
    out: str = "runs/tune"  # the study's outputs go to <out>/<study>/
    n_trials: int = 50  # trials to add in this call (all workers together)
    timeout: float | None = None  # seconds; each worker stops starting trials after this
    jobs: int = 1  # local worker processes sharing the study
    pruner: str = "median"
    mode: str = "frozen"  # frozen: heads on cached features (fast); partial/full: trials train on the photos
    preset: str | None = "fast"  # the settings the search does not touch ...
    fixed: dict = field(default_factory=dict)  # ... and changes to them (TrainConfig fields)
    backbones: list[str] = field(default_factory=lambda: ["efficientnet_lite0"])
    image_sizes: list[int] = field(default_factory=lambda: [224])
    min_epochs: int = 5
    max_epochs: int = 30
    max_count: int = 5
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        check_choice("pruner", self.pruner, PRUNERS)
        check_choice("mode", self.mode, MODES)
        if self.n_trials < 1 or self.jobs < 1:
            raise ConfigError("n_trials and jobs must be at least 1")
        if not 1 <= self.min_epochs <= self.max_epochs:
            raise ConfigError("need 1 <= min_epochs <= max_epochs")

    @property
    def study_dir(self) -> Path:
        return Path(self.out) / self.study

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{Path(self.out) / 'optuna.db'}"


# ---------------------------------------------------------------- the search space


def suggest_settings(trial: optuna.Trial, tc: TuneConfig) -> dict:
    """One trial's training settings. Backbone and image size change the features, so only the listed ones are tried."""
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
    }
    if tc.mode == "partial":
        settings["unfreeze"] = trial.suggest_int("unfreeze", 1, 4)
    return settings


def trial_config(tc: TuneConfig, settings: dict, data: str, out: str) -> TrainConfig:
    run = {"data": data, "out": out, "mode": tc.mode, "max_count": tc.max_count, "seed": tc.seed, "progress": False}
    return resolve_config(tc.preset, **(tc.fixed | run | settings))


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


def objective(trial: optuna.Trial, tc: TuneConfig, data: str) -> float:
    """Best validation accuracy on counts 0-N over the trial's epochs (what `best.pt` would keep)."""
    settings = suggest_settings(trial, tc)
    key = f"val_accuracy_0_{tc.max_count}"

    def report(epoch: int, metrics: dict) -> None:
        trial.report(metrics[key], epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch}")

    with tempfile.TemporaryDirectory(prefix="bintally-trial-") as run_dir:
        result = train(trial_config(tc, settings, data, run_dir), on_epoch=report)
    trial.set_user_attr("val_rmse_0_n", -result.best_val[1])
    trial.set_user_attr("wall_time_s", result.wall_time_s)
    trial.set_user_attr("worker_pid", os.getpid())
    return result.best_val[0]


def run_worker(tc: TuneConfig, data: str, target: int, threads: int, worker: int = 0, study: optuna.Study | None = None) -> None:
    """Run trials until the study holds `target` finished trials (counted across all workers) or time is up."""
    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("bintally.train", "bintally.health"):
        logging.getLogger(name).setLevel(logging.ERROR)  # per-trial notes would drown the progress bar
    study = study or load_study(tc, worker)
    show_progress = tc.progress and worker == 0
    bar = progress_bar(total=target, initial=finished_trials(study), desc=f"study {tc.study}", unit="trial", enabled=show_progress)

    def update(study: optuna.Study, trial) -> None:
        bar.n = finished_trials(study)
        try:
            bar.set_postfix(best=f"{study.best_value:.3f}")
        except ValueError:  # no complete trial yet
            bar.refresh()

    with StopAfterTrial(study) as stop:
        study.optimize(lambda t: objective(t, tc, data), timeout=tc.timeout, catch=(),
                       callbacks=[update, MaxTrialsCallback(target, states=FINISHED), stop.after_trial])
    bar.close()
    if stop.signum is not None:
        raise KeyboardInterrupt(f"stopped by signal {stop.signum}")


class StopAfterTrial:
    """SIGINT/SIGTERM let the running trial end cleanly, then stop the study.

    A KeyboardInterrupt in the middle of a database write could leave SQLite locked; a trial that
    is training checkpoints and stops at its next step (bintally.training's own handler).
    """

    def __init__(self, study: optuna.Study):
        self.study, self.signum, self.previous = study, None, {}

    def __enter__(self) -> "StopAfterTrial":
        if threading.current_thread() is threading.main_thread():
            self.previous = {sig: signal.signal(sig, self.handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def handle(self, signum, frame) -> None:
        self.signum = signum

    def after_trial(self, study: optuna.Study, trial) -> None:
        if self.signum is not None:
            study.stop()


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
    """Add `n_trials` trials to the study (creating or resuming it), then write the best config and plots."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = load_study(tc)  # fails fast on a bad storage URL
    data = prepare_data(tc)
    if tc.mode == "frozen":
        for backbone in tc.backbones:
            for size in tc.image_sizes:
                prepare_features(trial_config(tc, {"backbone": backbone, "image_size": size}, data, str(tc.study_dir)))
    target = finished_trials(study) + tc.n_trials
    threads = max(1, (os.cpu_count() or 1) // tc.jobs)
    context = multiprocessing.get_context("spawn")
    helpers = [context.Process(target=run_worker, args=(tc, data, target, threads, w)) for w in range(1, tc.jobs)]
    for p in helpers:
        p.start()
    try:
        run_worker(tc, data, target, threads, study=study)
    finally:
        for p in helpers:
            p.join()
    failed = [p.exitcode for p in helpers if p.exitcode]
    if failed:
        raise RuntimeError(f"{len(failed)} tuning worker(s) failed (exit codes {failed}); see the log above")
    return summarize(study, tc, data)


def summarize(study: optuna.Study, tc: TuneConfig, data: str) -> TuneResult:
    from bintally.tuning.plots import write_plots

    out = tc.study_dir
    out.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    study.trials_dataframe().to_csv(out / "trials.csv", index=False)
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
