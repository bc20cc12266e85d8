"""The dihedral group (data/dihedral.py) and orientation augmentation (augment.orientation).

Pixel-exact: every option produces exactly its group's elements and nothing else, at the requested
rate; group laws hold on real pixels; the synthetic test record and albumentations' flips/turns map to
the element their pixels show; orientation=none leaves every sample untouched.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from docclassify.config import load_option
from docclassify.data import dihedral
from docclassify.data.augment import TrainTransform, seed_transforms
from docclassify.data.dihedral import (
    DIHEDRAL,
    GROUPS,
    IDENTITY,
    Element,
    OrientationAugment,
    apply_numpy,
    apply_torch,
    compose,
    from_record,
    inverse,
)
from docclassify.predict.tta import View, apply_view_numpy, get_views

# The basic set with every step off: its output is its input, so only the orientation step acts.
STILL = dict(rotate_limit=0.0, scale_limit=0.0, shift_limit=0.0, crop_p=0.0, color_jitter=0.0, hflip=False,
             vflip=False, advanced_p_start=0.0, advanced_p_end=0.0)


def _image(h=6, w=9) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(h, w, 3), dtype=np.uint8)  # unlike any of its turns


def _which(out: np.ndarray, image: np.ndarray) -> list[Element]:
    """The elements whose pixels ``out`` is exactly."""
    turned = {g: apply_numpy(image, g) for g in DIHEDRAL}
    return [g for g, t in turned.items() if t.shape == out.shape and np.array_equal(t, out)]


def _augment(option="basic", **over):
    return OmegaConf.merge(load_option("augment", option), over)


def test_elements_are_eight_distinct_pixel_permutations():
    image = _image()
    outs = [apply_numpy(image, g) for g in DIHEDRAL]
    assert len({o.tobytes() + bytes(o.shape) for o in outs}) == 8
    assert [g.index for g in DIHEDRAL] == list(range(8)) and DIHEDRAL[0] == IDENTITY
    for g in DIHEDRAL:
        chw = torch.from_numpy(image).permute(2, 0, 1)
        np.testing.assert_array_equal(apply_torch(chw, g).permute(1, 2, 0).numpy(), apply_numpy(image, g))


def test_compose_and_inverse_match_the_pixels():
    image = _image()
    for a, b in itertools.product(DIHEDRAL, DIHEDRAL):
        np.testing.assert_array_equal(apply_numpy(apply_numpy(image, b), a), apply_numpy(image, compose(a, b)))
    for g in DIHEDRAL:
        assert compose(inverse(g), g) == IDENTITY == compose(g, inverse(g))
        np.testing.assert_array_equal(apply_numpy(apply_numpy(image, g), inverse(g)), image)


def test_tta_views_are_the_group_elements():
    """One home: the dihedral TTA views are the elements, named alike, applied by the same functions."""
    image = _image()
    views = get_views("dihedral")
    assert [v.element for v in views] == list(DIHEDRAL) and [v.name for v in views] == [g.name for g in DIHEDRAL]
    for v in views:
        np.testing.assert_array_equal(apply_view_numpy(image, v), apply_numpy(image, v.element))
    assert View.of(Element(3, True)).key == (3, True, 0.0, 1.0)


def test_synthetic_record_maps_to_its_element():
    """test_distortions.csv: rot90_k turns (PIL), then a flip h/v, as the generator applies them."""
    image = _image()
    pil_turn = {0: None, 1: Image.Transpose.ROTATE_90, 2: Image.Transpose.ROTATE_180, 3: Image.Transpose.ROTATE_270}
    pil_flip = {"none": None, "h": Image.Transpose.FLIP_LEFT_RIGHT, "v": Image.Transpose.FLIP_TOP_BOTTOM}
    for k, flip in itertools.product(range(4), pil_flip):
        img = Image.fromarray(image)
        for op in (pil_turn[k], pil_flip[flip]):
            img = img.transpose(op) if op is not None else img
        assert _which(np.asarray(img), image) == [from_record(k, flip)], (k, flip)
    assert from_record(0, float("nan")) == IDENTITY
    with pytest.raises(ValueError, match="flip"):
        from_record(1, "x")


def test_albumentations_flips_and_turns_are_read_back():
    """The sets' own flips/turns: the element reported equals the one the pixels went through."""
    import albumentations as A

    image = _image(8, 8)
    pipeline = A.Compose([A.RandomRotate90(p=0.5), A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)],
                         save_applied_params=True)
    seen = set()
    for seed in range(64):
        seed_transforms(pipeline, seed)  # each transform its own stream
        out = pipeline(image=image)
        g = dihedral.from_albumentations(out["applied_transforms"])
        assert g in _which(out["image"], image)
        seen.add(g)
    assert len(seen) >= 6


