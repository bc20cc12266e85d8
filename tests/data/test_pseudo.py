"""Pseudo-labels (issue 16, item 1), without training: the selection (threshold, top_fraction,
per_class_max), the teacher's files checked against the training data, the joined training rows,
and what the loss sees (hard / soft targets, weights, mixup) in engine.epoch.forward_losses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY, run_in
from omegaconf import OmegaConf
from timm.data import Mixup

from docclassify.data.dataset import ImageDataset
from docclassify.data.pseudo import (
    PseudoLabelError,
    check_unchanged,
    fold_training_set,
    load_pseudo_set,
    select_confident,
    selection_frame,
)
from docclassify.data.sources import load_competition
from docclassify.engine.epoch import FoldParts, StepContext, forward_losses
from docclassify.engine.losses import CrossEntropy, LossContext
from docclassify.engine.resume import check_resume_compatible
from docclassify.engine.setup import amp_settings

K = 17
CONF = Path(__file__).resolve().parents[2] / "docclassify" / "conf"


def teacher(tmp_path, source, probs: np.ndarray, ids=None, classes=None, name: str = "teacher"):
    """An infer run dir holding test_probs.csv for ``source``'s test images."""
    out = tmp_path / name
    out.mkdir()
    frame = pd.DataFrame(probs, columns=classes or source.classes)
    frame.insert(0, "ID", ids if ids is not None else source.test["ID"].tolist())
    frame.to_csv(out / "test_probs.csv", index=False)
    return out


def peaked(n: int, classes: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """(n, K) rows with ``confidence`` on ``classes`` and the rest spread evenly."""
    probs = np.repeat(((1 - confidence) / (K - 1))[:, None], K, axis=1)
    probs[np.arange(n), classes] = confidence
    return probs


def cfg(source, **keys):
    return OmegaConf.create({"source": str(source), "threshold": None, "top_fraction": None, "per_class_max": None,
                             "soft": False, "weight": 1.0, **keys})


@pytest.fixture
def source(tiny_data):
    return load_competition(tiny_data)


# ----------------------------------------------------------------------------------------- selection
def test_threshold_top_fraction_and_per_class_max_bound_the_selection():
    rng = np.random.default_rng(0)
    n = 200
    classes = np.where(rng.random(n) < 0.7, 0, rng.integers(1, K, n))  # class 0 frequent
    confidence = rng.uniform(0.2, 1.0, n)
    probs = peaked(n, classes, confidence)

    kept = select_confident(probs, threshold=0.8)
    assert set(kept) == set(np.flatnonzero(confidence >= 0.8))
    assert list(confidence[kept]) == sorted(confidence[kept], reverse=True)  # most confident first

    kept = select_confident(probs, top_fraction=0.25)
    assert len(kept) == 50 and confidence[kept].min() >= np.sort(confidence)[-50]

    both = select_confident(probs, threshold=0.9, top_fraction=0.25)
    assert set(both) == set(np.flatnonzero(confidence >= 0.9)) & set(kept)

    capped = select_confident(probs, threshold=0.5, per_class_max=5)
    counts = np.bincount(classes[capped], minlength=K)
    assert counts.max() == 5 and counts[0] == 5  # the frequent class no longer swamps the rest
    for c in range(K):  # each class keeps its most confident rows
        above = np.flatnonzero((classes == c) & (confidence >= 0.5))
        top = above[np.argsort(-confidence[above], kind="stable")][:5]
        assert set(capped[classes[capped] == c]) == set(top)
    assert len(select_confident(probs)) == n  # no condition: every row


# ----------------------------------------------------------------------------------------- bad input
def test_bad_sources_name_the_file_and_the_fix(source, tmp_path):
    with pytest.raises(PseudoLabelError, match="directory not found.*docclassify.infer"):
        load_pseudo_set(cfg(tmp_path / "nope"), source)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PseudoLabelError, match="no test_probs.csv"):
        load_pseudo_set(cfg(tmp_path / "empty"), source)
    n = len(source.test)
    other = [*source.classes[:-1], "not_a_class"]
    wrong = teacher(tmp_path, source, np.full((n, K), 1 / K), classes=other, name="classes")
    with pytest.raises(PseudoLabelError, match=r"test_probs.csv: its class columns differ.*not_a_class"):
        load_pseudo_set(cfg(wrong), source)
    ids = [*source.test["ID"].tolist()[:-1], "elsewhere.jpg"]
    strange = teacher(tmp_path, source, np.full((n, K), 1 / K), ids=ids, name="ids")
    with pytest.raises(PseudoLabelError, match=r"1 ID\(s\) are not test images.*elsewhere.jpg"):
        load_pseudo_set(cfg(strange), source)


