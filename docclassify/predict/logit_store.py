"""Fold predictions kept between infers (``reuse_logits``, issue 30 item 3): what one fold model predicted
for one set of images with one predictor is stored, and a later infer (another ensemble of the same runs,
top_k, stacking, tta=auto, a sweep over ensembles) reads it instead of predicting again.

One entry is one ``predictor.predict(model, images, rows, meta)`` call. Its key is the sha256 of:

- the checkpoint file's bytes (the weights and, in the safetensors header, the meta: size, resize, pad,
  normalisation, orientation head);
- the predictor's settings (every dataclass field of views.TtaPredictor / upright.OrientPredictor but the
  last call's outputs: each view's name and parameters, the average inside the TTA, orient mode,
  upright_flip, batch size, device);
- the input: the sha256 of the decoded image array (so image size, resize, pad, deskew, robust copies
  and the images' pixels all count) and of the row indices;
- the store's FORMAT (bumped when how predictions are made changes) and the torch, timm and docclassify
  versions.

The value (``<paths.cache_dir>/logits/<key>.npz``, written atomically; run dirs are never written) holds
the probabilities and logits exactly as predicted and, for tta=orient*, the per-image orientation
estimates and the estimator, which a read puts back on the predictor as the call would have. A model is
loaded only when one of its predictions is not stored. The second stage (adapt, tta.per_class,
second_pass, specialists) predicts with changed models: an infer with it on neither reads nor writes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import torch

from docclassify.data.cache import write_cache_file
from docclassify.utils.io import atomic_write

log = logging.getLogger(__name__)

FORMAT = 1  # bump when what a stored entry means changes (how predictions are made or stored)
FOLDER = "logits"
CALL_OUTPUTS = ("last_estimates", "estimator")  # a predictor's fields that its last call set


def _package_version() -> str:
    """docclassify's installed version: an upgrade predicts again even if FORMAT was not bumped."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("docclassify")
    except PackageNotFoundError:  # a source checkout run without installing
        return "unknown"


def sha256_of_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_of_array(arr: np.ndarray) -> str:
    """Of the dtype, shape and bytes of ``arr`` (a memory-mapped cache array is read, not copied)."""
    arr = np.ascontiguousarray(arr)
    h = hashlib.sha256(json.dumps([arr.dtype.str, list(arr.shape)]).encode())
    h.update(arr.reshape(-1).view(np.uint8))
    return h.hexdigest()


def _plain(value):
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.device):
        return str(value)
    return value


def predictor_identity(predictor) -> dict:
    """How ``predictor`` predicts: its type and every dataclass field but the last call's outputs."""
    fields = {f.name: _plain(getattr(predictor, f.name)) for f in dataclasses.fields(predictor)
              if f.name not in CALL_OUTPUTS}
    return {"type": type(predictor).__name__, **fields}


class LazyModel:
    """A fold's model, loaded from its checkpoint on the first call (never when every prediction is read)."""

    def __init__(self, checkpoint: Path, device: torch.device):
        self.checkpoint, self.device, self._model = Path(checkpoint), device, None

    def __call__(self) -> torch.nn.Module:
        if self._model is None:
            from docclassify.models.checkpoint import load_checkpoint

            self._model, _ = load_checkpoint(self.checkpoint, self.device)
        return self._model


class LogitStore:
    """The fold predictions of this infer: read from ``<cache_dir>/logits`` or predicted and written there
    (``enabled=False``: always predicted, nothing written). ``read`` / ``computed`` count the calls."""

    def __init__(self, cache_dir: str | Path | None, enabled: bool, why_off: str = "reuse_logits=false"):
        self.root = Path(cache_dir).expanduser() / FOLDER if enabled and cache_dir is not None else None
        self.why_off = why_off
        self.read = self.computed = 0
        self.last_read = False  # whether the last predict() call was read from the store
        self._digests: dict[tuple, str] = {}
        self._held: list[np.ndarray] = []  # the arrays whose id() keys _digests (kept alive so no id is reused)

    # ------------------------------------------------------------------------------ keys
    def _checkpoint_digest(self, path: Path) -> str:
        st = path.stat()
        sig = ("file", str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
        if sig not in self._digests:
            self._digests[sig] = sha256_of_file(path)
        return self._digests[sig]

    def _array_digest(self, arr: np.ndarray) -> str:
        sig = ("array", id(arr))
        if sig not in self._digests:
            self._held.append(arr)
            self._digests[sig] = sha256_of_array(arr)
        return self._digests[sig]

    def key(self, checkpoint: Path, predictor, images: np.ndarray, rows: np.ndarray) -> tuple[str, str]:
        """(sha256 key, its JSON description) of one prediction call."""
        import timm

        desc = json.dumps({"format": FORMAT, "checkpoint_sha256": self._checkpoint_digest(Path(checkpoint)),
                           "predictor": predictor_identity(predictor), "images_sha256": self._array_digest(images),
                           "rows_sha256": sha256_of_array(np.asarray(rows, dtype=np.int64)),
                           "versions": {"torch": torch.__version__, "timm": timm.__version__,
                                        "docclassify": _package_version()}}, sort_keys=True)
        return hashlib.sha256(desc.encode()).hexdigest(), desc

    # ------------------------------------------------------------------------------ entries
    def _load(self, path: Path, desc: str) -> dict | None:
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as f:
                entry = {k: f[k] for k in f.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            log.warning("logit store: %s cannot be read (%s): predicting again", path, exc)
            return None
        if str(entry.get("key")) != desc:  # a different call under the same name: never trusted
            return None
        return entry

    def _save(self, path: Path, desc: str, probs, logits, estimates, estimator) -> None:
        arrays = {"key": np.asarray(desc), "probs": np.asarray(probs), "logits": np.asarray(logits)}
        if estimates is not None:
            arrays.update(estimates=np.asarray(estimates), estimator=np.asarray(str(estimator)))

        def write(p: Path) -> None:
            with atomic_write(p, "wb") as fh:
                np.savez(fh, **arrays)

        write_cache_file(path, write, "logit store")

    def predict(self, model: LazyModel, predictor, images: np.ndarray, rows: np.ndarray,
                meta: dict) -> tuple[np.ndarray, np.ndarray]:
        """``predictor.predict(model(), images, rows, meta)``, or what it returned before for the same
        checkpoint, predictor settings, images and rows (with the predictor's last_estimates / estimator
        set as that call set them)."""
        key = desc = None
        if self.root is not None:
            key, desc = self.key(model.checkpoint, predictor, images, rows)
            entry = self._load(self.root / f"{key}.npz", desc)
            if entry is not None:
                self.read += 1
                self.last_read = True
                if "estimates" in entry:
                    predictor.last_estimates = entry["estimates"]
                    predictor.estimator = str(entry["estimator"])
                return entry["probs"], entry["logits"]
        probs, logits = predictor.predict(model(), images, rows, meta)
        self.computed += 1
        self.last_read = False
        if key is not None:
            self._save(self.root / f"{key}.npz", desc, probs, logits, getattr(predictor, "last_estimates", None),
                       getattr(predictor, "estimator", None))
        return probs, logits

    def summary(self) -> dict:
        """summary.json's ``logits_reused``."""
        out = {"read": self.read, "computed": self.computed}
        if self.root is None:
            out["off"] = self.why_off
        return out

    def log_counts(self) -> None:
        if self.root is None:
            log.info("logit store off (%s): %d fold prediction(s) computed", self.why_off, self.computed)
        else:
            log.info("logit store: %d fold prediction(s) read, %d computed (%s)", self.read, self.computed, self.root)
