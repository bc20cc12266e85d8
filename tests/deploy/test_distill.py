"""`python -m docclassify.distill`: the KD loss, the training rows' soft targets through the pseudo-label
path, and a real student trained from the shared teacher run, whose run dir infer and export take."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_cli

from docclassify.data.pseudo import (
    TRAIN_PROBS_FILE,
    PseudoSet,
    fold_training_set,
    read_train_targets,
)
from docclassify.data.sources import DataSource
from docclassify.deploy.distill import DistillationLoss, teacher_train
from docclassify.engine.losses import LossContext


def _loss(t: float) -> DistillationLoss:
    loss = DistillationLoss(t)
    loss.setup(LossContext(5, np.ones(5), np.full(5, 0.2)))
    return loss


def test_kd_loss_is_zero_at_the_teacher_and_its_temperature_matters():
    torch.manual_seed(0)
    teacher = torch.softmax(torch.randn(8, 5), -1)
    student = torch.randn(8, 5)
    assert abs(float(_loss(3.0)(torch.log(teacher), teacher))) < 1e-5  # the student's logits = the teacher's
    a, b = float(_loss(1.0)(student, teacher)), float(_loss(4.0)(student, teacher))
    assert a > 0 and b > 0 and abs(a - b) > 1e-3
    # T=1: cross-entropy on the teacher's probabilities minus their entropy
    ce = float(-(teacher * torch.log_softmax(student, -1)).sum(-1).mean())
    entropy = float(-(teacher * torch.log(teacher)).sum(-1).mean())
    assert abs(a - (ce - entropy)) < 1e-5
    hard = float(_loss(2.0)(student, torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])))  # class indices still work
    assert hard > 0


def _source(n: int = 6, k: int = 3) -> DataSource:
    train = pd.DataFrame({"ID": [f"t{i}.jpg" for i in range(n)], "target": np.arange(n) % k, "path": ["x"] * n})
    return DataSource("synthetic", Path("."), [f"c{i}" for i in range(k)], train, None, None, None)


def test_train_probs_become_the_training_rows_targets(tmp_path):
    source = _source()
    probs = np.full((4, 3), 0.2)
    probs[:, 1] = 0.6
    ids = pd.DataFrame({"ID": [f"t{i}.jpg" for i in range(4)]})
    frame = pd.concat([ids, pd.DataFrame(probs, columns=source.classes)], axis=1)
    frame.to_csv(tmp_path / TRAIN_PROBS_FILE, index=False)
    rows = read_train_targets(tmp_path, source)
    np.testing.assert_allclose(rows[:4], probs)
    np.testing.assert_allclose(rows[4:], np.eye(3)[source.train["target"].to_numpy()[4:]])  # not listed: one-hot
    pseudo = PseudoSet(tmp_path, [], np.zeros(0, np.int64), np.zeros((0, 3), np.float32), True, 1.0, 0, {},
                       train_probs=rows)
    targets = source.train["target"].to_numpy()
    training = fold_training_set(np.zeros((6, 8, 8, 3), np.uint8), targets, np.arange(6), pseudo, 8, 3)
    np.testing.assert_allclose(training.target_rows, rows)
    assert training.weights is not None and (training.weights == 1).all()
    plain = fold_training_set(np.zeros((6, 8, 8, 3), np.uint8), targets, np.arange(6), None, 8, 3)
    assert plain.target_rows is None


def test_teacher_train_weights_runs_and_mixes_the_label(tmp_path):
    classes = ["c0", "c1"]
    for name, p in (("a", [[0.9, 0.1], [0.2, 0.8]]), ("b", [[0.5, 0.5], [0.4, 0.6]])):
        (tmp_path / name).mkdir()
        pd.DataFrame({"ID": ["x", "y"], "target": [0, 1], "pred": [0, 1], "c0": [r[0] for r in p],
                      "c1": [r[1] for r in p]}).to_csv(tmp_path / name / "oof.csv", index=False)
    summary = {"runs": [{"dir": str(tmp_path / "a"), "weight": 0.75}, {"dir": str(tmp_path / "b"), "weight": 0.25}]}
    out = teacher_train(summary, classes, 0.0).set_index("ID")
    np.testing.assert_allclose(out.loc["x"].to_numpy(), [0.8, 0.2])
    mixed = teacher_train(summary, classes, 0.5).set_index("ID")
    np.testing.assert_allclose(mixed.loc["x"].to_numpy(), [0.9, 0.1])


@pytest.mark.slow
def test_a_student_distilled_from_the_teacher_is_a_normal_run(deployed, tmp_path):
    student = tmp_path / "student"
    run_cli("docclassify.distill", [f"runs=[{deployed.run}]", "data=competition", f"data.root={deployed.data}",
                                    "model=tiny", "model.pretrained=false", "data.img_size=32", "trainer.epochs=1",
                                    "trainer.batch_size=16", "data.num_workers=0", "folds.n=2", "distill.temperature=2",
                                    "distill.label_weight=0.25", "distill.teacher_tta=flip",
                                    f"hydra.run.dir={student}"], env=deployed.env)
    results = json.loads((student / "results.json").read_text())
    assert results["loss"] == {"_target_": "docclassify.deploy.distill.DistillationLoss", "temperature": 2.0}
    assert results["pseudo"]["train_targets"] == TRAIN_PROBS_FILE and results["pseudo"]["n_added"] == 34
    assert results["validation"]["name"] == "both" and results["cv_macro_f1_robust"] is not None
    targets = pd.read_csv(student / "teacher" / TRAIN_PROBS_FILE)
    assert len(targets) == 102 and np.allclose(targets.drop(columns="ID").sum(axis=1), 1.0)
    assert (targets.drop(columns="ID").max(axis=1) >= 0.25).all()  # a quarter of each row is its true label
    assert (student / "teacher" / "test_probs.csv").is_file()
    assert json.loads((student / "teacher" / "summary.json").read_text())["tta"]["name"] == "flip"
    run_cli("docclassify.export", [f"runs=[{student}]", "exporter=torchscript", "check_images=5",
                                   f"output={tmp_path / 'bundle'}", f"hydra.run.dir={tmp_path / 'export'}"],
            env=deployed.env)
    spec = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert spec["check"]["max_abs_diff"] < 1e-4
    alone = tmp_path / "no_test_images"  # distill.test_images=false: the training rows' soft targets only
    run_cli("docclassify.distill", [f"runs=[{deployed.run}]", "data=competition", f"data.root={deployed.data}",
                                    "model=tiny", "model.pretrained=false", "data.img_size=32", "trainer.epochs=1",
                                    "data.num_workers=0", "folds.n=2", "folds.run=[0]", "distill.test_images=false",
                                    f"hydra.run.dir={alone}"], env=deployed.env)
    results = json.loads((alone / "results.json").read_text())
    assert results["pseudo"]["n_added"] == 0 and results["pseudo"]["train_targets"] == TRAIN_PROBS_FILE
    proc = run_cli("docclassify.distill", ["runs=[]", f"hydra.run.dir={tmp_path / 'bad'}"], env=deployed.env,
                   check=False)
    assert proc.returncode == 2 and "runs=[]: give the teacher's training run dirs" in proc.stderr
