"""Test-time orientation (predict/upright.py): an exactly known turn is undone.

An oracle model knows three reference pages exactly: its orientation head names the element that
turns the nearest reference into the input, and its classifier is confident (and right) only on an
upright page. Every page turned by every one of the 8 elements must come back upright: the estimate
is the element applied, the class the page's. The same with the classifier as the estimator (no head),
and for orient_soft. Deskewing finds a known small angle.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from docclassify.data import dihedral
from docclassify.data.deskew import deskew, estimate_skew
from docclassify.data.dihedral import DIHEDRAL, Element, apply_numpy, apply_torch
from docclassify.distortion import rotate
from docclassify.models.heads import OrientationModel
from docclassify.predict.upright import OrientPredictor, orientation_summary, upright_flip_for

SIZE, N_CLASSES = 12, 3
META = {"mean": [0.0] * 3, "std": [1.0] * 3, "trained_orientations": {"group": "dihedral", "p": 0.5, "mirrors": True}}


def _pages() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, size=(N_CLASSES, SIZE, SIZE, 3), dtype=np.uint8)


class OracleClassifier(nn.Module):
    """Confident and right on an upright reference page, unsure and wrong on any turn of one."""

    def __init__(self, pages: np.ndarray):
        super().__init__()
        refs = torch.from_numpy(pages).permute(0, 3, 1, 2).float() / 255.0  # (C, 3, H, W)
        self.register_buffer("refs", torch.stack([apply_torch(refs, g) for g in DIHEDRAL], 1))  # (C, 8, 3, H, W)

    def nearest(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(class, element) of the turned reference nearest to each image."""
        d = ((x[:, None, None] - self.refs[None]) ** 2).flatten(3).sum(-1)  # (N, C, 8)
        best = d.flatten(1).argmin(1)
        return best // 8, best % 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls, g = self.nearest(x)
        upright = g == 0
        target = torch.where(upright, cls, (cls + 1) % N_CLASSES)
        return nn.functional.one_hot(target, N_CLASSES).float() * torch.where(upright, 10.0, 1.0)[:, None]


class OracleWithHead(OrientationModel):
    """The oracle classifier plus a head that names the applied element exactly (dihedral8)."""

    def __init__(self, pages: np.ndarray):
        nn.Module.__init__(self)
        self.head_kind = "dihedral8"
        self.classifier = OracleClassifier(pages)

    def forward(self, x: torch.Tensor, orientation: bool = False):
        logits = self.classifier(x)
        if not orientation:
            return logits
        return logits, nn.functional.one_hot(self.classifier.nearest(x)[1], 8).float() * 10.0


def _turned(pages: np.ndarray):
    images, classes, elements = [], [], []
    for c, page in enumerate(pages):
        for g in DIHEDRAL:
            images.append(apply_numpy(page, g))
            classes.append(c)
            elements.append(g.index)
    return np.stack(images), np.asarray(classes), np.asarray(elements)


@pytest.mark.parametrize("model_kind", ["head", "classifier"])
@pytest.mark.parametrize("mode", ["orient", "orient_soft"])
def test_a_known_turn_is_undone(mode, model_kind):
    pages = _pages()
    model = OracleWithHead(pages) if model_kind == "head" else OracleClassifier(pages)
    images, classes, elements = _turned(pages)
    for flip in (False, True):
        predictor = OrientPredictor(mode, "prob", 5, torch.device("cpu"), upright_flip=flip)
        probs, logits = predictor.predict(model, images, np.arange(len(images)), META)
        assert predictor.estimator == model_kind
        np.testing.assert_array_equal(predictor.last_estimates, elements)  # the applied element, every time
        np.testing.assert_array_equal(probs.argmax(1), classes)
        np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(np.exp(logits), probs, rtol=1e-4)
    # Without orientation, the same model gets every turned page wrong.
    with torch.no_grad():
        plain = model(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0).argmax(1).numpy()
    assert (plain == classes).mean() == pytest.approx(1 / 8)


