"""The synthetic data's distorted test splits, each drawn from a shipped profile.

    test/        profiles/synthetic_test.yaml, drawn by :func:`draw_test_image`
    test_phone/  profiles/phone_photo.yaml, drawn by :func:`draw_phone_image`

``test_phone/`` is drawn as a robust copy is (draw.py's contract and steps). ``test/`` keeps the
draw it was generated with before the profiles existed, so that its images stay byte for byte
what every earlier run was scored on: one generator for the whole image, the steps' values drawn
in the order the steps run, PIL's bilinear rotation, resize and Gaussian blur, and the exposure
and noise rounded once. It reads every probability and range from synthetic_test.yaml; the
steps it shares exactly (crop, quarter turn, mirror image, the exposure's arithmetic) are steps.py's.
``validation.distort=synthetic_test`` draws the same distortions with the same probabilities and
ranges through draw.py; its pixels differ from the split's by the resampling (OpenCV there, PIL
here) and by the crop coming after the skew (draw.py's order) instead of before it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from docclassify.distortion import steps
from docclassify.distortion.draw import apply_params, sample_params
from docclassify.distortion.profile import load_profile
from docclassify.utils.draws import jittered, pick

TEST_PROFILE, PHONE_PROFILE = "synthetic_test", "phone_photo"
#: JPEG quality of train images, and of test images not given a low quality.
TRAIN_JPEG_QUALITY = 92
#: Columns of test_distortions.csv (one row per test/ image).
TEST_RECORD_FIELDS = ("ID", "rot90_k", "flip", "angle", "crop", "blur", "noise", "brightness", "contrast", "gamma",
                      "jpeg_quality")
# The steps draw_test_image draws, and the values it draws only one way (a half of the mirror images
# top-bottom; a drawn, untextured tone behind every skew).
_TEST_STEPS = ("crop", "angle", "rot90", "flip", "blur", "exposure", "noise", "jpeg")
_TEST_FIXED = {"flip_vertical": 0.5, "background_p": 1.0, "background_texture": 0.0}


@functools.cache
def test_profile() -> dict:
    """The profile of test/ (synthetic_test.yaml), checked to be one draw_test_image can draw."""
    profile = load_profile(TEST_PROFILE)
    others = [k for k in profile if k.endswith("_p") and k[:-2] not in _TEST_STEPS + ("background",) and profile[k] > 0]
    fixed = [k for k, v in _TEST_FIXED.items() if profile[k] != v]
    if others or fixed:
        raise ValueError(f"{TEST_PROFILE}.yaml: the test split's draw has only the steps {', '.join(_TEST_STEPS)} "
                         f"and {_TEST_FIXED}; found {others + fixed}")
    return profile


@functools.cache
def phone_profile() -> dict:
    return load_profile(PHONE_PROFILE)


def _by_step(img: Image.Image, step, value) -> Image.Image:
    return Image.fromarray(step(np.asarray(img), value))


def _skew(img: Image.Image, rng: np.random.Generator, p: Mapping[str, Any]) -> tuple[Image.Image, float]:
    """|angle| in [angle_min, angle] either way, on a canvas grown to hold it, corners in a jittered tone."""
    angle = float(rng.uniform(p["angle_min"], p["angle"]) * pick(rng, [-1.0, 1.0]))
    fill = jittered(rng, pick(rng, [(t, t, t) for t in p["background_tones"]]), p["background_jitter"])
    return img.rotate(angle, resample=Image.BILINEAR, expand=True, fillcolor=fill), angle


def _exposure(rng: np.random.Generator, p: Mapping[str, Any]) -> tuple[float, float, float]:
    gain, contrast = float(rng.uniform(*p["exposure_gain"])), float(rng.uniform(*p["exposure_contrast"]))
    lo, hi = (math.log(g) for g in p["exposure_gamma"])
    return gain, contrast, float(math.exp(rng.uniform(lo, hi)))


def _geometry(img: Image.Image, rng: np.random.Generator, u: np.ndarray, p: Mapping, rec: dict) -> Image.Image:
    """Crop, skew, quarter turn, mirror image (in this order), each if its ``u`` is below its probability."""
    if u[0] < p["crop_p"]:
        left, right, top, bottom = rng.uniform(0.0, p["crop"], 4)
        img = _by_step(img, steps.crop, [left, top, right, bottom])
        rec["crop"] = round(float(max(left, right, top, bottom)), 4)
    if u[1] < p["angle_p"]:
        img, angle = _skew(img, rng, p)
        rec["angle"] = round(angle, 3)
    if u[2] < p["rot90_p"]:
        rec["rot90_k"] = int(rng.integers(1, 4))
        img = _by_step(img, steps.rotate90, rec["rot90_k"])
    if u[3] < p["flip_p"]:
        rec["flip"] = pick(rng, ["h", "v"])
        img = _by_step(img, steps.mirror, rec["flip"])
    return img


def _photometry(img: Image.Image, rng: np.random.Generator, u: np.ndarray, p: Mapping, long_side: int,
                rec: dict) -> Image.Image:
    """Blur, exposure, noise (rounded once, after both) and the JPEG quality, each if its ``u`` fires."""
    if u[4] < p["blur_p"]:  # sigma in px at 256 px (x 256 is exact), scaled to long_side
        r = float(rng.uniform(p["blur_min"] * 256, p["blur_sigma"] * 256) * long_side / 256)
        img = img.filter(ImageFilter.GaussianBlur(r))
        rec["blur"] = round(r, 3)
    arr = None
    if u[5] < p["exposure_p"]:
        gain, contrast, gamma = _exposure(rng, p)
        arr = steps.exposed(np.asarray(img), gain, contrast, gamma)
        rec.update(brightness=round(gain, 3), contrast=round(contrast, 3), gamma=round(gamma, 3))
    if u[6] < p["noise_p"]:  # std in grey levels (x 255 of the profile's shares: exact for 4 and 22)
        sigma = float(rng.uniform(p["noise_min"] * 255, p["noise_std"] * 255))
        if arr is None:
            arr = np.asarray(img, dtype=np.float32)
        arr = arr + rng.normal(0.0, sigma, arr.shape).astype(np.float32)
        rec["noise"] = round(sigma, 3)
    if arr is not None:
        img = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))
    if u[7] < p["jpeg_p"]:
        lo, hi = p["jpeg_quality"]
        rec["jpeg_quality"] = int(rng.integers(lo, hi + 1))
    return img


def draw_test_image(img: Image.Image, rng: np.random.Generator, long_side: int) -> tuple[Image.Image, dict]:
    """One test/ image from its clean page: (distorted image, its test_distortions.csv record).

    ``rot90_k`` counts counter-clockwise quarter turns (numpy ``rot90`` convention); ``flip`` is
    "none", "h" (left-right) or "v" (top-bottom), applied after the turn; ``angle`` is degrees
    counter-clockwise; ``crop`` the largest share cut from one side; ``jpeg_quality`` the quality
    the file is saved at. The image is brought to ``long_side`` after the geometric steps."""
    p = test_profile()
    rec = {"rot90_k": 0, "flip": "none", "angle": 0.0, "crop": 0.0, "blur": 0.0, "noise": 0.0,
           "brightness": 1.0, "contrast": 1.0, "gamma": 1.0, "jpeg_quality": TRAIN_JPEG_QUALITY}
    u = rng.random(10)  # which steps fire, drawn first (the split's contract)
    img = _geometry(img, rng, u, p, rec)
    w, h = img.size
    if max(w, h) != long_side:
        s = long_side / max(w, h)
        img = img.resize((max(8, round(w * s)), max(8, round(h * s))), Image.BILINEAR)
    return _photometry(img, rng, u, p, long_side, rec), rec


def draw_phone_image(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, dict]:
    """One test_phone/ image from its clean page: (distorted image, the drawn values). The drawn JPEG
    quality (``jpeg``) is the one the file is saved at, not a re-encoding before it."""
    params = sample_params(phone_profile(), rng)
    quality = int(params.pop("jpeg", TRAIN_JPEG_QUALITY))
    out = apply_params(np.asarray(img), params, rng)
    return Image.fromarray(out), {**params, "jpeg": quality}
