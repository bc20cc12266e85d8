"""Drawing a distorted copy from a profile: the samplers, the step table and the one RNG contract.

:func:`sample_params` draws the values of one distorted copy from a profile (profile.py);
:func:`apply_params` applies them with the steps (steps.py); :func:`distort` does both;
:func:`element_of` says which exact turn or mirror image the drawn values put the page through.

The RNG contract: each of :func:`sample_params` and :func:`apply_params` takes exactly one draw
from the caller's generator, and every step draws from its own generator, derived from that one
draw and the step's stream number (fixed per step, never reused). So changing one key of a
profile (e.g. ``noise_p=0``) leaves every other step's draws, and thus the other distortions of
each copy, unchanged: profiles can be compared key by key on the same copies, and a step added
later leaves the copies of a profile without it byte for byte as they were. Whoever calls decides
what the generator is a function of: a robust copy's of (validation seed, image ID, copy index)
(copies.py), a matched training sample's of (seed, epoch, row) (match.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from docclassify.data.dihedral import IDENTITY, Element, compose
from docclassify.distortion import steps as S

Params = dict[str, Any]  # step name -> drawn value; a step absent from the dict is not applied


def _fires(rng: np.random.Generator, p: float) -> bool:
    return bool(rng.random() < float(p))


def _span(rng: np.random.Generator, pair) -> float:
    lo, hi = (float(v) for v in pair)
    return float(rng.uniform(lo, hi))


def _blob(profile: Mapping, rng: np.random.Generator) -> dict:
    radius = float(profile["occlusion_size"]) / 2.0  # the size is the blob's diameter
    return {"cx": float(rng.random()), "cy": float(rng.random()), "ax": radius * float(rng.uniform(0.3, 1.0)),
            "ay": radius * float(rng.uniform(0.3, 1.0)), "theta": float(rng.uniform(0, 180)),
            "rgb": [int(v) for v in rng.integers(0, 256, size=3)]}


def sample_occlusion(profile: Mapping, rng: np.random.Generator) -> list[dict] | None:
    """1 to ``occlusion_count`` blobs (the first drawn as with a count of 1)."""
    if not _fires(rng, profile["occlusion_p"]) or profile["occlusion_size"] <= 0:
        return None
    blobs = [_blob(profile, rng)]
    count = int(profile.get("occlusion_count", 1))
    if count > 1:
        blobs += [_blob(profile, rng) for _ in range(int(rng.integers(0, count)))]
    return blobs


def sample_flip(profile: Mapping, rng: np.random.Generator) -> bool | str | None:
    """True (left-right, the value a flip always had) or, a share ``flip_vertical`` of them, ``v``
    (top-bottom)."""
    if not _fires(rng, profile["flip_p"]):
        return None
    vertical = float(profile["flip_vertical"])
    return "v" if vertical > 0 and _fires(rng, vertical) else True  # no draw at 0: older copies stay


def sample_rot90(profile: Mapping, rng: np.random.Generator) -> int | None:
    return int(rng.integers(1, 4)) if _fires(rng, profile["rot90_p"]) else None


def _tone(profile: Mapping, rng: np.random.Generator) -> list[int]:
    """One of ``background_tones`` (grey levels), each channel jittered by ``background_jitter``."""
    tones = profile["background_tones"]
    tone = tones[int(rng.integers(len(tones)))]
    jitter = rng.normal(0.0, float(profile["background_jitter"]), 3)
    return [int(min(255, max(0, tone + j))) for j in jitter]


def sample_surface(profile: Mapping, rng: np.random.Generator) -> dict:
    """A solid colour (any colour, or one of ``background_tones``), or (share ``background_texture``)
    a texture in that colour."""
    rgb = _tone(profile, rng) if profile["background_tones"] else [int(v) for v in rng.integers(0, 256, size=3)]
    spec: dict[str, Any] = {"rgb": rgb, "texture": None}
    if _fires(rng, profile["background_texture"]):
        spec["texture"] = {"seed": int(rng.integers(2**31)), "cells": int(rng.integers(2, 9)),
                           "amplitude": float(rng.uniform(0.1, 0.4)), "streaks": float(rng.uniform(0.0, 1.5))}
    return spec


def sample_background(profile: Mapping, rng: np.random.Generator) -> dict | None:
    return sample_surface(profile, rng) if _fires(rng, profile["background_p"]) else None


def sample_angle(profile: Mapping, rng: np.random.Generator) -> float | None:
    """Uniform in +-``angle``; with ``angle_min`` > 0, |angle| uniform in [angle_min, angle], either sign."""
    a, low = float(profile["angle"]), float(profile["angle_min"])
    if not _fires(rng, profile["angle_p"]) or a <= 0:
        return None
    if low <= 0:
        return float(rng.uniform(-a, a))
    size = float(rng.uniform(low, a))
    return size if rng.random() < 0.5 else -size


def sample_perspective(profile: Mapping, rng: np.random.Generator) -> list[float] | None:
    s = float(profile["perspective"])
    return [float(v) for v in rng.uniform(0, s, size=8)] if _fires(rng, profile["perspective_p"]) and s > 0 else None


def sample_desk(profile: Mapping, rng: np.random.Generator) -> dict | None:
    if not _fires(rng, profile["desk_p"]):
        return None
    tilt = float(profile["desk_tilt"])
    return {"scale": _span(rng, profile["desk_scale"]), "x": float(rng.random()), "y": float(rng.random()),
            "corners": [float(v) for v in rng.uniform(-tilt, tilt, size=8)], "surface": sample_surface(profile, rng)}


def sample_crop(profile: Mapping, rng: np.random.Generator) -> list[float] | None:
    s = float(profile["crop"])
    return [float(v) for v in rng.uniform(0, s, size=4)] if _fires(rng, profile["crop_p"]) and s > 0 else None


def sample_shadow(profile: Mapping, rng: np.random.Generator) -> dict | None:
    """A band 0.1-0.4 of the long side wide, soft edge 0.2-1 x its half width, darkening by
    0.3-1 x ``shadow_strength``."""
    if not _fires(rng, profile["shadow_p"]) or profile["shadow_strength"] <= 0:
        return None
    return {"cx": float(rng.random()), "cy": float(rng.random()), "theta": float(rng.uniform(0, 180)),
            "width": float(rng.uniform(0.1, 0.4)), "soft": float(rng.uniform(0.2, 1.0)),
            "strength": float(profile["shadow_strength"]) * float(rng.uniform(0.3, 1.0))}


def sample_glare(profile: Mapping, rng: np.random.Generator) -> dict | None:
    """A spot 0.3-1 x ``glare_size`` in radius, brightening by 0.5-1 x ``glare_strength``."""
    if not _fires(rng, profile["glare_p"]) or profile["glare_strength"] <= 0 or profile["glare_size"] <= 0:
        return None
    return {"cx": float(rng.random()), "cy": float(rng.random()),
            "radius": float(profile["glare_size"]) * float(rng.uniform(0.3, 1.0)),
            "strength": float(profile["glare_strength"]) * float(rng.uniform(0.5, 1.0))}


def sample_color(profile: Mapping, rng: np.random.Generator) -> tuple[float, float] | None:
    if not _fires(rng, profile["color_p"]):
        return None
    return _span(rng, profile["brightness"]), _span(rng, profile["contrast"])


def sample_channel(profile: Mapping, rng: np.random.Generator) -> list[float] | None:
    if not _fires(rng, profile["channel_p"]):
        return None
    return [_span(rng, profile["channel_contrast"]) for _ in range(3)]


def sample_blur(profile: Mapping, rng: np.random.Generator) -> float | None:
    s, low = float(profile["blur_sigma"]), float(profile["blur_min"])
    return float(rng.uniform(low, s)) if _fires(rng, profile["blur_p"]) and s > 0 else None


def sample_motion(profile: Mapping, rng: np.random.Generator) -> dict | None:
    """A streak 0.25-1 x ``motion_length`` long, in any direction."""
    s = float(profile["motion_length"])
    if not _fires(rng, profile["motion_p"]) or s <= 0:
        return None
    return {"length": s * float(rng.uniform(0.25, 1.0)), "theta": float(rng.uniform(0, 180))}


def sample_exposure(profile: Mapping, rng: np.random.Generator) -> list[float] | None:
    """(gain, contrast, gamma): gain and contrast uniform in their ranges, gamma log-uniform."""
    if not _fires(rng, profile["exposure_p"]):
        return None
    lo, hi = (math.log(float(v)) for v in profile["exposure_gamma"])
    return [_span(rng, profile["exposure_gain"]), _span(rng, profile["exposure_contrast"]),
            float(math.exp(rng.uniform(lo, hi)))]


def sample_moire(profile: Mapping, rng: np.random.Generator) -> dict | None:
    """Gratings of period 0.6-2 % of the long side, beating at 1-6 degrees, darkening by 0.3-1 x
    ``moire_strength``; a phase per channel."""
    if not _fires(rng, profile["moire_p"]) or profile["moire_strength"] <= 0:
        return None
    return {"period": float(rng.uniform(0.006, 0.02)), "theta": float(rng.uniform(0, 180)),
            "beat": float(rng.uniform(1.0, 6.0)),
            "strength": float(profile["moire_strength"]) * float(rng.uniform(0.3, 1.0)),
            "phase": [float(v) for v in rng.uniform(0, 2 * math.pi, 3)]}


def sample_noise(profile: Mapping, rng: np.random.Generator) -> float | None:
    s, low = float(profile["noise_std"]), float(profile["noise_min"])
    return float(rng.uniform(low, s)) if _fires(rng, profile["noise_p"]) and s > 0 else None


def sample_jpeg(profile: Mapping, rng: np.random.Generator) -> int | None:
    lo, hi = (int(v) for v in profile["jpeg_quality"])
    return int(rng.integers(lo, hi + 1)) if _fires(rng, profile["jpeg_p"]) else None


@dataclass(frozen=True)
class Step:
    """One distortion: how its value is drawn from a profile, and how it is applied.

    ``stream``: the number of the step's own generator (fixed per step, never reused, so a step
    added later leaves every existing step's draws unchanged). ``uses``: what the step reads of
    the copy's context (``surround``: the drawn background or desk; ``scale``: working size / own
    size). ``apply`` None: a setting other steps read, not a step of its own."""

    name: str
    stream: int
    sample: Callable[[Mapping, np.random.Generator], Any]
    apply: Callable[..., np.ndarray] | None
    uses: tuple[str, ...] = ()


# In the order they are applied. Streams 0-9 are the first ten steps' positions before the later
# steps were inserted: a profile without the later steps gives the copies it always gave.
STEPS: tuple[Step, ...] = (
    Step("occlusion", 0, sample_occlusion, S.occlude),
    Step("flip", 1, sample_flip, S.mirror),
    Step("rot90", 2, sample_rot90, S.rotate90),
    Step("background", 10, sample_background, None),
    Step("angle", 3, sample_angle, S.rotate, ("surround",)),
    Step("perspective", 4, sample_perspective, S.perspective, ("surround",)),
    Step("desk", 11, sample_desk, S.desk),
    Step("crop", 5, sample_crop, S.crop),
    Step("moire", 17, sample_moire, S.moire),
    Step("shadow", 12, sample_shadow, S.shadow),
    Step("glare", 13, sample_glare, S.glare),
    Step("color", 6, sample_color, S.color),
    Step("channel", 14, sample_channel, S.channel_contrast),
    Step("blur", 7, sample_blur, S.blur),
    Step("motion", 16, sample_motion, S.motion),
    Step("exposure", 15, sample_exposure, S.exposure),
    Step("noise", 8, sample_noise, S.noise, ("scale",)),
    Step("jpeg", 9, sample_jpeg, S.jpeg, ("scale",)),
)
STEP_NAMES = tuple(s.name for s in STEPS)


def _step_seed(rng: np.random.Generator) -> int:
    """The one draw of ``rng`` that every step's generator derives from."""
    return int(rng.integers(2**63))


