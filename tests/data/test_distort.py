"""data/distort.py: every distortion step does what its profile key says, the draws are
reproducible and independent per step, and every profile key changes the copies."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from omegaconf import OmegaConf

from docclassify.config_schema import DistortProfile
from docclassify.data import distort as D

PROBABILITIES = [k for k in D.STEP_NAMES if f"{k}_p" in DistortProfile.__annotations__]


def default_profile(**over) -> dict:
    return {**OmegaConf.to_container(OmegaConf.structured(DistortProfile)), **over}


def only(step: str, **over) -> dict:
    """A profile that applies ``step`` always and nothing else."""
    profile = default_profile(**{f"{k}_p": 0.0 for k in ("rot90", "flip", "angle", "crop", "perspective", "blur",
                                                        "color", "noise", "jpeg", "occlusion")})
    return {**profile, f"{step}_p": 1.0, **over}


@pytest.fixture(scope="module")
def page() -> np.ndarray:
    """A white page (off-white paper border) with dark text blocks and a coloured stamp, 120x90."""
    img = np.full((120, 90, 3), 245, np.uint8)
    rng = np.random.default_rng(0)
    for y in range(12, 108, 10):
        x0 = int(rng.integers(8, 20))
        img[y:y + 4, x0:x0 + int(rng.integers(30, 60))] = 30
    cv2.circle(img, (65, 95), 9, (200, 30, 30), -1)
    return img


def test_quarter_turn_and_mirror_are_the_tta_transforms(page):
    for k in (1, 2, 3):
        np.testing.assert_array_equal(D.rotate90(page, k), np.rot90(page, k))
    np.testing.assert_array_equal(D.mirror(page, True), np.fliplr(page))
    np.testing.assert_array_equal(D.mirror(page, False), page)


def test_small_rotation_expands_the_canvas_and_fills_with_the_border_colour(page):
    out = D.rotate(page, 20.0)
    assert out.shape[0] > page.shape[0] and out.shape[1] > page.shape[1]
    assert D.border_colour(page) == (245, 245, 245)
    for corner in (out[0, 0], out[0, -1], out[-1, 0], out[-1, -1]):  # uncovered corners: paper, not black
        np.testing.assert_array_equal(corner, [245, 245, 245])
    dark = np.full((40, 60, 3), 20, np.uint8)  # a dark photo: the fill follows it
    assert D.rotate(dark, 30.0)[0, 0].tolist() == [20, 20, 20]


def test_perspective_keeps_the_size_and_fills_outside_the_page(page):
    out = D.perspective(page, [0.1] * 8)
    assert out.shape == page.shape
    np.testing.assert_array_equal(out[0, 0], [245, 245, 245])
    assert not np.array_equal(out, page)
    np.testing.assert_array_equal(D.perspective(page, [0.0] * 8), page)


def test_crop_cuts_the_given_shares(page):
    out = D.crop(page, [0.1, 0.2, 0.0, 0.1])
    assert out.shape == (120 - 24 - 12, 90 - 9, 3)
    np.testing.assert_array_equal(out, page[24:108, 9:])


def test_color_shifts_brightness_and_scales_contrast(page):
    mid = np.full((10, 10, 3), 100, np.uint8)
    mid[:5] = 60
    assert D.color(mid, (0.2, 1.0)).mean() == pytest.approx(mid.mean() + 51, abs=0.5)
    assert D.color(mid, (0.0, 0.5)).std() == pytest.approx(mid.std() * 0.5, abs=0.5)
    assert D.color(page, (0.5, 1.0)).max() == 255  # clipped, not wrapped


def test_blur_sigma_is_relative_to_the_long_side(page):
    def sharpness(img):
        return cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var()

    blurred = D.blur(page, 0.01)
    assert sharpness(blurred) < 0.5 * sharpness(page)
    big = cv2.resize(page, (180, 240), interpolation=cv2.INTER_NEAREST)
    # The same share blurs the 2x image with twice the sigma in pixels: shrunk back, they match.
    shrunk = cv2.resize(D.blur(big, 0.01), (90, 120), interpolation=cv2.INTER_AREA)
    assert np.abs(shrunk.astype(int) - blurred.astype(int)).mean() < 4
    np.testing.assert_array_equal(D.blur(page, 0.0), page)


def test_noise_has_the_given_std_and_comes_from_the_generator():
    grey = np.full((200, 200, 3), 128, np.uint8)
    a = D.noise(grey, 0.05, np.random.default_rng(1))
    assert (a.astype(float) - 128).std() == pytest.approx(0.05 * 255, rel=0.05)
    np.testing.assert_array_equal(a, D.noise(grey, 0.05, np.random.default_rng(1)))
    assert not np.array_equal(a, D.noise(grey, 0.05, np.random.default_rng(2)))


def test_lower_jpeg_quality_loses_more(page):
    def err(q):
        return np.abs(D.jpeg(page, q).astype(int) - page.astype(int)).mean()

    assert err(10) > err(50) > err(95)
    assert D.jpeg(page, 30).shape == page.shape


def test_occlusion_paints_a_blob_of_the_given_size(page):
    blob = {"cx": 0.5, "cy": 0.5, "ax": 0.1, "ay": 0.1, "theta": 0.0, "rgb": [0, 255, 0]}
    out = D.occlude(page, blob)
    green = (out[..., 1] == 255) & (out[..., 0] == 0)
    radius = 0.1 * 120  # a share of the long side
    assert green.sum() == pytest.approx(np.pi * radius**2, rel=0.15)
    assert green[60, 45] and not green[5, 5]


def test_steps_do_not_modify_their_input(page):
    before = page.copy()
    params = D.sample_params(default_profile(**{f"{k}_p": 1.0 for k in PROBABILITIES}), np.random.default_rng(3))
    assert set(params) == set(D.STEP_NAMES)
    D.apply_params(page, params, np.random.default_rng(4))
    np.testing.assert_array_equal(page, before)


def test_distort_is_reproducible_and_seed_dependent(page):
    profile = default_profile()
    a, pa = D.distort(page, profile, np.random.default_rng([7, 1]))
    b, pb = D.distort(page, profile, np.random.default_rng([7, 1]))
    np.testing.assert_array_equal(a, b)
    assert pa == pb
    outs = [D.distort(page, profile, np.random.default_rng([7, s]))[0] for s in range(2, 6)]
    assert not all(o.shape == a.shape and np.array_equal(o, a) for o in outs)
    nothing = default_profile(**{f"{k}_p": 0.0 for k in PROBABILITIES})
    out, params = D.distort(page, nothing, np.random.default_rng(0))
    assert params == {} and np.array_equal(out, page)


def test_each_step_draws_independently_of_the_others(page):
    """Turning one step off leaves every other step's draws (and the noise pixels) unchanged."""
    full = default_profile(**{f"{k}_p": 1.0 for k in PROBABILITIES})
    base = D.sample_params(full, np.random.default_rng(11))
    for step in PROBABILITIES:
        params = D.sample_params({**full, f"{step}_p": 0.0}, np.random.default_rng(11))
        assert step not in params and params == {k: v for k, v in base.items() if k != step}
    # apply: the noise step gets the same pixels whatever came before it
    grey = np.full((50, 50, 3), 128, np.uint8)
    a = D.apply_params(grey, {"noise": 0.05}, np.random.default_rng(5))
    b = D.apply_params(grey, {"color": (0.0, 1.0), "noise": 0.05}, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)


