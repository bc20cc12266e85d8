"""The loss group (issue 17): every option reduces to cross-entropy at its neutral value, with hard
and soft targets; each changes the loss and the training when it is not neutral; per-sample
weights; a user's own class through the same protocol; each option trains a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, compose_train, run_cli
from omegaconf import OmegaConf

from docclassify.config import CONF_DIR
from docclassify.config_schema import ConfigError, check_config
from docclassify.engine.losses import (
    ClassBalancedLoss,
    CrossEntropy,
    FocalLoss,
    LogitAdjustedLoss,
    LossContext,
    build_loss,
    check_loss_config,
    class_balanced_weights,
)
from docclassify.engine.sampling import class_shares

K = 6
COUNTS = np.array([40, 20, 10, 5, 2, 0])  # imbalanced, one class the fold never trains on
OPTIONS = ("ce", "focal", "logit_adjusted", "class_balanced")


def _context(smoothing: float = 0.0, counts=COUNTS, sampler: str = "natural") -> LossContext:
    counts = np.asarray(counts)
    return LossContext(len(counts), counts, class_shares(counts, sampler), smoothing, sampler)


def _ready(loss, smoothing: float = 0.0):
    loss.setup(_context(smoothing))
    return loss


def _inputs(seed: int = 0, n: int = 32):
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(n, K, generator=g)
    hard = torch.randint(0, K, (n,), generator=g)
    soft = torch.distributions.Dirichlet(torch.ones(K)).sample((n,))  # mixup-like probability rows
    return logits, hard, soft


NEUTRAL = [lambda: FocalLoss(gamma=0.0), lambda: LogitAdjustedLoss(tau=0.0), lambda: ClassBalancedLoss(beta=0.0),
           CrossEntropy]


@pytest.mark.parametrize("make", NEUTRAL, ids=["focal_gamma0", "logit_adjusted_tau0", "class_balanced_beta0", "ce"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_neutral_values_equal_cross_entropy(make, smoothing):
    logits, hard, soft = _inputs()
    loss = _ready(make(), smoothing)
    # hard targets: torch's cross-entropy with the same label smoothing
    assert abs(float(loss(logits, hard)) - float(F.cross_entropy(logits, hard, label_smoothing=smoothing))) < 1e-6
    # soft targets (mixup/cutmix rows: smoothing already folded in, not applied again)
    assert abs(float(loss(logits, soft)) - float(F.cross_entropy(logits, soft))) < 1e-6
    # and the gradients
    z = logits.clone().requires_grad_(True)
    loss(z, soft).backward()
    z_ref = logits.clone().requires_grad_(True)
    F.cross_entropy(z_ref, soft).backward()
    torch.testing.assert_close(z.grad, z_ref.grad, atol=1e-6, rtol=1e-5)


def test_focal_down_weights_confident_rows():
    logits, hard, soft = _inputs(1)
    ce = F.cross_entropy(logits, hard, reduction="none")
    focal = _ready(FocalLoss(gamma=2.0)).per_sample(logits, F.one_hot(hard, K).float())
    p_true = F.softmax(logits, 1)[torch.arange(len(hard)), hard]
    torch.testing.assert_close(focal, (1 - p_true) ** 2 * ce)
    assert float(focal.sum()) < float(ce.sum())
    # saturated logits (p = 1 in float32) keep a finite gradient with gamma < 1
    z = torch.tensor([[60.0, 0.0, 0.0, 0.0, 0.0, 0.0]], requires_grad=True)
    _ready(FocalLoss(gamma=0.5))(z, torch.tensor([0])).backward()
    assert torch.isfinite(z.grad).all()


def test_logit_adjustment_uses_the_fold_prior():
    logits, hard, soft = _inputs(2)
    loss = _ready(LogitAdjustedLoss(tau=1.0))
    prior = np.maximum(COUNTS / COUNTS.sum(), 0.5 / COUNTS.sum())  # the empty class: half a row
    adjusted = logits + torch.log(torch.tensor(prior / prior.sum(), dtype=torch.float32))
    torch.testing.assert_close(loss(logits, hard), F.cross_entropy(adjusted, hard))
    torch.testing.assert_close(loss(logits, soft), F.cross_entropy(adjusted, soft))
    # rare classes get a larger loss for the same logits (the model must push them further)
    rare, common = torch.tensor([4]), torch.tensor([0])
    zero = torch.zeros(1, K)
    assert float(loss(zero, rare)) > float(F.cross_entropy(zero, rare)) > float(loss(zero, common))
    # under a balanced sampler the draws have a flat prior: the adjustment is constant, the loss is CE
    flat = LogitAdjustedLoss(tau=1.0)
    flat.setup(_context(counts=COUNTS[:-1], sampler="balanced"))
    torch.testing.assert_close(flat(logits[:, :-1], hard.clamp(max=K - 2)),
                               F.cross_entropy(logits[:, :-1], hard.clamp(max=K - 2)))


def test_class_balanced_weights_follow_the_effective_number():
    w = class_balanced_weights(COUNTS, 0.99)
    eff = (1 - 0.99 ** np.maximum(COUNTS, 1)) / (1 - 0.99)
    np.testing.assert_allclose(w, (1 / eff) * K / (1 / eff).sum())
    assert np.all(np.diff(w[:-1]) > 0) and w.sum() == pytest.approx(K)  # rarer classes weigh more
    np.testing.assert_allclose(class_balanced_weights(COUNTS, 0.0), np.ones(K))
    logits, hard, soft = _inputs(3)
    loss = _ready(ClassBalancedLoss(beta=0.99))
    per_row = F.cross_entropy(logits, hard, reduction="none") * torch.tensor(w, dtype=torch.float32)[hard]
    torch.testing.assert_close(loss(logits, hard), per_row.mean())
    expected_soft = -(soft * torch.tensor(w, dtype=torch.float32) * F.log_softmax(logits, 1)).sum(1).mean()
    torch.testing.assert_close(loss(logits, soft), expected_soft)


@pytest.mark.parametrize("make", [CrossEntropy, FocalLoss, LogitAdjustedLoss, ClassBalancedLoss])
def test_per_sample_weights(make):
    """The pseudo-label hook: loss(logits, targets, weight=w) = mean(w * per-sample loss)."""
    logits, hard, soft = _inputs(4)
    loss = _ready(make(), 0.1)
    for targets in (hard, soft):
        torch.testing.assert_close(loss(logits, targets, weight=torch.ones(len(hard))), loss(logits, targets))
        w = torch.rand(len(hard), generator=torch.Generator().manual_seed(0))
        rows = loss.target_rows(targets, K)
        torch.testing.assert_close(loss(logits, targets, weight=w), (w * loss.per_sample(logits, rows)).mean())
        half = torch.zeros(len(hard))
        half[:8] = 1.0  # weight 0 drops a row, without up-weighting the others
        torch.testing.assert_close(loss(logits, targets, weight=half), loss(logits[:8], targets[:8]) * 8 / len(hard))
    with pytest.raises(ValueError, match="weight of shape"):
        loss(logits, hard, weight=torch.ones(3))


def test_setup_is_required_where_the_fold_matters():
    logits, hard, _ = _inputs()
    for loss in (LogitAdjustedLoss(), ClassBalancedLoss()):
        with pytest.raises(RuntimeError, match="setup"):
            loss(logits, hard)
    with pytest.raises(ValueError, match="soft targets of shape"):
        _ready(CrossEntropy())(logits, torch.ones(len(hard), K + 1) / (K + 1))


# ----------------------------------------------------------------------------- config
def _loss_cfg(option: str, **over):
    raw = OmegaConf.load(CONF_DIR / "loss" / f"{option}.yaml")
    return OmegaConf.create({k: v for k, v in {**raw, **over}.items() if k != "defaults"})


def test_each_option_builds_its_class_and_a_user_class_takes_the_protocol():
    built = {o: build_loss(_loss_cfg(o), _context()) for o in OPTIONS}
    assert [type(b) for b in built.values()] == [CrossEntropy, FocalLoss, LogitAdjustedLoss, ClassBalancedLoss]
    logits, hard, _ = _inputs(5)
    values = {o: float(b(logits, hard)) for o, b in built.items()}
    assert len(set(values.values())) == 4, values  # each option is a different loss
    # A plain torch loss as _target_ (no setup): used as loss(logits, targets).
    plain = build_loss(OmegaConf.create({"_target_": "torch.nn.CrossEntropyLoss", "label_smoothing": 0.1}), _context())
    torch.testing.assert_close(plain(logits, hard), F.cross_entropy(logits, hard, label_smoothing=0.1))
    # A user's class with setup receives the fold's context.
    user = build_loss(OmegaConf.create({"_target_": f"{__name__}.RecordingLoss", "scale": 2.0}), _context(0.2))
    assert user.context.class_counts.tolist() == COUNTS.tolist() and user.context.label_smoothing == 0.2
    torch.testing.assert_close(user(logits, hard), 2 * F.cross_entropy(logits, hard))


class RecordingLoss(torch.nn.Module):
    """A user's loss: keeps the context it was set up with."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale, self.context = scale, None

    def setup(self, context):
        self.context = context

    def forward(self, logits, targets):
        return self.scale * F.cross_entropy(logits, targets)


