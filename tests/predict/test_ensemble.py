import numpy as np
import pytest
from scipy.special import softmax

from docclassify.predict import ensemble
from docclassify.predict.ensemble import combine, fit_oof_weights


def _members(n=600, k=6, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    onehot = np.eye(k)[y]
    strong = softmax(3.0 * onehot + rng.normal(0, 1.0, (n, k)), axis=1)
    weak1 = softmax(0.3 * onehot + rng.normal(0, 1.0, (n, k)), axis=1)
    weak2 = rng.dirichlet(np.ones(k), size=n)
    return [weak1, strong, weak2], y


def test_combine_weighted_mean_and_normalisation():
    a = np.array([[0.8, 0.2], [0.5, 0.5]])
    b = np.array([[0.2, 0.8], [0.1, 0.9]])
    np.testing.assert_allclose(combine([a, b]), (a + b) / 2)
    np.testing.assert_allclose(combine([a, b], [3, 1]), 0.75 * a + 0.25 * b)
    np.testing.assert_allclose(combine([a, b], [6, 2]), combine([a, b], [0.75, 0.25]))
    la, lb = np.log(a), np.log(b)
    np.testing.assert_allclose(
        combine([la, lb], [1, 1], average="logit"), softmax((la + lb) / 2, axis=1)
    )
    # average changes the result
    assert not np.allclose(combine([a, b]), combine([la, lb], average="logit"))


def test_combine_errors():
    a = np.full((3, 2), 0.5)
    with pytest.raises(ValueError, match="shape mismatch"):
        combine([a, np.full((3, 3), 1 / 3)])
    with pytest.raises(ValueError, match=">= 0"):
        combine([a, a], [1.0, -0.5])
    with pytest.raises(ValueError, match="2 weights for 3"):
        combine([a, a, a], [1.0, 1.0])
    with pytest.raises(ValueError, match="all be 0"):
        combine([a, a], [0.0, 0.0])
    with pytest.raises(ValueError, match="probabilities"):
        combine([np.array([[2.0, -1.0]])])  # logits passed as probabilities
    with pytest.raises(ValueError, match="average"):
        combine([a], average="max")
    with pytest.warns(UserWarning, match="look like probabilities"):
        combine([a], average="logit")


@pytest.mark.parametrize("average", ["prob", "logit"])
def test_fit_oof_weights_planted_strong_member(average):
    members, y = _members()
    if average == "logit":
        members = [np.log(m) for m in members]
    res = fit_oof_weights(members, y, average=average)
    w = np.array(res["weights"])
    assert np.all(w >= 0)
    assert w.sum() == pytest.approx(1.0)
    assert res["f1_fitted"] >= res["f1_equal"]
    assert res["accepted"]
    assert w.argmax() == 1 and w[1] > 0.6
    assert res["nll_fitted"] <= res["nll_equal"]
    # deterministic
    assert fit_oof_weights(members, y, average=average)["weights"] == res["weights"]


def test_fit_oof_weights_falls_back_to_equal_when_f1_drops(monkeypatch):
    members, y = _members(seed=1)
    # pretend the optimiser put everything on the useless member
    monkeypatch.setattr(ensemble, "_optimize_weights",
                        lambda stacked, y, average: np.array([0.0, 0.0, 1.0]))
    res = fit_oof_weights(members, y)
    assert not res["accepted"]
    assert res["weights"] == pytest.approx([1 / 3] * 3)
    assert res["optimized_weights"] == [0.0, 0.0, 1.0]
    assert res["f1_fitted"] == res["f1_equal"]


def test_fit_oof_weights_single_member_and_label_checks():
    members, y = _members(n=50)
    res = fit_oof_weights(members[:1], y)
    assert res["weights"] == [1.0]
    with pytest.raises(ValueError):
        fit_oof_weights(members, y[:-1])