def test_drawn_values_stay_in_the_profile_ranges():
    profile = default_profile(**{f"{k}_p": 1.0 for k in PROBABILITIES})
    for seed in range(200):
        p = D.sample_params(profile, np.random.default_rng(seed))
        assert p["rot90"] in (1, 2, 3) and p["flip"] is True
        assert abs(p["angle"]) <= profile["angle"]
        assert all(0 <= v <= profile["crop"] for v in p["crop"])
        assert all(0 <= v <= profile["perspective"] for v in p["perspective"])
        assert 0 <= p["blur"] <= profile["blur_sigma"] and 0 <= p["noise"] <= profile["noise_std"]
        b, c = p["color"]
        assert profile["brightness"][0] <= b <= profile["brightness"][1]
        assert profile["contrast"][0] <= c <= profile["contrast"][1]
        assert profile["jpeg_quality"][0] <= p["jpeg"] <= profile["jpeg_quality"][1]
        assert p["occlusion"]["ax"] <= profile["occlusion_size"] / 2


@pytest.mark.parametrize("key,value", [
    ("rot90_p", 0.0), ("flip_p", 0.0), ("angle_p", 0.0), ("angle", 5.0), ("crop_p", 0.0), ("crop", 0.3),
    ("perspective_p", 0.0), ("perspective", 0.2), ("blur_p", 0.0), ("blur_sigma", 0.02), ("color_p", 0.0),
    ("brightness", [0.3, 0.4]), ("contrast", [0.3, 0.4]), ("noise_p", 0.0), ("noise_std", 0.3), ("jpeg_p", 0.0),
    ("jpeg_quality", [5, 6]), ("occlusion_p", 0.0), ("occlusion_size", 0.45),
])
def test_every_profile_key_changes_the_copies(page, key, value):
    assert set(DistortProfile.__annotations__) >= {key}
    # Every step on; a blur strong enough to show at this page's 120 px (the default's is ~0.5 px here).
    profile = default_profile(**{f"{k}_p": 1.0 for k in PROBABILITIES}, blur_sigma=0.01)
    changed = {**profile, key: value}
    seeds = [np.random.default_rng([3, s]) for s in range(4)]
    differ = [not np.array_equal(D.distort(page, profile, np.random.default_rng([3, s]))[0],
                                 D.distort(page, changed, rng)[0]) for s, rng in enumerate(seeds)]
    assert any(differ)


def test_bad_input_is_refused(page):
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        D.distort(page.astype(np.float32), default_profile(), np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown distortion step"):
        D.apply_params(page, {"warp": 1}, np.random.default_rng(0))