def test_bad_loss_settings_stop_before_any_work(tmp_path):
    cfg = compose_train(["loss=focal", "loss.gamma=-1"], tmp_path)
    with pytest.raises(ConfigError, match=r"loss.gamma=-1.0: expected a number >= 0.0"):
        check_config(cfg)
    with pytest.raises(ConfigError, match=r"loss._target_=no.such.Loss: cannot build it \(ModuleNotFoundError"):
        check_loss_config(_loss_cfg("ce", _target_="no.such.Loss"))
    with pytest.raises(ConfigError, match="unexpected keyword argument 'gamma'"):
        check_loss_config(_loss_cfg("focal", _target_="docclassify.engine.losses.CrossEntropy"))
    assert compose_train(["loss=ce"], tmp_path).loss._target_.endswith("CrossEntropy")
    # the quick preset's (issue 29); a preset picks a group, the command line wins whole
    assert compose_train([], tmp_path).loss._target_.endswith("LogitAdjustedLoss")


# ----------------------------------------------------------------------------- training
@pytest.mark.parametrize("option", [pytest.param(o, marks=() if o == "focal" else pytest.mark.slow) for o in OPTIONS])
def test_each_option_trains_a_tiny_model(option, tiny_data, tmp_path):
    """The real fold engine (prepare_fold + fit_fold) on real images, with mixup's soft targets
    in epoch 0 and hard, label-smoothed targets from epoch 1 (mixup_off_epoch): finite losses
    that fall from epoch 1 to epoch 3 (same targets kind), validation logits for every row."""
    from docclassify.engine.fold import fit_fold, prepare_fold
    from docclassify.engine.kfold import load_run_data, start_run
    from docclassify.tracking.callbacks import Callback

    class Steps(Callback):
        def __init__(self):
            self.losses = []

        def on_step_end(self, fold, step, metrics):
            self.losses.append(metrics["train/loss"])

    cfg = compose_train(["data=competition", f"data.root={tiny_data}", *TINY, f"loss={option}", "folds.n=2",
                         "folds.run=[0]", "trainer.epochs=4", "trainer.batch_size=8", "trainer.lr=3e-3",
                         "augment.mixup_alpha=0.4", "augment.mixup_off_epoch=1", "regularization.label_smoothing=0.1",
                         "validation=clean"], tmp_path)
    steps = Steps()
    run = start_run(cfg, steps)
    data = load_run_data(run)
    job = prepare_fold(data.plans[0], run, data)
    assert type(job.parts.loss_fn).__name__ == {"ce": "CrossEntropy", "focal": "FocalLoss",
                                                "logit_adjusted": "LogitAdjustedLoss",
                                                "class_balanced": "ClassBalancedLoss"}[option]
    outcome = fit_fold(job, run)
    per_epoch = np.array(steps.losses).reshape(4, -1).mean(1)
    assert np.all(np.isfinite(per_epoch)) and per_epoch[3] < per_epoch[1], per_epoch
    assert outcome["val_logits"].shape == (len(job.val_idx), 17) and np.isfinite(outcome["val_logits"]).all()


@pytest.mark.slow
def test_loss_and_sampler_from_the_command_line(tiny_data, tmp_path):
    run_cli("docclassify.train", ["data=competition", f"data.root={tiny_data}", *TINY, "loss=focal", "loss.gamma=1.5",
                                  "data.sampler=balanced", "folds.n=2", "validation=clean",
                                  f"hydra.run.dir={tmp_path}"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["loss"] == {"_target_": "docclassify.engine.losses.FocalLoss", "gamma": 1.5}
    import pandas as pd
    from sklearn.metrics import f1_score

    oof = pd.read_csv(tmp_path / "oof.csv")  # the figure is the pooled OOF rows' macro F1, not any number
    assert results["sampler"] == "balanced"
    assert results["cv_macro_f1"] == f1_score(oof["target"], oof["pred"], average="macro")
