"""The study's pictures at the end of a sweep (issue 29 item 4): Optuna's own optimization history
and hyperparameter importances (``optuna.visualization.matplotlib``), written as PNGs into the sweep
dir and, with ``logger=wandb``, to a W&B run of the study's group (tracking/wandb_tracker.py)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

log = logging.getLogger(__name__)

HISTORY_PNG, IMPORTANCES_PNG = "optimization_history.png", "param_importances.png"


def _save(ax, path: Path) -> Path:
    """The axes' figure as a PNG, written atomically (tracking.reports.save_figure), then closed
    (Optuna draws with pyplot, which keeps its figures until closed)."""
    import matplotlib.pyplot as plt

    from docclassify.tracking.reports import save_figure

    ax.figure.set_size_inches(8, 5)
    ax.figure.tight_layout()
    save_figure(ax.figure, path, dpi=100)
    plt.close(ax.figure)
    return path


def importances_axes(study, target=None):
    """Optuna's parameter importances (``optuna.importance``) as horizontal bars, drawn here with the
    mean-decrease-impurity evaluator (a random forest on the trials, seeded): Optuna 2.10's default
    fANOVA evaluator, and so its ``plot_param_importances``, fails on today's scikit-learn
    ("setting an array element with a sequence"); this one gives the same picture on every Optuna the
    project supports."""
    import optuna
    from matplotlib.figure import Figure

    evaluator = optuna.importance.MeanDecreaseImpurityImportanceEvaluator(seed=0)
    importances = optuna.importance.get_param_importances(study, evaluator=evaluator, target=target)
    names = list(importances)[::-1]  # the most important on top
    ax = Figure().subplots()  # no pyplot: the project's own figures use the Agg canvas (tracking/reports.py)
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    for y, n in enumerate(names):
        ax.text(importances[n], y, f" {importances[n]:.2f}", va="center")
    ax.set_xlabel("importance for the objective (mean decrease in impurity)")
    ax.set_title(f"Hyperparameter importances: {study.study_name}")
    return ax


def write_study_plots(study, sweep_dir: Path) -> dict[str, Path]:
    """{name: path} of the pictures written. The history needs one finished trial, the importances
    two and a parameter that varied; a picture that cannot be drawn is skipped with a log line, never
    failing the sweep that already finished."""
    import optuna
    from optuna.trial import TrialState

    vis = optuna.visualization.matplotlib
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    target = {}
    if len(study.directions) > 1:  # the plots take one number: the first objective
        target = {"target": lambda t: t.values[0], "target_name": "objective 1"}
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the matplotlib backend is "experimental" in Optuna 2-4
        try:
            if done:
                out["history"] = _save(vis.plot_optimization_history(study, **target), sweep_dir / HISTORY_PNG)
            varied = {k for t in done for k in t.params if len({str(u.params.get(k)) for u in done}) > 1}
            if len(done) >= 2 and varied:
                out["importances"] = _save(importances_axes(study, target.get("target")), sweep_dir / IMPORTANCES_PNG)
            else:
                log.info("Parameter importances need 2 finished trials with a parameter that differs: %d finished",
                         len(done))
        except Exception as exc:  # noqa: BLE001 - a picture must not fail a finished sweep
            log.warning("Study plots not written: %s: %s", type(exc).__name__, exc)
    if out:
        log.info("Study plots: %s", ", ".join(str(p) for p in out.values()))
    return out
