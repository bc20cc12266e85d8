"""Each training technique changes what the trainer does (issue 3).

Unit tests drive the real engine functions (train_one_epoch, build_optimizer, build_scheduler,
build_mixup, TrainTransform) with tiny models and random tensors; two tiny training runs go
through run_kfold end to end with spies on the fit loop's collaborators.
"""

from __future__ import annotations

import json
import math
import os
from typing import ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, compose_train
from omegaconf import OmegaConf
from timm.layers import DropPath
from torch import nn
from torch.utils.data import DataLoader, Dataset

from docclassify.config import CONF_DIR, load_option
from docclassify.data.augment import (
    TrainTransform,
    build_advanced,
    build_basic,
    seed_transforms,
)
from docclassify.engine import epoch as epoch_mod
from docclassify.engine import evaluate, fold, parts
from docclassify.engine.epoch import EpochProgress, FoldParts, StepContext, train_one_epoch
from docclassify.engine.evaluate import predict_logits
from docclassify.engine.losses import CrossEntropy, LossContext
from docclassify.engine.mixup import build_mixup, mixup_active
from docclassify.engine.optim import build_optimizer, build_scheduler, effective_warmup
from docclassify.engine.setup import amp_settings, channels_last_setting
from docclassify.models.checkpoint import load_checkpoint
from docclassify.models.factory import create_model
from docclassify.utils.schedule import linear_ramp

CPU = torch.device("cpu")


# ----------------------------------------------------------------------------- helpers
def _option(group: str, option: str, **over):
    return OmegaConf.merge(load_option(group, option), over)


def _trainer(**over):
    return OmegaConf.merge(OmegaConf.load(CONF_DIR / "trainer" / "default.yaml"), over)


def _ctx(amp: str = "none", **kw) -> StepContext:
    return StepContext(device=CPU, mean=torch.zeros(1, 3, 1, 1), std=torch.ones(1, 3, 1, 1),
                       amp=amp_settings(amp, CPU), **kw)


def _train_epoch(model, loader, opt, sched, loss, ctx, *, epoch, updates_done, mixup=None, scaler=None,
                 on_step=None) -> dict:
    """One epoch of the real step loop over ``model`` (no DDP/compile wrapper)."""
    ctx.on_step = on_step
    return train_one_epoch(FoldParts(model, model, opt, sched, loss, mixup=mixup, scaler=scaler), loader, ctx,
                           epoch=epoch, start=EpochProgress(updates=updates_done))


def _opt(model, trainer, reg):
    return build_optimizer(model, trainer.optimizer, trainer.lr, reg.weight_decay, reg.layer_decay)


def _batches(n: int, bs: int, classes: int = 5, size: int = 16, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, 256, (bs, 3, size, size), generator=g, dtype=torch.uint8),
             torch.randint(0, classes, (bs,), generator=g)) for _ in range(n)]


