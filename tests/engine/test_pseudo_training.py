"""Pseudo-labels in real (tiny) training runs: the test images join every fold's training rows and
nothing else, the loss sees them as configured, results.json counts them, a resumed run repeats
itself exactly, and the whole loop train -> infer -> train pseudo.source=... -> infer works from the
command line (also with a two-run ensemble as the teacher)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY, SignalAt, compose_train, run_cli

import docclassify.engine.parts as parts_module
from docclassify.engine.epoch import StopRequested
from docclassify.engine.kfold import run_kfold

pytestmark = pytest.mark.slow  # every test trains

K = 17


@pytest.fixture(scope="module")
def pool_data(tmp_path_factory):
    """tiny_data's shape with 3 test images per class (51: a pool to select from)."""
    from docclassify.data.synthetic import SyntheticSpec, generate

    root = tmp_path_factory.mktemp("pool_data")
    generate(root, SyntheticSpec(n_train_per_class=6, n_test_per_class=3, long_side=64, seed=5, imbalance=False),
             progress=False)
    return root


@pytest.fixture(scope="module")
def teacher(pool_data, tmp_path_factory):
    """A hand-made infer dir: the true test label at confidence 0.3-0.95 (known selection)."""
    out = tmp_path_factory.mktemp("teacher")
    labels = pd.read_csv(pool_data / "test_labels.csv", dtype={"ID": str})
    confidence = np.linspace(0.3, 0.95, len(labels))
    probs = np.repeat(((1 - confidence) / (K - 1))[:, None], K, axis=1)
    probs[np.arange(len(labels)), labels["target"].to_numpy()] = confidence
    classes = pd.read_csv(pool_data / "meta.csv").sort_values("target")["class_name"].tolist()
    frame = pd.DataFrame(probs, columns=classes)
    frame.insert(0, "ID", labels["ID"])
    frame.to_csv(out / "test_probs.csv", index=False)
    return out


def train_args(data, *extra):
    return ["data=competition", f"data.root={data}", *TINY, "folds.n=2", "trainer.epochs=1", *extra]


class Recorder:
    """Wraps the fold's real loss; keeps (targets, weights) of every call."""

    def __init__(self, loss):
        self.loss, self.calls = loss, []

    def __call__(self, logits, targets, weight=None):
        self.calls.append((targets.detach().clone(), None if weight is None else weight.detach().clone()))
        return self.loss(logits, targets) if weight is None else self.loss(logits, targets, weight=weight)


@pytest.fixture
def recorded(monkeypatch):
    losses = []
    real = parts_module.build_loss

    def build(cfg, context):
        losses.append(Recorder(real(cfg, context)))
        return losses[-1]

    monkeypatch.setattr(parts_module, "build_loss", build)
    return losses


def expected_selection(pool_data, threshold: float, per_class_max: int) -> pd.DataFrame:
    labels = pd.read_csv(pool_data / "test_labels.csv", dtype={"ID": str})
    labels["confidence"] = np.linspace(0.3, 0.95, len(labels))
    kept = labels[labels["confidence"] >= threshold].sort_values("confidence", ascending=False, kind="stable")
    return kept.groupby("target", sort=False).head(per_class_max)


