"""Built-in synthetic document-image data set in the reference competition's layout.

Seventeen document templates (the classes of the reference task) are drawn with
PIL.ImageDraw and numpy: no fonts, text is rows of dark "word" blocks. Train images are
clean; test images carry the competition's distortions (exact quarter turns, small-angle
rotations, flips, crops, blur, noise, exposure changes, low JPEG quality), each drawn
deterministically from the seed (profile ``synthetic_test``, docclassify/distortion/profiles/) and
recorded in ``test_distortions.csv``. A second labelled test split, ``test_phone/``, holds other
pages photographed with a phone (profile ``phone_photo``: perspective, desk, shadow, glare,
defocus and motion blur, low light, colour cast, moire, JPEG).

Files written into a data-set folder::

    train.csv               ID,target           (ID includes .jpg)
    meta.csv                target,class_name   (the 17 names, in target order)
    sample_submission.csv   ID,target           (target all 0, rows in a seeded shuffled order)
    test_labels.csv         ID,target           (the true test labels; training never reads it)
    test_distortions.csv    ID,rot90_k,flip,angle,crop,blur,noise,brightness,contrast,gamma,
                            jpeg_quality
    test_phone/*.jpg        the phone-photo test split; its labels, sample submission and record:
    test_phone_labels.csv, test_phone_sample_submission.csv, test_phone_distortions.csv (ID,params)
    synthetic_spec.json     the spec, GENERATOR_VERSION, counts
    train/*.jpg, test/*.jpg
    .complete               written last: the folder is complete

Every image depends only on (spec, split, index): its random generator is seeded from
``(seed, split, index)``, so the order of generation does not matter.

Command line::

    python -m docclassify.data.synthetic OUT_DIR [--n-train-per-class N]
        [--n-test-per-class N] [--long-side S] [--seed S] [--no-imbalance] [--quiet]

Modules of the package::

    spec.py         CLASS_NAMES, GENERATOR_VERSION, SyntheticSpec, train counts, spec hash
    page.py         drawing helpers: colour jitter, ``_Page`` (coordinates in fractions)
    templates.py    the 17 class templates and ``render_clean``
    generator.py    ``generate``: label layout, per-sample random generators, files (the test
                    splits' distortions: docclassify/distortion/synthetic.py)
    cache.py        ``ensure_synthetic``: the cached folder, temp dir + rename, stale temps
    cli.py          ``main``, run by ``python -m docclassify.data.synthetic``

Names starting with an underscore are shared between these modules only.
"""

from __future__ import annotations

from docclassify.data.synthetic.cli import main
from docclassify.data.synthetic.generator import COMPLETE_MARKER, PHONE_SPLIT, generate, make_image
from docclassify.data.synthetic.spec import (
    CLASS_NAMES,
    GENERATOR_VERSION,
    SyntheticSpec,
    spec_hash,
    synthetic_dir_name,
    train_counts,
)
from docclassify.data.synthetic.store import ensure_synthetic
from docclassify.data.synthetic.templates import render_clean

__all__ = [
    "CLASS_NAMES",
    "COMPLETE_MARKER",
    "GENERATOR_VERSION",
    "PHONE_SPLIT",
    "SyntheticSpec",
    "ensure_synthetic",
    "generate",
    "main",
    "make_image",
    "render_clean",
    "spec_hash",
    "synthetic_dir_name",
    "train_counts",
]