def test_class_columns_are_matched_by_name(source, tmp_path):
    n = len(source.test)
    probs = peaked(n, np.arange(n) % K, np.full(n, 0.9))
    reversed_cols = teacher(tmp_path, source, probs[:, ::-1], classes=source.classes[::-1])
    pseudo = load_pseudo_set(cfg(reversed_cols, threshold=0.5), source)
    order = np.argsort(pseudo.test_rows)
    np.testing.assert_allclose(pseudo.probs[order], probs[pseudo.test_rows[order]], rtol=1e-6)


def test_cli_refuses_a_bad_source_before_training(tiny_data, tmp_path):
    proc = run_in(tmp_path, "docclassify.train", ["data=competition", f"data.root={tiny_data}", *TINY,
                                                  f"pseudo.source={tmp_path / 'missing'}",
                                                  f"hydra.run.dir={tmp_path / 'run'}"])
    assert proc.returncode == 2
    assert "docclassify.train: error: pseudo.source=" in proc.stderr and "directory not found" in proc.stderr
    assert "fold 0" not in proc.stdout + proc.stderr


def test_resume_refuses_other_pseudo_settings_or_a_changed_teacher(source, tmp_path):
    base = {"data": {"name": "x"}, "model": {}, "ensemble": {}, "seed": 1, "folds": {"n": 2}}
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    check_resume_compatible(run_dir, OmegaConf.create({**base, "pseudo": {"source": None, "weight": 1.0}}))
    # pseudo off equals a run dir from before pseudo-labels existed
    check_resume_compatible(run_dir, OmegaConf.create(base))
    on = {**base, "pseudo": {"source": "/t", "weight": 1.0}}
    with pytest.raises(Exception, match="different config.*pseudo"):
        check_resume_compatible(run_dir, OmegaConf.create(on))

    n = len(source.test)
    probs = peaked(n, np.arange(n) % K, np.linspace(0.5, 0.99, n))
    first = load_pseudo_set(cfg(teacher(tmp_path, source, probs), top_fraction=0.5), source)
    frame = selection_frame(first, source.classes)
    frame.to_csv(run_dir / "pseudo_labels.csv", index=False)
    check_unchanged(run_dir, frame)
    second = load_pseudo_set(cfg(teacher(tmp_path, source, probs[::-1], name="t2"), top_fraction=0.5), source)
    with pytest.raises(PseudoLabelError, match="other pseudo-labels"):
        check_unchanged(run_dir, selection_frame(second, source.classes))


# ----------------------------------------------------------------------------------------- training rows
def test_pseudo_rows_follow_the_training_rows_with_their_targets_and_weights(source, tmp_path):
    n = len(source.test)
    probs = peaked(n, np.arange(n) % K, np.linspace(0.5, 0.99, n))
    pseudo = load_pseudo_set(cfg(teacher(tmp_path, source, probs), top_fraction=0.5, soft=True, weight=0.3), source)
    train_images = np.zeros((len(source.train), 8, 8, 3), np.uint8)
    test_images = np.stack([np.full((8, 8, 3), i, np.uint8) for i in range(n)])
    pseudo.images_by_size[8] = test_images
    targets = source.train["target"].to_numpy()
    train_rows = np.arange(0, len(targets), 2)
    ts = fold_training_set(train_images, targets, train_rows, pseudo, 8, K)
    m = len(targets)
    assert ts.n_pseudo == len(pseudo) == 9 and list(ts.rows) == [*train_rows, *range(m, m + 9)]
    ds = ImageDataset(ts.images, ts.rows, ts.targets, target_rows=ts.target_rows, weights=ts.weights)
    image, target, element, weight = ds[len(train_rows)]  # the first pseudo row: the most confident
    assert image[0, 0, 0] == pseudo.test_rows[0] and weight == pytest.approx(0.3) and element == 0
    np.testing.assert_allclose(target.numpy(), pseudo.probs[0])
    image, target, _, weight = ds[0]
    assert weight == 1.0 and target.numpy().argmax() == targets[0] and target.sum() == 1.0


