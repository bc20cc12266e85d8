"""The distortion profile: which steps a distorted copy goes through, how often, and how strongly.

A profile is a mapping with the keys of ``config_schema.DistortProfile`` (the typed config: every
key's type, range and default). This module owns what the keys mean: which step each belongs to
(:data:`STEP_KEYS`, probability first), how a profile given as a config node, a plain mapping, a
shipped name or a YAML file becomes the plain, complete, typed dict the steps read
(:func:`resolve_profile`, :func:`normalise_profile`), and how a profile reads in a log line
(:func:`describe`).

Shipped profiles (``profiles/*.yaml``, a name or a path can be given as ``validation.distort=``):

    synthetic_test  what the synthetic data's test split (test/) draws, in this vocabulary
    phone_photo     phone photos of pages (the synthetic data's test_phone/ split): perspective,
                    desk, shadow, glare, defocus and motion blur, low light, colour cast, moire, JPEG
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from docclassify.config_schema import (
    PROFILES_DIR,
    ConfigError,
    DistortProfile,
    profile_errors,
    profile_file,
)

# Each step and the profile keys it reads: its probability (``<step>_p``) first, then its strengths.
# ``background`` is a setting the geometric steps read (what their uncovered corners show).
STEP_KEYS: dict[str, tuple[str, ...]] = {
    "occlusion": ("occlusion_p", "occlusion_size", "occlusion_count"),
    "flip": ("flip_p", "flip_vertical"),
    "rot90": ("rot90_p",),
    "background": ("background_p", "background_texture", "background_tones", "background_jitter"),
    "angle": ("angle_p", "angle", "angle_min"),
    "perspective": ("perspective_p", "perspective"),
    "desk": ("desk_p", "desk_scale", "desk_tilt"),
    "crop": ("crop_p", "crop"),
    "moire": ("moire_p", "moire_strength"),
    "shadow": ("shadow_p", "shadow_strength"),
    "glare": ("glare_p", "glare_strength", "glare_size"),
    "color": ("color_p", "brightness", "contrast"),
    "channel": ("channel_p", "channel_contrast"),
    "blur": ("blur_p", "blur_sigma", "blur_min"),
    "motion": ("motion_p", "motion_length"),
    "exposure": ("exposure_p", "exposure_gain", "exposure_contrast", "exposure_gamma"),
    "noise": ("noise_p", "noise_std", "noise_min"),
    "jpeg": ("jpeg_p", "jpeg_quality"),
}

# Profile keys added after runs were first recorded, at the values that switch their steps off: a run
# recorded before them is rebuilt (inference, aggregate) with the copies it was validated on. (Keys
# added later still, whose defaults are off, need no entry: the defaults fill them.)
ADDED_LATER_OFF = {"occlusion_count": 1, "background_p": 0.0, "desk_p": 0.0, "shadow_p": 0.0, "glare_p": 0.0,
                   "channel_p": 0.0}


def profile_defaults() -> dict[str, Any]:
    """Every key at DistortProfile's default (the default robust copies' profile)."""
    return dataclasses.asdict(DistortProfile())


def normalise_profile(profile: Any) -> dict:
    """A plain, typed, complete profile dict (DistortProfile's defaults for missing keys)."""
    merged = OmegaConf.merge(OmegaConf.structured(DistortProfile), OmegaConf.create(dict(profile)))
    return OmegaConf.to_container(merged)


def shipped_profiles() -> list[str]:
    """Names of the profiles that ship in the package (``validation.distort=<name>``)."""
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def load_profile(value: str | Path) -> dict:
    """The profile a shipped name (``synthetic_test``) or a YAML file path names, normalised. A
    ConfigError names the value and the fix when there is no such profile or a key is wrong."""
    path = profile_file(str(value))
    if path is None:
        raise ConfigError(f"validation.distort={value}: no shipped profile of that name and no such file; shipped: "
                          f"{', '.join(shipped_profiles())} (or auto, or a path to a profile YAML)")
    node = OmegaConf.load(path)
    errors = profile_errors(node, f"validation.distort ({path})")
    if errors:
        raise ConfigError("; ".join(errors))
    return normalise_profile(OmegaConf.to_container(node))


def resolve_profile(value: Any) -> dict:
    """``validation.distort`` as given (a config node, a DistortProfile or a mapping of keys, or a shipped name / a YAML
    path) as a normalised profile. ``auto`` is not resolved here: it needs the data (report.py)."""
    if isinstance(value, (str, Path)):
        return load_profile(value)
    if isinstance(value, DictConfig):  # every key read by name (tests/test_config_keys.py sees each one used)
        value = {k: OmegaConf.to_object(value[k]) if OmegaConf.is_config(value[k]) else value[k] for k in value}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # the typed validation settings' profile
        value = dataclasses.asdict(value)
    if not isinstance(value, Mapping):
        raise ConfigError(f"validation.distort={value!r}: expected auto, a profile name, a YAML path or profile keys")
    return normalise_profile(value)


def active_steps(profile: Mapping[str, Any]) -> list[str]:
    """The steps a profile can apply (probability above 0), in STEP_KEYS order."""
    return [step for step, keys in STEP_KEYS.items() if step != "background" and float(profile[keys[0]]) > 0]


def describe(profile: Mapping[str, Any]) -> str:
    """``rot90 50%, angle 70% (angle 25.0), ...``: the steps on, with their strengths (a log line)."""
    parts = []
    for step in active_steps(profile):
        p, *strengths = STEP_KEYS[step]
        detail = ", ".join(f"{k} {json.dumps(profile[k])}" for k in strengths)
        parts.append(f"{step} {100 * float(profile[p]):.0f}%" + (f" ({detail})" if detail else ""))
    return "; ".join(parts) or "no distortion"


def profile_digest(profile: Mapping[str, Any]) -> str:
    """A short digest of a normalised profile (what made a set of copies)."""
    payload = json.dumps(normalise_profile(profile), sort_keys=True).encode()
    return hashlib.blake2b(payload, digest_size=8).hexdigest()
