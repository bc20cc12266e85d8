"""decision=macro_f1 (issue 17): per-class biases fitted by coordinate ascent, cross-fitted, never
reported below the argmax."""

from __future__ import annotations

import numpy as np
import pytest

from docclassify.metrics import class_counts_of, macro_f1, macro_f1_from_counts
from docclassify.predict.decision import (
    _best_bias_for_class,
    apply_biases,
    cross_fit_biases,
    fit_biases,
    fit_decision,
    split_rows,
)

K = 8
RARE = [1, 5, 6]


def imbalanced_case(n: int = 1200, seed: int = 0, balanced_targets: bool = False):
    """Scores of a model biased towards frequent classes: log-probabilities of the true class lifted
    by a signal, plus the log class prior (the three rare classes hold ~1/3 of the others' rows)."""
    rng = np.random.default_rng(seed)
    prior = np.ones(K)
    prior[RARE] = 0.3
    prior /= prior.sum()
    y = rng.choice(K, n, p=np.full(K, 1 / K) if balanced_targets else prior)
    z = rng.normal(0, 1, (n, K))
    z[np.arange(n), y] += 2.0
    return z + 1.5 * np.log(prior), y


def test_fast_macro_f1_equals_sklearn():
    rng = np.random.default_rng(1)
    for n_classes_present in (K, 3):
        y = rng.integers(0, n_classes_present, 300)
        pred = rng.integers(0, K, 300)
        assert macro_f1_from_counts(*class_counts_of(y, pred, K)) == pytest.approx(macro_f1(y, pred), abs=1e-12)


def test_one_coordinate_step_is_the_exact_best_bias():
    """The sweep over switching points finds what a brute-force grid over the bias finds."""
    z, y = imbalanced_case(400, seed=2)
    biases = np.zeros(K)
    value, f1 = _best_bias_for_class(z, y, biases, RARE[0])
    grid = np.linspace(-6, 6, 4001)
    brute = []
    for b in grid:
        trial = biases.copy()
        trial[RARE[0]] = b
        brute.append(macro_f1(y, apply_biases(z, trial)))
    trial = biases.copy()
    trial[RARE[0]] = value
    assert f1 == pytest.approx(macro_f1(y, apply_biases(z, trial)), abs=1e-12)
    assert f1 >= max(brute) - 1e-12 and f1 > macro_f1(y, z.argmax(1))


def test_fitted_biases_raise_in_sample_macro_f1_and_favour_rare_classes():
    z, y = imbalanced_case()
    b = fit_biases(z, y)
    assert macro_f1(y, apply_biases(z, b)) > macro_f1(y, z.argmax(1)) + 0.02
    assert b.mean() == pytest.approx(0.0, abs=1e-12)
    assert b[RARE].min() > np.delete(b, RARE).max()  # the under-predicted classes get the largest biases


def test_cross_fitted_macro_f1_beats_the_argmax_on_an_imbalanced_case():
    z, y = imbalanced_case()
    fit = fit_decision(z, y, "macro_f1")
    assert fit.applied and fit.folds == 5 and fit.rows == len(y)
    assert fit.oof_macro_f1_cross_fitted >= fit.oof_macro_f1_argmax + 0.01
    assert fit.cross_fitted_gain == pytest.approx(fit.oof_macro_f1_cross_fitted - fit.oof_macro_f1_argmax)
    assert fit.oof_macro_f1 == fit.oof_macro_f1_cross_fitted
    assert fit.oof_macro_f1_in_sample >= fit.oof_macro_f1_cross_fitted  # fitting is optimistic, as expected
    # New rows from the same model: the biases fitted on the OOF rows carry over.
    z_new, y_new = imbalanced_case(seed=9)
    assert macro_f1(y_new, fit.predict(z_new)) > macro_f1(y_new, z_new.argmax(1))


def test_no_gain_keeps_the_argmax_and_says_so():
    """Balanced, unbiased scores: the biases only fit noise, the cross-fitted F1 does not rise."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, K, 300)
    z = rng.normal(0, 1, (300, K))
    z[np.arange(300), y] += 1.0
    fit = fit_decision(z, y, "macro_f1")
    assert fit.cross_fitted_gain <= 0 and not fit.applied and fit.biases is None
    assert fit.oof_macro_f1 == fit.oof_macro_f1_argmax and "argmax kept" in fit.message
    assert np.array_equal(fit.predict(z), z.argmax(1))
    assert fit.fitted_biases is not None  # what was fitted, for the record
    plain = fit_decision(z, y, "argmax")
    assert not plain.applied and plain.oof_macro_f1 == macro_f1(y, z.argmax(1))


def test_predictions_change_only_where_the_biases_move_the_argmax():
    z, y = imbalanced_case()
    fit = fit_decision(z, y, "macro_f1")
    z_test, _ = imbalanced_case(500, seed=5)
    moved = fit.predict(z_test) != z_test.argmax(1)
    assert 0 < moved.sum() < len(moved)
    b = np.asarray(fit.biases)
    # every moved row now predicts a class whose bias exceeds the bias of its argmax class
    assert np.all(b[fit.predict(z_test)[moved]] > b[z_test.argmax(1)[moved]])


def test_copies_of_one_image_stay_on_one_side_of_every_split():
    y = np.repeat(np.arange(K), 20)
    groups = np.repeat(np.arange(len(y) // 2), 2)  # two copies per image
    for train, held in split_rows(y, 5, groups, seed=0):
        assert not set(groups[train]) & set(groups[held])
    z, _ = imbalanced_case(len(y))
    assert cross_fit_biases(z, y, 5, groups).shape == y.shape


def test_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="decision='top1'"):
        fit_decision(np.zeros((4, 2)), np.array([0, 1, 0, 1]), "top1")
