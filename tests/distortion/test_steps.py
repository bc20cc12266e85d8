"""docclassify/distortion/ (steps.py, draw.py): every distortion step does what its profile key
says, the draws are reproducible and independent per step, every profile key changes the copies,
and the steps added later (background, desk, shadow, glare, channel, several blobs, and the test
profiles' exposure, motion, moire and ranges) leave the copies of a profile without them byte for
byte as they were."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from omegaconf import OmegaConf

from docclassify import distortion as D
from docclassify.config_schema import DistortProfile

PROBABILITIES = [k for k in D.STEP_NAMES if f"{k}_p" in DistortProfile.__annotations__]


def default_profile(**over) -> dict:
    return {**OmegaConf.to_container(OmegaConf.structured(DistortProfile)), **over}


def only(step: str, **over) -> dict:
    """A profile that applies ``step`` always and nothing else."""
    profile = default_profile(**{f"{k}_p": 0.0 for k in PROBABILITIES})
    return {**profile, f"{step}_p": 1.0, **over}


SOLID = {"rgb": [0, 255, 0], "texture": None}  # a pure green surround: no page pixel has this colour


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
    np.testing.assert_array_equal(D.mirror(page, "h"), np.fliplr(page))
    np.testing.assert_array_equal(D.mirror(page, "v"), np.flipud(page))


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
        assert len(p["occlusion"]) == 1 and p["occlusion"][0]["ax"] <= profile["occlusion_size"] / 2
        lo, hi = profile["desk_scale"]
        assert lo <= p["desk"]["scale"] <= hi and all(abs(v) <= profile["desk_tilt"] for v in p["desk"]["corners"])
        assert 0 < p["shadow"]["strength"] <= profile["shadow_strength"]
        assert 0 < p["glare"]["strength"] <= profile["glare_strength"] and p["glare"]["radius"] <= profile["glare_size"]
        assert all(profile["channel_contrast"][0] <= f <= profile["channel_contrast"][1] for f in p["channel"])
        assert set(p["background"]) == {"rgb", "texture"}
        gain, contrast, gamma = p["exposure"]
        assert all(lo <= v <= hi for v, (lo, hi) in zip((gain, contrast, gamma), (
            profile["exposure_gain"], profile["exposure_contrast"], profile["exposure_gamma"])))
        assert 0.25 * profile["motion_length"] <= p["motion"]["length"] <= profile["motion_length"]
        assert 0 < p["moire"]["strength"] <= profile["moire_strength"] and len(p["moire"]["phase"]) == 3


def test_the_ranges_lower_ends_and_the_vertical_flips_are_drawn():
    """angle_min, blur_min, noise_min bound the draws from below; flip_vertical is the share of "v"
    flips; background_tones (+ jitter) give grey surrounds near the tones."""
    profile = default_profile(**{f"{k}_p": 1.0 for k in PROBABILITIES}, angle_min=10.0, angle=20.0, blur_min=0.003,
                              noise_min=0.05, flip_vertical=0.5, background_tones=[30, 245], background_jitter=4.0)
    draws = [D.sample_params(profile, np.random.default_rng(seed)) for seed in range(300)]
    assert all(10.0 <= abs(p["angle"]) <= 20.0 for p in draws) and {np.sign(p["angle"]) for p in draws} == {-1, 1}
    assert all(0.003 <= p["blur"] <= profile["blur_sigma"] for p in draws)
    assert all(0.05 <= p["noise"] <= profile["noise_std"] for p in draws)
    vertical = np.mean([p["flip"] == "v" for p in draws])
    assert 0.4 < vertical < 0.6
    tones = np.asarray([p["background"]["rgb"] for p in draws])
    near = np.minimum(np.abs(tones - 30), np.abs(tones - 245)).max(axis=1)
    assert near.max() <= 20 and (tones.std(axis=1) > 0).any()  # jittered per channel, around a tone


KEY_CHANGES = [  # (key, a value other than the default, other keys it needs to show)
    ("rot90_p", 0.0, {}), ("flip_p", 0.0, {}), ("angle_p", 0.0, {}), ("angle", 5.0, {}), ("crop_p", 0.0, {}),
    ("crop", 0.3, {}), ("perspective_p", 0.0, {}), ("perspective", 0.2, {}), ("blur_p", 0.0, {}),
    ("blur_sigma", 0.02, {}), ("color_p", 0.0, {}), ("brightness", [0.3, 0.4], {}), ("contrast", [0.3, 0.4], {}),
    ("noise_p", 0.0, {}), ("noise_std", 0.3, {}), ("jpeg_p", 0.0, {}), ("jpeg_quality", [5, 6], {}),
    ("occlusion_p", 0.0, {}), ("occlusion_size", 0.45, {}), ("occlusion_count", 6, {}),
    ("background_p", 0.0, {"desk_p": 0.0}),  # on a desk the desk is the surround
    ("background_texture", 1.0, {}), ("desk_p", 0.0, {}), ("desk_scale", [0.3, 0.4], {}), ("desk_tilt", 0.3, {}),
    ("shadow_p", 0.0, {}), ("shadow_strength", 1.0, {}), ("glare_p", 0.0, {}), ("glare_strength", 1.0, {}),
    ("glare_size", 0.8, {}), ("channel_p", 0.0, {}), ("channel_contrast", [2.0, 3.0], {}),
    ("angle_min", 15.0, {}), ("flip_vertical", 1.0, {}), ("background_tones", [30], {"desk_p": 0.0}),
    ("background_jitter", 40.0, {"background_tones": [128], "desk_p": 0.0}), ("blur_min", 0.009, {}),
    ("noise_min", 0.05, {}), ("exposure_p", 0.0, {}), ("exposure_gain", [0.3, 0.4], {}),
    ("exposure_contrast", [2.0, 3.0], {}), ("exposure_gamma", [2.0, 3.0], {}), ("motion_p", 0.0, {}),
    ("motion_length", 0.2, {}), ("moire_p", 0.0, {}), ("moire_strength", 1.0, {}),
]


def test_every_profile_key_is_checked_below():
    assert [k for k, _, _ in KEY_CHANGES] == list(DistortProfile.__annotations__)


@pytest.mark.parametrize("key,value,needs", KEY_CHANGES, ids=[k for k, _, _ in KEY_CHANGES])
def test_every_profile_key_changes_the_copies(page, key, value, needs):
    # Every step on; a blur strong enough to show at this page's 120 px (the default's is ~0.5 px here).
    profile = default_profile(**{**{f"{k}_p": 1.0 for k in PROBABILITIES}, "blur_sigma": 0.01, **needs})
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


# ---------------------------------------------------------------- the steps added later
class Legacy:
    """The draw stream and the painting of data/distort.py before background/desk/shadow/glare/
    channel and several blobs existed (commit a547288), kept here as the reference: one draw of
    ``rng`` seeds a generator per step at positions 0-9 (sampling), a second one the same way
    (pixels); the steps run in this order. No JPEG (off in the profiles compared)."""

    @staticmethod
    def sample(profile, rng):
        seed = int(rng.integers(2**63))
        g = [np.random.default_rng([seed, i]) for i in range(10)]
        fires = [bool(g[i].random() < float(profile[f"{k}_p"])) for i, k in enumerate(
            ("occlusion", "flip", "rot90", "angle", "perspective", "crop", "color", "blur", "noise"))]
        p = {}
        if fires[0] and profile["occlusion_size"] > 0:
            r = float(profile["occlusion_size"]) / 2.0
            p["occlusion"] = {"cx": float(g[0].random()), "cy": float(g[0].random()),
                              "ax": r * float(g[0].uniform(0.3, 1.0)), "ay": r * float(g[0].uniform(0.3, 1.0)),
                              "theta": float(g[0].uniform(0, 180)), "rgb": [int(v) for v in g[0].integers(0, 256, 3)]}
        if fires[1]:
            p["flip"] = True
        if fires[2]:
            p["rot90"] = int(g[2].integers(1, 4))
        if fires[3] and profile["angle"] > 0:
            p["angle"] = float(g[3].uniform(-profile["angle"], profile["angle"]))
        for i, key, size, n in ((4, "perspective", "perspective", 8), (5, "crop", "crop", 4)):
            if fires[i] and profile[size] > 0:
                p[key] = [float(v) for v in g[i].uniform(0, float(profile[size]), size=n)]
        if fires[6]:
            p["color"] = (float(g[6].uniform(*profile["brightness"])), float(g[6].uniform(*profile["contrast"])))
        for i, key, size in ((7, "blur", "blur_sigma"), (8, "noise", "noise_std")):
            if fires[i] and profile[size] > 0:
                p[key] = float(g[i].uniform(0, float(profile[size])))
        return p

    @staticmethod
    def paint(image, p, rng):
        def fill(img):
            frame = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
            return tuple(int(v) for v in np.median(frame, axis=0))

        def to_uint8(x):
            return np.clip(np.rint(x), 0, 255).astype(np.uint8)

        pixels = np.random.default_rng([int(rng.integers(2**63)), 8])  # the noise step's generator
        out = image.copy()
        h, w = out.shape[:2]
        if "occlusion" in p:
            b, side = p["occlusion"], max(h, w)
            cv2.ellipse(out, (round(b["cx"] * (w - 1)), round(b["cy"] * (h - 1))),
                        (max(1, round(b["ax"] * side)), max(1, round(b["ay"] * side))),
                        float(b["theta"]), 0, 360, tuple(b["rgb"]), -1, lineType=cv2.LINE_AA)
        if "flip" in p:
            out = np.ascontiguousarray(out[:, ::-1])
        if "rot90" in p:
            out = np.ascontiguousarray(np.rot90(out, p["rot90"]))
        if "angle" in p:
            h, w = out.shape[:2]
            m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), p["angle"], 1.0)
            nw = int(np.ceil(h * abs(m[0, 1]) + w * abs(m[0, 0])))
            nh = int(np.ceil(h * abs(m[0, 0]) + w * abs(m[0, 1])))
            m[0, 2] += nw / 2.0 - w / 2.0
            m[1, 2] += nh / 2.0 - h / 2.0
            out = cv2.warpAffine(out, m, (nw, nh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                 borderValue=fill(out))
        if "perspective" in p:
            h, w = out.shape[:2]
            src = np.float32([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]])
            shift = np.asarray(p["perspective"], np.float32).reshape(4, 2) * np.float32([w - 1, h - 1])
            m = cv2.getPerspectiveTransform(src, src + np.float32([[1, 1], [-1, 1], [-1, -1], [1, -1]]) * shift)
            out = cv2.warpPerspective(out, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                      borderValue=fill(out))
        if "crop" in p:
            h, w = out.shape[:2]
            left, top, right, bottom = p["crop"]
            x0, y0 = round(left * w), round(top * h)
            out = out[y0:max(y0 + 1, h - round(bottom * h)), x0:max(x0 + 1, w - round(right * w))].copy()
        if "color" in p:
            x = out.astype(np.float32)
            mean = float(x.mean())
            out = to_uint8((x - mean) * float(p["color"][1]) + mean + 255.0 * float(p["color"][0]))
        if "blur" in p and p["blur"] * max(out.shape[:2]) >= 0.2:
            px = p["blur"] * max(out.shape[:2])
            out = cv2.GaussianBlur(out, (0, 0), sigmaX=px, sigmaY=px, borderType=cv2.BORDER_REFLECT)
        if "noise" in p:
            grain = pixels.standard_normal(out.shape, dtype=np.float32) * np.float32(255.0 * p["noise"])
            out = to_uint8(out.astype(np.float32) + grain)
        return out


def test_a_profile_without_the_later_steps_gives_the_copies_it_always_gave():
    """The later steps have their own generator streams, so a profile with them off draws and
    paints every copy as the code before them did (Legacy, run here on the same OpenCV/numpy:
    the bytes of a warp or a blur belong to the installed build, not to a recorded digest)."""
    later = ("background", "desk", "shadow", "glare", "channel")
    legacy = default_profile(jpeg_p=0.0, **{f"{k}_p": 0.0 for k in later})
    first = ("rot90", "flip", "angle", "crop", "perspective", "blur", "color", "noise", "occlusion")
    every = {**legacy, **{f"{k}_p": 1.0 for k in first}}
    image = np.random.default_rng(0).integers(0, 256, (120, 90, 3), dtype=np.uint8)
    for profile in (legacy, every):
        for s in range(20):
            out, params = D.distort(image, profile, np.random.default_rng([5, s]))
            rng = np.random.default_rng([5, s])
            old = Legacy.sample(profile, rng)
            assert params == {**old, **({"occlusion": [old["occlusion"]]} if "occlusion" in old else {})}
            expected = Legacy.paint(image, old, rng)
            assert out.shape == expected.shape and np.array_equal(out, expected), (s, sorted(old))


def _green(img: np.ndarray) -> np.ndarray:
    return (img[..., 0] < 60) & (img[..., 1] > 200) & (img[..., 2] < 60)


def test_free_rotation_expands_the_canvas_around_the_whole_page_on_a_background():
    page = np.full((80, 50, 3), (200, 30, 30), np.uint8)  # a red page: every pixel of it is red
    for angle in (17.0, -45.0, 90.0, 135.0, 180.0):
        out = D.rotate(page, angle, surround=SOLID)
        t = np.deg2rad(angle)
        assert out.shape[:2] == (int(np.ceil(80 * abs(np.cos(t)) + 50 * abs(np.sin(t)))),
                                 int(np.ceil(80 * abs(np.sin(t)) + 50 * abs(np.cos(t)))))
        red = (out[..., 0] > 100) & (out[..., 1] < 150)
        # The page's whole area is on the canvas (edge pixels are blends: count them half).
        edge = ~red & ~_green(out)
        assert red.sum() + 0.5 * edge.sum() == pytest.approx(80 * 50, rel=0.03), angle
        if angle % 90:
            for corner in (out[0, 0], out[0, -1], out[-1, 0], out[-1, -1]):  # uncovered corners: the background
                assert corner.tolist() == [0, 255, 0]


def test_a_textured_background_varies_and_repeats_with_its_seed():
    spec = {"rgb": [120, 90, 60], "texture": {"seed": 4, "cells": 4, "amplitude": 0.3, "streaks": 1.0}}
    a = D.surface(spec, 60, 80)
    assert a.shape == (60, 80, 3) and a.std() > 10
    np.testing.assert_array_equal(a, D.surface(spec, 60, 80))
    other = D.surface({**spec, "texture": {**spec["texture"], "seed": 5}}, 60, 80)
    assert not np.array_equal(a, other)
    solid = D.surface({"rgb": [120, 90, 60], "texture": None}, 60, 80)
    assert (solid == [120, 90, 60]).all()


def test_perspective_fills_with_the_drawn_background():
    page = np.full((80, 60, 3), (200, 30, 30), np.uint8)
    out = D.perspective(page, [0.15] * 8, surround=SOLID)
    assert out.shape == page.shape and out[0, 0].tolist() == [0, 255, 0]
    assert out[40, 30].tolist() == [200, 30, 30]


def test_desk_photo_puts_the_whole_page_smaller_than_the_frame_on_the_desk():
    page = np.full((80, 60, 3), (200, 30, 30), np.uint8)
    photo = {"scale": 0.5, "x": 0.3, "y": 0.8, "corners": [0.0] * 8, "surface": SOLID}
    out = D.desk(page, photo)
    assert out.shape[:2] == (160, 120)  # the frame: the page's size / scale
    red = (out[..., 0] > 100) & (out[..., 1] < 150)
    ys, xs = np.nonzero(red)
    assert red.sum() == pytest.approx(80 * 60, rel=0.03)  # all of the page, nothing cut
    assert xs.min() == pytest.approx(0.3 * 60, abs=1) and ys.min() == pytest.approx(0.8 * 80, abs=1)
    assert _green(out[0]).all() and _green(out[:, -1]).all()  # the desk around it
    tilted = D.desk(page, {**photo, "corners": [0.1, -0.1, -0.1, 0.1, 0.1, 0.1, 0.05, -0.05]})
    red = (tilted[..., 0] > 100) & (tilted[..., 1] < 150)
    assert not np.array_equal(tilted, out) and red.sum() > 0.6 * 80 * 60
    assert not red[0].any() and not red[-1].any() and not red[:, 0].any() and not red[:, -1].any()


def test_a_rotation_on_a_desk_shows_the_desk_in_its_corners(page):
    params = {"angle": 30.0, "desk": {"scale": 0.7, "x": 0.5, "y": 0.5, "corners": [0.0] * 8, "surface": SOLID}}
    out = D.apply_params(page, params, np.random.default_rng(0))
    assert _green(out[0]).all()  # the frame's edge: desk
    rotated_only = D.apply_params(page, {"angle": 30.0}, np.random.default_rng(0))
    assert not _green(rotated_only).any()  # no desk: the corners take the paper colour


def test_a_shadow_darkens_a_band_and_nothing_else():
    grey = np.full((100, 120, 3), 200, np.uint8)
    band = {"cx": 0.5, "cy": 0.5, "theta": 0.0, "width": 0.2, "soft": 0.5, "strength": 0.6}
    out = D.shadow(grey, band).astype(int)
    rows = out[..., 0].mean(axis=1)
    centre = round(0.5 * 99)
    half = 0.5 * 0.2 * 120  # 12 px each side of the centre line
    assert rows[centre] == 80  # 200 x (1 - 0.6)
    assert (rows[int(centre - half + 1):int(centre + half)] == 80).all()
    assert (out[: int(centre - 1.5 * half - 1)] == 200).all() and (out[int(centre + 1.5 * half + 2):] == 200).all()
    assert np.all(np.diff(rows[:centre]) <= 0)  # darker towards the band, softly
    turned = D.shadow(grey, {**band, "theta": 90.0}).astype(int)
    assert (turned[:, 59, 0] == 80).all() and (turned[:, 0] == 200).all()  # a vertical band


def test_glare_brightens_a_spot_towards_white_and_nothing_else():
    grey = np.full((100, 100, 3), 100, np.uint8)
    spot = {"cx": 0.5, "cy": 0.5, "radius": 0.2, "strength": 0.8}
    out = D.glare(grey, spot).astype(int)
    c = round(0.5 * 99)
    assert out[c, c, 0] == 100 + round(155 * 0.8)
    assert (out >= 100).all()
    d = np.hypot(*np.meshgrid(np.arange(100) - 49.5, np.arange(100) - 49.5))
    assert (out[d > 21][:, 0] == 100).all()  # beyond the radius (20 px) untouched
    assert out[c, c + 5, 0] > out[c, c + 15, 0] > 100  # fading out from the centre


def test_channel_contrast_scales_each_channel_around_its_own_mean():
    rng = np.random.default_rng(0)
    img = rng.integers(60, 200, (50, 50, 3), dtype=np.uint8)
    out = D.channel_contrast(img, [0.5, 1.0, 1.8]).astype(float)
    stds = out.reshape(-1, 3).std(axis=0) / img.reshape(-1, 3).astype(float).std(axis=0)
    assert stds == pytest.approx([0.5, 1.0, 1.8], abs=0.03)
    assert out.reshape(-1, 3).mean(axis=0) == pytest.approx(img.reshape(-1, 3).mean(axis=0), abs=1.0)


def test_occlusion_count_paints_up_to_that_many_blobs(page):
    profile = only("occlusion", occlusion_count=4)
    counts = [len(D.sample_params(profile, np.random.default_rng(s))["occlusion"]) for s in range(100)]
    assert set(counts) == {1, 2, 3, 4}
    blobs = [{"cx": x, "cy": 0.5, "ax": 0.05, "ay": 0.05, "theta": 0.0, "rgb": [0, 255, 0]} for x in (0.2, 0.8)]
    out = D.occlude(page, blobs)
    green = _green(out)
    assert green[60, 18] and green[60, 71] and not green[60, 45]


def test_noise_and_jpeg_at_a_working_size_act_as_at_the_own_size():
    grey = np.full((64, 64, 3), 128, np.uint8)
    quarter = D.noise(grey, 0.08, np.random.default_rng(1), scale=0.25)
    assert (quarter.astype(float) - 128).std() == pytest.approx(0.25 * 0.08 * 255, rel=0.1)
    page = cv2.resize(np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8), (64, 64),
                      interpolation=cv2.INTER_LINEAR)

    def err(out):
        return np.abs(out.astype(int) - page.astype(int)).mean()

    # Blocks of 8 px at 4x the size are 2 px here: less of the page is lost than with 8 px blocks.
    assert err(D.jpeg(page, 20, scale=0.25)) < err(D.jpeg(page, 20))
    np.testing.assert_array_equal(D.jpeg(page, 20, scale=1.0), D.jpeg(page, 20))


# ---------------------------------------------------------------- the test profiles' steps
def test_exposure_multiplies_the_light_around_mid_grey_and_bends_it_by_a_gamma():
    grey = np.full((20, 20, 3), 128, np.uint8)
    assert D.exposure(grey, [0.5, 1.0, 1.0])[0, 0, 0] == round(128 * 0.5)  # darker: light halved
    ramp = np.tile(np.arange(0, 256, 16, dtype=np.uint8)[None, :, None], (4, 1, 3))
    flat = D.exposure(ramp, [1.0, 0.5, 1.0]).astype(int)
    assert np.ptp(flat) < np.ptp(ramp.astype(int)) * 0.55  # contrast halved around mid-grey
    dark = D.exposure(ramp, [1.0, 1.0, 2.0]).astype(int)
    assert (dark <= ramp.astype(int)).all() and dark[0, 8, 0] < ramp[0, 8, 0] - 30  # gamma 2 darkens the mid-tones


def test_motion_blur_smears_along_its_direction_only():
    dot = np.zeros((41, 41, 3), np.uint8)
    dot[20, 20] = 255
    along_x = D.motion(dot, {"length": 0.25, "theta": 0.0})[..., 0]
    assert (along_x[20, 16:25] > 0).all() and along_x[14, 20] == 0 and along_x[26, 20] == 0
    along_y = D.motion(dot, {"length": 0.25, "theta": 90.0})[..., 0]
    assert (along_y[16:25, 20] > 0).all() and along_y[20, 14] == 0
    assert np.array_equal(D.motion(dot, {"length": 0.01, "theta": 30.0}), dot)  # shorter than 2 px: unchanged


def test_moire_darkens_in_bands_with_a_phase_per_channel():
    white = np.full((64, 64, 3), 250, np.uint8)
    bands = {"period": 0.05, "theta": 0.0, "beat": 4.0, "strength": 0.6, "phase": [0.0, 2.0, 4.0]}
    out = D.moire(white, bands).astype(int)
    assert (out <= 250).all() and out.min() < 150  # darkened by up to the strength, never brightened
    assert np.ptp(out[..., 0].mean(axis=0)) > 30  # bands across the image (theta 0: along x)
    assert not np.array_equal(out[..., 0], out[..., 1])  # colour fringes


def test_a_free_rotation_counts_as_its_nearest_quarter_turn_beyond_45_degrees():
    assert [D.quarter_turns(a) for a in (0.0, 20.0, -45.0, 45.0, 46.0, 100.0, 135.0, 136.0, -100.0, 180.0)] == \
        [0, 0, 0, 0, 1, 1, 1, 2, 3, 2]
    assert D.element_of({"flip": True, "rot90": 1}).name == "hflip_rot90"  # True: as a left-right flip is drawn
    assert D.element_of({"flip": "v"}).name == "hflip_rot180"  # top-bottom = left-right, turned twice
    assert D.element_of({"angle": 95.0}).name == "rot90"
    assert D.element_of({"angle": 20.0, "blur": 0.01}).name == "identity"
    assert D.element_of(None).name == "identity"


def _marked_page() -> np.ndarray:
    """A square page, white but for a dark top-left corner and a grey band down its left edge (so
    every turn and mirror image of it looks different)."""
    page = np.full((48, 48, 3), 240, np.uint8)
    page[:, :6] = 128
    page[:14, :14] = 20
    return page


def _where_the_corner_is(image: np.ndarray) -> str:
    q = image.shape[0] // 4
    corners = {"top-left": image[:q, :q], "top-right": image[:q, -q:], "bottom-left": image[-q:, :q],
               "bottom-right": image[-q:, -q:]}
    return min(corners, key=lambda c: corners[c].mean())


@pytest.mark.parametrize("params", [{"flip": "h"}, {"flip": "v"}, {"rot90": 3}, {"flip": "v", "rot90": 1},
                                    {"angle": 100.0}, {"flip": "h", "rot90": 2, "angle": -80.0}])
def test_element_of_is_what_the_steps_do_to_the_pixels(params):
    """Undoing element_of(params) on the distorted page gives back the page: exactly for the exact
    steps, and with the dark corner back at the top left (and the grey band on the left) after a
    free rotation beyond 45 degrees."""
    from docclassify.data.dihedral import apply_numpy, inverse

    page = _marked_page()
    back = apply_numpy(D.apply_params(page, params, np.random.default_rng(0)), inverse(D.element_of(params)))
    if "angle" not in params:
        np.testing.assert_array_equal(back, page)
    assert _where_the_corner_is(back) == "top-left"
    h = back.shape[0]
    assert back[h // 3:2 * h // 3, :h // 8].mean() < back[h // 3:2 * h // 3, -(h // 8):].mean()  # the band: left
