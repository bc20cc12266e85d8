"""The test split's distortions: ``distort`` and the fields of its record.

Every test image goes through ``distort``; its record is one row of ``test_distortions.csv``.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageFilter

from docclassify.data.synthetic.page import _col, _pick

#: JPEG quality of train images, and of test images not given a low quality.
_TRAIN_JPEG_QUALITY = 92

_DISTORTION_FIELDS = ("ID", "rot90_k", "flip", "angle", "crop", "blur", "noise", "brightness",
                      "contrast", "gamma", "jpeg_quality")


def distort(img: Image.Image, rng: np.random.Generator, long_side: int):
    """Apply the competition-like test distortions; returns (image, record dict).

    ``rot90_k`` counts counter-clockwise quarter turns (numpy ``rot90`` convention);
    ``flip`` is "none", "h" (left-right) or "v" (top-bottom); ``angle`` is degrees
    counter-clockwise; ``crop`` the largest fraction cut from one side.
    """
    rec = {"rot90_k": 0, "flip": "none", "angle": 0.0, "crop": 0.0, "blur": 0.0, "noise": 0.0,
           "brightness": 1.0, "contrast": 1.0, "gamma": 1.0,
           "jpeg_quality": _TRAIN_JPEG_QUALITY}
    u = rng.random(10)
    W, H = img.size
    if u[0] < 0.35:  # crop
        cl, cr, ct, cb = rng.uniform(0.0, 0.12, 4)
        img = img.crop((round(cl * W), round(ct * H), W - round(cr * W), H - round(cb * H)))
        rec["crop"] = round(float(max(cl, cr, ct, cb)), 4)
    if u[1] < 0.45:  # small-angle rotation with a fill around it
        angle = float(rng.uniform(3.0, 20.0) * _pick(rng, [-1.0, 1.0]))
        fill = _col(rng, _pick(rng, [(245, 245, 245), (30, 30, 30), (128, 128, 128)]), 10)
        img = img.rotate(angle, resample=Image.BILINEAR, expand=True, fillcolor=fill)
        rec["angle"] = round(angle, 3)
    if u[2] < 0.35:  # exact quarter turns
        k = int(rng.integers(1, 4))
        img = img.transpose({1: Image.Transpose.ROTATE_90, 2: Image.Transpose.ROTATE_180,
                             3: Image.Transpose.ROTATE_270}[k])
        rec["rot90_k"] = k
    if u[3] < 0.15:
        f = _pick(rng, ["h", "v"])
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT if f == "h"
                            else Image.Transpose.FLIP_TOP_BOTTOM)
        rec["flip"] = f
    w, h = img.size
    if max(w, h) != long_side:
        s = long_side / max(w, h)
        img = img.resize((max(8, round(w * s)), max(8, round(h * s))), Image.BILINEAR)
    if u[4] < 0.4:
        r = float(rng.uniform(0.6, 2.2) * long_side / 256)
        img = img.filter(ImageFilter.GaussianBlur(r))
        rec["blur"] = round(r, 3)
    arr = None
    if u[5] < 0.6:  # exposure: over- and under-exposed
        b = float(rng.uniform(0.55, 1.5))
        c = float(rng.uniform(0.6, 1.4))
        g = float(math.exp(rng.uniform(math.log(0.5), math.log(2.0))))
        x = np.asarray(img, dtype=np.float32) / 255.0
        x = np.clip(((x - 0.5) * c + 0.5) * b, 0.0, 1.0) ** g
        arr = x * 255.0
        rec.update(brightness=round(b, 3), contrast=round(c, 3), gamma=round(g, 3))
    if u[6] < 0.4:
        sigma = float(rng.uniform(4.0, 22.0))
        if arr is None:
            arr = np.asarray(img, dtype=np.float32)
        arr = arr + rng.normal(0.0, sigma, arr.shape).astype(np.float32)
        rec["noise"] = round(sigma, 3)
    if arr is not None:
        img = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))
    if u[7] < 0.5:
        rec["jpeg_quality"] = int(rng.integers(12, 46))
    return img, rec