def test_pseudo_rows_report_an_unknown_orientation_through_the_augmentation(source, tmp_path):
    """A test page is already turned by an element nobody recorded: whatever the augmentation turns
    it by on top, its head label is unknown (-1); a training row reports the augmentation's element."""
    from docclassify.data.augment import TrainTransform
    from docclassify.data.dataset import UNKNOWN_ELEMENT

    n = len(source.test)
    probs = peaked(n, np.arange(n) % K, np.linspace(0.5, 0.99, n))
    pseudo = load_pseudo_set(cfg(teacher(tmp_path, source, probs), top_fraction=0.5), source)
    pseudo.images_by_size[8] = np.zeros((n, 8, 8, 3), np.uint8)
    targets = source.train["target"].to_numpy()
    ts = fold_training_set(np.zeros((len(targets), 8, 8, 3), np.uint8), targets, np.arange(len(targets)), pseudo, 8, K)
    assert ts.unknown_orientation.tolist() == [False] * len(targets) + [True] * len(pseudo)
    augment = OmegaConf.merge(OmegaConf.load(CONF / "augment" / "basic.yaml"),
                              {"orientation": "dihedral", "orientation_p": 1.0})
    ds = ImageDataset(ts.images, ts.rows, ts.targets, TrainTransform(augment, 8, 1, 0, 0), orientation_labels=True,
                      weights=ts.weights, unknown_orientation=ts.unknown_orientation)
    elements = [ds[i][2] for i in range(len(ds))]
    assert all(e == UNKNOWN_ELEMENT for e in elements[len(targets):])
    assert all(0 <= e < 8 for e in elements[:len(targets)]) and len(set(elements[:len(targets)])) > 1


# ----------------------------------------------------------------------------------------- what the loss sees
class Recording(CrossEntropy):
    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, logits, targets, weight=None):
        self.calls.append((targets.detach().clone(), None if weight is None else weight.detach().clone()))
        return super().forward(logits, targets, weight=weight)


def parts_with(loss, mixup=None, smoothing: float = 0.0) -> FoldParts:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, K))
    loss.setup(LossContext(K, np.ones(K), np.full(K, 1 / K), smoothing))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return FoldParts(model, model, opt, None, loss, mixup=mixup, label_smoothing=smoothing)


CPU = torch.device("cpu")
CTX = StepContext(CPU, torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1), amp_settings("none", CPU))


def batch(n: int = 6):
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 255, (n, 3, 4, 4), generator=g, dtype=torch.uint8)
    hard = torch.arange(n) % K
    soft = torch.softmax(torch.randn(n, K, generator=g), dim=1)
    weights = torch.tensor([1.0, 1.0, 1.0, 0.25, 0.25, 0.25])
    return images, hard, soft, weights