@pytest.mark.parametrize("soft", [True, False])
def test_pseudo_rows_train_every_fold_never_validate_and_reach_the_loss(pool_data, teacher, recorded, tmp_path,
                                                                         soft):
    cfg = compose_train(train_args(pool_data, f"pseudo.source={teacher}", "pseudo.threshold=0.6",
                                   "pseudo.per_class_max=2", f"pseudo.soft={soft}", "pseudo.weight=0.25",
                                   "trainer.batch_size=128"), tmp_path)  # one batch: no row dropped (drop_last)
    results = run_kfold(cfg)
    expected = expected_selection(pool_data, 0.6, 2)
    pseudo_ids = set(expected["ID"])
    # the selection: threshold, then at most 2 per class, counted per class in results.json
    assert results["pseudo"]["n_added"] == len(expected) > 10 and results["pseudo"]["source"] == str(teacher)
    counts = np.bincount(expected["target"], minlength=K)
    assert list(results["pseudo"]["per_class"].values()) == counts.tolist() and max(counts) == 2
    assert set(pd.read_csv(tmp_path / "pseudo_labels.csv", dtype={"ID": str})["ID"]) == pseudo_ids
    # never a validation row: not in folds.csv, oof.csv, oof_robust.csv; OOF = the training data's rows
    train_ids = set(pd.read_csv(pool_data / "train.csv", dtype={"ID": str})["ID"])
    for name in ("folds.csv", "oof.csv", "oof_robust.csv"):
        ids = set(pd.read_csv(tmp_path / name, dtype={"ID": str})["ID"])
        assert not ids & pseudo_ids and ids <= train_ids
    assert results["n_oof_rows"] == len(train_ids)
    for k in (0, 1):  # every fold trained on them, validated the same rows as without them
        fold = json.loads((tmp_path / "folds" / f"fold{k}.json").read_text())
        assert fold["n_pseudo"] == len(expected) and fold["n_train"] + fold["n_val"] == len(train_ids)
    # the loss of each fold saw every pseudo row once per epoch, weighted 0.25, with the teacher's target
    teacher_probs = pd.read_csv(teacher / "test_probs.csv", dtype={"ID": str}).set_index("ID").loc[expected["ID"]]
    for loss in recorded:
        targets = torch.cat([t for t, _ in loss.calls])
        weights = torch.cat([w if w is not None else torch.ones(len(t)) for t, w in loss.calls])
        pseudo = weights == 0.25

        assert int(pseudo.sum()) == len(expected) and set(weights.unique().tolist()) == {1.0, 0.25}
        if soft:
            assert targets.ndim == 2
            got = targets[pseudo].numpy()
            want = teacher_probs.to_numpy(np.float32)
            assert sorted(map(tuple, got.round(5))) == sorted(map(tuple, want.round(5)))
            assert np.allclose(targets[~pseudo].sum(1), 1) and set(targets[~pseudo].max(1).values.tolist()) == {1.0}
        else:
            assert targets.ndim == 1
            assert sorted(targets[pseudo].tolist()) == sorted(expected["target"].tolist())


def test_pseudo_rows_never_reach_the_orientation_head_loss(pool_data, teacher, tmp_path, monkeypatch):
    """Issue 26 item 2: with an orientation head, a pseudo-labelled test page reaches the step with an
    unknown element (its starting turn is unknown), every training row with the augmentation's."""
    import docclassify.engine.epoch as epoch

    seen, real = [], epoch.forward_losses

    def recording(parts, images, targets, ctx, elements=None, weights=None):
        seen.append((elements.clone(), weights.clone()))
        return real(parts, images, targets, ctx, elements, weights)

    monkeypatch.setattr(epoch, "forward_losses", recording)
    results = run_kfold(compose_train(train_args(pool_data, f"pseudo.source={teacher}", "pseudo.threshold=0.6",
                                                 "pseudo.weight=0.25", "model.orientation_head=rot4",
                                                 "augment.orientation=rot90", "augment.orientation_p=1.0",
                                                 "folds.run=[0]", "validation=clean", "trainer.batch_size=128"),
                                      tmp_path))  # one batch: no row dropped (drop_last)
    elements = torch.cat([e for e, _ in seen])
    pseudo = torch.cat([w for _, w in seen]) == 0.25
    assert int(pseudo.sum()) == results["pseudo"]["n_added"] > 0
    assert (elements[pseudo] == -1).all() and (elements[~pseudo] >= 0).all()
    assert len(set(elements[~pseudo].tolist())) > 1  # the training rows' turns, as drawn
    assert results["folds"][0]["history"][0]["train_orientation_loss"] > 0


def test_weight_and_soft_change_the_trained_model(pool_data, teacher, tmp_path):
    def oof_logits(name, *pseudo):
        run_kfold(compose_train(train_args(pool_data, f"pseudo.source={teacher}", "pseudo.threshold=0.6",
                                           "trainer.deterministic=true", *pseudo), tmp_path / name))
        return np.load(tmp_path / name / "oof_logits.npy")

    base = oof_logits("w1")
    assert np.array_equal(base, oof_logits("again"))  # deterministic: a difference below is the key's doing
    assert not np.allclose(base, oof_logits("w0.1", "pseudo.weight=0.1"))
    assert not np.allclose(base, oof_logits("soft", "pseudo.soft=true"))


