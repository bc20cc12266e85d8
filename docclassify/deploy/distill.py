"""``python -m docclassify.distill runs=[TEACHER ...] model=resnet18 ...``: one student on a teacher
ensemble's soft targets, trained by the ordinary K-fold engine (engine/kfold.py run_kfold).

    teacher_test      the infer command on the teacher runs (tta=distill.teacher_tta) into
                      <run dir>/teacher/: test_probs.csv, the teacher's probabilities of the test images
    teacher_train     the teacher runs' oof.csv rows (each training row predicted by a model that did not
                      train on it), weighted as infer weighted the runs, mixed with the true label by
                      distill.label_weight -> <run dir>/teacher/train_probs.csv
    student config    pseudo.source=<run dir>/teacher (data/pseudo.py: every test image joins each fold's
                      training rows with its soft target; train_probs.csv gives the training rows theirs),
                      loss = DistillationLoss(distill.temperature)
    train             docclassify.train's train(): folds, robust validation, checkpoints, results.json

The student's run dir is a training run dir: infer, export and serve take it like any other.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf, open_dict

from docclassify.data.pseudo import PROBS_FILE, TRAIN_PROBS_FILE
from docclassify.engine.losses import ClassificationLoss
from docclassify.errors import UserError
from docclassify.utils.io import atomic_write_csv

log = logging.getLogger("docclassify.distill")

TEACHER_DIR = "teacher"


class DistillError(UserError):
    pass


class DistillationLoss(ClassificationLoss):
    """Knowledge distillation (Hinton et al. 2015): ``T^2 * KL(q_T || softmax(z / T))`` with
    ``q_T = softmax(log t / T)`` the target rows ``t`` (the teacher's probabilities) softened at the same
    temperature. T^2 keeps the gradients' scale as T changes; ``T=1`` is cross-entropy on ``t`` minus
    its entropy (the same gradients). Hard targets arrive as (label-smoothed) one-hot rows."""

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"distill.temperature={temperature}: expected > 0")
        self.temperature = float(temperature)

    def per_sample(self, logits, targets):
        t = self.temperature
        soft = torch.softmax(torch.log(targets.clamp_min(1e-12)) / t, dim=-1)
        log_student = F.log_softmax(logits / t, dim=-1)
        return (t * t) * (soft * (torch.log(soft.clamp_min(1e-12)) - log_student)).sum(-1)


def teacher_runs(cfg: DictConfig) -> list[str]:
    runs = [str(r) for r in (OmegaConf.to_container(cfg.runs) or [])]
    if not runs:
        raise DistillError("runs=[]: give the teacher's training run dirs (runs=[outputs/train/A,outputs/train/B])")
    return runs


def teacher_test(cfg: DictConfig, out_dir: Path) -> dict:
    """The teacher's test predictions (test_probs.csv, summary.json in ``out_dir``), as infer makes them."""
    from docclassify.infer import infer
    from docclassify.submit import _value, compose_infer
    from docclassify.sweep.study import quote_value

    overrides = [f"runs=[{','.join(quote_value(r) for r in teacher_runs(cfg))}]", f"tta={cfg.distill.teacher_tta}",
                 f"paths.cache_dir={_value(cfg.paths.cache_dir)}", f"device={_value(cfg.trainer.device)}"]
    log.info("distill: the teacher's predictions, as `python -m docclassify.infer %s`", " ".join(overrides))
    return infer(compose_infer(overrides), out_dir)


def teacher_train(summary: dict, classes: list[str], label_weight: float) -> pd.DataFrame:
    """train_probs.csv: per training ID the teacher runs' OOF probabilities, weighted as infer weighted the
    runs (a row some run did not predict: the others'), mixed with the one-hot label by ``label_weight``."""
    total, weight, target = None, None, None
    for run in summary["runs"]:
        oof = pd.read_csv(Path(run["dir"]) / "oof.csv", dtype={"ID": str}).set_index("ID")
        if list(oof.columns[2:]) != classes:
            raise DistillError(f"{run['dir']}/oof.csv: its class columns differ from the student's data's classes")
        probs = oof[classes] * float(run["weight"])
        total = probs if total is None else total.add(probs, fill_value=0.0)
        w = pd.Series(float(run["weight"]), index=oof.index)
        weight = w if weight is None else weight.add(w, fill_value=0.0)
        target = oof["target"] if target is None else target.combine_first(oof["target"])
    probs = total.div(weight.clip(lower=1e-12), axis=0).to_numpy(np.float64)
    probs /= probs.sum(axis=1, keepdims=True)
    one_hot = np.eye(len(classes))[target.loc[total.index].to_numpy(dtype=np.int64)]
    mixed = (1.0 - label_weight) * probs + label_weight * one_hot
    return pd.concat([pd.DataFrame({"ID": total.index}), pd.DataFrame(mixed, columns=classes)], axis=1)


def student_config(cfg: DictConfig, teacher_dir: Path) -> DictConfig:
    """The student's training config: the teacher as pseudo.source (soft, every test image) and the KD loss."""
    student = cfg.copy()
    with open_dict(student):
        student.pseudo.source = str(teacher_dir)
        student.pseudo.soft = True
        student.pseudo.threshold = None
        student.pseudo.top_fraction = None
        student.pseudo.per_class_max = None
        student.pseudo.weight = 1.0
    student.loss = OmegaConf.create({"_target_": f"{__name__}.DistillationLoss",
                                     "temperature": float(cfg.distill.temperature)})
    return student


def run_distill(cfg: DictConfig) -> float:
    """The whole flow (module docstring); returns the student's objective, as train returns it."""
    from docclassify.config_schema import check_config
    from docclassify.data.sources import load_source
    from docclassify.engine.resume import resolve_run_dir
    from docclassify.train import train

    check_config(cfg)
    teacher_runs(cfg)
    run_dir = resolve_run_dir(cfg)
    teacher_dir = run_dir / TEACHER_DIR
    source = load_source(cfg.data, cfg.paths.cache_dir)
    if cfg.distill.test_images:
        summary = teacher_test(cfg, teacher_dir)
    else:  # no test image: an empty test_probs.csv, the training rows' targets only
        summary = teacher_summary_only(cfg, teacher_dir)
        atomic_write_csv(pd.DataFrame(columns=["ID", *source.classes]), teacher_dir / PROBS_FILE, index=False)
    frame = teacher_train(summary, source.classes, float(cfg.distill.label_weight))
    known = frame["ID"].isin(source.train["ID"].astype(str))
    if not known.any():
        raise DistillError(f"the teacher runs' OOF rows ({', '.join(teacher_runs(cfg))}) are not training rows of "
                           f"the student's data ({source.root}); distil on the data the teacher trained on")
    atomic_write_csv(frame, teacher_dir / TRAIN_PROBS_FILE, index=False)
    log.info("distill: %d training rows with the teacher's OOF targets, %s test images, T=%g -> %s",
             int(known.sum()), summary.get("n_test", 0) if cfg.distill.test_images else "no",
             cfg.distill.temperature, run_dir)
    return train(student_config(cfg, teacher_dir))


def teacher_summary_only(cfg: DictConfig, out_dir: Path) -> dict:
    """The teacher runs with equal weights (distill.test_images=false: infer is not run)."""
    from docclassify.predict.run_dirs import discover_runs

    runs = discover_runs(teacher_runs(cfg))
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {"runs": [{"dir": str(r.path), "weight": 1.0 / len(runs)} for r in runs], "n_test": 0}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