def test_hard_and_soft_targets_and_weights_reach_the_loss():
    images, hard, soft, weights = batch()
    loss = Recording()
    forward_losses(parts_with(loss), images, hard, CTX, torch.zeros(6, dtype=torch.long), weights)
    targets, weight = loss.calls[-1]
    assert targets.ndim == 1 and torch.equal(targets, hard) and torch.equal(weight, weights)
    forward_losses(parts_with(loss), images, soft, CTX, torch.zeros(6, dtype=torch.long), weights)
    targets, weight = loss.calls[-1]
    assert targets.shape == (6, K) and torch.allclose(targets, soft) and torch.equal(weight, weights)
    # soft rows get regularization.label_smoothing like class indices get it in the loss
    forward_losses(parts_with(loss, smoothing=0.1), images, soft, CTX, None, weights)
    assert torch.allclose(loss.calls[-1][0], 0.9 * soft + 0.1 / K)
    # weights all 1 (pseudo.weight=1): no weight= at all (a torch.nn loss without it still works)
    forward_losses(parts_with(loss), images, hard, CTX, None, torch.ones(6))
    assert loss.calls[-1][1] is None


def test_weight_scales_the_pseudo_rows_loss():
    images, hard, soft, _ = batch()
    per_sample = []
    for w in (1.0, 0.5, 0.0):
        weights = torch.tensor([1.0, 1.0, 1.0, w, w, w])
        values = [forward_losses(parts_with(CrossEntropy()), images, t, CTX, None, weights)[0] for t in (hard, soft)]
        per_sample.append(values)
    parts = parts_with(CrossEntropy())
    logits = parts.model(images.float() / 255)
    for i, t in enumerate((hard, soft)):
        rows = torch.nn.functional.one_hot(t, K).float() if t.ndim == 1 else t
        each = -(rows * torch.log_softmax(logits, 1)).sum(1)
        for j, w in enumerate((1.0, 0.5, 0.0)):
            expected = (each[:3].sum() + w * each[3:].sum()) / 6
            assert per_sample[j][i].item() == pytest.approx(expected.item(), rel=1e-5)
    assert per_sample[0][0] > per_sample[1][0] > per_sample[2][0]


