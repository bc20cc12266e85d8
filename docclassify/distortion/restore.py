"""Restoration: the inverse vocabulary of the distortion steps, and the diagnosis that picks it.

One function per restoration, ``(image uint8 HxWx3, value) -> new image``, like the steps
(steps.py); each undoes what a step or a capture did::

    crop      a page photographed on a background (steps.desk, steps.perspective): the page's box
    deskew    a skewed page (steps.rotate): rotated back (data/deskew.py: the same estimate and turn)
    denoise   sensor noise (steps.noise): non-local means, strength in grey levels
    gamma     a dark or washed-out page (steps.exposure, steps.color): a gamma curve
    clahe     low contrast (steps.color, steps.channel_contrast): contrast-limited equalisation
    sharpen   defocus (steps.blur, steps.motion): an unsharp mask

What is wrong with a page is decided by measuring it (:func:`measure`: brightness, contrast,
sharpness, noise and skew as distortion/measure.py defines them, plus the share of the frame the
page covers) against the same statistics of clean training images at the same size
(:class:`Reference`): a statistic in the outer ``tail`` of the clean images' range names its
restoration (:func:`diagnose`); the range is the page's class's when the caller knows it (inference
passes the ensemble's top class), since some classes are dark photos or small cards by nature.
Images are measured and restored at the size the model sees them (the decoded, resized arrays):
the test images and the robust copies a guard is fitted on then go through exactly the same
operations. The pad bars of ``data.resize=pad`` are no part of the page:
each restoration acts on the content inside them and the result is padded again as training
images are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from docclassify.data.images import resize_image
from docclassify.distortion.measure import coarse_contrast, grey, noise_sigma, sharpness

# The order a restoration chain runs in: geometry first (on the page, not on its background), noise
# removed before the contrast is raised and the edges are sharpened.
RESTORATIONS = ("crop", "deskew", "denoise", "gamma", "clahe", "sharpen")
NOISE_FLOOR = 0.005     # noise std (share of full scale) below which a page is never called noisy (clean scans: ~0)
MIN_SKEW = 2.0          # degrees: smaller estimated skews are left alone (within the estimate's noise at small sizes)
GAMMA_RANGE = (0.25, 4.0)
MIN_LOG_GAMMA = 0.1     # |log gamma| below this: no gamma
DENOISE_RANGE = (3.0, 40.0)  # non-local means strength, grey levels
CLAHE_CLIP = 2.0
SHARPEN_SIGMA = 1.0     # px of the unsharp mask's blur
SHARPEN_AMOUNT = 1.0
PER_CLASS = 30          # clean images of each class measured for the reference (a seeded sample)
MIN_CLASS_PAGES = 5     # a class with fewer clean pages is judged by every page's range


# ------------------------------------------------------------------------------------ restorations
def _uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def crop(image: np.ndarray, box: Sequence[int]) -> np.ndarray:
    """The page's box ``(x0, y0, x1, y1)`` (pixels, end exclusive) cut out of its background."""
    x0, y0, x1, y1 = (int(v) for v in box)
    h, w = image.shape[:2]
    x0, y0 = min(max(0, x0), w - 1), min(max(0, y0), h - 1)
    return np.ascontiguousarray(image[y0:max(y0 + 1, min(h, y1)), x0:max(x0 + 1, min(w, x1))])


def deskew(image: np.ndarray, angle: float) -> np.ndarray:
    """A page skewed by ``angle`` degrees (counter-clockwise) turned back, its frame kept
    (data/deskew.py: ``rotate_back``, what ``tta.deskew`` does at full resolution)."""
    from docclassify.data.deskew import rotate_back

    return rotate_back(image, float(angle))


def denoise(image: np.ndarray, strength: float) -> np.ndarray:
    """Non-local means denoising (OpenCV) with filter strength ``strength`` grey levels."""
    h = float(strength)
    return cv2.fastNlMeansDenoisingColored(np.ascontiguousarray(image), None, h, h, 3, 7)


def gamma(image: np.ndarray, value: float) -> np.ndarray:
    """``out = in ** value`` on the 0-1 scale: below 1 brightens a dark page, above 1 darkens a
    washed-out one."""
    lut = _uint8(255.0 * (np.arange(256, dtype=np.float64) / 255.0) ** float(value))
    return cv2.LUT(np.ascontiguousarray(image), lut)


