"""The debug group (debug=fast | overfit | profile) and the trainer keys behind it:
limit_train_batches, limit_val_batches, overfit_batches, profiler, enable_reports."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY, compose_train
from omegaconf import OmegaConf

from docclassify.config import load_option
from docclassify.config_schema import AugmentConfig
from docclassify.data.augment import TrainTransform
from docclassify.engine.loaders import build_loaders, debug_rows
from docclassify.engine.resume import ResumableSampler
from docclassify.tracking.callbacks import Callback


def _trainer(**over):
    base = {"batch_size": 4, "eval_batch_size": None, "limit_train_batches": None, "limit_val_batches": None,
            "overfit_batches": 0}
    return OmegaConf.create({**base, **over})


# ----------------------------------------------------------------------------- rows and loaders
def test_debug_rows():
    train, val = np.arange(0, 40), np.arange(40, 60)
    same = debug_rows(train, val, _trainer(), seed=0)
    assert np.array_equal(same[0], train) and np.array_equal(same[1], val)

    t, v = debug_rows(train, val, _trainer(overfit_batches=2), seed=0)
    assert np.array_equal(t, v) and len(t) == 8 and set(t) <= set(train) and np.all(np.diff(t) > 0)
    assert not np.array_equal(t, debug_rows(train, val, _trainer(overfit_batches=2), seed=1)[0])  # a seeded draw

    t, v = debug_rows(train, val, _trainer(limit_val_batches=1), seed=0)
    assert np.array_equal(t, train) and len(v) == 8 and set(v) <= set(val)  # eval batch = 2 x batch_size
    assert len(debug_rows(train, val, _trainer(limit_val_batches=1, eval_batch_size=3), seed=0)[1]) == 3
    assert len(debug_rows(train, val, _trainer(limit_val_batches=9), seed=0)[1]) == 20  # at most all rows


def test_limited_sampler_cuts_each_epoch_and_still_skips():
    data = list(range(20))
    full, cut = ResumableSampler(data, num_replicas=1, rank=0, seed=3), ResumableSampler(
        data, num_replicas=1, rank=0, seed=3, limit=8)
    for epoch in (0, 1):
        full.set_epoch(epoch)
        cut.set_epoch(epoch)
        assert list(cut) == list(full)[:8] and len(cut) == 8
    cut.skip(4)  # a resumed epoch continues within the shorter epoch
    assert list(cut) == list(full)[4:8] and len(cut) == 4


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, (30, 16, 16, 3), dtype=np.uint8)


def _loaders(images, trainer):
    """build_loaders over 20 training rows (30 images), with augment=advanced's transforms."""
    option = load_option("augment", "advanced")
    aug = OmegaConf.merge(OmegaConf.structured(AugmentConfig), {k: v for k, v in option.items() if k != "defaults"})
    idx = np.arange(30)
    return build_loaders(images, idx[:20], idx[20:], idx % 3, TrainTransform(aug, 16, epochs=2, seed=0), trainer, 0, 0,
                         torch.device("cpu"))


def test_limit_train_batches_shortens_every_epoch(images):
    train, _, sampler = _loaders(images, _trainer(limit_train_batches=2))
    assert len(train) == 2 and sum(len(y) for _, y in train) == 8
    assert len(_loaders(images, _trainer())[0]) == 5


def test_overfit_batches_train_unaugmented_in_a_fixed_order(images):
    train, _, sampler = _loaders(images, _trainer(overfit_batches=2))
    assert train.dataset.transform is None
    epochs = []
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        epochs.append([x.numpy() for x, _ in train])
    assert all(np.array_equal(a, b) for a, b in zip(*epochs, strict=True))  # same batches every epoch
    # ... the raw images of the rows, in order (prepare_fold passes debug_rows' rows to build_loaders).
    assert np.array_equal(np.concatenate(epochs[0]), images[:20].transpose(0, 3, 1, 2))


def test_enable_reports_decides_the_local_reports(tiny_data, tmp_path):
    from docclassify.tracking import build_trackers

    def kinds(*over):
        cfg = compose_train(["data=competition", f"data.root={tiny_data}", *TINY, *over], tmp_path)
        return [type(t).__name__ for t in build_trackers(cfg, tmp_path)]

    assert kinds() == ["Progress", "LocalReports"]
    assert kinds("trainer.enable_reports=false") == ["Progress"]
    assert kinds("debug=fast") == ["Progress"]


