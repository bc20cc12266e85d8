"""Pseudo-labels: confident test images, labelled by a teacher's predictions, added to training.

``pseudo.source=INFER_RUN_DIR`` names what ``python -m docclassify.infer`` wrote: its
``test_probs.csv`` (``ID`` + one probability column per class name) are the teacher's labels, its
``summary.json`` (when present) says which runs made them. The images themselves are the
*training data's own test split* (``data.*`` of this run: the synthetic data's distorted test
images, data=competition's ``test_dir``, data=imagefolder's ``test/``): every ID of the CSV must
be one of them, so a teacher made on other data is refused instead of silently mislabelling.

    read_teacher      test_probs.csv -> (IDs, (N, K) probabilities in the training class order)
    select_confident  pseudo.threshold / top_fraction / per_class_max -> the rows kept
    load_pseudo_set   both, checked against the training data -> a PseudoSet (or None: off)
    fold_training_set a fold's training rows + every pseudo row (one joined image store)

The pseudo rows only ever join the *training* rows of a fold (engine/fold.py): they have no fold,
so they are never validated and never reach oof.csv, oof_robust.csv or the cv figures.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from docclassify.data.sources import DataError, DataSource

log = logging.getLogger(__name__)

PROBS_FILE, SUMMARY_FILE = "test_probs.csv", "summary.json"
# Optional in pseudo.source: the teacher's probabilities of the *training* rows (ID + class columns), the
# soft targets those rows train on (with pseudo.soft) instead of their one-hot labels; what
# `python -m docclassify.distill` writes (the teacher runs' out-of-fold rows). Absent: one-hot labels.
TRAIN_PROBS_FILE = "train_probs.csv"
SELECTION_FILE = "pseudo_labels.csv"  # in the training run dir: what was added (checked on resume)


class PseudoLabelError(DataError):
    """pseudo.source does not give usable pseudo-labels (the message names the file and the fix)."""


@dataclass
class PseudoSet:
    """The selected test images with their teacher labels, ready to join every fold's training rows."""

    source: Path                   # the infer run dir
    ids: list[str]                 # selected test IDs (most confident first)
    test_rows: np.ndarray          # their positions in source.test (the decoded test images' rows)
    probs: np.ndarray              # (n, K) teacher probabilities, training class order
    soft: bool                     # train on ``probs`` (True) or on their argmax
    weight: float                  # per-sample loss weight
    n_pool: int                    # test images the teacher labelled
    settings: dict                 # the selection keys as given
    teacher: dict = field(default_factory=dict)  # from summary.json: runs, models, tta
    sha256: str = ""               # of test_probs.csv
    images_by_size: dict[int, object] = field(default_factory=dict)  # decoded test images per size
    train_probs: np.ndarray | None = None  # (n_train, K) targets of the training rows (TRAIN_PROBS_FILE)

    @property
    def targets(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    def __len__(self) -> int:
        return len(self.ids)

    def counts(self, classes: list[str]) -> dict[str, int]:
        n = np.bincount(self.targets, minlength=len(classes))
        return {c: int(k) for c, k in zip(classes, n)}

    def as_dict(self, classes: list[str]) -> dict:
        """results.json's ``pseudo`` entry."""
        return {"source": str(self.source), "probs_sha256": self.sha256, "teacher": self.teacher,
                "n_pool": self.n_pool, "n_added": len(self), "per_class": self.counts(classes),
                "mean_confidence": float(self.probs.max(axis=1).mean()) if len(self) else None,
                "train_targets": TRAIN_PROBS_FILE if self.train_probs is not None else None, **self.settings}

    def drop(self, keep: np.ndarray) -> None:
        """Keep only the rows where ``keep`` is True (undecodable test images are left out)."""
        self.ids = [i for i, k in zip(self.ids, keep) if k]
        self.test_rows, self.probs = self.test_rows[keep], self.probs[keep]


# --------------------------------------------------------------------------------------------- reading
def teacher_dir(source) -> Path:
    path = Path(str(source)).expanduser()
    if not path.is_dir():
        raise PseudoLabelError(f"pseudo.source={source}: directory not found; give the run dir of "
                               "`python -m docclassify.infer runs=[RUN_DIR]` (it holds test_probs.csv)")
    if not (path / PROBS_FILE).is_file():
        raise PseudoLabelError(f"pseudo.source={source}: no {PROBS_FILE} in it; give an infer run dir "
                               "(`python -m docclassify.infer runs=[RUN_DIR]` writes test_probs.csv there)")
    return path


def read_teacher(path: Path, classes: list[str], name: str = PROBS_FILE) -> tuple[list[str], np.ndarray]:
    """(IDs, (N, K) probabilities with columns in ``classes`` order) of ``path``/test_probs.csv (or ``name``)."""
    csv = path / name
    try:
        frame = pd.read_csv(csv, dtype={"ID": str})
    except Exception as exc:  # noqa: BLE001 - pandas raises many kinds
        raise PseudoLabelError(f"{csv}: cannot be read as CSV ({exc}); re-run the infer command") from exc
    columns = [c for c in frame.columns if c != "ID"]
    if "ID" not in frame.columns or set(columns) != set(classes):
        missing, extra = sorted(set(classes) - set(columns)), sorted(set(columns) - set(classes))
        raise PseudoLabelError(f"{csv}: its class columns differ from the training classes (missing {missing}, "
                               f"unknown {extra}); use an infer run of models trained on these classes")
    probs = frame[classes].to_numpy(dtype=np.float64)
    if not np.isfinite(probs).all() or (probs < 0).any():
        raise PseudoLabelError(f"{csv}: probabilities must be finite and >= 0; re-run the infer command")
    ids = frame["ID"].astype(str).tolist()
    if len(set(ids)) != len(ids):
        raise PseudoLabelError(f"{csv}: duplicate IDs; re-run the infer command")
    return ids, probs / np.maximum(probs.sum(axis=1, keepdims=True), 1e-12)


def teacher_summary(path: Path) -> dict:
    """What summary.json says about the teacher (runs, models, TTA); {} without one."""
    summary_path = path / SUMMARY_FILE
    if not summary_path.is_file():
        return {}
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError):
        log.warning("pseudo.source: %s is not readable JSON; the teacher's runs are not recorded", summary_path)
        return {}
    return {"runs": [r.get("dir") for r in summary.get("runs", [])], "models": summary.get("models"),
            "tta": (summary.get("tta") or {}).get("name") if isinstance(summary.get("tta"), dict) else None}