def _small_net(classes: int = 5, seed: int = 0) -> nn.Module:
    """No batch norm, no dropout: a batch's gradient is the mean of its samples' gradients."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, classes))


def build_train_loss(classes: int, label_smoothing: float) -> CrossEntropy:
    """loss=ce as a fold sets it up (label smoothing for hard targets; soft targets as given)."""
    loss = CrossEntropy()
    counts = np.ones(classes, dtype=np.int64)
    loss.setup(LossContext(classes, counts, counts / classes, label_smoothing))
    return loss


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


class _RecordingLoss:
    def __init__(self, loss):
        self.loss, self.targets = loss, []

    def __call__(self, logits, y):
        self.targets.append(y.detach().clone())
        return self.loss(logits, y)


# ----------------------------------------------------------------------------- mixup / label smoothing
def test_mixup_targets_are_soft_when_on_and_hard_when_off():
    classes, ls = 8, 0.1
    aug = _option("augment", "basic", mixup_alpha=0.8, cutmix_alpha=1.0, mixup_off_epoch=2)
    mixup = build_mixup(aug, classes, label_smoothing=ls)
    loss = _RecordingLoss(build_train_loss(classes, ls))
    model = _small_net(classes)
    inputs = []
    model.register_forward_pre_hook(lambda m, a: inputs.append(a[0].detach().clone()))
    g = torch.Generator().manual_seed(1)
    # Distinct labels per row, so a mixed pair always mixes two classes.
    batches = [(torch.randint(0, 256, (8, 3, 16, 16), generator=g, dtype=torch.uint8), torch.randperm(8, generator=g))
               for _ in range(3)]
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    hard_row_max = 1 - ls + ls / classes
    for epoch in range(4):
        mixup.mixup_enabled = mixup_active(aug, epoch)
        loss.targets.clear()
        inputs.clear()
        _train_epoch(model, batches, opt, None, loss, _ctx(), epoch=epoch, updates_done=0, mixup=mixup)
        for (images, labels), y, x in zip(batches, loss.targets, inputs, strict=True):
            assert y.shape == (8, classes)
            torch.testing.assert_close(y.sum(1), torch.ones(8))
            if epoch < 2:  # mixed: the two largest entries of every row are both above the smoothing floor
                top2 = y.topk(2, dim=1).values
                assert (top2[:, 1] > ls / classes + 1e-3).any() and (top2[:, 0] < hard_row_max - 1e-4).any()
            else:  # off from mixup_off_epoch: smoothed one-hot of the true label, images untouched
                expected = torch.full((8, classes), ls / classes).scatter_(1, labels[:, None], hard_row_max)
                torch.testing.assert_close(y, expected)
                torch.testing.assert_close(x, images.float() / 255)
    assert [mixup_active(aug, e) for e in range(4)] == [True, True, False, False]

    # No mixup at all: integer class targets and cross entropy with label smoothing.
    off = _option("augment", "basic")
    assert build_mixup(off, classes, ls) is None
    plain = _RecordingLoss(build_train_loss(classes, ls))
    logits, y = torch.randn(8, classes), torch.randint(0, classes, (8,))
    torch.testing.assert_close(plain.loss(logits, y), F.cross_entropy(logits, y, label_smoothing=ls))
    _train_epoch(model, batches, opt, None, plain, _ctx(), epoch=0, updates_done=0, mixup=None)
    for (_, labels), y in zip(batches, plain.targets, strict=True):
        assert y.dtype == torch.int64 and torch.equal(y, labels)


def test_label_smoothing_changes_the_loss():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(6, 5, generator=g), torch.randint(0, 5, (6,), generator=g)
    plain = build_train_loss(5, 0.0)(logits, y)
    smooth = build_train_loss(5, 0.1)(logits, y)
    logp = F.log_softmax(logits, 1)
    expected = 0.9 * F.nll_loss(logp, y) + 0.1 * (-logp.mean(1)).mean()
    assert not torch.isclose(plain, smooth) and torch.isclose(smooth, expected)

    # Through the trainer: same weights and data, a different loss and different updates.
    batches = _batches(2, 8)
    stats, weights = [], []
    for ls in (0.0, 0.1):
        model = _small_net()
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        stats.append(_train_epoch(model, batches, opt, None, build_train_loss(5, ls), _ctx(), epoch=0,
                                     updates_done=0))
        weights.append(_flat(model))
    assert stats[0]["train_loss"] != pytest.approx(stats[1]["train_loss"], rel=1e-3)
    assert not torch.allclose(weights[0], weights[1])


# ----------------------------------------------------------------------------- lr schedule
def test_lr_follows_warmup_then_cosine_and_ends_at_min_lr():
    base, warmup_lr, min_lr, epochs, upe = 1e-2, 1e-5, 1e-4, 6, 5
    sched_cfg = _option("schedule", "warmup_cosine", warmup_epochs=2, warmup_lr=warmup_lr, min_lr=min_lr)
    model = _small_net()
    opt = _opt(model, _trainer(lr=base), _option("regularization", "none"))
    sched = build_scheduler(opt, sched_cfg, epochs, upe)
    W, T = 2 * upe, epochs * upe

    def closed_form(u: int) -> float:
        if u < W:
            return warmup_lr + u * (base - warmup_lr) / W
        return min_lr + 0.5 * (base - min_lr) * (1 + math.cos(math.pi * (u - W) / (T - W)))

    assert opt.param_groups[0]["lr"] == pytest.approx(warmup_lr)  # update 0
    seen = {}
    updates = 0
    for epoch in range(epochs):  # stepped by the training loop, once per optimiser update
        out = _train_epoch(model, _batches(upe, 4, seed=epoch), opt, sched, nn.CrossEntropyLoss(), _ctx(),
                              epoch=epoch, updates_done=updates,
                              on_step=lambda i, m: seen.__setitem__(m["step"], m["train/lr"]))
        updates = out["updates"]
    assert sorted(seen) == list(range(1, T + 1))
    for u in (1, 5, W - 1, W, W + 3, 17, 23, T - 1, T):
        assert seen[u] == pytest.approx(closed_form(u), rel=1e-9, abs=1e-12), u
    assert max(seen.values()) == pytest.approx(base) and seen[W] == pytest.approx(base)
    assert seen[T] == pytest.approx(min_lr)
    assert all(seen[u] < seen[u + 1] for u in range(1, W)) and all(seen[u] > seen[u + 1] for u in range(W, T))

    # Warmup as long as the run is clipped: one epoch of decay is left.
    assert effective_warmup(10, 5) == 4 and effective_warmup(10, 100) == 10
    opt = _opt(_small_net(), _trainer(lr=base), _option("regularization", "none"))
    sched = build_scheduler(opt, _option("schedule", "warmup_cosine"), 5, 3)
    sched.step_update(num_updates=4 * 3)
    assert opt.param_groups[0]["lr"] == pytest.approx(base)


def test_constant_schedule_holds_the_lr_after_warmup():
    base = 1e-3
    opt = _opt(_small_net(), _trainer(lr=base), _option("regularization", "none"))
    sched = build_scheduler(opt, _option("schedule", "constant", warmup_epochs=1, warmup_lr=0.0), 4, 3)
    lrs = []
    for u in range(13):
        sched.step_update(num_updates=u)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[:3] == pytest.approx([0.0, base / 3, 2 * base / 3]) and lrs[3:] == pytest.approx([base] * 10)
    with pytest.raises(ValueError, match="schedule.name"):
        build_scheduler(opt, _option("schedule", "cosine", name="cosin"), 4, 3)


# ----------------------------------------------------------------------------- optimiser
def test_weight_decay_skips_norms_and_biases():
    lr, wd = 0.1, 0.05
    model = create_model("test_convnext", 5)
    opt = _opt(model, _trainer(lr=lr), _option("regularization", "none", weight_decay=wd))
    decay_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    no_decay = {n for n, p in named.items() if p.ndim <= 1}  # norm weights/biases, biases, layer scales
    assert any(".norm" in n for n in no_decay) and any(n.endswith(".bias") for n in no_decay)
    assert {n for n, p in named.items() if decay_of[id(p)] == 0.0} == no_decay
    assert {decay_of[id(p)] for n, p in named.items() if n not in no_decay} == {wd}

    # What the optimiser does with it: a step with zero gradients only applies the decay.
    before = {n: p.detach().clone() for n, p in named.items()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in named.items():
        factor = 1.0 if n in no_decay else 1 - lr * wd
        torch.testing.assert_close(p.detach(), before[n] * factor, rtol=1e-6, atol=1e-8)


def test_layer_decay_gives_each_depth_its_own_lr():
    base = 1e-3
    model = create_model("test_convnext", 5)
    reg = _option("regularization", "none", weight_decay=0.05, layer_decay=0.75)
    opt = _opt(model, _trainer(lr=base), reg)
    build_scheduler(opt, _option("schedule", "cosine"), 4, 3)  # timm applies each group's lr_scale
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    scales = sorted({round(lr / base, 10) for lr in lr_of.values()})
    assert len(scales) >= 4 and scales[-1] == pytest.approx(1.0)
    powers = [math.log(s) / math.log(0.75) for s in scales]
    assert all(abs(k - round(k)) < 1e-6 for k in powers)  # 0.75 ** depth
    assert lr_of[id(model.head.fc.weight)] == pytest.approx(base)  # the head learns at the full lr
    assert lr_of[id(model.stem[0].weight)] == pytest.approx(base * scales[0])  # the stem the least

    flat = _opt(model, _trainer(lr=base), _option("regularization", "none"))
    build_scheduler(flat, _option("schedule", "cosine"), 4, 3)
    assert {g["lr"] for g in flat.param_groups} == {base}


def test_drop_rates_reach_the_model():
    model = create_model("test_resnet", 5, drop_rate=0.2, drop_path_rate=0.1)
    probs = [m.drop_prob for m in model.modules() if isinstance(m, DropPath)]
    assert probs and max(probs) == pytest.approx(0.1) and model.drop_rate == 0.2
    plain = create_model("test_resnet", 5)
    assert not [m for m in plain.modules() if isinstance(m, DropPath) and m.drop_prob > 0]
    # Stochastic in training, not in evaluation (BN uses the same batch statistics in both passes).
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(0)
    assert not torch.allclose(model.train()(x), model(x))
    assert torch.allclose(plain.train()(x), plain(x))
    assert torch.allclose(model.eval()(x), model(x))


# ----------------------------------------------------------------------------- clipping / accumulation
def test_grad_clip_bounds_the_update():
    clip = 1e-3
    batches = _batches(1, 8)
    deltas, stats = [], []
    for grad_clip in (clip, None):
        model = _small_net()
        before = _flat(model)
        opt = torch.optim.SGD(model.parameters(), lr=1.0)  # update = -gradient
        stats.append(_train_epoch(model, batches, opt, None, nn.CrossEntropyLoss(), _ctx(grad_clip=grad_clip),
                                     epoch=0, updates_done=0))
        deltas.append(float((_flat(model) - before).norm()))
    clipped, free = deltas
    assert stats[0]["max_grad_norm"] > clip  # the pre-clip norm: clipping had work to do
    assert clipped <= clip * (1 + 1e-5) and clipped == pytest.approx(clip, rel=1e-4)
    assert free == pytest.approx(stats[0]["max_grad_norm"], rel=1e-4) and stats[1]["max_grad_norm"] is None


def test_accumulation_equals_one_large_batch():
    (images, labels), = _batches(1, 16, seed=3)
    small = [(images[i:i + 4], labels[i:i + 4]) for i in range(0, 16, 4)]
    results = {}
    for name, loader, accum in (("accum4", small, 4), ("big", [(images, labels)], 1), ("no_accum", small, 1)):
        model = _small_net(seed=1)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        out = _train_epoch(model, loader, opt, None, nn.CrossEntropyLoss(), _ctx(accum_steps=accum), epoch=0,
                              updates_done=0)
        results[name] = (_flat(model), out["updates"])
    assert results["accum4"][1] == 1 and results["big"][1] == 1 and results["no_accum"][1] == 4
    torch.testing.assert_close(results["accum4"][0], results["big"][0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(results["no_accum"][0], results["big"][0], atol=1e-4)


# ----------------------------------------------------------------------------- mixed precision
def test_amp_settings(monkeypatch):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": False, "amx_bf16": False})
    assert amp_settings("none", CPU).enabled is False
    assert amp_settings("auto", CPU).enabled is False  # a CPU without bf16 instructions: fp32
    auto_cuda = amp_settings("auto", torch.device("cuda"))
    assert (auto_cuda.dtype, auto_cuda.use_scaler) == (torch.float16, True)
    bf16 = amp_settings("bf16", CPU)
    assert (bf16.enabled, bf16.dtype, bf16.use_scaler) == (True, torch.bfloat16, False)
    fp16 = amp_settings("fp16", CPU)
    assert (fp16.enabled, fp16.dtype, fp16.use_scaler) == (True, torch.float16, True)
    with pytest.raises(ValueError, match="trainer.amp"):
        amp_settings("fp8", CPU)


@pytest.mark.parametrize("caps, expected", [
    ({"avx512_bf16": True, "amx_bf16": False, "avx512_bw": True}, "bf16"),   # Zen 4, Cooper Lake
    ({"avx512_bf16": False, "amx_bf16": True, "avx512_bw": True}, "bf16"),   # Sapphire Rapids (AMX)
    ({"avx512_bf16": False, "amx_bf16": False, "avx512_bw": True}, "none"),  # AVX-512 without bf16: emulated
    ({"avx2": True}, "none"),
])
def test_amp_auto_is_bf16_on_a_cpu_with_bf16_instructions(monkeypatch, caps, expected):
    """trainer.amp=auto on CPU follows the CPU's bf16 instructions (torch.cpu.get_capabilities);
    explicit values do not look at them."""
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    auto = amp_settings("auto", CPU)
    assert auto.name == expected and auto.enabled == (expected == "bf16") and not auto.use_scaler
    assert auto.dtype == (torch.bfloat16 if expected == "bf16" else None)
    assert amp_settings("none", CPU).name == "none" and amp_settings("bf16", CPU).name == "bf16"
    assert amp_settings("auto", torch.device("cuda")).name == "fp16"


def test_amp_auto_without_a_capability_probe_is_fp32(monkeypatch):
    def broken():
        raise RuntimeError("cpuinfo failed")

    monkeypatch.setattr(torch.cpu, "get_capabilities", broken)
    assert amp_settings("auto", CPU).name == "none"


@pytest.mark.slow
def test_amp_auto_trains_in_bf16_on_a_bf16_cpu_and_says_so(tiny_data, tmp_path, monkeypatch, caplog):
    """A real tiny run with trainer.amp=auto where the CPU reports bf16 instructions: the steps and
    the validation run under bf16 autocast, the log and results.json say amp bf16."""
    from docclassify.engine.kfold import run_kfold

    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True})
    seen = set()
    real_autocast = epoch_mod.autocast

    def autocast_spy(ctx):
        seen.add(ctx.amp.name)
        return real_autocast(ctx)

    monkeypatch.setattr(epoch_mod, "autocast", autocast_spy)
    monkeypatch.setattr(evaluate, "autocast", autocast_spy)
    cfg = compose_train(["data=competition", f"data.root={tiny_data}", *TINY, "folds.n=2", "folds.run=[0]",
                         "trainer.amp=auto", "validation=clean"], tmp_path / "run")
    with caplog.at_level("INFO"):
        results = run_kfold(cfg)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert seen == {"bf16"} and results["amp"] == saved["amp"] == "bf16"
    assert results["channels_last"] is saved["channels_last"] is True  # trainer.channels_last=null follows bf16
    assert "AMP bf16, channels-last" in caplog.text


def test_channels_last_auto_follows_bf16_on_cpu():
    """trainer.channels_last=null: on with bf16 autocast on CPU only; true / false win."""
    bf16, fp32, fp16 = amp_settings("bf16", CPU), amp_settings("none", CPU), amp_settings("fp16", CPU)
    assert channels_last_setting(None, bf16, CPU) is True
    assert channels_last_setting(None, fp32, CPU) is False
    assert channels_last_setting(None, fp16, CPU) is False
    assert channels_last_setting(None, amp_settings("bf16", CPU), torch.device("cuda")) is False
    assert channels_last_setting(False, bf16, CPU) is False and channels_last_setting(True, fp32, CPU) is True


def test_bf16_autocast_trains_on_cpu():
    model = create_model("test_resnet", 5)
    dtypes = []
    model.conv1.register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
    before = _flat(model)
    opt = _opt(model, _trainer(lr=1e-3), _option("regularization", "none"))
    ctx = _ctx("bf16")
    out = _train_epoch(model, _batches(2, 4, size=32), opt, None, nn.CrossEntropyLoss(), ctx, epoch=0,
                          updates_done=0)
    assert dtypes == [torch.bfloat16, torch.bfloat16] and math.isfinite(out["train_loss"])
    assert not torch.allclose(_flat(model), before)
    assert next(model.parameters()).dtype == torch.float32  # master weights stay fp32
    logits = predict_logits(model, _batches(1, 4, size=32), ctx)
    assert logits.dtype == np.float32 and np.isfinite(logits).all() and dtypes[-1] == torch.bfloat16


class _CountingScaler(torch.amp.GradScaler):
    instances: ClassVar[list] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = {"scale": 0, "unscale_": 0, "step": 0, "update": 0}
        self.device_arg = args[0] if args else kwargs.get("device")
        _CountingScaler.instances.append(self)

    def scale(self, outputs):
        self.calls["scale"] += 1
        return super().scale(outputs)

    def unscale_(self, optimizer):
        self.calls["unscale_"] += 1
        return super().unscale_(optimizer)

    def step(self, optimizer, *args, **kwargs):
        self.calls["step"] += 1
        return super().step(optimizer, *args, **kwargs)

    def update(self, new_scale=None):
        self.calls["update"] += 1
        return super().update(new_scale)


def test_fp16_steps_through_the_grad_scaler():
    model = create_model("test_resnet", 5)
    dtypes = []
    model.conv1.register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
    before = _flat(model)
    opt = _opt(model, _trainer(lr=1e-3), _option("regularization", "none"))
    scaler = _CountingScaler("cpu", init_scale=2.0**8)
    out = _train_epoch(model, _batches(4, 4, size=32), opt, None, nn.CrossEntropyLoss(),
                          _ctx("fp16", accum_steps=2, grad_clip=1.0), epoch=0, updates_done=0, scaler=scaler)
    assert set(dtypes) == {torch.float16} and out["updates"] == 2
    assert scaler.calls == {"scale": 4, "unscale_": 2, "step": 2, "update": 2}
    # Clipping saw unscaled gradients (a scaled norm would be ~256x larger).
    assert out["max_grad_norm"] is not None and out["max_grad_norm"] < 1e3
    assert not torch.allclose(_flat(model), before)


# ----------------------------------------------------------------------------- augmentation
class _Probe(Dataset):
    """What a DataLoader worker sees: its epoch, the scheduled p_advanced, and whether it drew the
    advanced transforms."""

    def __init__(self, transform: TrainTransform, n: int):
        self.transform, self.n = transform, n
        self.image = np.zeros((16, 16, 3), dtype=np.uint8)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        _, hard = self.transform(self.image, i)
        return torch.tensor([self.transform.epoch, self.transform.p_advanced(), float(hard), os.getpid()],
                            dtype=torch.float64)


def test_advanced_augmentation_probability_in_persistent_workers():
    epochs = 3
    aug = _option("augment", "basic", advanced_p_start=0.0, advanced_p_end=1.0)
    transform = TrainTransform(aug, 16, epochs, seed=0)
    loader = DataLoader(_Probe(transform, 24), batch_size=4, num_workers=2, persistent_workers=True)
    pids = []
    for epoch in range(epochs):
        transform.set_epoch(epoch)  # no new DataLoader: the workers read the shared epoch
        rows = torch.cat(list(loader))
        assert (rows[:, 0] == epoch).all()
        expected = linear_ramp(epoch, epochs, 0.0, 1.0)
        assert rows[:, 1].tolist() == pytest.approx([expected] * 24)
        share = float(rows[:, 2].mean())
        assert share == {0: 0.0, 1: pytest.approx(0.5, abs=0.3), 2: 1.0}[epoch]
        pids.append(set(rows[:, 3].long().tolist()))
    assert os.getpid() not in pids[0] and pids[0] == pids[1] == pids[2]  # the same worker processes
    assert [linear_ramp(e, 5, 0.0, 0.5) for e in range(5)] == pytest.approx([0, 0.125, 0.25, 0.375, 0.5])


def _dihedral_index(out: np.ndarray, image: np.ndarray) -> int:
    """Which of the 8 turns/flips of `image` the augmented `out` matches best."""
    def z(a):
        a = a.astype(np.float32).mean(2)
        return (a - a.mean()) / (a.std() + 1e-6)

    views = [np.rot90(image[:, ::-1] if flip else image, k) for flip in (False, True) for k in range(4)]
    return int(np.argmax([(z(v) * z(out)).mean() for v in views]))


def test_advanced_turns_and_flips_basic_never_does():
    size = 64
    cells = np.random.default_rng(0).integers(0, 2, (6, 6)) * 255  # a pattern unlike any of its turns
    image = np.repeat(np.repeat(cells, 11, 0), 11, 1)[:size, :size].astype(np.uint8)[..., None].repeat(3, 2)
    found = {}
    for name in ("basic", "advanced"):
        transform = TrainTransform(_option("augment", name), size, 1, seed=0, pad_value=255)
        found[name] = np.bincount([_dihedral_index(transform(image, i)[0], image) for i in range(64)], minlength=8)
    assert found["basic"][0] == 64  # never turned or mirrored
    adv = found["advanced"]
    assert adv[1:4].sum() >= 8 and adv[4:].sum() >= 8 and (adv > 0).sum() >= 6, adv  # turns and mirror images

    def names(pipeline) -> set[str]:
        return {type(t).__name__ for t in pipeline.transforms}

    basic_cfg = _option("augment", "basic")
    assert not names(build_basic(basic_cfg, size)) & {"HorizontalFlip", "VerticalFlip", "RandomRotate90"}
    assert "HorizontalFlip" in names(build_basic(_option("augment", "basic", hflip=True), size))
    hard = build_advanced(_option("augment", "advanced"), size)
    assert {"RandomRotate90", "HorizontalFlip", "VerticalFlip"} <= names(hard)


def test_seeded_transforms_draw_independently():
    """Two p=0.5 flips must not always fire together (albumentations' set_random_seed seeds
    every transform alike; seed_transforms does not)."""
    import albumentations as A

    pipeline = A.Compose([A.HorizontalFlip(p=0.5), A.HorizontalFlip(p=0.5)])
    image = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    changed = []
    for seed in range(100):
        seed_transforms(pipeline, seed)
        changed.append(not np.array_equal(pipeline(image=image)["image"], image))
    assert 0.3 < np.mean(changed) < 0.7
    seed_transforms(pipeline, 5)
    first = pipeline(image=image)["image"]
    seed_transforms(pipeline, 5)
    assert np.array_equal(first, pipeline(image=image)["image"])  # reproducible per seed


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def highperf_run(tiny_data, tmp_path_factory):
    """pipeline=highperf, tiny: 2 epochs, mixup off from epoch 1, bf16 autocast, with spies."""
    from docclassify.engine.kfold import run_kfold

    run_dir = tmp_path_factory.mktemp("highperf")
    obs = {"evaluated": [], "saved": [], "targets": [], "autocast": set(), "epoch": None}
    real_ema, real_save, real_predict = parts.ModelEmaV3, fold.save_best, fold.predict_logits
    real_loss, real_epoch, real_autocast = parts.build_train_loss, fold.train_one_epoch, epoch_mod.autocast

    def ema_spy(model, **kw):
        obs["live"], obs["ema"] = model, real_ema(model, **kw)
        return obs["ema"]

    def predict_spy(model, *a, **kw):
        obs["evaluated"].append(model)
        return real_predict(model, *a, **kw)

    def save_spy(path, state_dict, meta, **extra):
        def clone(sd):
            return {k: v.detach().cpu().clone() for k, v in sd.items()}

        obs["saved"].append({"passed": clone(state_dict), "ema": clone(obs["ema"].module.state_dict()),
                             "live": clone(obs["live"].state_dict()), **extra})
        return real_save(path, state_dict, meta, **extra)

    def loss_spy(*a, **kw):
        loss = real_loss(*a, **kw)

        def recorded(logits, y):
            obs["targets"].append((obs["epoch"], y.detach().clone()))
            return loss(logits, y)
        return recorded

    def epoch_spy(*a, **kw):
        obs["epoch"] = kw["epoch"]
        return real_epoch(*a, **kw)

    def autocast_spy(ctx):
        obs["autocast"].add(ctx.amp.name)
        return real_autocast(ctx)

    cfg = compose_train(["data=competition", f"data.root={tiny_data}", *TINY, "pipeline=highperf",
                         "trainer.epochs=2", "trainer.batch_size=16", "folds.n=2", "folds.run=[0]",
                         "augment.mixup_off_epoch=1", "trainer.amp=bf16", "seed=5"], run_dir)
    with pytest.MonkeyPatch.context() as mp:
        for module, name, spy in ((parts, "ModelEmaV3", ema_spy), (fold, "predict_logits", predict_spy),
                                  (fold, "save_best", save_spy), (parts, "build_train_loss", loss_spy),
                                  (fold, "train_one_epoch", epoch_spy)):
            mp.setattr(module, name, spy)
        mp.setattr(epoch_mod, "autocast", autocast_spy)
        run_kfold(cfg)
    obs["results"] = json.loads((run_dir / "results.json").read_text())
    obs["run_dir"] = run_dir
    return obs


@pytest.mark.slow
def test_ema_weights_are_evaluated_and_saved(highperf_run):
    obs = highperf_run
    fold = obs["results"]["folds"][0]
    assert fold["weights"] == "ema" and obs["results"]["pipeline"] == "highperf"
    ema = obs["ema"]
    assert obs["evaluated"] and all(m is ema.module for m in obs["evaluated"])  # validation ran on the EMA
    live, avg = _flat(obs["live"]), _flat(ema.module)
    assert not torch.allclose(live, avg)  # a real average, not a copy of the live weights
    assert obs["saved"]
    for save in obs["saved"]:
        assert save["weights"] == "ema"
        for k, v in save["passed"].items():
            assert torch.equal(v, save["ema"][k]), k
        assert any(not torch.equal(v, save["live"][k]) for k, v in save["passed"].items() if v.is_floating_point())
    _, best = load_checkpoint(obs["run_dir"] / fold["checkpoint"])
    assert best["weights"] == "ema" and best["epoch"] == fold["best_epoch"] == obs["saved"][-1]["epoch"]
    for k, v in best["state_dict"].items():
        assert torch.equal(v, obs["saved"][-1]["ema"][k]), k
    # The OOF predictions are the EMA weights' predictions.
    assert np.load(obs["run_dir"] / "oof_logits.npy").shape == (fold["n_val"], 17)


@pytest.mark.slow
def test_highperf_run_applies_its_schedules(highperf_run):
    obs = highperf_run
    history = obs["results"]["folds"][0]["history"]
    assert [h["mixup"] for h in history] == [True, False]  # augment.mixup_off_epoch=1
    assert [h["p_advanced"] for h in history] == pytest.approx([0.0, 0.5])  # advanced share ramps 0 -> 0.5
    assert all(h["max_grad_norm"] is not None for h in history)  # trainer.grad_clip=1.0 is on
    assert obs["autocast"] == {"bf16"}
    ls, classes = 0.1, 17
    by_epoch = {e: [y for ep, y in obs["targets"] if ep == e] for e in (0, 1)}
    assert by_epoch[0] and by_epoch[1]
    for y in by_epoch[0]:
        assert y.shape[1] == classes and (y.topk(2, 1).values[:, 1] > ls / classes + 1e-3).any()
    for y in by_epoch[1]:
        assert torch.allclose(y.max(1).values, torch.full((len(y),), 1 - ls + ls / classes))
    drop_probs = [m.drop_prob for m in obs["ema"].module.modules() if isinstance(m, DropPath)]
    assert max(drop_probs) == pytest.approx(0.1)  # regularization.drop_path_rate reached the model
    assert obs["results"]["augment"] == "highperf"  # the preset selects augment=highperf


@pytest.mark.slow
def test_early_stopping_stops_and_fp16_uses_the_scaler(tiny_data, tmp_path, monkeypatch):
    """lr 0 on a model without batch norm: validation F1 never improves after epoch 0, so
    patience 1 ends the fold after 2 of 4 epochs. fp16 autocast on CPU steps through a GradScaler."""
    from docclassify.engine.kfold import run_kfold

    _CountingScaler.instances.clear()
    monkeypatch.setattr(torch.amp, "GradScaler", _CountingScaler)
    cfg = compose_train(["data=competition", f"data.root={tiny_data}", *TINY, "model=tiny_convnext",
                         "trainer.epochs=4", "trainer.lr=0.0", "schedule.min_lr=0.0",
                         "trainer.early_stopping_patience=1", "trainer.amp=fp16", "folds.n=2", "folds.run=[0]"],
                        tmp_path)
    run_kfold(cfg)
    fold = json.loads((tmp_path / "results.json").read_text())["folds"][0]
    assert fold["early_stopped"] is True and fold["epochs_run"] == 2 and len(fold["history"]) == 2  # of 4
    assert fold["best_epoch"] == 0
    (scaler,) = _CountingScaler.instances
    updates = 2 * (51 // 16)  # 51 training rows of fold 0, full batches of 16
    assert scaler.device_arg == "cpu" and scaler.calls["step"] == scaler.calls["update"] == updates
