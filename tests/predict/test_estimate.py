"""The label-free test estimate (predict/estimate.py, ATC): its threshold, its macro F1 and that it
follows the test images' confidence, not the OOF rows'."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from docclassify.predict.estimate import atc_threshold, estimate_test_f1, expected_macro_f1


def test_the_threshold_leaves_as_many_rows_above_it_as_are_right():
    rng = np.random.default_rng(0)
    conf = rng.random(200)
    correct = rng.random(200) < conf  # confident rows are right more often
    t = atc_threshold(conf, correct)
    assert np.sum(conf > t) == int(round(correct.mean() * 200))
    assert atc_threshold(conf, np.ones(200, bool)) == float("-inf")  # all right: every row is above


def test_expected_f1_is_sklearns_when_correctness_is_known_and_the_runner_up_is_the_truth():
    """q = 1 on the right rows, 0 on the wrong ones, and each wrong row's probability outside its
    argmax on its true class: the expected counts are the real ones, so the F1 is sklearn's."""
    rng = np.random.default_rng(1)
    n, k = 300, 6
    y = rng.integers(0, k, n)
    pred = np.where(rng.random(n) < 0.7, y, rng.integers(0, k, n))
    probs = np.zeros((n, k))
    probs[np.arange(n), pred] = 0.6
    other = np.where(pred == y, (y + 1) % k, y)  # a right row's rest anywhere; a wrong row's on its truth
    probs[np.arange(n), other] += 0.4
    q = (pred == y).astype(float)
    assert expected_macro_f1(probs, q) == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-12)


def test_the_estimate_follows_the_test_images_confidence():
    """The same OOF rows; a test set on which the model is as sure as on them is estimated near their
    accuracy, one on which it is unsure (a shift it was not validated on) far lower."""
    rng = np.random.default_rng(2)
    k, n = 5, 400

    def probs_with(sure):
        z = rng.normal(size=(n, k))
        z[np.arange(n), rng.integers(0, k, n)] += sure
        e = np.exp(z)
        return e / e.sum(1, keepdims=True)

    oof = probs_with(3.0)
    y = np.where(rng.random(n) < 0.8, oof.argmax(1), rng.integers(0, k, n))
    like = estimate_test_f1(oof, y, probs_with(3.0))
    unsure = estimate_test_f1(oof, y, probs_with(0.5))
    assert abs(like["accuracy"] - like["oof_accuracy"]) < 0.08
    assert unsure["accuracy"] < like["accuracy"] - 0.3 and unsure["macro_f1"] < like["macro_f1"] - 0.3
