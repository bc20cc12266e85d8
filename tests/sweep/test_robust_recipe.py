"""hparams_search=robust_recipe: a real single-fold sweep whose trials search match_validation and
orientation augmentation among the rest, are scored on the robust objective and export the best as an
experiment.

Three tiny trials on the tiny data set (a tiny timm model, 32-40 px, 1-2 epochs, one fold).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import optuna
import pytest
from conftest import rerun_best_experiment, run_cli
from omegaconf import OmegaConf
from optuna.trial import TrialState

SPACE = {"data.img_size", "augment.match_validation", "augment.match_p_start", "augment.match_p_end",
         "augment.advanced_p_end", "augment.orientation", "augment.orientation_p", "trainer.lr", "trainer.epochs"}


@pytest.fixture(scope="module")
def recipe(tiny_data, tmp_path_factory, isolated_env):
    root = tmp_path_factory.mktemp("robust_recipe")
    storage, sweep_dir = f"sqlite:///{root / 'optuna.db'}", root / "sweep"
    proc = run_cli("docclassify.train", [
        "-m", "hparams_search=robust_recipe", "data=competition", f"data.root={tiny_data}", "model=tiny",
        "data.num_workers=0", "folds.n=3", "trainer.deterministic=true", "logger=none", "shift.report=false",
        # a CPU test's sizes, epochs and a learning-rate range in which the tiny model learns
        "data.img_size=choice(32,40)", "trainer.epochs=range(1,3)", "trainer.lr=tag(log, interval(3e-3, 3e-2))",
        "hydra.sweeper.n_trials=3", f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=recipe",
        f"hydra.sweep.dir={sweep_dir}"], env=isolated_env)
    study = optuna.load_study(study_name="recipe", storage=storage)
    return SimpleNamespace(proc=proc, sweep_dir=sweep_dir, study=study, env=isolated_env)


@pytest.mark.slow
def test_every_trial_trains_one_fold_with_its_augmentation_on_the_robust_objective(recipe):
    trials = recipe.study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 3
    for t in trials:
        assert set(t.params) == SPACE
        run_dir = recipe.sweep_dir / str(t.number)
        results = json.loads((run_dir / "results.json").read_text())
        assert results["monitor"] == "robust"
        assert t.value == results["objective"] == results["cv_macro_f1_robust_select"]
        assert results["folds_run"] == [0] and results["folds"][0]["epochs_run"] == t.params["trainer.epochs"]
        assert results["folds"][0]["img_size"] == t.params["data.img_size"]
        ran = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
        for key in SPACE - {"data.img_size", "trainer.epochs"}:
            assert OmegaConf.select(ran, key) == t.params[key], key
        history = results["folds"][0]["history"]
        assert t.intermediate_values[len(history) - 1] == pytest.approx(history[-1]["val_macro_f1_robust_select"])
    log = recipe.proc.stdout + recipe.proc.stderr
    matched = sum(bool(t.params["augment.match_validation"]) for t in trials)
    assert ("augment.match_validation:" in log) == (matched > 0) and "Trials of study recipe" in log


@pytest.mark.slow
def test_the_best_trial_is_exported_as_an_experiment_that_reproduces_it(recipe, tmp_path):
    ran, results = rerun_best_experiment(recipe, tmp_path / "rerun")
    assert ran.trainer.monitor == "robust" and ran.folds.run == [0]
    assert results["objective"] == recipe.study.best_trial.value
