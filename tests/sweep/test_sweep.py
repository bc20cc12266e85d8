"""Optuna sweeps whose trials really train (hparams_search configs + the docclassify sweeper).

Real `python -m docclassify.train -m` sweeps on the tiny data set: each trial trains a tiny
timm model for 2 epochs on one fold. Two module-scoped sweeps are shared by the assertions:
``tuned`` (the optuna_single_fold search space, run twice into one sqlite study) and
``pruned`` (enqueued learning rates that make one trial crash and one fall behind).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest
import yaml
from conftest import rerun_best_experiment, run_cli
from omegaconf import OmegaConf
from optuna.trial import TrialState

optuna.logging.set_verbosity(optuna.logging.WARNING)
# The smoke subset CI runs again on the modern Optuna stack (.ci/run: pytest -m optuna_stack).
pytestmark = pytest.mark.optuna_stack
MODERN = int(optuna.__version__.split(".")[0]) >= 3

# A learning-rate range in which the tiny model learns within 2 epochs (so the objective
# values differ), and image sizes a CPU test can afford; the rest is the config's space.
SEARCH_OVERRIDES = ["trainer.lr=tag(log, interval(3e-3, 3e-2))", "data.img_size=choice(32,40)"]


def _base(data: Path) -> list[str]:
    return ["-m", "hparams_search=optuna_single_fold", "data=competition", f"data.root={data}", "model=tiny",
            "data.num_workers=0", "trainer.epochs=2", "folds.n=3", "trainer.deterministic=true", "logger=none",
            "shift.report=false"]  # no shift plot in every trial's dir (conftest.TINY)


def _study(storage: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage)


@pytest.fixture(scope="module")
def tuned(tiny_data, tmp_path_factory, isolated_env):
    root = tmp_path_factory.mktemp("tuned")
    storage, sweep_dir = f"sqlite:///{root / 'optuna.db'}", root / "sweep"
    args = [*_base(tiny_data), *SEARCH_OVERRIDES, f"hydra.sweeper.storage={storage}",
            "hydra.sweeper.study_name=tiny_study", f"hydra.sweep.dir={sweep_dir}"]
    env = isolated_env
    first = run_cli("docclassify.train", [*args, "hydra.sweeper.n_trials=3"], env=env)
    n_after_first = len(_study(storage, "tiny_study").trials)
    again = run_cli("docclassify.train", [*args, "hydra.sweeper.n_trials=1"], env=env)  # the same study, resumed
    return SimpleNamespace(storage=storage, sweep_dir=sweep_dir, first=first, again=again,
                           n_after_first=n_after_first, study=_study(storage, "tiny_study"), env=env)


@pytest.mark.slow
def test_every_trial_trains_with_its_own_params(tuned):
    trials = tuned.study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4
    assert len({t.value for t in trials}) == 4
    assert set(trials[0].params) == {
        "trainer.lr", "regularization.weight_decay", "augment.mixup_alpha", "regularization.label_smoothing",
        "regularization.drop_path_rate", "regularization.ema_decay", "augment.advanced_p_end", "trainer.batch_size",
        "data.img_size"}
    for t in trials:
        run_dir = tuned.sweep_dir / str(t.number)  # trial dirs are named by the trial's number in the study
        results = json.loads((run_dir / "results.json").read_text())
        # The objective is what training measured: the monitored pooled value (robust by default).
        assert results["monitor"] == "robust"
        assert t.value == results["objective"] == results["cv_macro_f1_robust_select"]
        assert results["folds_run"] == [0] and results["folds"][0]["epochs_run"] == 2
        assert results["folds"][0]["img_size"] == t.params["data.img_size"]
        ran = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
        assert ran.trainer.lr == t.params["trainer.lr"] and ran.trainer.batch_size == t.params["trainer.batch_size"]
        assert ran.regularization.ema is True and ran.regularization.ema_decay == t.params["regularization.ema_decay"]
        timing = json.loads((run_dir / "sweep_trial.json").read_text())
        assert timing["number"] == t.number and timing["state"] == "complete"
        assert 0 < timing["train_s"] < timing["job_s"]
        assert t.intermediate_values.keys() == {0, 1}  # one report per epoch
        history = results["folds"][0]["history"]  # reported per epoch: the monitored (robust) value
        assert t.intermediate_values[1] == pytest.approx(history[1]["val_monitored"])
        assert history[1]["val_monitored"] == history[1]["val_macro_f1_robust_select"]
    log = tuned.first.stdout + tuned.first.stderr
    assert "overhead outside training" in log


@pytest.mark.slow
def test_study_persists_and_a_rerun_adds_trials(tuned):
    assert tuned.n_after_first == 3
    assert [t.number for t in tuned.study.trials] == [0, 1, 2, 3]
    assert (tuned.sweep_dir / "3" / "results.json").is_file()  # the resumed trial did not reuse dir 0
    table = pd.read_csv(tuned.sweep_dir / "trials.csv")
    assert list(table["number"]) == [0, 1, 2, 3] and set(table["state"]) == {"COMPLETE"}
    assert (table["train_s"] > 0).all() and (table["seconds"] > table["train_s"]).all()
    assert table["value"].tolist() == [t.value for t in tuned.study.trials]
    best = yaml.safe_load((tuned.sweep_dir / "optimization_results.yaml").read_text())
    assert best["best_value"] == max(t.value for t in tuned.study.trials)
    assert "Trials of study tiny_study" in tuned.again.stdout + tuned.again.stderr
    # the study's pictures over all 4 trials (sweep/plots.py), redrawn by the resumed sweep
    for name in ("optimization_history.png", "param_importances.png"):
        assert (tuned.sweep_dir / name).stat().st_mtime >= (tuned.sweep_dir / "3" / "results.json").stat().st_mtime
    assert "Study plots: " in tuned.again.stdout + tuned.again.stderr


@pytest.mark.slow
def test_best_experiment_reproduces_the_best_trial(tuned, tmp_path):
    ran, results = rerun_best_experiment(tuned, tmp_path / "rerun")
    assert ran.folds.run == [0] and ran.trainer.epochs == 2 and ran.model.name == "tiny"
    assert results["objective"] == tuned.study.best_trial.value


@pytest.mark.slow
def test_printed_override_list_composes_the_best_trial(tuned):
    best = tuned.study.best_trial
    log = (tuned.again.stdout + tuned.again.stderr).splitlines()
    line = next(x for x in log if x.strip().startswith("python -m docclassify.train data=competition"))
    import shlex

    overrides = shlex.split(line.strip())[3:]
    proc = run_cli("docclassify.train", [*overrides, "--cfg", "job"], env=tuned.env)
    composed = OmegaConf.create(proc.stdout)
    for key, value in best.params.items():
        assert OmegaConf.select(composed, key) == value, key


LRS = [0.02, -1.0, 0.01, 0.0, "abc"]


@pytest.fixture(scope="module")
def pruned(tiny_data, tmp_path_factory, isolated_env):
    """Enqueued learning rates: 0.02 learns, -1.0 crashes the optimiser, 0.01 learns, 0.0 does
    not (pruned at epoch 1), "abc" does not even compose (the launcher raises): the second
    failure is over the budget (max_failure_rate 0.2 x 6 trials = 1), so no 6th trial."""
    root = tmp_path_factory.mktemp("pruned")
    storage, sweep_dir = f"sqlite:///{root / 'optuna.db'}", root / "sweep"
    proc = run_cli("docclassify.train", [
        *_base(tiny_data), "data.img_size=32", "trainer.batch_size=16", "regularization.ema=false",
        "hydra.sweeper.params=null", f"trainer.lr=choice({','.join(map(str, LRS))})",
        "hydra.sweeper.enqueue_trials=[" + ",".join(f"{{trainer.lr:{lr}}}" for lr in LRS) + "]",
        "hparams_search.pruner.n_startup_trials=2", "hparams_search.pruner.n_warmup_steps=0",
        "hydra.sweeper.n_trials=6", "hydra.sweeper.max_failure_rate=0.2", f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.study_name=pruning", f"hydra.sweep.dir={sweep_dir}"], env=isolated_env, check=False)
    return SimpleNamespace(proc=proc, sweep_dir=sweep_dir, storage=storage, study=_study(storage, "pruning"))


@pytest.mark.slow
def test_a_crashed_trial_fails_and_the_sweep_goes_on(pruned):
    trials = pruned.study.trials
    assert [t.params["trainer.lr"] for t in trials] == LRS  # enqueued, in order
    assert trials[1].state == TrialState.FAIL
    assert trials[2].state == TrialState.COMPLETE  # trials after the crash still ran
    assert "trainer.lr=-1.0: expected a number >= 0.0" in pruned.proc.stdout + pruned.proc.stderr  # refused up front


@pytest.mark.slow
def test_failures_beyond_max_failure_rate_stop_the_sweep(pruned):
    assert pruned.proc.returncode != 0
    assert len(pruned.study.trials) == 5 and pruned.study.trials[4].state == TrialState.FAIL  # no 6th trial
    log = pruned.proc.stdout + pruned.proc.stderr
    assert "Trial(s) [4] failed to launch" in log and "stopping the sweep" in log
    table = pd.read_csv(pruned.sweep_dir / "trials.csv")  # the summary is written before stopping
    assert table["state"].tolist() == ["COMPLETE", "FAIL", "COMPLETE", "PRUNED", "FAIL"]


@pytest.mark.slow
def test_a_bad_trial_is_pruned_by_the_median_pruner(pruned):
    first, _, third, bad, _ = pruned.study.trials
    assert first.state == third.state == TrialState.COMPLETE
    assert bad.state == TrialState.PRUNED
    assert list(bad.intermediate_values) == [0]  # stopped after epoch 1 of 2
    assert bad.value == bad.intermediate_values[0]
    assert bad.value < min(first.intermediate_values[0], third.intermediate_values[0])
    run_dir = pruned.sweep_dir / str(bad.number)
    assert not (run_dir / "results.json").exists()
    assert json.loads((run_dir / "sweep_trial.json").read_text())["state"] == "pruned"


def _dashboard_get(app, path: str) -> dict:
    """GET ``path`` from optuna-dashboard's WSGI app in this process (what its web UI reads)."""
    from wsgiref.util import setup_testing_defaults

    environ: dict = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    status = []
    body = b"".join(app(environ, lambda s, h, exc_info=None: status.append(s)))
    assert status[0].startswith("200"), (path, status, body[:500])
    return json.loads(body)