def clahe(image: np.ndarray, clip: float = CLAHE_CLIP) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation of the lightness (LAB L channel), clip
    limit ``clip``, 4 x 4 tiles; colours kept."""
    lab = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2LAB)
    lab[..., 0] = cv2.createCLAHE(clipLimit=float(clip), tileGridSize=(4, 4)).apply(lab[..., 0])
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def sharpen(image: np.ndarray, amount: float = SHARPEN_AMOUNT) -> np.ndarray:
    """Unsharp mask: ``image + amount x (image - blurred)``, blurred by a Gaussian of SHARPEN_SIGMA px."""
    x = image.astype(np.float32)
    soft = cv2.GaussianBlur(x, (0, 0), sigmaX=SHARPEN_SIGMA, sigmaY=SHARPEN_SIGMA, borderType=cv2.BORDER_REFLECT)
    return _uint8(x + float(amount) * (x - soft))


FUNCTIONS = {"crop": crop, "deskew": deskew, "denoise": denoise, "gamma": gamma, "clahe": clahe, "sharpen": sharpen}


# ------------------------------------------------------------------------------------ measuring a page
def content_box(image: np.ndarray, pad_value: int) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` inside the pad bars (rows / columns that are all ``pad_value``) of a
    ``data.resize=pad`` image; the whole image when it has none."""
    inside = np.any(image != np.uint8(pad_value), axis=2)
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    if not len(rows) or not len(cols):
        return 0, 0, image.shape[1], image.shape[0]
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def page_box(content: np.ndarray) -> tuple[int, int, int, int]:
    """The box of the page (the largest bright region after Otsu's split of the grey image, text
    closed over) within ``content``."""
    g = grey(content)
    h, w = g.shape
    _, bright = cv2.threshold(g, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    k = max(3, round(max(h, w) / 12)) | 1
    bright = cv2.morphologyEx(bright, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_RECT, (k, k)))
    n, _, stats, _ = cv2.connectedComponentsWithStats(bright, connectivity=8)
    if n < 2:
        return 0, 0, w, h
    big = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, bw, bh = (int(v) for v in stats[big, :4])
    return x, y, x + bw, y + bh


@dataclass(frozen=True)
class Facts:
    """What one page measures (measure.py's definitions, on the content inside the pad bars)."""

    brightness: float   # mean grey, 0-1
    contrast: float     # coarse RMS contrast (measure.coarse_contrast)
    sharpness: float    # variance of the Laplacian / grey variance (measure.sharpness)
    noise: float        # noise std, share of full scale (measure.noise_sigma)
    skew: float         # degrees counter-clockwise, NaN when the text lines are not readable
    page_share: float   # the page's box as a share of the content's area
    page: tuple[int, int, int, int]  # the page's box in content coordinates


def measure(image: np.ndarray, pad_value: int = 0) -> Facts:
    """:class:`Facts` of one decoded, resized image (the pad bars left out)."""
    from docclassify.data.deskew import estimate_skew

    x0, y0, x1, y1 = content_box(image, pad_value)
    content = np.ascontiguousarray(image[y0:y1, x0:x1])
    g = grey(content).astype(np.float32)
    box = page_box(content)
    area = max(1, content.shape[0] * content.shape[1])
    share = (box[2] - box[0]) * (box[3] - box[1]) / area
    return Facts(float(g.mean()) / 255.0, coarse_contrast(g), sharpness(g)[1], noise_sigma(content),
                 estimate_skew(content), float(share), box)


@dataclass(frozen=True)
class Range:
    """One set of clean pages' range of each statistic: the ``tail`` and ``1 - tail`` quantiles, and the
    median brightness a gamma restores to."""

    brightness: tuple[float, float, float]  # (low, median, high)
    contrast_low: float
    sharpness_low: float
    noise_high: float
    page_share_low: float

    @classmethod
    def of(cls, facts: Sequence[Facts], tail: float) -> Range:
        def q(name: str, p: float) -> float:
            return float(np.quantile([getattr(f, name) for f in facts], p))

        return cls((q("brightness", tail), q("brightness", 0.5), q("brightness", 1 - tail)), q("contrast", tail),
                   q("sharpness", tail), q("noise", 1 - tail), q("page_share", tail))