class InputRecorder(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.seen = model, None

    def forward(self, x):
        self.seen = x.detach().clone()
        return self.model(x)


@pytest.mark.parametrize("soft_targets", [True, False])
def test_mixup_mixes_targets_and_weights_like_the_images(soft_targets):
    images, hard, soft, weights = batch()
    mixup = Mixup(mixup_alpha=0.4, cutmix_alpha=0.0, prob=1.0, mode="elem", label_smoothing=0.1, num_classes=K)
    loss = Recording()
    parts = parts_with(loss, mixup)
    parts.train_model = recorder = InputRecorder(parts.model)
    torch.manual_seed(3)
    np.random.seed(3)
    forward_losses(parts, images, soft if soft_targets else hard, CTX, None, weights)
    targets, weight = loss.calls[-1]
    # each row's lambda, from the images: x_i = lam_i x_i + (1 - lam_i) x_{n-1-i} (elem mode)
    x = images.float().flatten(1) / 255
    xf, xm = x.flip(0), recorder.seen.flatten(1)
    col = (x - xf).abs().argmax(1)
    rows = torch.arange(6)
    lam = (xm[rows, col] - xf[rows, col]) / (x[rows, col] - xf[rows, col])
    assert ((lam > 0) & (lam <= 1)).all() and not torch.allclose(lam, torch.ones(6))
    one_hot = soft if soft_targets else torch.nn.functional.one_hot(hard, K).float()
    expected = lam[:, None] * one_hot + (1 - lam[:, None]) * one_hot.flip(0)
    assert torch.allclose(targets, 0.9 * expected + 0.1 / K, atol=1e-4)  # mixed, then smoothed
    assert torch.allclose(weight, lam * weights + (1 - lam) * weights.flip(0), atol=1e-4)
    assert not torch.allclose(weight, weights)  # a pseudo row's weight spreads to its partner


# ----------------------------------------------------------------------------------------- the orientation head
class WithHead(torch.nn.Module):
    """A linear classifier with a linear orientation head (models/heads.py's call signature)."""

    def __init__(self, n: int):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Flatten()
        self.cls, self.head = torch.nn.Linear(3 * 4 * 4, K), torch.nn.Linear(3 * 4 * 4, n)

    def forward(self, x, orientation: bool = False):
        z = self.body(x)
        return (self.cls(z), self.head(z)) if orientation else self.cls(z)


def head_parts(head: str, mixup=None, smoothing: float = 0.0) -> FoldParts:
    from docclassify.engine.orientation_head import OrientationTraining

    training = OrientationTraining(head, 1.0)
    model = WithHead(training.n)
    loss = CrossEntropy()
    loss.setup(LossContext(K, np.ones(K), np.full(K, 1 / K), smoothing))
    return FoldParts(model, model, torch.optim.SGD(model.parameters(), lr=0.1), None, loss, mixup=mixup,
                     orientation=training, label_smoothing=smoothing)


def test_weighted_mixup_smooths_the_orientation_rows_like_the_class_rows():
    """Issue 26 item 5: one rule for both targets. A batch with weights (pseudo-labels) is mixed by
    matrix (mix_weighted), a batch without by timm's joint label (mix_with_orientation); with unit
    weights and hard targets both must give the same images, class rows and orientation rows: mixed
    with one lambda, then smoothed by the same label smoothing."""
    from docclassify.engine.epoch import mix_weighted
    from docclassify.engine.orientation_head import mix_with_orientation

    images, hard, _, _ = batch()
    x = images.float() / 255
    o = torch.tensor([0, 3, 5, 7, 1, 2])
    for mode in ("batch", "elem"):
        mixup = Mixup(mixup_alpha=0.4, cutmix_alpha=0.0, prob=1.0, mode=mode, label_smoothing=0.1, num_classes=K)
        np.random.seed(3)
        x1, y1, o1 = mix_with_orientation(mixup, x.clone(), hard, o, 8)
        np.random.seed(3)
        out = mix_weighted(head_parts("dihedral8", mixup, 0.1), x.clone(), hard, o, torch.ones(6))
        assert torch.allclose(out[0], x1) and torch.allclose(out[1], y1, atol=1e-6)
        assert torch.allclose(out[2], o1, atol=1e-6), (mode, out[2], o1)  # smoothed: every entry >= 0.1 / 8
        assert float(out[2].min()) >= 0.1 / 8 - 1e-6


def test_rows_of_unknown_orientation_leave_the_head_loss():
    """Issue 26 item 2: a pseudo row's element is UNKNOWN_ELEMENT; the head's loss is the mean over the
    other rows, and a mixed row made partly of a pseudo row counts as unknown too."""
    import torch.nn.functional as F

    images, hard, _, weights = batch()
    unknown = torch.tensor([-1, -1, -1, 2, 1, 0])  # rows 0-2 pseudo (weight 0.25), rows 3-5 training rows
    parts = head_parts("rot4")
    _, head_loss = forward_losses(parts, images, hard, CTX, unknown, weights)
    _, head_logits = parts.model(images.float() / 255, orientation=True)
    assert head_loss.item() == pytest.approx(F.cross_entropy(head_logits[3:], unknown[3:]).item(), rel=1e-6)
    # all known: the plain mean over every row, as before
    known = torch.tensor([3, 0, 1, 2, 1, 0])
    _, all_rows = forward_losses(parts, images, hard, CTX, known, weights)
    assert all_rows.item() == pytest.approx(F.cross_entropy(head_logits, known).item(), rel=1e-6)
    # mixup pairs row i with row 5 - i: each pair holds one pseudo row, so no mixed row is known
    mixup = Mixup(mixup_alpha=0.4, cutmix_alpha=0.0, prob=1.0, mode="elem", num_classes=K)
    parts = head_parts("rot4", mixup)
    np.random.seed(3)
    loss, head_loss = forward_losses(parts, images, hard, CTX, unknown, weights)
    loss.backward()
    assert head_loss.item() == 0.0 and float(parts.model.head.weight.grad.abs().max()) == 0.0
    # pairs (0, 5) unknown, (1, 4) and (2, 3) known: the head learns from rows 1-4 only
    parts = head_parts("rot4", mixup)
    np.random.seed(3)
    _, head_loss = forward_losses(parts, images, hard, CTX, torch.tensor([-1, 2, 1, 1, 2, -1]), weights)
    assert head_loss.item() > 0.0