def test_the_undone_view_is_the_upright_page():
    """Pixel level: inverse(estimate) applied to the turned page is the page."""
    page = _pages()[0]
    model = OracleWithHead(_pages())
    for g in DIHEDRAL:
        turned = apply_numpy(page, g)
        predictor = OrientPredictor("orient", "prob", 8, torch.device("cpu"), upright_flip=False)
        predictor.predict(model, turned[None], np.arange(1), META)
        estimate = dihedral.element(int(predictor.last_estimates[0]))
        np.testing.assert_array_equal(apply_numpy(turned, dihedral.inverse(estimate)), page)


def test_upright_flip_follows_the_training_record():
    assert upright_flip_for(None, META) is True
    assert upright_flip_for(None, {"trained_orientations": {"mirrors": False}}) is False
    assert upright_flip_for(None, {}) is False  # checkpoints that do not say
    assert upright_flip_for(False, META) is False


def test_summary_counts_turned_back_and_accuracy_by_orientation(tmp_path):
    import pandas as pd

    ids = [f"t{i}.jpg" for i in range(4)]
    pd.DataFrame({"ID": ids, "rot90_k": [0, 1, 0, 2], "flip": ["none", "none", "h", "v"]}).to_csv(
        tmp_path / "test_distortions.csv", index=False)

    class Source:
        root = tmp_path
        test = pd.DataFrame({"ID": ids})

    known = [0, 1, 4, Element(0, True).index]  # v after a half turn: a left-right mirror
    out = orientation_summary(Source, [[np.array(known)], [np.array([0, 1, 4, 0])]], np.array([1, 0, 1, 1]),
                              np.array([1, 1, 1, 0]), "head")
    assert out["turned_back"]["identity"] == pytest.approx(3 / 8)
    assert out["turned_back"]["hflip"] == pytest.approx(3 / 8)
    # The last image: one fold says hflip (right), one identity; a tie goes to the smaller index.
    assert out["estimate_matches_known"] == 0.75
    assert out["by"] == "test_distortions.csv"
    assert out["accuracy"] == {"upright": {"accuracy": 1.0, "n": 1}, "turned": {"accuracy": 0.0, "n": 1},
                               "mirrored": {"accuracy": 0.5, "n": 2}}
    (tmp_path / "test_distortions.csv").unlink()
    out = orientation_summary(Source, [[np.array(known)]], np.array([1, 0, 1, 1]), np.array([1, 1, 1, 0]), "head")
    assert out["by"] == "estimate" and "estimate_matches_known" not in out
    assert orientation_summary(Source, [[]], np.array([1]), None, None) is None


def _ruled_page(h=300, w=220) -> np.ndarray:
    """A page of dark text lines on white paper."""
    page = np.full((h, w, 3), 245, dtype=np.uint8)
    rng = np.random.default_rng(0)
    for y in range(30, h - 30, 14):
        x = 20
        while x < w - 40:
            n = int(rng.integers(10, 40))
            page[y:y + 5, x:x + n] = 30
            x += n + int(rng.integers(5, 12))
    return page


@pytest.mark.parametrize("angle", [-12.0, 7.0, 18.0])
def test_deskew_undoes_a_known_skew(angle):
    page = _ruled_page()
    assert abs(estimate_skew(page)) < 0.5
    skewed = rotate(page, angle)
    assert estimate_skew(skewed) == pytest.approx(angle, abs=1.0)
    straight, found = deskew(skewed)
    assert found == pytest.approx(angle, abs=1.0)
    assert abs(estimate_skew(straight)) < 1.0
    # The page's own frame again: both rotations' corners cut away.
    assert abs(straight.shape[0] - page.shape[0]) <= 4 and abs(straight.shape[1] - page.shape[1]) <= 4
    inner = (slice(20, page.shape[0] - 20), slice(20, page.shape[1] - 20))
    assert (straight[inner] < 128).mean() == pytest.approx((page[inner] < 128).mean(), abs=0.03)
    blank = np.full((100, 80, 3), 250, dtype=np.uint8)
    assert math.isnan(estimate_skew(blank)) and deskew(blank)[0] is blank  # nothing to read: left alone
