"""Inference for macro F1 (issue 17), end to end on real tiny runs: decision=macro_f1 moves only
the rows its biases move, greedy selection and stacking over two runs (stacker.npz round trip),
and runs whose OOF rows differ refused by both."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY, run_cli
from scipy.special import softmax

from docclassify.metrics import macro_f1
from docclassify.predict import fitting
from docclassify.predict.ensemble import STACKER_FILE, Stacker, combine
from docclassify.predict.pipeline import run_inference
from docclassify.predict.run_dirs import RunError

pytestmark = pytest.mark.slow  # every test uses runs trained by the fixtures below


def _train(root, run_dir, cache, extra):
    run_cli("docclassify.train", ["data=competition", f"data.root={root}", f"paths.cache_dir={cache}", *TINY,
                                  "trainer.epochs=3", "trainer.lr=3e-3", "validation=clean", *extra,
                                  f"hydra.run.dir={run_dir}"])
    return run_dir


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory, cache_dir):
    """Two complete 2-fold runs (different models and seeds: the same OOF rows) and a run of 2 of 3
    folds (fewer OOF rows)."""
    base = tmp_path_factory.mktemp("macro")
    return {"a": _train(tiny_data, base / "a", cache_dir, ["folds.n=2", "seed=1"]),
            "b": _train(tiny_data, base / "b", cache_dir, ["folds.n=2", "seed=2", "model=tiny_convnext",
                                                           "loss=focal"]),
            "partial": _train(tiny_data, base / "partial", cache_dir, ["folds.n=3", "folds.run=[0,1]", "seed=3"])}


def compose_infer(overrides):
    from hydra import compose, initialize_config_dir

    from docclassify.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("infer", overrides=overrides)


def infer(run_dirs, out_dir, *overrides):
    cfg = compose_infer([f"runs=[{','.join(str(r) for r in run_dirs)}]", "batch_size=32", "tta=none",
                         "data.test_labels=test_labels.csv", *overrides])  # tta=none: the view these tests fit
    return run_inference(cfg, out_dir)


def _frame(out_dir, name):
    return pd.read_csv(out_dir / name, dtype={"ID": str}).set_index("ID")


@pytest.mark.parametrize("forced", ["applied", "kept"])
def test_decision_rule_moves_only_the_rows_its_biases_move(runs, tmp_path, monkeypatch, forced):
    """Both outcomes of the cross-fitted check on real runs, each forced: the biases are applied only
    when the cross-fitted gain is positive, and then the submission moves exactly where they move the
    argmax; kept out, the submission is the argmax of test_probs.csv."""
    from docclassify.predict import decision as decision_module

    def crossed(scores, y, folds=5, groups=None, seed=0):  # what the held-out parts "predict"
        return np.asarray(y).copy() if forced == "applied" else np.asarray(scores).argmax(1)

    plain = infer([runs["a"], runs["b"]], tmp_path / "argmax")
    monkeypatch.setattr(decision_module, "cross_fit_biases", crossed)
    biased = infer([runs["a"], runs["b"]], tmp_path / "macro", "decision=macro_f1")
    probs = _frame(tmp_path / "macro", "test_probs.csv")
    pd.testing.assert_frame_equal(probs, _frame(tmp_path / "argmax", "test_probs.csv"))  # probabilities untouched
    decision = biased["decision"]
    assert plain["decision"]["rule"] == "argmax" and decision["rule"] == "macro_f1"
    assert decision["rows"] == biased["oof"]["rows"] and decision["folds"] >= 2
    # the OOF macro F1 it reports is never below the argmax's
    assert decision["oof_macro_f1"] >= decision["oof_macro_f1_argmax"] == pytest.approx(biased["oof"]["macro_f1"])
    sub_plain = _frame(tmp_path / "argmax", "submission.csv")["target"]
    sub = _frame(tmp_path / "macro", "submission.csv")["target"]
    p = probs.loc[sub.index].to_numpy()
    assert np.array_equal(sub_plain.to_numpy(), p.argmax(1))
    if forced == "applied":
        assert decision["applied"] and decision["cross_fitted_gain"] > 0 and decision["oof_macro_f1"] == 1.0
        assert decision["biases"] == decision["fitted_biases"] and any(b != 0 for b in decision["biases"])
        expected = (np.log(np.clip(p, 1e-300, None)) + np.asarray(decision["biases"])).argmax(1)
    else:
        assert not decision["applied"] and decision["biases"] is None and decision["cross_fitted_gain"] == 0
        assert "argmax kept" in decision["message"]
        expected = p.argmax(1)
    assert np.array_equal(sub.to_numpy(), expected)  # changed exactly where the biases move the argmax


@pytest.mark.parametrize("forced", ["accepted", "refused"])
def test_greedy_selection_over_two_runs(runs, tmp_path, monkeypatch, forced):
    """Greedy selection over two real runs, its held-out check forced each way: accepted, the weights
    are the selection counts; refused, equal weights."""
    from docclassify.predict import ensemble as ensemble_module

    def held_out(stacked, y, average, groups, seed):
        scores = (1.0, 0.0) if forced == "accepted" else (0.0, 1.0)
        return {"rows": int(len(y)), "greedy": scores[0], "best_single": 0.5, "equal": scores[1]}

    monkeypatch.setattr(ensemble_module, "_cross_selection", held_out)
    summary = infer([runs["a"], runs["b"]], tmp_path / "greedy", "ensemble.weights=greedy")
    fit = summary["ensemble"]["oof_fit"]
    w = np.asarray(summary["ensemble"]["weights"])
    assert w.sum() == pytest.approx(1.0) and len(fit["counts"]) == 2 and sum(fit["counts"]) >= 1
    assert fit["held_out"]["rows"] == summary["oof"]["rows"]
    assert fit["accepted"] == (forced == "accepted")
    if forced == "accepted":  # selected on the OOF rows: >= the best single run and >= equal weights there
        assert fit["f1_fitted"] >= fit["f1_best_single"] and fit["f1_fitted"] >= fit["f1_equal"]
        assert np.allclose(w, np.asarray(fit["counts"]) / sum(fit["counts"]))
    else:
        assert np.allclose(w, 0.5)
    assert summary["oof"]["macro_f1"] == pytest.approx(fit["f1_fitted"])


@pytest.mark.parametrize("forced", [True, False])
def test_stacking_is_saved_and_reproduces_the_test_probabilities(runs, tmp_path, monkeypatch, forced):
    """Stacking over two real runs, its cross-fitted check forced each way: accepted, stacker.npz is
    saved and reproduces test_probs.csv; refused, equal weights and no stacker file."""
    real = fitting.fit_stacker

    def gated(probs, y, groups=None, *a, **k):
        stacker, report = real(probs, y, groups, *a, **k)
        return stacker, {**report, "accepted": forced}

    monkeypatch.setattr(fitting, "fit_stacker", gated)
    singles = [infer([runs[k]], tmp_path / k, "calibrate=false") for k in ("a", "b")]
    assert all(s["ensemble"]["weights"] == [1.0] for s in singles)
    summary = infer([runs["a"], runs["b"]], tmp_path / "stack", "ensemble.weights=stack", "calibrate=false")
    report = summary["ensemble"]["oof_fit"]
    assert report["C"] in report["Cs"] and report["folds"] >= 2 and report["accepted"] == forced
    probs = _frame(tmp_path / "stack", "test_probs.csv")
    members = [_frame(tmp_path / k, "test_probs.csv").loc[probs.index].to_numpy() for k in ("a", "b")]
    if forced:
        stacker = Stacker.load(tmp_path / "stack" / STACKER_FILE)
        assert summary["ensemble"]["stacked"] and report["file"] == STACKER_FILE
        np.testing.assert_allclose(probs.to_numpy(), stacker.predict_proba(members), atol=1e-6)
        assert not np.allclose(probs.to_numpy(), combine(members), atol=1e-3)  # not the equal average
    else:  # stacking scored below equal weights out of fold: equal weights, no stacker file
        assert not (tmp_path / "stack" / STACKER_FILE).exists() and not summary["ensemble"]["stacked"]
        np.testing.assert_allclose(probs.to_numpy(), combine(members), atol=1e-6)


def test_stacker_fitted_on_real_runs_round_trips(runs, tmp_path):
    """Whatever the gate decides, the fitted stacker saved as npz predicts what it predicted."""
    from docclassify.predict.ensemble import fit_stacker
    from docclassify.predict.run_dirs import discover_runs, load_oof

    oofs = [load_oof(r) for r in discover_runs([runs["a"], runs["b"]])]
    assert np.array_equal(oofs[0][0], oofs[1][0])
    members = [softmax(z, axis=1) for _, _, z in oofs]
    stacker, report = fit_stacker(members, oofs[0][1])
    stacker.save(tmp_path / STACKER_FILE)
    again = Stacker.load(tmp_path / STACKER_FILE)
    np.testing.assert_array_equal(again.predict_proba(members), stacker.predict_proba(members))
    assert macro_f1(oofs[0][1], report["oof_probs"].argmax(1)) == pytest.approx(report["f1_cross_fitted"])


def test_oof_rows_scaled_like_fold_averages(runs, tmp_path, cache_dir):
    """mimic_fold_average: each run's OOF log-probabilities are scaled by its averaging factor
    before anything is fitted, so the temperature is that factor times the unscaled fit's."""
    from docclassify.predict.calibration import averaging_factor

    plain = infer([runs["a"]], tmp_path / "plain", "mimic_fold_average=false", "calibrate=true")
    mimic = infer([runs["a"]], tmp_path / "mimic", "calibrate=true")
    (alpha,) = mimic["oof"]["averaging_factors"]
    assert plain["oof"]["averaging_factors"] is None and 0.05 < alpha < 1.0  # two folds that disagree
    assert mimic["temperature"] == pytest.approx(alpha * plain["temperature"], rel=1e-3)
    probs = {k: _frame(tmp_path / k, "test_probs.csv").to_numpy() for k in ("plain", "mimic")}
    assert not np.allclose(probs["plain"], probs["mimic"], atol=1e-4)
    # the factor is measured on the run's own fold predictions of the test rows
    from docclassify.predict.imagestore import ImageStore
    from docclassify.predict.members import predict_run
    from docclassify.predict.run_dirs import load_run
    from docclassify.predict.testdata import load_data
    from docclassify.predict.tta import View
    from docclassify.predict.views import TtaPredictor

    run = load_run(runs["a"])
    (ds,) = load_data([run], {}, str(cache_dir))
    predictor = TtaPredictor([View("identity")], "prob", 32, torch.device("cpu"))
    member = predict_run(run, "a", ds, ImageStore(str(tmp_path / "c")), predictor, "prob", None)
    assert member.fold_test_logits.shape == (2, len(probs["plain"]), 17)
    assert averaging_factor(member.fold_test_logits) == pytest.approx(alpha, rel=1e-4)