# ----------------------------------------------------------------------------- the debug options
def test_debug_options_win_over_presets_and_lose_to_the_command_line(tmp_path):
    cfg = compose_train(["experiment=convnext_base_384_best", "logger=wandb", "debug=fast"], tmp_path)
    assert (cfg.debug, cfg.task_name, cfg.trainer.epochs, list(cfg.folds.run)) == ("fast", "debug", 1, [0])
    assert cfg.trainer.limit_train_batches == 3 and cfg.trainer.enable_reports is False
    assert cfg.logger.name == "wandb"  # a group named on the command line still wins
    assert compose_train(["experiment=convnext_base_384_best", "debug=fast"], tmp_path).logger.name == "none"
    assert compose_train(["debug=fast", "trainer.epochs=2"], tmp_path).trainer.epochs == 2
    over = compose_train(["pipeline=highperf", "debug=overfit"], tmp_path)
    assert over.trainer.overfit_batches == 2 and over.augment.mixup_alpha == 0 and over.augment.cutmix_alpha == 0
    assert compose_train(["debug=profile"], tmp_path).trainer.profiler == "pytorch"
    plain = compose_train([], tmp_path)
    assert plain.debug is None and plain.trainer.profiler is None and plain.trainer.overfit_batches == 0


class _Spy(Callback):
    def __init__(self):
        self.fold_info, self.steps = {}, 0

    def on_fold_start(self, fold, info):
        self.fold_info = info

    def on_step_end(self, fold, step, metrics):
        self.steps += 1


def _run(tiny_data, tmp_path, *over):
    """A training run in process, with the callbacks the CLI builds (train.build_callbacks)."""
    from docclassify.engine.kfold import run_kfold
    from docclassify.train import build_callbacks

    # TINY's shift.report=false left out: the debug options set the shift report themselves (debug=fast: off)
    tiny = [a for a in TINY if a != "shift.report=false"]
    cfg = compose_train(["data=competition", f"data.root={tiny_data}", *tiny, *over], tmp_path)
    spy = _Spy()
    return run_kfold(cfg, [*build_callbacks(cfg), spy]), spy


@pytest.mark.slow
def test_debug_fast_runs_one_fold_of_a_few_batches_without_reports(tiny_data, tmp_path):
    results, spy = _run(tiny_data, tmp_path, "debug=fast", "folds.n=2", "trainer.batch_size=8", "trainer.epochs=3")
    assert spy.fold_info["steps_per_epoch"] == 3 and spy.steps == 9  # 3 epochs (command line) x 3 batches
    fold = results["folds"][0]
    assert results["folds_run"] == [0] and fold["epochs_run"] == 3
    assert fold["n_val"] == results["n_oof_rows"] == 2 * 16  # 2 evaluation batches of 2 x 8
    assert (results["debug"], results["augment"], results["ensemble"]) == ("fast", "basic", "none")
    assert json.loads((tmp_path / "results.json").read_text())["ensemble"] == "none"
    assert not [p.name for p in tmp_path.iterdir() if p.suffix in (".png", ".md") or p.name == "per_class.csv"]


@pytest.mark.slow
def test_debug_overfit_memorises_its_batches(tiny_data, tmp_path):
    results, spy = _run(tiny_data, tmp_path, "debug=overfit", "trainer.batch_size=16", "trainer.epochs=20",
                        "pipeline=highperf", "regularization=none", "schedule=cosine", "trainer.lr=2e-3")
    fold = results["folds"][0]
    assert fold["n_train"] == fold["n_val"] == 32 and spy.fold_info["steps_per_epoch"] == 2
    saved = json.loads((tmp_path / "folds" / "fold0.json").read_text())
    assert saved["val_index"] == sorted(saved["val_index"]) and len(set(saved["val_index"])) == 32
    history = fold["history"]
    losses, f1 = [h["train_loss"] for h in history], [h["val_macro_f1"] for h in history]
    assert losses[-1] < 0.25 * losses[0], losses  # measured: 2.73 -> 0.25
    assert f1[-1] > f1[0] + 0.5 and max(f1) > 0.9, f1  # measured: 0.01 -> 1.0
    assert not any(h["mixup"] for h in history)  # highperf's mixup is off under debug=overfit


@pytest.mark.slow
def test_debug_profile_writes_the_op_table_of_one_epoch(tiny_data, tmp_path):
    results, spy = _run(tiny_data, tmp_path, "debug=profile", "trainer.batch_size=8",
                        "trainer.limit_train_batches=4")
    assert spy.steps == 4 and results["folds"][0]["epochs_run"] == 1
    table = (tmp_path / "profile.txt").read_text()
    assert "fold 0, epoch 0" in table and "Self CPU" in table
    assert "aten::convolution" in table and "convolution_backward" in table  # the model's real ops
    assert (tmp_path / "profile_trace.json").stat().st_size > 1000
    # Only the first profiled epoch is kept: a longer resumed run does not profile again.
    before = (tmp_path / "profile.txt").stat().st_mtime_ns
    _run(tiny_data, tmp_path, "debug=profile", "trainer.batch_size=8", "trainer.limit_train_batches=4",
         "trainer.epochs=2")
    assert (tmp_path / "profile.txt").stat().st_mtime_ns == before
