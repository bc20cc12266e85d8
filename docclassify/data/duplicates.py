"""Near-duplicate images: candidate pairs from perceptual hashes, confirmed by aligning thumbnails.

Two images are near-duplicates when both hold:

1. **hash**: the 64-bit pHash (``imagehash.phash``) of one is within ``max_distance`` bits of
   the pHash of the other in one of its 8 orientations (quarter turns x mirror, so a copy that
   was turned or mirrored, as test images often are, is found too);
2. **alignment**: after the best uniform scale (0.80-1.0) and shift of one thumbnail inside the
   other, the normalised cross-correlation of their high-passed grayscale thumbnails (long side
   128 px) is at least ``min_similarity``.

Step 1 is cheap (all pairs, XOR + bit count) but not enough on documents: two different forms
of one template differ only in details a 64-bit hash does not see (pHash distances of 2-6 bits
between distinct synthetic documents), while a copy cropped by 3% differs by up to ~14 bits.
Step 2 checks the details, tolerating resizing, re-encoding and crops of a few percent.
``benchmarks/duplicates_benchmark.py`` measures both (docs/data-audit.md has the table).

The fingerprints (hashes and thumbnails) of a set of images are cached under
``paths.cache_dir/fingerprints``, keyed by the images' bytes (``data.cache.content_key``), and so
are the scored candidate pairs: training with ``folds.group_duplicates=true`` neither decodes
nor compares the images again after the first run (or audit) on the same files.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from docclassify.data.cache import content_key, write_cache_file
from docclassify.data.dihedral import DIHEDRAL, apply_numpy
from docclassify.data.images import BadImageError, decode_image

log = logging.getLogger(__name__)

FINGERPRINT_FORMAT = 1          # bump when the hashes, thumbnails or the comparison change (keys the caches)
THUMB_SIDE = 128                 # long side of the comparison thumbnails (px)
DEFAULT_MAX_DISTANCE = 12        # pHash bits (of 64): resized / re-encoded copies <= 4, 3% crops <= ~14
DEFAULT_MIN_SIMILARITY = 0.91    # aligned correlation: copies >= ~0.93, distinct look-alike documents <= ~0.89
# The comparison sees details (high-pass: minus a Gaussian blur of this sigma, px) a little smoothed
# (this sigma), so that a copy resampled at another scale still lines up. Chosen on planted copies
# of the synthetic data (benchmarks/duplicates_benchmark.py): the widest gap between copies and
# distinct look-alike documents.
_HIGHPASS_SIGMA, _SMOOTH_SIGMA = 3.0, 1.6
_COARSE_SCALES = np.linspace(0.80, 1.0, 6)
_FINE_FROM = 0.6
_CHUNK = 64                      # rows per block of the all-pairs hash comparison


@dataclass
class Fingerprints:
    """Per image: the pHash of its 8 orientations and a grayscale thumbnail (zeros when undecodable)."""

    hashes: np.ndarray   # (N, 8) uint64; column g = view g of predict.tta's "dihedral" set (0 = as stored)
    thumbs: np.ndarray   # (N, THUMB_SIDE, THUMB_SIDE) uint8, each image in its top-left (h, w) corner
    shapes: np.ndarray   # (N, 2) thumbnail height, width
    bad: np.ndarray      # (N,) bool: undecodable (never paired)
    key: str | None = None  # the images' content key when cached (fingerprints()): keys the pair cache too

    def __len__(self) -> int:
        return len(self.hashes)

    def thumb(self, i: int) -> np.ndarray:
        h, w = self.shapes[i]
        return self.thumbs[i, :h, :w]


def _views():
    # The 8 dihedral elements in index order: tta=dihedral's views, from their one home below predict.
    return [lambda img, g=g: apply_numpy(img, g) for g in DIHEDRAL]


def _phash(gray: np.ndarray) -> np.uint64:
    import imagehash
    from PIL import Image

    bits = imagehash.phash(Image.fromarray(gray)).hash.ravel()
    return np.packbits(bits).view(np.uint64)[0]


def _thumbnail(path: Path) -> np.ndarray:
    from PIL import Image

    img = Image.fromarray(decode_image(path, draft_size=2 * THUMB_SIDE)).convert("L")
    scale = THUMB_SIDE / max(img.size)
    size = (max(8, round(img.width * scale)), max(8, round(img.height * scale)))
    return np.asarray(img.resize(size, Image.BILINEAR, reducing_gap=3.0), dtype=np.uint8)


def compute_fingerprints(paths: Sequence[Path]) -> Fingerprints:
    """Decode every image once (threads) into its thumbnail and 8 orientation hashes."""
    n, views = len(paths), _views()
    fp = Fingerprints(np.zeros((n, 8), np.uint64), np.zeros((n, THUMB_SIDE, THUMB_SIDE), np.uint8),
                      np.zeros((n, 2), np.int64), np.zeros(n, bool))

    def work(i: int) -> None:
        try:
            thumb = _thumbnail(paths[i])
        except BadImageError as exc:
            log.debug("%s", exc)
            fp.bad[i] = True
            return
        fp.hashes[i] = [_phash(view(thumb)) for view in views]
        fp.shapes[i] = thumb.shape
        fp.thumbs[i, : thumb.shape[0], : thumb.shape[1]] = thumb

    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        list(pool.map(work, range(n)))
    return fp


def fingerprints(paths: Sequence[Path], cache_dir: str | Path) -> Fingerprints:
    """``compute_fingerprints`` cached in ``cache_dir/fingerprints`` by the images' bytes."""
    from docclassify.utils.io import atomic_write

    paths = [Path(p) for p in paths]
    key = content_key(paths, THUMB_SIDE, f"fingerprint-v{FINGERPRINT_FORMAT}", 0)
    path = Path(cache_dir).expanduser() / "fingerprints" / f"{key}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                return Fingerprints(z["hashes"], z["thumbs"], z["shapes"], z["bad"], key)
        except (OSError, ValueError, KeyError, EOFError):
            log.warning("fingerprint cache %s is unreadable: rebuilding", path)
    log.info("fingerprints: hashing %d images", len(paths))
    fp = compute_fingerprints(paths)
    def save(target: Path) -> None:
        with atomic_write(target, "wb") as fh:
            np.savez(fh, hashes=fp.hashes, thumbs=fp.thumbs, shapes=fp.shapes, bad=fp.bad)

    write_cache_file(path, save, "fingerprint cache")
    fp.key = key
    return fp


