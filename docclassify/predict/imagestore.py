"""Step 1, test data: the decoded images every fold model needs, loaded once per (data, split, img_size,
resize, pad) and shared by all folds; the test images decoded up front, so a bad one stops the run
before any model runs."""

from __future__ import annotations

import json
import logging
import time

import numpy as np

from docclassify.data.cache import cached_images, decode_all
from docclassify.data.deskew import deskew_all
from docclassify.data.sources import DataError
from docclassify.data.validation import robust_copies
from docclassify.distortion.copies import RobustSpec
from docclassify.predict.run_dirs import Run
from docclassify.predict.submission import format_ids
from docclassify.predict.testdata import DataSet

log = logging.getLogger(__name__)


class ImageStore:
    """Decoded images, loaded once per (data, split, img_size, resize, pad), shared by all folds."""

    def __init__(self, cache_dir: str, deskew: bool = False):
        self.cache_dir = cache_dir
        self.deskew = deskew  # tta.deskew: test images deskewed at full resolution (data/deskew.py)
        self.skews: np.ndarray | None = None
        self._arrays: dict[tuple, np.ndarray] = {}
        self.loaded: list[dict] = []

    def get(self, ds: DataSet, split: str, meta: dict) -> np.ndarray:
        size, resize, pad = int(meta["img_size"]), str(meta["resize"]), int(meta["pad_value"])
        key = (id(ds.source), split, size, resize, pad)
        if key in self._arrays:
            return self._arrays[key]
        frame = ds.source.test if split == "test" else ds.source.train
        paths = list(frame["path"])
        t0 = time.time()
        if self.deskew and split == "test":
            images, self.skews, bad = deskew_all(paths, size, resize, pad)
        elif ds.cache:
            images, bad = cached_images(paths, size, resize, pad, self.cache_dir)
        else:
            images = np.empty((len(paths), size, size, 3), dtype=np.uint8)
            bad = decode_all(paths, size, resize, pad, images, progress=False)
        if bad and split == "test":
            ids = frame["ID"].iloc[bad].tolist()
            raise DataError(f"{len(ids)} test image(s) cannot be decoded: "
                            f"{format_ids(ids, limit=50)}")
        log.info("%s images: %d at %d px (%s, pad %d) ready in %.1fs", split, len(paths), size,
                 resize, pad, time.time() - t0)
        self._arrays[key] = images
        self.loaded.append({"split": split, "img_size": size, "resize": resize, "pad_value": pad,
                            "n": len(paths)})
        return images

    def get_robust(self, ds: DataSet, meta: dict, spec: RobustSpec) -> np.ndarray:
        """The training rows' robust copies as the run validated on them (the same cache entry
        training built when data, profile, copies, seed, size and resize policy are the same), and,
        under tta.deskew, deskewed as the test images are: the estimate and everything fitted on these
        rows see the test's preprocessing (without it the estimate missed deskew's gain: 0.64 vs 0.74
        on the default run, docs/recipes.md)."""
        size, resize, pad = int(meta["img_size"]), str(meta["resize"]), int(meta["pad_value"])
        key = (id(ds.source), "robust", size, resize, pad, json.dumps(spec.as_dict(), sort_keys=True), self.deskew)
        if key not in self._arrays:
            train = ds.source.train
            t0 = time.time()
            self._arrays[key] = robust_copies(list(train["path"]), list(train["ID"]), spec, size, resize, pad,
                                              self.cache_dir if ds.cache else None, deskew=self.deskew)
            log.info("robust copies%s: %d x %d at %d px ready in %.1fs", " (deskewed)" if self.deskew else "",
                     len(train), spec.copies, size, time.time() - t0)
            self.loaded.append({"split": "robust", "img_size": size, "resize": resize, "pad_value": pad,
                                "n": len(train) * spec.copies})
        return self._arrays[key]

    def oof_images(self, ds: DataSet, meta: dict, run: Run, view: str) -> np.ndarray:
        """The images a run's OOF rows on ``view`` index: training images, or their robust copies."""
        if view == "clean":
            return self.get(ds, "train", meta)
        return self.get_robust(ds, meta, RobustSpec.from_dict(run.results["validation"]))


def decode_test_images(runs: list[Run], datasets: list[DataSet], cache_dir: str,
                       deskew: bool = False) -> ImageStore:
    """Every test image set the checkpoints need, decoded up front (``deskew``: deskewed): a bad image
    stops the run before any model runs."""
    store = ImageStore(cache_dir, deskew)
    for run, ds in zip(runs, datasets):
        for fm in run.folds:
            store.get(ds, "test", fm.meta)
    return store
