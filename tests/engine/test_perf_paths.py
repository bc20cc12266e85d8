"""Speed paths must not change results: channels_last and torch.compile train the same model
as the plain path, and the loader settings follow the config."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, TINY, compose_train

from docclassify.engine import epoch
from docclassify.engine.kfold import run_kfold
from docclassify.models.checkpoint import load_checkpoint

BASE = [*TINY, "folds.n=3", "folds.run=[0]", "trainer.deterministic=true", "seed=3"]


def _train(tiny_data, tmp_path, name: str, extra: list[str]) -> dict:
    cfg = compose_train(["data=competition", f"data.root={tiny_data}", *BASE, *extra], tmp_path / name)
    return run_kfold(cfg)


def _val_logits(tmp_path, name: str) -> np.ndarray:
    return np.load(tmp_path / name / "oof_logits.npy")


@pytest.mark.slow
def test_channels_last_trains_like_contiguous(tiny_data, tmp_path, monkeypatch):
    seen: list[bool] = []
    real = epoch.to_model_input

    def spy(images, ctx):
        x = real(images, ctx)
        seen.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        return x

    monkeypatch.setattr(epoch, "to_model_input", spy)
    plain = _train(tiny_data, tmp_path, "plain", ["model=tiny_convnext", "trainer.channels_last=false"])
    assert seen and not any(seen)
    seen.clear()
    cl = _train(tiny_data, tmp_path, "cl", ["model=tiny_convnext", "trainer.channels_last=true"])
    assert seen and all(seen)  # every batch (train and validation) went in as NHWC

    loss_plain = plain["folds"][0]["history"][0]["train_loss"]
    loss_cl = cl["folds"][0]["history"][0]["train_loss"]
    assert np.isfinite(loss_plain) and loss_cl == pytest.approx(loss_plain, rel=1e-4, abs=1e-5)
    np.testing.assert_allclose(_val_logits(tmp_path, "cl"), _val_logits(tmp_path, "plain"), rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_compile_wraps_the_model_and_trains_the_same(tiny_data, tmp_path, monkeypatch):
    """trainer.compile=true goes through torch.compile (TorchDynamo traces the real model).
    Inductor's C++ code generation takes minutes on 2 CPU cores, so the test compiles with
    the eager backend: the graph capture and the wrapping are real, only codegen is skipped."""
    compiled: list[torch.nn.Module] = []
    real_compile = torch.compile

    def eager_compile(model, *args, **kwargs):
        compiled.append(model)
        return real_compile(model, backend="eager")

    monkeypatch.setattr(torch, "compile", eager_compile)
    plain = _train(tiny_data, tmp_path, "plain", ["trainer.compile=false"])
    assert compiled == []
    torch._dynamo.reset()
    comp = _train(tiny_data, tmp_path, "comp", ["trainer.compile=true"])
    assert len(compiled) == 1 and compiled[0].__class__.__name__ == "ResNet"
    assert comp["folds"][0]["history"][0]["train_loss"] == pytest.approx(
        plain["folds"][0]["history"][0]["train_loss"], rel=1e-4, abs=1e-5)
    np.testing.assert_allclose(_val_logits(tmp_path, "comp"), _val_logits(tmp_path, "plain"), rtol=1e-3, atol=1e-4)
    torch._dynamo.reset()
    # The best checkpoint holds the plain module's weights (no "_orig_mod." prefix): it loads as is.
    model, ckpt = load_checkpoint(tmp_path / "comp" / comp["folds"][0]["checkpoint"])
    assert ckpt["meta"]["timm_name"] == "test_resnet" and sum(p.numel() for p in model.parameters()) > 0


def _loaders(tiny_data, tmp_path, images, workers: int):
    from docclassify.data.augment import TrainTransform
    from docclassify.engine.loaders import build_loaders

    cfg = compose_train(["data=competition", f"data.root={tiny_data}", *TINY, f"data.num_workers={workers}"],
                        tmp_path / "cfg")
    transform = TrainTransform(cfg.augment, 32, 1, 0, 0)
    idx = np.arange(len(images))
    return build_loaders(images, idx[:40], idx[40:], idx % 17, transform, cfg.trainer, cfg.data.num_workers, 0,
                         torch.device("cpu"))


def test_cpu_validation_from_cache_runs_in_process(tiny_data, tmp_path):
    """data.num_workers applies to training; validation from the cache needs no worker on CPU,
    validation that decodes (data.cache=false) keeps them. Both yield the same batches."""
    from docclassify.data.cache import LazyImages, cached_images

    paths = sorted((tiny_data / "train").glob("*.jpg"))[:60]
    cached, _ = cached_images(paths, 32, "pad", 0, tmp_path / "c")
    lazy = LazyImages(paths, 32, "pad", 0)
    train_c, val_c, _ = _loaders(tiny_data, tmp_path, cached, workers=1)
    train_l, val_l, _ = _loaders(tiny_data, tmp_path, lazy, workers=1)
    assert train_c.num_workers == 1 and train_c.persistent_workers and val_c.num_workers == 0
    assert train_l.num_workers == 1 and val_l.num_workers == 1 and val_l.persistent_workers
    for (xc, yc), (xl, yl) in zip(val_c, val_l, strict=True):
        assert torch.equal(xc, xl) and torch.equal(yc, yl)


_FRAGMENTED_HEAP = r"""
import json
from docclassify.engine.loaders import release_freed_memory

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

base = rss_mb()
blocks = [bytearray(4096) for _ in range(50_000)]  # ~200 MB through malloc (not pymalloc)
keep = blocks[::64]  # a few live blocks pin the heap: glibc cannot shrink it from the top
del blocks
before = rss_mb()
release_freed_memory()
print(json.dumps({"base": base, "before": before, "after": rss_mb()}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")
def test_release_freed_memory_returns_the_heap_to_the_os():
    out = subprocess.run([sys.executable, "-c", _FRAGMENTED_HEAP], capture_output=True, text=True, check=True,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    freed_but_kept = r["before"] - r["base"]
    assert freed_but_kept > 100, r  # glibc kept the freed blocks: the situation the call is for
    assert r["before"] - r["after"] > 0.7 * freed_but_kept, r