@pytest.mark.parametrize("group", ["none", "rot90", "dihedral"])
@pytest.mark.parametrize("option", ["basic", "advanced", "highperf"])
def test_every_option_turns_by_exactly_its_group_at_the_requested_rate(group, option):
    p, n = 0.6, 400
    image = _image(16, 16)
    transform = TrainTransform(_augment(option, orientation=group, orientation_p=p, **STILL), 16, 1, seed=1)
    found = []
    for i in range(n):
        out = transform.augment(image, i)
        which = _which(out.image, image)
        assert which == [out.element], f"sample {i}: pixels of {which}, reported {out.element}"
        found.append(out.element)
    assert set(found) <= set(GROUPS[group])
    turned = np.mean([g != IDENTITY for g in found])
    if group == "none":
        assert turned == 0.0
        return
    assert set(found) == set(GROUPS[group])  # every element occurs
    assert abs(turned - p) < 4 * np.sqrt(p * (1 - p) / n), turned  # 4 sigma
    others = np.bincount([g.index for g in found if g != IDENTITY], minlength=8)[[g.index for g in GROUPS[group][1:]]]
    assert others.min() > 0.5 * others.mean()  # the non-identity elements about equally often


def test_orientation_none_leaves_every_sample_untouched():
    """Data whose orientation carries meaning (digits: a turned 6 is a 9): orientation=none gives the
    very pixels of a transform without the orientation step (p=0), element identity, in every option."""
    digit = np.zeros((24, 24, 3), dtype=np.uint8)
    digit[4:20, 8:11] = 255  # a '6'-like glyph: stem ...
    digit[13:20, 8:17] = 255  # ... and a bowl at the bottom right
    for option in ("basic", "advanced", "highperf"):
        plain = TrainTransform(_augment(option, orientation="none", hflip=False, vflip=False, advanced_rot90_p=0.0),
                               24, 3, seed=5)
        off = TrainTransform(_augment(option, orientation="dihedral", orientation_p=0.0, hflip=False, vflip=False,
                                      advanced_rot90_p=0.0), 24, 3, seed=5)
        for epoch in range(3):
            plain.set_epoch(epoch)
            off.set_epoch(epoch)
            for i in range(12):
                a, b = plain.augment(digit, i), off.augment(digit, i)
                assert a.element == IDENTITY == b.element
                np.testing.assert_array_equal(a.image, b.image)


def test_orientation_p_is_the_share_turned():
    rng = np.random.default_rng(0)
    for p in (0.0, 0.25, 1.0):
        draws = [OrientationAugment("dihedral", p).draw(rng) for _ in range(800)]
        share = np.mean([g != IDENTITY for g in draws])
        assert abs(share - p) < 0.06, (p, share)
    with pytest.raises(ValueError, match="augment.orientation"):
        OrientationAugment("rot45", 0.5)


def test_validation_elements_cover_the_group_evenly():
    idx = dihedral.validation_elements(20, DIHEDRAL)
    assert np.bincount(idx, minlength=8).tolist() == [3, 3, 3, 3, 2, 2, 2, 2]
    counts = dihedral.category_counts(np.array([True, False, True, True]), np.array([0, 1, 4, 5]))
    assert counts == {"upright": [1, 1], "turned": [0, 1], "mirrored": [2, 2]}
    assert dihedral.pool_counts([counts, {"turned": [1, 1]}]) == {"upright": [1, 1], "turned": [1, 2],
                                                                      "mirrored": [2, 2]}


def test_a_head_without_turns_to_learn_is_refused(tmp_path):
    from conftest import compose_train

    from docclassify.config_schema import ConfigError, check_config

    with pytest.raises(ConfigError, match="augment.orientation=rot90 or dihedral"):
        check_config(compose_train(["model.orientation_head=rot4", "augment.orientation=none"], tmp_path))
    check_config(compose_train(["model.orientation_head=rot4", "augment.orientation=rot90"], tmp_path))
    check_config(compose_train(["model.orientation_head=dihedral8", "augment=advanced"], tmp_path))  # its own turns
    check_config(compose_train(["pipeline=highperf", "model.orientation_head=dihedral8"], tmp_path))
