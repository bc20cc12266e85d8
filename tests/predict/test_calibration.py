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