def dashboard_trials(storage: str, study_name: str) -> dict[int, dict]:
    """Every trial of ``study_name`` as optuna-dashboard serves it (its WSGI app, as
    `optuna-dashboard sqlite:///...` runs it): number -> state, params, intermediate values, values."""
    import optuna_dashboard

    app = optuna_dashboard.wsgi(storage)
    (entry,) = [s for s in _dashboard_get(app, "/api/studies")["study_summaries"] if s["study_name"] == study_name]
    detail = _dashboard_get(app, f"/api/studies/{entry['study_id']}")
    return {t["number"]: {"state": t["state"].upper(),
                          "params": {p["name"]: p["param_external_value"] for p in t["params"]},
                          "steps": {int(v["step"]): float(v["value"]) for v in t["intermediate_values"]},
                          "values": t.get("values")} for t in detail["trials"]}


@pytest.mark.slow
@pytest.mark.skipif(not MODERN, reason="optuna-dashboard needs optuna>=3.6: the modern stack (.[optuna5])")
def test_optuna_dashboard_reads_every_trial_of_a_sweep(tuned, pruned):
    """optuna-dashboard's storage API lists the sweeps' studies and reads every trial, param and
    intermediate value that the sweeps (and their trial jobs) wrote."""
    pytest.importorskip("optuna_dashboard")
    for sweep, name in ((tuned, "tiny_study"), (pruned, "pruning")):
        shown = dashboard_trials(sweep.storage, name)
        assert sorted(shown) == [t.number for t in sweep.study.trials]
        for t in sweep.study.trials:
            got = shown[t.number]
            assert got["state"] == t.state.name
            assert got["params"] == {k: str(v) for k, v in t.params.items()}
            assert got["steps"] == pytest.approx(t.intermediate_values)
            if t.state == TrialState.COMPLETE:
                assert got["values"] == pytest.approx(t.values)
        assert any(got["steps"] for got in shown.values())