@pytest.mark.parametrize("mode", ["greedy", "stack"])
def test_runs_with_different_oof_rows_are_refused(runs, tmp_path, mode):
    out = tmp_path / "out"
    with pytest.raises(RunError, match=rf"ensemble.weights={mode}: the runs' out-of-fold rows differ: .* has 102, "
                                       r".* has 68 \(34 rows not in both"):
        infer([runs["a"], runs["partial"]], out, f"ensemble.weights={mode}")
    assert not any((out / f).exists() for f in ("submission.csv", "test_probs.csv", "summary.json", STACKER_FILE))
    # ensemble.weights=oof fits on the rows they share, as before
    assert infer([runs["a"], runs["partial"]], tmp_path / "oof", "ensemble.weights=oof")["oof"]["rows"] == 68


def test_cli_decision_and_greedy(runs, tmp_path):
    run_cli("docclassify.infer", [f"runs=[{runs['a']},{runs['b']}]", "decision=macro_f1", "ensemble.weights=greedy",
                                  f"hydra.run.dir={tmp_path}"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["decision"]["rule"] == "macro_f1" and summary["ensemble"]["weights_mode"] == "greedy"
    bad = run_cli("docclassify.infer", [f"runs=[{runs['a']}]", "decision=top1", f"hydra.run.dir={tmp_path / 'bad'}"],
                  check=False)
    assert bad.returncode != 0 and "decision='top1'" in bad.stdout + bad.stderr
