"""distortion/restore.py: each restoration undoes its distortion (measured by the same statistics that
pick it), the diagnosis names what is wrong with a page, and restored images keep the training layout.

Every comparison is between two code paths on the same pages (the distorted page and its
restoration, against the clean page), never with a recorded number."""

from __future__ import annotations

import numpy as np
import pytest

from docclassify.data.images import resize_image
from docclassify.data.synthetic.templates import render_clean
from docclassify.distortion import restore as R
from docclassify.distortion import steps

SIZE = 96


def page(target: int, seed: int, size: int = SIZE) -> np.ndarray:
    """A clean synthetic page of class ``target``, resized like a training image (pad)."""
    img = np.asarray(render_clean(target, np.random.default_rng(seed), 2 * size))
    return resize_image(img, size, "pad", 0)


# Document classes of the synthetic data that are white pages (not photos or cards): one reference
DOCUMENTS = (3, 4, 7, 12, 14)


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    return np.stack([page(DOCUMENTS[s % 5], s) for s in range(40)])


@pytest.fixture(scope="module")
def reference(clean) -> R.Reference:
    return R.Reference.of(clean)


def _content(image: np.ndarray) -> np.ndarray:
    x0, y0, x1, y1 = R.content_box(image, 0)
    return image[y0:y1, x0:x1].astype(np.float64)


def distorted(image: np.ndarray, step, value, rng=None) -> np.ndarray:
    """``step`` applied to the page inside the pad bars (as a test photo is distorted before it is
    resized and padded)."""
    x0, y0, x1, y1 = R.content_box(image, 0)
    out = image.copy()
    out[y0:y1, x0:x1] = step(np.ascontiguousarray(image[y0:y1, x0:x1]), value, rng)
    return out


def test_gamma_brings_a_dark_page_back(clean, reference):
    for img in clean[:6]:
        dark = R.restore(img, (), "pad", 0)  # no plan: the image itself
        assert dark is img
        dark = distorted(img, steps.exposure, [0.45, 1.0, 1.6])
        plan = R.diagnose(R.measure(dark), reference)
        assert "gamma" in dict(plan)
        fixed = R.restore(dark, (("gamma", dict(plan)["gamma"]),))
        clean_b, dark_b, fixed_b = (R.measure(x).brightness for x in (img, dark, fixed))
        assert abs(fixed_b - clean_b) < abs(dark_b - clean_b)
        assert np.abs(_content(fixed) - _content(img)).mean() < np.abs(_content(dark) - _content(img)).mean()


def test_denoise_sharpen_clahe_each_move_their_statistic_back(clean, reference):
    rng = np.random.default_rng(0)
    for img in clean[:4]:
        noisy = distorted(img, steps.noise, 0.1, rng)
        assert "denoise" in dict(R.diagnose(R.measure(noisy), reference))
        fixed = R.restore(noisy, (("denoise", 30.0),))
        assert R.measure(fixed).noise < R.measure(noisy).noise
        assert np.abs(_content(fixed) - _content(img)).mean() < np.abs(_content(noisy) - _content(img)).mean()

        blurred = distorted(img, steps.blur, 0.01)
        assert "sharpen" in dict(R.diagnose(R.measure(blurred), reference))
        assert R.measure(R.restore(blurred, (("sharpen", 1.0),))).sharpness > R.measure(blurred).sharpness

        flat = distorted(img, steps.color, (0.0, 0.35))
        assert "clahe" in dict(R.diagnose(R.measure(flat), reference))
        assert R.measure(R.restore(flat, (("clahe", 2.0),))).contrast > R.measure(flat).contrast


def test_deskew_and_crop_undo_a_skewed_page_and_a_page_on_a_desk(clean, reference):
    img = page(7, 5, 192)  # an outpatient certificate: text lines the skew estimate reads
    skewed = resize_image(steps.rotate(_content(img).astype(np.uint8), 12.0), 192, "pad", 0)
    facts = R.measure(skewed)
    assert abs(facts.skew - 12.0) < 3.0
    assert abs(R.measure(R.restore(skewed, (("deskew", facts.skew),))).skew) < abs(facts.skew) / 2

    desk = {"scale": 0.55, "x": 0.5, "y": 0.5, "corners": [0.0] * 8, "surface": {"rgb": [70, 60, 50]}}
    on_desk = resize_image(steps.desk(_content(clean[3]).astype(np.uint8), desk), SIZE, "pad", 0)
    plan = dict(R.diagnose(R.measure(on_desk), reference))
    assert "crop" in plan
    cropped = R.restore(on_desk, (("crop", plan["crop"]),))
    assert R.measure(cropped).page_share > R.measure(on_desk).page_share
    assert cropped.shape == on_desk.shape


def test_clean_pages_mostly_need_nothing_and_restored_pages_keep_the_pad_layout(clean, reference):
    plans = [R.diagnose(R.measure(img), reference) for img in clean]
    assert sum(not p for p in plans) > len(plans) / 2  # each statistic's tail is 5% of clean pages
    img = clean[0]
    x0, y0, x1, y1 = R.content_box(img, 0)
    assert (x1 - x0, y1 - y0) != img.shape[:2]  # a portrait page: pad bars left and right
    out = R.restore(distorted(img, steps.exposure, [0.4, 1.0, 1.5]), (("gamma", 0.5), ("clahe", 2.0)))
    assert out.shape == img.shape and out.dtype == np.uint8
    assert R.content_box(out, 0) == (x0, y0, x1, y1)
    assert (out[:, :x0] == 0).all() and (out[:, x1:] == 0).all()


def test_the_reference_judges_a_page_by_its_class():
    """A car dashboard (class 2) is a dark photo by nature: dark for a document page, not for its class."""
    docs = [page(c, s) for c in DOCUMENTS for s in range(6)]
    dashboards = [page(2, 100 + s) for s in range(6)]
    labels = [0] * len(docs) + [2] * len(dashboards)
    ref = R.Reference.of(np.stack(docs + dashboards), labels)
    assert set(ref.classes) == {0, 2}
    dash = R.measure(page(2, 7))
    assert "gamma" in dict(R.diagnose(dash, ref, 0)) and "gamma" not in dict(R.diagnose(dash, ref, 2))
    assert ref.range_of(9) == ref.all  # a class without its own pages: every page's range


def test_views_are_each_restoration_alone_and_the_chain():
    assert R.views_of(()) == []
    one = (("gamma", 0.5),)
    assert R.views_of(one) == [one]
    two = (("denoise", 10.0), ("gamma", 0.5))
    assert R.views_of(two) == [(("denoise", 10.0),), (("gamma", 0.5),), two]
    assert [name for name, _ in two] == [n for n in R.RESTORATIONS if n in dict(two)]