def _step_rng(seed: int, step: Step) -> np.random.Generator:
    return np.random.default_rng([seed, step.stream])


def sample_params(profile: Mapping, rng: np.random.Generator) -> Params:
    """The drawn values of one distorted copy (only the steps that fire); JSON-serialisable.

    Takes exactly one draw from ``rng``. A step whose probability is 0 draws nothing (its generator
    is not even made: they cost more than most steps at a training image's size)."""
    seed = _step_seed(rng)
    params: Params = {}
    for step in STEPS:
        if float(profile.get(f"{step.name}_p", 1.0)) <= 0.0:
            continue
        value = step.sample(profile, _step_rng(seed, step))
        if value is not None:
            params[step.name] = value
    return params


def context(params: Mapping[str, Any], scale: float = 1.0) -> dict[str, Any]:
    """What steps read besides their own value: the surround of the page (on a desk: the desk;
    else the drawn background; else None: the border colour) and the scale."""
    photo = params.get("desk")
    return {"surround": photo["surface"] if photo else params.get("background"), "scale": float(scale)}


def apply_params(image: np.ndarray, params: Mapping[str, Any], rng: np.random.Generator,
                 scale: float = 1.0) -> np.ndarray:
    """Apply the drawn ``params`` to ``image`` in the steps' order (the input is not modified).

    ``rng`` feeds the steps that draw per pixel (noise); takes exactly one draw from it.
    ``scale``: the image's size as a share of its own resolution (1: distorted at its own size)."""
    unknown = sorted(set(params) - set(STEP_NAMES))
    if unknown:
        raise ValueError(f"unknown distortion step(s) {unknown}; known: {', '.join(STEP_NAMES)}")
    ctx = context(params, scale)
    seed = _step_seed(rng)
    out = np.ascontiguousarray(image)
    for step in STEPS:
        if step.apply is not None and step.name in params:
            out = step.apply(out, params[step.name], _step_rng(seed, step), **{k: ctx[k] for k in step.uses})
    return out if out is not image else image.copy()


