"""Distortions of document images: the one home of the distortion vocabulary.

What a distorted test page looks like, and everything that draws, trains for, or measures it::

    profile.py    the profile: each step's keys (probability, strengths), loading a shipped or a
                  YAML profile (``validation.distort=synthetic_test``), normalising, describing
    steps.py      the steps: one pure function per distortion (OpenCV/numpy)
    draw.py       drawing a copy: the samplers, the step table, the one RNG contract
                  (``sample_params`` / ``apply_params`` / ``distort``) and the dihedral element
                  the drawn values turn a page by (``element_of``)
    copies.py     robust validation copies: RobustSpec, a copy's generator (seed, image ID, copy)
    match.py      ``augment.match_validation``: training samples drawn like the copies
    synthetic.py  the synthetic data's distorted test splits (test/, test_phone/)
    measure.py    measuring a data set: per-image statistics, a split's table (cached)
    compare.py    train vs test per statistic (quartiles, shift, KS distance), the table
    fit.py        fitting a profile to the measured shift (``validation.distort=auto``)
    report.py     the shift report's files and the training hook (``run_shift_check``)
    profiles/     the shipped profiles (``synthetic_test.yaml``, ``phone_photo.yaml``)

Who uses it: the robust copies (data/validation.py), augmentation (data/augment.py: the match
step and the orientation head's label), the synthetic data (data/synthetic/), test-time deskew
(data/deskew.py), the shift report (docclassify/shift.py) and the training run (engine/kfold.py).
This package imports no training, engine or predict module: only the config schema, utils and the
leaf data modules it builds on (data/images.py: decoding, resizing; data/dihedral.py: the
dihedral group; data/cache.py: cache keys).

Names imported here are the core of drawing copies; import the measurement, fit and report from
their modules (they pull in pandas).
"""

from __future__ import annotations

from docclassify.distortion.draw import (
    STEP_NAMES,
    STEPS,
    Params,
    apply_params,
    distort,
    element_of,
    quarter_turns,
    sample_params,
)
from docclassify.distortion.profile import (
    ADDED_LATER_OFF,
    STEP_KEYS,
    describe,
    load_profile,
    normalise_profile,
    profile_defaults,
    resolve_profile,
    shipped_profiles,
)
from docclassify.distortion.steps import (
    blur,
    border_colour,
    channel_contrast,
    color,
    crop,
    desk,
    exposure,
    glare,
    jpeg,
    long_side,
    mirror,
    moire,
    motion,
    noise,
    occlude,
    perspective,
    rotate,
    rotate90,
    shadow,
    surface,
)

__all__ = [
    "ADDED_LATER_OFF", "STEPS", "STEP_KEYS", "STEP_NAMES", "Params", "apply_params", "blur", "border_colour",
    "channel_contrast", "color", "crop", "describe", "desk", "distort", "element_of", "exposure", "glare", "jpeg",
    "load_profile", "long_side", "mirror", "moire", "motion", "noise", "normalise_profile", "occlude",
    "perspective", "profile_defaults", "quarter_turns", "resolve_profile", "rotate", "rotate90", "sample_params",
    "shadow", "shipped_profiles", "surface",
]
