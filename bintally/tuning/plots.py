"""Plots of a study: how the best score grew over trials, and which settings mattered."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

log = logging.getLogger("bintally.tune")


def write_plots(study: optuna.Study, out: Path) -> dict[str, str]:
    """history.png and importance.png in `out` (importance needs at least two finished trials that differ)."""
    from optuna.visualization import matplotlib as ovm

    written = {}
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    varied = sorted({name for t in complete for name, d in t.distributions.items() if not d.single()})
    plots = {"history": ovm.plot_optimization_history,
             "importance": lambda s: ovm.plot_param_importances(s, params=varied)}  # fixed settings have no importance
    for name, plot in plots.items():
        if len(complete) < 2:
            log.info("%s plot skipped: fewer than two complete trials", name)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                ax = plot(study)
            except (ValueError, RuntimeError) as e:  # e.g. no parameter varied between trials
                log.info("%s plot skipped: %s", name, e)
                continue
        title = {"history": f"Study {study.study_name}: validation accuracy (counts 0-N) by trial",
                 "importance": f"Study {study.study_name}: parameter importance (fANOVA)"}[name]
        for loc in ("left", "center", "right"):  # optuna puts its own title in one of these
            ax.set_title("", loc=loc)
        ax.set_title(title)
        ax.figure.set_size_inches(9, 5)
        ax.figure.tight_layout()
        path = out / f"{name}.png"
        ax.figure.savefig(path, dpi=110)
        plt.close(ax.figure)
        written[name] = str(path)
    return written
