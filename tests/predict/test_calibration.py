import numpy as np
import pytest
from scipy.special import log_softmax, softmax

from docclassify.predict.calibration import (
    apply_temperature,
    calibration_report,
    ece,
    fit_temperature,
    nll,
)


def _calibrated(n=4000, k=5, seed=0):
    """Logits whose softmax is the true label distribution (labels sampled from it)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, size=(n, k))
    p = softmax(logits, axis=1)
    y = (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return logits, y


def test_overconfident_logits_get_t_above_one():
    logits, y = _calibrated()
    over = logits * 5.0
    rep = calibration_report(over, y)
    assert rep["temperature"] > 1.0
    assert 3.5 < rep["temperature"] < 7.0  # roughly undoes the x5
    assert rep["nll_after"] <= rep["nll_before"]
    assert rep["ece_after"] < rep["ece_before"]
    assert set(rep) == {"temperature", "nll_before", "nll_after", "ece_before", "ece_after"}
    assert all(isinstance(v, float) for v in rep.values())


def test_underconfident_logits_get_t_below_one():
    logits, y = _calibrated(seed=1)
    assert fit_temperature(logits * 0.3, y) < 1.0


def test_calibrated_logits_keep_t_near_one():
    logits, y = _calibrated(seed=2)
    assert abs(fit_temperature(logits, y) - 1.0) < 0.1


def test_log_probs_work_as_logits_and_fit_is_deterministic():
    logits, y = _calibrated(n=800, seed=3)
    over = logits * 3.0
    t1 = fit_temperature(over, y)
    t2 = fit_temperature(log_softmax(over, axis=1) + 7.0, y)  # shifted log-probs
    assert t1 == fit_temperature(over, y)
    assert t1 == pytest.approx(t2, rel=1e-4)


def test_nll_and_apply_temperature():
    logits = np.array([[2.0, 0.0], [0.0, 1.0]])
    y = np.array([0, 1])
    expected = -np.mean([np.log(softmax(logits[0]))[0], np.log(softmax(logits[1]))[1]])
    assert nll(logits, y) == pytest.approx(expected)
    np.testing.assert_allclose(apply_temperature(logits, 2.0), softmax(logits / 2.0, axis=1))
    with pytest.raises(ValueError):
        nll(logits, np.array([0, 2]))
    with pytest.raises(ValueError):
        nll(np.array([[np.nan, 0.0], [0.0, 1.0]]), y)
    with pytest.raises(ValueError):
        apply_temperature(logits, 0.0)


def test_ece_hand_computed():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    y = np.array([0, 1, 0, 1])
    # bins (n=10): conf 0.9 -> two samples, acc 0.5 -> |0.5-0.9|*2 ; 0.6 -> acc 1 -> 0.4 ;
    # 0.7 -> acc 1 -> 0.3
    expected = (0.4 * 2 + 0.4 + 0.3) / 4
    assert ece(probs, y, n_bins=10) == pytest.approx(expected)
    # perfect confident predictions: zero ECE
    assert ece(np.eye(3), np.arange(3)) == pytest.approx(0.0)


def test_averaging_factor_measures_how_much_fold_averaging_softens():
    from docclassify.predict.calibration import averaging_factor

    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, (400, 6))
    assert averaging_factor(np.stack([z, z, z])) == pytest.approx(1.0, abs=1e-4)  # folds agree: nothing softens
    assert averaging_factor(z[None]) == 1.0  # one fold: no average
    alphas = [averaging_factor(np.stack([z + rng.normal(0, s, z.shape) for _ in range(5)])) for s in (0.5, 1.5, 3.0)]
    assert 1.0 > alphas[0] > alphas[1] > alphas[2] > 0.05  # the more the folds disagree, the softer the average


def _kl_to(target_logp, logp, alpha):
    """Mean KL(target || softmax(alpha * logp_f)) over folds and rows."""
    logq = log_softmax(alpha * logp, axis=-1)
    return float((np.exp(target_logp) * (target_logp - logq)).sum(-1).mean())


def test_averaging_factor_measures_the_average_the_ensemble_uses():
    """Issue 26 item 4: with ensemble.average=logit the folds are averaged as logits (softmax of the
    mean), which softens far less than the mean of probabilities when one fold is unsure; the factor
    must be the scale that best mimics *that* average."""
    from docclassify.predict.calibration import averaging_factor

    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, 300)
    sure = 8.0 * np.eye(5)[y] + rng.normal(0, 0.3, (300, 5))  # one fold sure of each row
    unsure = rng.normal(0, 0.3, (300, 5))                        # the other nearly uniform
    folds = np.stack([sure, unsure])
    logp = log_softmax(folds, axis=-1)
    targets = {"prob": np.log(softmax(logp, axis=-1).mean(0)), "logit": log_softmax(logp.mean(0), axis=-1)}
    grid = np.exp(np.linspace(np.log(0.05), np.log(2.0), 2001))
    found = {}
    for average, target in targets.items():
        found[average] = averaging_factor(folds, average)
        best = grid[np.argmin([_kl_to(target, logp, a) for a in grid])]
        assert found[average] == pytest.approx(best, rel=5e-3), average  # the minimiser of its own average
    assert found["logit"] > 1.5 * found["prob"]  # the two averages differ: one factor cannot serve both
    assert averaging_factor(folds) == found["prob"]  # prob stays the default
    with pytest.raises(ValueError, match="prob or logit"):
        averaging_factor(folds, "median")


def test_fit_on_oof_scales_by_the_factor_of_ensemble_average():
    """mimic_fold_average with ensemble.average=logit scales the OOF rows by the logit average's factor
    (summary.json oof.averaging_factors), so the fitted temperature matches what the test rows get."""
    from pathlib import Path
    from types import SimpleNamespace

    from docclassify.predict.calibration import averaging_factor
    from docclassify.predict.fitting import fit_on_oof
    from docclassify.predict.members import Member
    from docclassify.predict.oof_rows import OofInputs

    rng = np.random.default_rng(2)
    y = rng.integers(0, 5, 200)
    folds = np.stack([8.0 * np.eye(5)[y] + rng.normal(0, 1, (200, 5)), rng.normal(0, 1, (200, 5))])
    member = Member(SimpleNamespace(path=Path("run")), log_softmax(folds.mean(0), axis=1), fold_test_logits=folds)
    oof = OofInputs([(np.array([f"r{i}" for i in range(200)]), y, 3.0 * np.eye(5)[y] + rng.normal(0, 1, (200, 5)))],
                    False, [None], "clean")
    for average in ("prob", "logit"):
        fit = fit_on_oof([member], oof, average, "equal", True)
        assert fit.summary["averaging_factors"] == [pytest.approx(averaging_factor(folds, average))]
    assert averaging_factor(folds, "logit") > averaging_factor(folds, "prob") + 0.1
