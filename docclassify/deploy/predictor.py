"""``from docclassify import Predictor``: images in, labels and probabilities out, as infer predicts.

    Predictor.from_bundle(DIR)   a bundle of ``python -m docclassify.export`` (ONNX Runtime; torch is
                                 never imported for an ONNX bundle)
    Predictor.from_run(DIR)      an infer run dir (its runs, weights, TTA, temperature and decision
                                 biases: what it wrote to test_probs.csv), or training run dirs
                                 (their folds averaged, ``tta``, no temperature, argmax), with torch

``predict(inputs)`` takes paths, PIL images, numpy arrays (uint8 RGB, H x W x 3, or grey H x W) or a
file's bytes, and runs the steps of infer in its order:

    decode_inputs     data/images.py (+ data/deskew.py): the decoding, resize and pad of training and infer,
                      once per (size, resize, pad) the fold models need
    run_folds         per fold model: the orientation policy (exact views, or orient / orient_soft) over
                      batches -> (probabilities, logits, each image's estimated orientation)
    finish            folds averaged -> runs weighted -> temperature -> decision biases -> labels

The fold step and the arithmetic of the last step come from a *runner*: :class:`BundleRunner`
(numpy + a model runtime, deploy/numeric.py) or deploy/runs.py's ``RunRunner`` (predict/'s own
TtaPredictor / OrientPredictor, combine, apply_temperature and apply_biases).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from docclassify.data.dihedral import DIHEDRAL, Element
from docclassify.data.images import BadImageError, decode_bytes, load_image, resize_image
from docclassify.deploy import numeric
from docclassify.deploy.bundle import BundleSpec, FoldSpec, load_spec
from docclassify.errors import UserError

ERROR_MODES = ("raise", "skip")


class PredictInputError(UserError):
    """An input the predictor cannot use (the message names the item: its index and name)."""


@dataclass
class Predictions:
    """One row per input, in input order. A row that failed (``on_error="skip"``) has label None, NaN
    probabilities and its reason in ``errors``."""

    classes: list[str]
    names: list[str]
    labels: list[str | None]
    indices: np.ndarray                  # (N,) class index, -1 where the input failed
    probabilities: np.ndarray            # (N, K) float64
    orientation: list[str | None]        # tta=orient*: the element each image was turned back from
    skew: list[float | None]             # deskew: the skew (degrees) undone, None if not estimated
    errors: list[str | None]

    def __len__(self) -> int:
        return len(self.labels)

    def records(self) -> list[dict]:
        """One dict per input (the service's JSON): name, label, probabilities by class, orientation."""
        out = []
        for i, name in enumerate(self.names):
            probs = None if self.errors[i] else {c: float(p) for c, p in zip(self.classes, self.probabilities[i])}
            out.append({"name": name, "label": self.labels[i], "probabilities": probs,
                        "orientation": self.orientation[i], "skew": self.skew[i], "error": self.errors[i]})
        return out

    def to_frame(self):
        """A pandas DataFrame: name, label, error, orientation, skew, one probability column per class."""
        import pandas as pd

        frame = pd.DataFrame({"name": self.names, "label": self.labels, "error": self.errors,
                              "orientation": self.orientation, "skew": self.skew})
        return pd.concat([frame, pd.DataFrame(self.probabilities, columns=self.classes)], axis=1)


# ------------------------------------------------------------------------------------------ inputs
@dataclass
class Item:
    """One input: its name (for messages and outputs) and what to decode."""

    name: str
    value: Any
    error: str | None = None
    pages: dict = field(default_factory=dict)  # decode key -> uint8 (S, S, 3)
    skew: float | None = None


def describe(value: Any, index: int) -> str:
    if isinstance(value, (str, Path)):
        return str(value)
    return f"inputs[{index}] ({type(value).__name__})"


def as_items(inputs: Any, names: Sequence[str] | None = None) -> list[Item]:
    """A list of inputs (one input alone is a list of one); an empty list is refused."""
    single = isinstance(inputs, (str, Path, bytes, bytearray, np.ndarray)) or _is_pil(inputs)
    values = [inputs] if single else list(inputs) if isinstance(inputs, (list, tuple)) else None
    if values is None:
        raise PredictInputError(f"inputs: a {type(inputs).__name__}; expected a path, a PIL image, a numpy array, "
                                "bytes, or a list of them")
    if not values:
        raise PredictInputError("inputs: an empty list; give at least one image")
    if names is not None and len(names) != len(values):
        raise PredictInputError(f"names: {len(names)} names for {len(values)} inputs")
    return [Item(names[i] if names is not None else describe(v, i), v) for i, v in enumerate(values)]


def _is_pil(value: Any) -> bool:
    from PIL import Image

    return isinstance(value, Image.Image)


def array_of(item: Item, index: int) -> np.ndarray:
    """An in-memory input as uint8 RGB (H, W, 3): the modes data/images.py turns to RGB."""
    from PIL import Image, ImageOps

    from docclassify.data.images import _to_rgb

    value = item.value
    if _is_pil(value):
        return np.asarray(_to_rgb(ImageOps.exif_transpose(value)), dtype=np.uint8).copy()
    if value.dtype != np.uint8:
        raise PredictInputError(f"inputs[{index}]: a numpy array of dtype {value.dtype}; expected uint8 RGB "
                                "(H, W, 3) or grey (H, W), values 0-255 (e.g. np.asarray(PIL.Image.open(path)))")
    if value.ndim == 2 or (value.ndim == 3 and value.shape[2] in (1, 3, 4)):
        img = value if value.ndim == 2 else value[..., 0] if value.shape[2] == 1 else value
        if min(img.shape[:2]) < 1:
            raise PredictInputError(f"inputs[{index}]: an empty array of shape {value.shape}")
        return np.asarray(_to_rgb(Image.fromarray(np.ascontiguousarray(img))), dtype=np.uint8)
    raise PredictInputError(f"inputs[{index}]: a numpy array of shape {value.shape}; expected (H, W, 3) RGB, "
                            "(H, W, 4) RGBA or (H, W) grey")


def full_page(item: Item, index: int, max_pixels: int | None) -> np.ndarray:
    """The whole decoded page (no JPEG draft: for deskew, and in-memory inputs)."""
    value = item.value
    if isinstance(value, (str, Path)):
        return decode_file(Path(value), None, max_pixels)
    if isinstance(value, (bytes, bytearray)):
        return decode_bytes(bytes(value), item.name, None, max_pixels)
    return array_of(item, index)


def decode_file(path: Path, draft_size: int | None, max_pixels: int | None) -> np.ndarray:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadImageError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    return decode_bytes(data, str(path), draft_size, max_pixels)


def decode_item(item: Item, index: int, keys: list[tuple[int, str, int]], deskew: bool,
                max_pixels: int | None) -> None:
    """``item.pages`` for every decode key: as ImageStore decodes test images (load_image: a JPEG drafted to
    the size; deskew: data/deskew.py at full resolution first)."""
    from_file = isinstance(item.value, (str, Path, bytes, bytearray))
    if deskew:
        from docclassify.data.deskew import deskew as undo_skew

        page, skew = undo_skew(full_page(item, index, max_pixels))
        item.skew = None if math.isnan(skew) else float(skew)
        for size, resize, pad in keys:
            item.pages[(size, resize, pad)] = resize_image(page, size, resize, pad)
        return
    page = None if from_file else array_of(item, index)
    for size, resize, pad in keys:
        if page is not None:
            item.pages[(size, resize, pad)] = resize_image(page, size, resize, pad)
        elif isinstance(item.value, (str, Path)) and max_pixels is None:
            item.pages[(size, resize, pad)] = load_image(item.value, size, resize, pad)
        else:
            raw = decode_file(Path(item.value), size, max_pixels) if isinstance(item.value, (str, Path)) \
                else decode_bytes(bytes(item.value), item.name, size, max_pixels)
            item.pages[(size, resize, pad)] = resize_image(raw, size, resize, pad)


def decode_inputs(items: list[Item], spec: BundleSpec, on_error: str, max_pixels: int | None = None) -> None:
    """Decode every item at every size the fold models need; a failure raises (naming the item) or,
    with ``on_error="skip"``, is kept as the item's error."""
    keys = sorted({f.input.decode_key for f in spec.folds})
    for i, item in enumerate(items):
        try:
            decode_item(item, i, keys, spec.tta.deskew, max_pixels)
        except (BadImageError, PredictInputError) as exc:
            if on_error == "raise":
                raise
            item.error = str(exc)


# ------------------------------------------------------------------------------------------ runners
class BundleRunner:
    """Fold models of a bundle run by a model runtime; the arithmetic in numpy (deploy/numeric.py)."""

    def __init__(self, spec: BundleSpec, folder: Path, threads: int | None = None):
        from docclassify.deploy.runtime import load_model

        self.spec = spec
        self.models = [load_model(folder, f, spec.backend, threads) for f in spec.folds]

    def predict_fold(self, index: int, fold: FoldSpec, images: np.ndarray, batch_size: int):
        """(probs, logits, element index per image or None) of one fold model on ``images`` (uint8 NHWC)."""
        tta, forward = self.spec.tta, self.models[index]
        views = [Element(int(k), bool(m)) for _, k, m in tta.views]
        probs, logits, estimates = [], [], []
        for start in range(0, len(images), batch_size):
            x = numeric.normalise(images[start:start + batch_size], fold.input.mean, fold.input.std)
            if tta.mode == "views":
                p, z = numeric.predict_views(forward, x, views, tta.average)
                e = None
            elif tta.mode == "orient":
                p, z, e = numeric.orient(forward, x, fold.orientation_head, fold.upright_flip, tta.average)
            else:
                p, z, e = numeric.orient_soft(forward, x, fold.orientation_head, tta.average)
            probs.append(p)
            logits.append(z)
            if e is not None:
                estimates += [g.index for g in e]
        return np.concatenate(probs), np.concatenate(logits), (np.asarray(estimates) if estimates else None)

    # The arithmetic after the folds (predict/ensemble.py, calibration.py, decision.py in numpy).
    def fold_average(self, fold_preds: list[np.ndarray], average: str) -> np.ndarray:
        return numeric.safe_log(numeric.combine(fold_preds, None, average))

    def finish(self, member_logs: list[np.ndarray], weights: list[float], average: str, temperature: float,
               biases: list[float] | None) -> tuple[np.ndarray, np.ndarray]:
        """Runs weighted, the temperature, the decision rule: (probabilities, class indices)."""
        probs = numeric.combine(numeric.members_of(member_logs, average), weights, average)
        probs = numeric.apply_temperature(numeric.safe_log(probs), temperature)
        return probs, numeric.apply_biases(numeric.safe_log(probs), biases)


def consensus(per_fold: list[np.ndarray]) -> np.ndarray:
    """Each image's orientation estimate agreed by most fold models (ties: the smallest element index)."""
    stacked = np.stack(per_fold)
    return np.stack([(stacked == i).sum(0) for i in range(len(DIHEDRAL))]).argmax(0)


# ------------------------------------------------------------------------------------------ the predictor
class Predictor:
    """See the module docstring. ``spec``: what the bundle (or the run) says; ``runner``: how its fold
    models run."""

    def __init__(self, spec: BundleSpec, runner, source: str = ""):
        self.spec, self.runner, self.source = spec, runner, source

    @classmethod
    def from_bundle(cls, folder: str | Path, threads: int | None = None) -> Predictor:
        """A bundle folder (bundle.json + model files). ``threads``: intra-op threads per model
        (default: DOCCLASSIFY_THREADS, else every core)."""
        folder = Path(folder).expanduser()
        spec = load_spec(folder)
        return cls(spec, BundleRunner(spec, folder, threads), str(folder))

    @classmethod
    def from_run(cls, runs: str | Path | Sequence[str | Path], tta: str = "none", device: str = "cpu",
                 upright_flip: bool | None = False, deskew: bool = False) -> Predictor:
        """With torch: an infer run dir (everything infer decided: ``tta`` and the other arguments are
        ignored), or one or more training run dirs (equal weights, ``tta``, no temperature, argmax)."""
        from docclassify.deploy.runs import RunRunner, spec_of_runs

        spec = spec_of_runs(runs, tta=tta, upright_flip=upright_flip, deskew=deskew)
        return cls(spec, RunRunner(spec, device), str(runs))

    @property
    def classes(self) -> list[str]:
        return list(self.spec.classes)

    def info(self) -> dict:
        """What /info shows: classes, inputs, the orientation policy, members, temperature, versions."""
        spec = self.spec.as_dict()
        return {"source": self.source, "classes": spec["classes"], "backend": spec["backend"],
                "quantize": spec["quantize"], "tta": spec["tta"], "average": spec["average"],
                "temperature": spec["temperature"], "decision": spec["decision"],
                "members": [{"run": m["run"], "weight": m["weight"],
                             "folds": [{k: f[k] for k in ("fold", "model", "input", "orientation_head")}
                                       for f in m["folds"]]} for m in spec["members"]],
                "versions": spec["versions"], "check": spec["check"]}

    def predict(self, inputs: Any, batch_size: int = 32, on_error: str = "raise", names: Sequence[str] | None = None,
                max_pixels: int | None = None) -> Predictions:
        """Labels and probabilities of ``inputs`` in input order (see the module docstring). ``on_error``:
        raise (the first bad input stops it, naming the item) or skip (its row carries the reason)."""
        if on_error not in ERROR_MODES:
            raise PredictInputError(f"on_error={on_error!r}: expected one of {', '.join(ERROR_MODES)}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise PredictInputError(f"batch_size={batch_size!r}: expected a positive integer")
        items = as_items(inputs, names)
        decode_inputs(items, self.spec, on_error, max_pixels)
        ok = [i for i, item in enumerate(items) if item.error is None]
        k = len(self.spec.classes)
        probs = np.full((len(items), k), np.nan)
        indices = np.full(len(items), -1, dtype=np.int64)
        orientation: list[str | None] = [None] * len(items)
        if ok:
            p, pred, estimates = self.run(items, ok, batch_size)
            probs[ok], indices[ok] = p, pred
            if estimates is not None:
                for row, e in zip(ok, estimates):
                    orientation[row] = DIHEDRAL[int(e)].name
        labels = [self.spec.classes[i] if i >= 0 else None for i in indices]
        return Predictions(self.classes, [it.name for it in items], labels, indices, probs, orientation,
                           [it.skew for it in items], [it.error for it in items])

    def run(self, items: list[Item], ok: list[int], batch_size: int):
        """The model steps on the decoded items ``ok``: (probabilities, class indices, orientation estimates)."""
        spec, runner = self.spec, self.runner
        member_logs, per_fold_estimates, index = [], [], 0
        for member in spec.members:
            fold_preds = []
            for fold in member.folds:
                images = np.stack([items[i].pages[fold.input.decode_key] for i in ok])
                p, z, e = runner.predict_fold(index, fold, images, batch_size)
                index += 1
                fold_preds.append(np.asarray(p if spec.average == "prob" else z, dtype=np.float64))
                if e is not None:
                    per_fold_estimates.append(e)
            member_logs.append(runner.fold_average(fold_preds, spec.average))
        probs, pred = runner.finish(member_logs, [m.weight for m in spec.members], spec.average, spec.temperature,
                                    spec.decision.biases)
        return probs, pred, (consensus(per_fold_estimates) if per_fold_estimates else None)