# ---------------------------------------------------------------------------------------------
# Pairs
# ---------------------------------------------------------------------------------------------

def _bit_count(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x)
    return np.unpackbits(x.view(np.uint8), axis=-1).reshape(*x.shape, 64).sum(-1)


def hash_candidates(a: Fingerprints, b: Fingerprints | None, max_distance: int) -> pd.DataFrame:
    """Pairs (a, b, distance, view) whose pHash distance, over b's 8 orientations, is <= max_distance.
    ``b=None``: pairs within ``a`` (a < b)."""
    other = a if b is None else b
    out = []
    for start in range(0, len(a), _CHUNK):
        block = a.hashes[start:start + _CHUNK, 0]
        dist = _bit_count(block[:, None, None] ^ other.hashes[None, :, :])  # (chunk, M, 8)
        best, view = dist.min(-1), dist.argmin(-1)
        keep = best <= max_distance
        keep &= ~a.bad[start:start + _CHUNK, None] & ~other.bad[None, :]
        if b is None:  # each unordered pair once, never an image with itself
            keep &= np.arange(len(other))[None, :] > np.arange(start, start + len(block))[:, None]
        i, j = np.nonzero(keep)
        out.append(pd.DataFrame({"a": i + start, "b": j, "distance": best[i, j], "view": view[i, j]}))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=["a", "b", "distance", "view"])


def _highpass(thumb: np.ndarray) -> np.ndarray:
    """Details only: the template a family of forms shares sits in the low frequencies."""
    import cv2

    g = thumb.astype(np.float32)
    g = g - cv2.GaussianBlur(g, (0, 0), _HIGHPASS_SIGMA)
    return cv2.GaussianBlur(g, (0, 0), _SMOOTH_SIGMA)