@dataclass(frozen=True)
class Reference:
    """What clean pages measure: every page's range and, for each class with MIN_CLASS_PAGES pages or
    more, that class's own (a dark photo class is not a dark page of a bright class)."""

    tail: float
    all: Range
    classes: dict[int, Range]

    @classmethod
    def of(cls, images: np.ndarray, labels: Sequence[int] | None = None, pad_value: int = 0, tail: float = 0.05,
           per_class: int = PER_CLASS) -> Reference:
        """Measured on clean ``images`` (N, S, S, 3) of classes ``labels`` (None: one class), at most
        ``per_class`` of each class (a seeded sample)."""
        labels = np.zeros(len(images), dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
        rng = np.random.default_rng(0)
        by_class: dict[int, list[Facts]] = {}
        for c in np.unique(labels):
            rows = np.flatnonzero(labels == c)
            if len(rows) > per_class:
                rows = np.sort(rng.choice(rows, per_class, replace=False))
            by_class[int(c)] = [measure(images[r], pad_value) for r in rows]
        every = [f for fs in by_class.values() for f in fs]
        return cls(float(tail), Range.of(every, tail),
                   {c: Range.of(fs, tail) for c, fs in by_class.items() if len(fs) >= MIN_CLASS_PAGES})

    def range_of(self, cls: int | None) -> Range:
        return self.classes.get(int(cls), self.all) if cls is not None else self.all

    def as_dict(self) -> dict:
        return asdict(self)


Plan = tuple[tuple[str, object], ...]  # (restoration, value) pairs in RESTORATIONS order


def diagnose(facts: Facts, reference: Reference, cls: int | None = None) -> Plan:
    """The restorations a page needs: each statistic outside the range of clean pages (of class
    ``cls``, when the reference has it: the class the page is predicted as) names one (brightness
    either side: gamma towards the clean median; low contrast: clahe; low sharpness: sharpen; noise:
    denoise; a readable skew of MIN_SKEW degrees or more: deskew; a page covering less of the frame
    than clean pages do: crop). Empty: nothing looks wrong."""
    ref = reference.range_of(cls)
    plan: dict[str, object] = {}
    if facts.page_share < ref.page_share_low:
        plan["crop"] = tuple(int(v) for v in facts.page)
    if not math.isnan(facts.skew) and abs(facts.skew) >= MIN_SKEW:
        plan["deskew"] = round(float(facts.skew), 2)
    if facts.noise > max(ref.noise_high, NOISE_FLOOR):
        plan["denoise"] = round(float(np.clip(1.5 * 255.0 * facts.noise, *DENOISE_RANGE)), 2)
    low, median, high = ref.brightness
    if (facts.brightness < low or facts.brightness > high) and 0.0 < facts.brightness < 1.0 and 0.0 < median < 1.0:
        value = float(np.clip(math.log(median) / math.log(facts.brightness), *GAMMA_RANGE))
        if abs(math.log(value)) >= MIN_LOG_GAMMA:  # a curve this close to the identity changes nothing
            plan["gamma"] = round(value, 3)
    if facts.contrast < ref.contrast_low:
        plan["clahe"] = CLAHE_CLIP
    if facts.sharpness < ref.sharpness_low and "denoise" not in plan:  # sharpening noise only raises it
        plan["sharpen"] = SHARPEN_AMOUNT
    return tuple((name, plan[name]) for name in RESTORATIONS if name in plan)


def views_of(plan: Plan) -> list[Plan]:
    """The restoration views of a plan: each restoration alone and, with two or more, the whole chain."""
    if not plan:
        return []
    return [(step,) for step in plan] + ([plan] if len(plan) > 1 else [])


def restore(image: np.ndarray, plan: Plan, resize: str = "pad", pad_value: int = 0) -> np.ndarray:
    """``image`` (S x S, as the model sees it) with the ``plan``'s restorations applied in order to
    the content inside its pad bars, then resized (``resize``, ``pad_value``) to S x S again."""
    if not plan:
        return image
    size = image.shape[0]
    x0, y0, x1, y1 = content_box(image, pad_value)
    page = np.ascontiguousarray(image[y0:y1, x0:x1])
    for name, value in plan:
        page = FUNCTIONS[name](page, value)
    return resize_image(page, size, resize, pad_value)