def test_positions(ids: list[str], source: DataSource, csv: Path) -> np.ndarray:
    """Where each teacher ID is in the training data's test split (every one must be there)."""
    test = source.test
    if test is None or test.empty:
        raise PseudoLabelError(f"pseudo.source: data={source.name} ({source.root}) has no test images to add; "
                               "pseudo-labels come from this data's test split (data.test_dir)")
    where = {str(i): n for n, i in enumerate(test["ID"])}
    missing = [i for i in ids if i not in where]
    if missing:
        shown = ", ".join(missing[:10]) + (f" ... and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise PseudoLabelError(f"{csv}: {len(missing)} ID(s) are not test images of data={source.name} "
                               f"({source.root}): {shown}; run infer on this run's data, or train with the data "
                               "the teacher predicted")
    return np.array([where[i] for i in ids], dtype=np.int64)


# --------------------------------------------------------------------------------------------- selection
def select_confident(probs: np.ndarray, threshold: float | None = None, top_fraction: float | None = None,
                     per_class_max: int | None = None) -> np.ndarray:
    """Rows of ``probs`` kept as pseudo-labels, most confident first (ties: in row order).

    A row is kept when its top probability is >= ``threshold`` AND it is among the
    ``ceil(top_fraction * N)`` most confident of all N rows (either None: no such condition);
    then each predicted class keeps at most its ``per_class_max`` most confident rows."""
    confidence = probs.max(axis=1) if len(probs) else np.zeros(0)
    order = np.argsort(-confidence, kind="stable")
    if top_fraction is not None:
        order = order[:int(np.ceil(float(top_fraction) * len(order)))]
    if threshold is not None:
        order = order[confidence[order] >= float(threshold)]
    if per_class_max is not None:
        predicted = probs[order].argmax(axis=1)
        rank_in_class = np.zeros(len(order), dtype=np.int64)
        seen: dict[int, int] = {}
        for n, c in enumerate(predicted):
            rank_in_class[n] = seen.get(int(c), 0)
            seen[int(c)] = rank_in_class[n] + 1
        order = order[rank_in_class < int(per_class_max)]
    return order