def _best_match(big: np.ndarray, small: np.ndarray, scales) -> tuple[float, float]:
    """(best correlation, its scale) of ``small`` resized by each scale, slid over ``big``."""
    import cv2

    big = cv2.copyMakeBorder(big, 2, 2, 2, 2, cv2.BORDER_REPLICATE)  # rounding of equal-size copies
    best = (-1.0, 1.0)
    for s in scales:
        h, w = max(4, round(small.shape[0] * s)), max(4, round(small.shape[1] * s))
        if h > big.shape[0] or w > big.shape[1]:
            continue
        tmpl = cv2.resize(small, (w, h), interpolation=cv2.INTER_AREA)
        score = float(cv2.matchTemplate(big, tmpl, cv2.TM_CCOEFF_NORMED).max())
        best = max(best, (score, float(s)))
    return best


def aligned_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of two thumbnails after the best scale (0.80-1.0) and shift of either inside
    the other: ~1 for resized, re-encoded or slightly cropped copies. The scale is searched in
    steps of 0.04, then of 0.01 around the best one unless the coarse match is poor (below
    _FINE_FROM: a finer scale raises it by < 0.2, far from any duplicate)."""
    ha, hb = _highpass(a), _highpass(b)
    coarse = [(_best_match(big, small, _COARSE_SCALES), big, small) for big, small in ((ha, hb), (hb, ha))]
    best = max(score for (score, _), _, _ in coarse)
    for (score, scale), big, small in coarse:
        if score >= _FINE_FROM:
            fine = np.clip(scale + np.array([-0.03, -0.02, -0.01, 0.01, 0.02, 0.03]), 0.78, 1.0)
            best = max(best, _best_match(big, small, fine)[0])
    return best


def scored_candidates(a: Fingerprints, b: Fingerprints | None, max_distance: int,
                      cache_dir: str | Path | None = None) -> pd.DataFrame:
    """Every hash candidate (a, b, distance, view) with its aligned similarity. Cached in
    ``cache_dir/fingerprints`` when both sets came from ``fingerprints()``: a second training
    run with folds.group_duplicates, or an audit at another --min-similarity, reads it back."""
    from docclassify.utils.io import atomic_write_csv

    path = None
    if cache_dir is not None and a.key and (b is None or b.key):
        name = f"{a.key}-{b.key if b is not None else 'self'}-d{int(max_distance)}-v{FINGERPRINT_FORMAT}.csv"
        path = Path(cache_dir).expanduser() / "fingerprints" / name
        if path.is_file():
            return pd.read_csv(path)
    views, other = _views(), a if b is None else b
    pairs = hash_candidates(a, b, max_distance)
    sims = [aligned_similarity(a.thumb(int(i)), views[int(v)](other.thumb(int(j))))
            for i, j, v in zip(pairs["a"], pairs["b"], pairs["view"])]
    pairs["similarity"] = np.round(np.asarray(sims, dtype=np.float64), 4)
    if path is not None:
        write_cache_file(path, lambda target: atomic_write_csv(pairs, target), "fingerprint cache")
    return pairs


def find_duplicates(a: Fingerprints, b: Fingerprints | None = None, max_distance: int = DEFAULT_MAX_DISTANCE,
                    min_similarity: float = DEFAULT_MIN_SIMILARITY, cache_dir: str | Path | None = None
                    ) -> pd.DataFrame:
    """Confirmed near-duplicate pairs (a, b, distance, view, similarity) within ``a`` (b=None) or
    between ``a`` and ``b``; view = orientation of b (predict.tta dihedral index) that matched."""
    pairs = scored_candidates(a, b, max_distance, cache_dir)
    found = pairs[pairs["similarity"] >= min_similarity].reset_index(drop=True)
    log.info("duplicates: %d hash candidate pair(s) within %d bits, %d confirmed (similarity >= %.2f)",
             len(pairs), max_distance, len(found), min_similarity)
    return found


def duplicate_groups(n: int, pairs: pd.DataFrame) -> np.ndarray:
    """Group id of each of ``n`` images: connected components of the pairs (a singleton: its own)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    a, b = pairs["a"].to_numpy(dtype=np.int64), pairs["b"].to_numpy(dtype=np.int64)
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    return connected_components(graph, directed=False)[1]