def quarter_turns(angle: float) -> int:
    """The quarter turns a free rotation counts as for orientation labels: the nearest multiple of 90
    degrees, |angle| <= 45 counting as none (a skewed page is still upright: 46 degrees is a turn)."""
    q = abs(float(angle)) / 90.0
    return int(math.copysign(math.ceil(q - 0.5), float(angle))) % 4


def element_of(params: Mapping[str, Any] | None) -> Element:
    """The dihedral element the drawn ``params`` put the page through: the mirror image (flip) first,
    then the quarter turns (rot90), then the free rotation's nearest quarter turn (:func:`quarter_turns`).
    Other steps do not turn or mirror the page. None (nothing drawn): the identity."""
    if not params:
        return IDENTITY
    g = S.MIRRORS[params["flip"]] if "flip" in params else IDENTITY
    g = compose(Element(int(params.get("rot90", 0))), g)
    return compose(Element(quarter_turns(params.get("angle", 0.0))), g)


def distort(image: np.ndarray, profile: Mapping, rng: np.random.Generator,
            scale: float = 1.0) -> tuple[np.ndarray, Params]:
    """One distorted copy of ``image`` drawn from ``profile``: (new image, the drawn params).
    ``scale``: see :func:`apply_params`."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"distort expects a uint8 HxWx3 image, got {image.dtype} {image.shape}")
    params = sample_params(profile, rng)
    return apply_params(image, params, rng, scale), params
