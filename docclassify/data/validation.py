"""Robust validation copies of a data set: every training image in ``validation.copies``
distorted versions, decoded, distorted, resized and cached.

What a copy is and how it is drawn lives in docclassify/distortion/ (copies.py: ``RobustSpec``, a
copy's generator from (``validation.seed``, image ID, copy index)). Here each image is decoded at
its own resolution (the long side bounded by ``working_side``), as a test photo was distorted
before anyone resized it, so blur, noise and JPEG blocks shrink with the image the way they do on
real test images; then it is resized with the run's policy (``data.resize``, ``data.pad_value``)
to ``img_size``.

The copies of all training rows are built once per (images, profile, copies, seed, size,
resize, pad) and stored like the decode cache (``data.cache``: one memory-mapped uint8 array
``(N * copies, S, S, 3)`` under ``paths.cache_dir/robust/``, atomic build, lock, reuse by every
process); row ``r``'s copy ``c`` is at index ``r * copies + c``. Every row is a validation row in
exactly one fold, so the folds and the sweep trials of a data set share one array.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from docclassify.data.cache import cached_array, content_key
from docclassify.data.images import BadImageError, decode_image, resize_image
from docclassify.distortion.copies import RobustSpec, draw_copy, working_side

log = logging.getLogger(__name__)

# Bump when a change to docclassify/distortion/ or to this module changes the pixels of a copy.
COPIES_FORMAT = 1


def working_image(path: str | Path, img_size: int) -> np.ndarray:
    """The image at its own resolution, its long side bounded by :func:`working_side`."""
    cap = working_side(img_size)
    img = decode_image(path, draft_size=cap)
    h, w = img.shape[:2]
    if max(h, w) <= cap:
        return img
    import cv2

    scale = cap / max(h, w)
    return cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def robust_copy(image: np.ndarray, image_id: str, copy: int, spec: RobustSpec, size: int, resize: str,
                pad_value: int, deskew: bool = False) -> np.ndarray:
    """Copy ``copy`` of ``image`` (at working resolution), resized to ``size`` like training images.
    ``deskew``: deskewed at working resolution before the resize, as infer's ``tta.deskew`` treats a
    test image (the copies infer's estimate and fitted steps predict with the test's TTA)."""
    distorted, _ = draw_copy(image, spec, image_id, copy)
    if deskew:
        from docclassify.data.deskew import deskew as undo_skew

        distorted = undo_skew(distorted)[0]
    return resize_image(distorted, size, resize, pad_value)


def copies_key(paths: Sequence[Path], ids: Sequence[str], spec: RobustSpec, size: int, resize: str,
               pad_value: int, deskew: bool = False) -> str:
    """Cache key: the images' content, their IDs (they seed the copies) and every setting."""
    h = hashlib.blake2b(digest_size=16)
    settings = [COPIES_FORMAT, spec.as_dict(), int(size), resize, int(pad_value), working_side(size)]
    if deskew:  # appended only when on: the keys of the copies training uses stay what they were
        settings.append("deskew")
    h.update(json.dumps(settings, sort_keys=True).encode())
    h.update(content_key(paths, size, resize, pad_value).encode())
    h.update(json.dumps([str(i) for i in ids]).encode())
    return h.hexdigest()


def build_copies(paths: Sequence[Path], ids: Sequence[str], spec: RobustSpec, size: int, resize: str,
                 pad_value: int, out: np.ndarray, threads: int | None = None, deskew: bool = False) -> list[int]:
    """Fill ``out`` (N * copies, size, size, 3); returns the rows whose image cannot be decoded
    (their copies are ``pad_value``). Threads (OpenCV and PIL release the GIL) do not change a pixel."""
    n, copies = len(paths), int(spec.copies)
    bad: list[int] = []

    def work(row: int) -> None:
        try:
            image = working_image(paths[row], size)
        except BadImageError as exc:
            log.debug("%s", exc)
            bad.append(row)
            out[row * copies:(row + 1) * copies] = pad_value
            return
        for c in range(copies):
            out[row * copies + c] = robust_copy(image, ids[row], c, spec, size, resize, pad_value, deskew)

    workers = threads or max(1, min(8, os.cpu_count() or 1))
    t0, last = time.time(), 0.0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for done, _ in enumerate(pool.map(work, range(n)), 1):
            now = time.time()
            if now - last > 5 or done == n:
                last = now
                log.info("robust copies: %d/%d images x %d copies (%.0f img/s)", done, n, copies,
                         done / max(now - t0, 1e-9))
    return sorted(bad)


def robust_copies(paths: Sequence[Path], ids: Sequence[str], spec: RobustSpec, size: int, resize: str,
                  pad_value: int, cache_dir: str | Path | None, deskew: bool = False) -> np.ndarray:
    """The (N * copies, size, size, 3) uint8 copies of every row: memory-mapped from the cache
    (built once) when ``cache_dir`` is given, else built in memory (``data.cache=false``);
    ``deskew``: each copy deskewed before its resize (:func:`robust_copy`)."""
    paths = [Path(p) for p in paths]
    ids = [str(i) for i in ids]
    shape = (len(paths) * int(spec.copies), int(size), int(size), 3)
    if cache_dir is None:
        out = np.empty(shape, dtype=np.uint8)
        build_copies(paths, ids, spec, size, resize, pad_value, out, deskew=deskew)
        return out
    key = copies_key(paths, ids, spec, size, resize, pad_value, deskew)

    def build(out: np.ndarray) -> dict:
        bad = build_copies(paths, ids, spec, size, resize, pad_value, out, deskew=deskew)
        return {"format": COPIES_FORMAT, "n": len(paths), "size": int(size), "resize": resize,
                "pad_value": int(pad_value), **spec.as_dict(), "deskew": bool(deskew), "bad": bad}

    arr, _ = cached_array(key, shape, build, cache_dir, folder="robust", what="robust copies")
    return arr