@pytest.mark.slow
@pytest.mark.skipif(not MODERN, reason="the GP and QMC samplers are Optuna 3+ (the modern stack)")
def test_a_new_sampler_is_configurable(tiny_data, tmp_path, isolated_env):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    proc = run_cli("docclassify.train", [
        *_base(tiny_data), "trainer.epochs=1", "data.img_size=32", "hydra/sweeper/sampler=qmc",
        "hydra.sweeper.params=null", "trainer.lr=tag(log, interval(3e-3, 3e-2))", "hydra.sweeper.n_trials=2",
        f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=qmc", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        env=isolated_env)
    assert "sampler QMCSampler" in proc.stdout + proc.stderr
    trials = _study(storage, "qmc").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert len({t.params["trainer.lr"] for t in trials}) == 2


# --- the pieces, without a sweep process ------------------------------------------------------

def test_grid_choices_and_directions_on_this_optuna():
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
    from hydra_plugins.hydra_optuna_sweeper.config import Direction

    from hydra_plugins.docclassify_sweeper._impl import directions_of, grid_choices

    parsed = create_params_from_overrides(["a=range(10,31,step=5)", "b=choice(x,y)", "c=interval(0.0,1.0)", "d=3"])
    space, fixed = parsed[0], parsed[1]
    assert grid_choices(space["a"]) == [10, 15, 20, 25, 30] and grid_choices(space["b"]) == ["x", "y"]
    with pytest.raises(ValueError, match="discrete"):
        grid_choices(space["c"])
    assert fixed == {"d": "3"}
    assert directions_of("maximize") == ["maximize"]
    assert directions_of([Direction.minimize, "maximize"]) == ["minimize", "maximize"]



def test_trial_callback_reports_running_mean_and_prunes(tmp_path):
    from docclassify.sweep.trial import OptunaTrialCallback, TrialInfo, build_pruner, open_trial

    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="unit", storage=storage, direction="maximize")
    for value in (0.6, 0.8):  # two finished trials reporting 0.6 / 0.8 at steps 0..3: median 0.7
        t = study.ask()
        for step in range(4):
            t.report(value, step)
        study.tell(t, value)
    median = {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 2, "n_warmup_steps": 0}

    def callback(pruner_spec):
        info = TrialInfo("unit", study.ask().number, storage)
        return info, OptunaTrialCallback(info, tmp_path, epochs=2, trial=open_trial(info, build_pruner(pruner_spec)))

    # hparams_search.pruner=null: values are reported (running mean over folds), nothing is pruned
    info, cb = callback(None)
    cb.on_fold_start(0, {})
    # The monitored value is reported (trainer.monitor), not the clean macro F1 beside it.
    cb.on_epoch_end(0, 0, {"val_monitored": 0.1, "val_macro_f1": 0.5})
    cb.on_epoch_end(0, 1, {"val_monitored": 0.9, "val_macro_f1": 0.5})
    cb.on_fold_end(0, {"best_monitored": 0.9, "best_macro_f1": 0.5, "seconds": 1.0})
    cb.on_fold_start(1, {})
    cb.on_epoch_end(1, 0, {"val_monitored": 0.3, "val_macro_f1": 0.5})
    reported = _study(storage, "unit").trials[info.number].intermediate_values
    assert reported == {0: 0.1, 1: 0.9, 2: pytest.approx(0.6)}  # step = folds done * epochs + epoch

    _, cb = callback(median)
    cb.on_fold_start(0, {})
    cb.on_epoch_end(0, 0, {"val_monitored": 0.75})  # above the median 0.7: goes on
    _, cb = callback(median)
    cb.on_fold_start(0, {})
    with pytest.raises(optuna.TrialPruned):
        cb.on_epoch_end(0, 0, {"val_monitored": 0.2, "val_macro_f1": 0.9})  # the clean value would go on
    assert json.loads((tmp_path / "sweep_trial.json").read_text())["state"] == "pruned"


def test_build_sweep_callbacks_only_in_sweep_trials(tmp_path):
    from docclassify.sweep import build_sweep_callbacks, trial_info

    cfg = OmegaConf.create({"hparams_search": {"trial": {"study": None, "number": None, "storage": None}}})
    assert trial_info(cfg) is None and build_sweep_callbacks(cfg) == []
    assert trial_info(OmegaConf.create({})) is None
    cfg.hparams_search.trial.update(study="s", number=3)
    info = trial_info(cfg)
    assert (info.study, info.number, info.storage) == ("s", 3, None)


@pytest.mark.parametrize("text", ["plain", "it's", "a b", "back\\slash", "ends\\", "quote\\'", "${oops}",
                                  "sqlite:////tmp/x y.db"])
def test_trial_overrides_survive_hydra_parsing(text):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from docclassify.sweep.study import trial_overrides

    parsed = OverridesParser.create().parse_overrides(trial_overrides(text, 7, text))
    values = {o.key_or_group: o.value() for o in parsed}
    assert values["hparams_search.trial.number"] == 7
    cfg = OmegaConf.create({"v": values["hparams_search.trial.study"]})
    assert cfg.v == text  # an interpolation-looking name stays literal


def test_enqueue_rejects_values_outside_the_search_space():
    from optuna.distributions import CategoricalDistribution, LogUniformDistribution

    from docclassify.sweep.study import enqueue_missing

    study = optuna.create_study(direction="maximize")
    space = {"trainer.lr": LogUniformDistribution(1e-5, 1e-2), "data.img_size": CategoricalDistribution((32, 40))}
    with pytest.raises(ValueError, match="trainer.lr=0.5 is outside"):
        enqueue_missing(study, [{"trainer.lr": 0.5}], space)
    with pytest.raises(ValueError, match="not a search-space parameter"):
        enqueue_missing(study, [{"trainer.epochs": 3}], space)
    assert enqueue_missing(study, [{"trainer.lr": 1e-3}, {"data.img_size": 40}], space) == 2
    assert enqueue_missing(study, [{"trainer.lr": 1e-3}], space) == 0  # already queued