def test_a_stopped_pseudo_run_resumes_exactly(pool_data, teacher, tmp_path):
    args = train_args(pool_data, f"pseudo.source={teacher}", "pseudo.threshold=0.5", "pseudo.soft=true",
                      "pseudo.weight=0.5", "augment.mixup_alpha=0.4", "trainer.epochs=2", "trainer.deterministic=true")
    reference = tmp_path / "reference"
    run_kfold(compose_train(args, reference))
    resumed = tmp_path / "resumed"
    with pytest.raises(StopRequested):
        run_kfold(compose_train(args, resumed), [SignalAt(fold=0, update=4)])
    run_kfold(compose_train(args, resumed))
    for name in ("oof.csv", "oof_robust.csv", "pseudo_labels.csv"):
        assert (reference / name).read_bytes() == (resumed / name).read_bytes()
    np.testing.assert_array_equal(np.load(reference / "oof_logits.npy"), np.load(resumed / "oof_logits.npy"))
    # other pseudo settings in the same run dir: refused, nothing trained
    with pytest.raises(Exception, match="different config.*pseudo"):
        run_kfold(compose_train([*args, "pseudo.weight=0.3"], resumed))


def test_train_infer_train_with_pseudo_labels_infer(pool_data, tmp_path):
    """The loop of docs/pseudo-labels.md as commands, with one run and with two runs as the teacher."""
    a, b = tmp_path / "A", tmp_path / "B"
    run_cli("docclassify.train", [*train_args(pool_data), f"hydra.run.dir={a}"])
    run_cli("docclassify.infer", [f"runs=[{a}]", "data.test_labels=test_labels.csv", f"hydra.run.dir={a}/infer"])
    proc = run_cli("docclassify.train", [*train_args(pool_data), f"pseudo.source={a}/infer", "pseudo.threshold=null",
                                         "pseudo.top_fraction=0.5", f"hydra.run.dir={b}"])
    assert "26 of 51 test images added to every fold's training rows" in proc.stdout + proc.stderr
    results = json.loads((b / "results.json").read_text())
    assert results["pseudo"]["n_added"] == 26 and results["pseudo"]["teacher"]["runs"] == [str(a)]
    assert "pseudo-labels: 26 of 51 test images" in (b / "report.md").read_text()
    probs = pd.read_csv(a / "infer" / "test_probs.csv", dtype={"ID": str}).set_index("ID")
    top = probs.max(axis=1).sort_values(ascending=False, kind="stable").index[:26]
    chosen = pd.read_csv(b / "pseudo_labels.csv", dtype={"ID": str})
    assert list(chosen["ID"]) == list(top)  # the most confident half, most confident first
    assert (chosen["target"].to_numpy() == probs.loc[top].to_numpy().argmax(1)).all()
    run_cli("docclassify.infer", [f"runs=[{b}]", "data.test_labels=test_labels.csv", f"hydra.run.dir={b}/infer"])
    from sklearn.metrics import f1_score

    # the student's test score is its own submission's macro F1 against the labels
    submitted = pd.read_csv(b / "infer" / "submission.csv", dtype={"ID": str})
    truth = pd.read_csv(pool_data / "test_labels.csv", dtype={"ID": str}).set_index("ID").loc[submitted["ID"], "target"]
    assert json.loads((b / "infer" / "summary.json").read_text())["test_metrics"]["macro_f1"] == pytest.approx(
        f1_score(truth.to_numpy(), submitted["target"].to_numpy(), average="macro"))

    # an ensemble of both runs as the next teacher
    run_cli("docclassify.infer", [f"runs=[{a},{b}]", f"hydra.run.dir={tmp_path}/ens"])
    c = tmp_path / "C"
    run_cli("docclassify.train", [*train_args(pool_data), f"pseudo.source={tmp_path}/ens", "pseudo.threshold=null",
                                  "pseudo.top_fraction=0.3", "pseudo.per_class_max=1", f"hydra.run.dir={c}"])
    pseudo = json.loads((c / "results.json").read_text())["pseudo"]
    assert pseudo["teacher"]["runs"] == [str(a), str(b)] and 0 < pseudo["n_added"] <= 16
    assert max(pseudo["per_class"].values()) == 1
