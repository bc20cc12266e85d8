"""The bundle's numpy arithmetic (deploy/numeric.py) against the torch / scipy code infer runs: the same
inputs through both, the same outputs within float32 rounding. Real (random-weight) timm models, real
synthetic document images; no training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from docclassify.data.dihedral import DIHEDRAL, apply_torch
from docclassify.data.images import load_image
from docclassify.deploy import numeric
from docclassify.models.factory import create_model
from docclassify.models.heads import with_orientation_head
from docclassify.predict import calibration, decision, ensemble, tta, upright

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@pytest.fixture(scope="module")
def images(tiny_data):
    paths = sorted((tiny_data / "train").glob("*.jpg"))[:6]
    return np.stack([load_image(p, 32, "pad", 0) for p in paths])


def forward_of(model):
    def forward(x: np.ndarray):
        with torch.inference_mode():
            out = model(torch.from_numpy(x), orientation=True) if hasattr(model, "orientation_head") else model(
                torch.from_numpy(x))
        if isinstance(out, tuple):
            return out[0].float().numpy(), out[1].float().numpy()
        return out.float().numpy(), None
    return forward


@pytest.fixture(scope="module", params=["none", "dihedral8", "rot4"])
def model(request):
    torch.manual_seed(0)
    return with_orientation_head(create_model("test_resnet", 17, pretrained=False, img_size=32), request.param).eval()


def test_normalise_is_the_arithmetic_of_normalised_batches(images):
    ours = numeric.normalise(images, MEAN, STD)
    theirs = next(tta.normalised_batches(images, np.arange(len(images)), {"mean": MEAN, "std": STD}, 64,
                                         torch.device("cpu"))).numpy()
    assert ours.dtype == np.float32 and np.array_equal(ours, theirs)


def test_each_dihedral_element_moves_the_pixels_as_torch_does(images):
    x = numeric.normalise(images, MEAN, STD)
    for g in DIHEDRAL:
        assert np.array_equal(numeric.apply_nchw(x, g), apply_torch(torch.from_numpy(x), g).numpy()), g.name


@pytest.mark.parametrize("average", ["prob", "logit"])
def test_view_sets_average_as_predict_tta(model, images, average):
    x = numeric.normalise(images, MEAN, STD)
    for name in ("none", "flip", "dihedral"):
        views = tta.get_views(name)
        p, z = numeric.predict_views(forward_of(model), x, [v.element for v in views], average)
        tp, tz = tta.predict_tta(model, torch.from_numpy(x), views, average)
        np.testing.assert_allclose(p, tp.numpy(), atol=1e-6)
        np.testing.assert_allclose(z, tz.numpy(), atol=1e-5)


@pytest.mark.parametrize("flip", [False, True])
def test_orient_turns_each_image_back_as_orient_batch(model, images, flip):
    x = numeric.normalise(images, MEAN, STD)
    head = upright.orientation_head_of(model)
    p, z, e = numeric.orient(forward_of(model), x, head, flip, "prob")
    tp, tz, te = upright.orient_batch(model, torch.from_numpy(x), head, flip, "prob")
    assert [g.index for g in e] == [g.index for g in te]
    np.testing.assert_allclose(p, tp.numpy(), atol=1e-6)
    np.testing.assert_allclose(z, tz.numpy(), atol=1e-5)


def test_orient_soft_weights_views_as_orient_soft_batch(model, images):
    x = numeric.normalise(images, MEAN, STD)
    head = upright.orientation_head_of(model)
    for average in ("prob", "logit"):
        p, z, e = numeric.orient_soft(forward_of(model), x, head, average)
        tp, tz, te = upright.orient_soft_batch(model, torch.from_numpy(x), head, average)
        assert [g.index for g in e] == [g.index for g in te]
        np.testing.assert_allclose(p, tp.numpy(), atol=1e-6)
        np.testing.assert_allclose(z, tz.numpy(), atol=1e-5)


def test_folds_runs_temperature_and_biases_as_infer_computes_them():
    rng = np.random.default_rng(0)
    members = [rng.dirichlet(np.ones(17), size=20) for _ in range(3)]
    for average in ("prob", "logit"):
        given = members if average == "prob" else [np.log(m) for m in members]
        np.testing.assert_allclose(numeric.combine(given, [0.2, 0.5, 0.3], average),
                                   ensemble.combine(given, [0.2, 0.5, 0.3], average), atol=1e-12)
    logp = np.log(members[0])
    np.testing.assert_allclose(numeric.apply_temperature(logp, 1.7), calibration.apply_temperature(logp, 1.7),
                               atol=1e-12)
    biases = rng.normal(size=17)
    assert np.array_equal(numeric.apply_biases(logp, biases), decision.apply_biases(logp, biases))
    assert np.array_equal(numeric.apply_biases(logp, None), logp.argmax(1))
