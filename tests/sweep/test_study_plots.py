"""The study's pictures (sweep/plots.py) and their W&B run (tracking.wandb_tracker.log_study): Optuna's
optimization history and parameter importances of a real study, written as PNGs and logged offline."""

from __future__ import annotations

import optuna
import pandas as pd
import pytest
from omegaconf import OmegaConf
from PIL import Image

from docclassify.sweep.plots import HISTORY_PNG, IMPORTANCES_PNG, write_study_plots
from docclassify.sweep.study import trials_frame
from docclassify.tracking.wandb_tracker import log_study

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.optuna_stack


def _study(n: int) -> optuna.Study:
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    # lr matters, the batch size does not: the importances must say so
    study.optimize(lambda t: -abs(t.suggest_float("lr", 1e-4, 1e-1, log=True) - 1e-2)
                   + 0 * t.suggest_categorical("batch", [16, 32]), n_trials=n)
    return study


def test_history_and_importances_are_written_as_pictures(tmp_path):
    out = write_study_plots(_study(12), tmp_path)
    assert set(out) == {"history", "importances"}
    for name in (HISTORY_PNG, IMPORTANCES_PNG):
        with Image.open(tmp_path / name) as im:
            assert im.size[0] >= 600 and im.getextrema() != ((255, 255),) * 3  # drawn, not blank
    assert not list(tmp_path.glob("*.part.png"))
    importances = optuna.importance.get_param_importances(
        _study(12), evaluator=optuna.importance.MeanDecreaseImpurityImportanceEvaluator(seed=0))
    assert max(importances, key=importances.get) == "lr"


def test_one_trial_gets_its_history_only_and_none_gets_nothing(tmp_path):
    assert set(write_study_plots(_study(1), tmp_path / "one")) == {"history"}
    assert write_study_plots(optuna.create_study(), tmp_path / "none") == {}


def test_the_study_run_goes_to_the_trials_group_with_the_pictures(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    study = _study(6)
    images = write_study_plots(study, tmp_path)
    cfg = OmegaConf.create({"logger": {"name": "wandb", "project": "p", "entity": None, "group": None,
                                       "tags": ["t"], "mode": None}})
    log_study(cfg, tmp_path, "my_study", images, trials_frame(study))
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    media = sorted(p.relative_to(runs[0]).as_posix() for p in runs[0].rglob("*.png"))
    assert any("study/history" in m for m in media) and any("study/importances" in m for m in media), media
    assert list(runs[0].rglob("*.table.json"))  # the trials table
    log_study(OmegaConf.create({"logger": {"name": "none"}}), tmp_path / "off", "x", images, pd.DataFrame())
    assert not (tmp_path / "off").exists()