def load_pseudo_set(pseudo_cfg, source: DataSource) -> PseudoSet | None:
    """``pseudo.*`` -> the selected pseudo-labelled test images (None when pseudo.source is null).
    Every check happens here, before any training."""
    if pseudo_cfg is None or pseudo_cfg.get("source") in (None, ""):
        return None
    path = teacher_dir(pseudo_cfg.source)
    ids, probs = read_teacher(path, source.classes)
    rows = test_positions(ids, source, path / PROBS_FILE)
    settings = {k: pseudo_cfg.get(k) for k in ("threshold", "top_fraction", "per_class_max", "soft", "weight")}
    keep = select_confident(probs, settings["threshold"], settings["top_fraction"], settings["per_class_max"])
    pseudo = PseudoSet(path.resolve(), [ids[i] for i in keep], rows[keep], probs[keep].astype(np.float32),
                       bool(settings["soft"]), float(settings["weight"]), len(ids), settings,
                       teacher_summary(path), hashlib.sha256((path / PROBS_FILE).read_bytes()).hexdigest())
    pseudo.train_probs = read_train_targets(path, source) if pseudo.soft else None
    if not len(pseudo) and pseudo.train_probs is None:
        log.warning("pseudo.source=%s: no test image passes the selection (threshold=%s, top_fraction=%s); "
                    "training without pseudo-labels", path, settings["threshold"], settings["top_fraction"])
    return pseudo


def read_train_targets(path: Path, source: DataSource) -> np.ndarray | None:
    """TRAIN_PROBS_FILE of ``path`` as one row per training row (source.train order); a training row it does
    not list keeps its one-hot label. None when there is no such file."""
    if not (path / TRAIN_PROBS_FILE).is_file():
        return None
    ids, probs = read_teacher(path, source.classes, TRAIN_PROBS_FILE)
    rows = np.eye(source.num_classes, dtype=np.float32)[source.train["target"].to_numpy()]
    where = {str(i): n for n, i in enumerate(source.train["ID"])}
    listed = [(where[i], k) for k, i in enumerate(ids) if i in where]
    if not listed:
        raise PseudoLabelError(f"{path / TRAIN_PROBS_FILE}: none of its IDs is a training row of data={source.name} "
                               f"({source.root}); use the teacher's targets of this data")
    at, of = (np.array(v, dtype=np.int64) for v in zip(*listed))
    rows[at] = probs[of]
    log.info("pseudo.source: %d of %d training rows train on the soft targets of %s", len(at), len(rows),
             path / TRAIN_PROBS_FILE)
    return rows


def selection_frame(pseudo: PseudoSet, classes: list[str]) -> pd.DataFrame:
    """pseudo_labels.csv: ID, the pseudo target, its weight and the teacher's probabilities."""
    frame = pd.DataFrame({"ID": pseudo.ids, "target": pseudo.targets, "weight": pseudo.weight})
    return pd.concat([frame, pd.DataFrame(pseudo.probs, columns=classes)], axis=1)


def check_unchanged(run_dir: Path, frame: pd.DataFrame) -> None:
    """A resumed run trains on the pseudo-labels it started with: the selection saved in the run dir
    must equal this one (the teacher's test_probs.csv rewritten in between would change it)."""
    saved_path = run_dir / SELECTION_FILE
    if not saved_path.is_file():
        return
    saved = pd.read_csv(saved_path, dtype={"ID": str})
    same = list(saved.columns) == list(frame.columns) and len(saved) == len(frame) and \
        saved["ID"].tolist() == frame["ID"].tolist() and \
        np.allclose(saved.drop(columns="ID").to_numpy(float), frame.drop(columns="ID").to_numpy(float), atol=1e-6)
    if not same:
        raise PseudoLabelError(f"{saved_path}: this run started with other pseudo-labels than pseudo.source gives "
                               "now (its test_probs.csv changed?); resume with the original teacher, or start a "
                               "new run dir")


# --------------------------------------------------------------------------------------------- training rows
class JoinedImages:
    """The training images followed by the selected test images: row ``n_first + j`` is
    ``second[second_rows[j]]`` (both decoded arrays or LazyImages, read on access)."""

    def __init__(self, first, second, second_rows: np.ndarray):
        self.first, self.second = first, second
        self.second_rows = np.asarray(second_rows, dtype=np.int64)
        self.n_first = len(first)

    def __len__(self) -> int:
        return self.n_first + len(self.second_rows)

    def __getitem__(self, i: int) -> np.ndarray:
        i = int(i)
        return self.first[i] if i < self.n_first else self.second[int(self.second_rows[i - self.n_first])]


@dataclass
class TrainingSet:
    """What one fold's training loader draws from: ``rows`` of ``images``, each row's hard target
    (``targets``), and with pseudo-labels each row's probability target (``target_rows``, soft
    mode), loss weight (``weights``) and whether its starting orientation is unknown
    (``unknown_orientation``: True for the pseudo rows, see data/dataset.py)."""

    images: object
    rows: np.ndarray
    targets: np.ndarray
    target_rows: np.ndarray | None = None
    weights: np.ndarray | None = None
    n_pseudo: int = 0
    unknown_orientation: np.ndarray | None = None


def fold_training_set(images, targets: np.ndarray, train_rows: np.ndarray, pseudo: PseudoSet | None,
                      img_size: int, num_classes: int) -> TrainingSet:
    """The fold's training rows plus every pseudo row (appended after the training data's rows); with the
    teacher's training-row targets (TRAIN_PROBS_FILE, docclassify.distill) those rows train on them.

    A test page arrives turned and mirrored by an element nobody recorded (the teacher's
    ``test_probs.csv`` holds classes only; an orientation estimate exists only under tta=orient and
    is not saved per image), so the orientation head cannot be told what a pseudo row's pixels went
    through: those rows are marked ``unknown_orientation`` and left out of the head's loss (they
    still train the classifier)."""
    if pseudo is None or (not len(pseudo) and pseudo.train_probs is None):
        return TrainingSet(images, train_rows, targets)
    first = pseudo.train_probs if pseudo.train_probs is not None else np.eye(num_classes, dtype=np.float32)[targets]
    if not len(pseudo):  # training-row targets only; weights of 1 route them like soft pseudo-labels (mixup)
        return TrainingSet(images, train_rows, targets, first.astype(np.float32), np.ones(len(targets), np.float32))
    n = len(targets)
    joined = JoinedImages(images, pseudo.images_by_size[img_size], pseudo.test_rows)
    all_targets = np.concatenate([targets, pseudo.targets]).astype(np.int64)
    weights = np.concatenate([np.ones(n, np.float32), np.full(len(pseudo), pseudo.weight, np.float32)])
    rows = np.concatenate([train_rows, n + np.arange(len(pseudo))])
    target_rows = None
    if pseudo.soft:  # the training data's rows as one-hot rows, the pseudo rows as the teacher's probabilities
        target_rows = np.concatenate([first.astype(np.float32), pseudo.probs])
    unknown = np.concatenate([np.zeros(n, bool), np.ones(len(pseudo), bool)])
    return TrainingSet(joined, rows, all_targets, target_rows, weights, len(pseudo), unknown)
