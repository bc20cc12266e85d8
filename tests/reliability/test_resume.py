"""Resume after SIGKILL / SIGTERM, and determinism: on CPU with trainer.deterministic=true an
interrupted-and-resumed run ends bit-identical to an uninterrupted one with the same seed.

The runs use everything that carries state across steps (EMA with warmup, warmup+cosine
schedule, mixup, drop-path, a persistent DataLoader worker), so a piece of state that is not
saved or restored shows up as a difference in the OOF logits.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    REPO,
    TINY,
    SignalAt,
    compose_train,
    run_cli,
    signal_group_when_paused,
    start_cli,
)
from safetensors.torch import load_file

from docclassify.engine.epoch import StopRequested
from docclassify.engine.kfold import run_kfold

pytestmark = pytest.mark.slow  # every test trains, interrupts and resumes runs

EPOCHS = 4
TIMING_KEYS = {"seconds", "epoch_s", "img_per_s", "run_dir"}


def overrides(data: Path, cache: Path, seed: int = 11) -> list[str]:
    return [
        "data=competition", f"data.root={data}", f"paths.cache_dir={cache}", "model=tiny", "model.pretrained=false",
        "data.img_size=32", "trainer.batch_size=16", "data.num_workers=1", "logger=none", "folds.n=2",
        f"seed={seed}", "trainer.deterministic=true", f"trainer.epochs={EPOCHS}", "regularization=strong",
        "augment.mixup_alpha=0.4", "schedule=warmup_cosine", "schedule.warmup_epochs=1",
        "shift.report=false",  # as conftest.TINY: the resumed state is what these runs compare
    ]


def start_train(args: list[str], log: Path, fault: dict | None = None):
    """`python -m docclassify.train ARGS` in its own process group (forked from this process:
    conftest.start_cli); with ``fault`` (faulty_train's DOCCLASSIFY_TEST_* variables) through
    tests/distributed/faulty_train.py."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", **(fault or {})}
    module = "docclassify.train"
    if fault:
        module, env["PYTHONPATH"] = "faulty_train", os.pathsep.join(
            [str(REPO / "tests" / "distributed"), str(REPO), os.environ.get("PYTHONPATH", "")])
    return start_cli(module, args, env=env, log=log, new_session=True)


def saved_state(path: Path) -> dict | None:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)["state"]
    except (FileNotFoundError, EOFError, RuntimeError):
        return None


def wait_for_epoch(path: Path, epoch: int, proc, log: Path, timeout: float = 180) -> dict:
    """Poll until the last-state checkpoint at ``path`` has finished ``epoch`` epochs."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = saved_state(path)
        if state is not None and state["epoch"] >= epoch:
            return state
        if proc.poll() is not None:
            raise AssertionError(f"training exited ({proc.returncode}) before epoch {epoch}:\n"
                                 f"{log.read_text()[-3000:]}")
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"no checkpoint with epoch >= {epoch} after {timeout}s")


def strip_timing(obj):
    if isinstance(obj, dict):
        return {k: strip_timing(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [strip_timing(v) for v in obj]
    return obj


def assert_same_run(ref: Path, other: Path) -> None:
    """Bit-identical predictions, metrics, history and best weights (timings aside)."""
    assert (ref / "oof.csv").read_bytes() == (other / "oof.csv").read_bytes()
    np.testing.assert_array_equal(np.load(ref / "oof_logits.npy"), np.load(other / "oof_logits.npy"))
    # the robust view (validation=both by default): its OOF copies and best epochs resume exactly too
    assert (ref / "oof_robust.csv").read_bytes() == (other / "oof_robust.csv").read_bytes()
    a, b = (strip_timing(json.loads((d / "results.json").read_text())) for d in (ref, other))
    assert a == b
    for k in (0, 1):
        wa, wb = (load_file(d / f"checkpoints/fold{k}_best.safetensors") for d in (ref, other))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[n], wb[n]) for n in wa)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def reference(tiny_data, cache, tmp_path_factory) -> Path:
    """The uninterrupted run (a real `python -m docclassify.train`)."""
    run_dir = tmp_path_factory.mktemp("reference")
    run_cli("docclassify.train", [*overrides(tiny_data, cache), f"hydra.run.dir={run_dir}"])
    results = json.loads((run_dir / "results.json").read_text())
    assert [f["epochs_run"] for f in results["folds"]] == [EPOCHS, EPOCHS]
    return run_dir


def test_sigkill_mid_fold_then_resume_run_dir_matches_uninterrupted(reference, tiny_data, cache, tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "train.log"
    proc = start_train([*overrides(tiny_data, cache), f"hydra.run.dir={run_dir}"], log)
    state = wait_for_epoch(run_dir / "checkpoints" / "fold0_last.pt", 1, proc, log)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (run_dir / "results.json").exists() and not (run_dir / "folds" / "fold0.json").exists()
    assert 1 <= state["epoch"] < EPOCHS  # killed inside fold 0

    # `resume=RUN_DIR` alone: the run's own overrides are re-composed.
    proc = run_cli("docclassify.train", [f"resume={run_dir}", f"hydra.run.dir={tmp_path / 'resume'}"])
    out = proc.stdout + proc.stderr
    assert "fold 0: resuming from epoch" in out and "continuing with its original overrides" in out
    assert_same_run(reference, run_dir)


def test_group_sigterm_mid_epoch_saves_state_says_one_line_and_resumes_exactly(reference, tiny_data, cache, tmp_path):
    """SIGTERM to the whole process group (timeout, SLURM, docker stop), the DataLoader worker
    included, at update 5 (epoch 1, step 2 of 3): the step ends, the state is saved, one line."""
    run_dir, log, paused = tmp_path / "run", tmp_path / "train.log", tmp_path / "paused"
    args = [*overrides(tiny_data, cache), f"hydra.run.dir={run_dir}"]
    proc = start_train(args, log, {"DOCCLASSIFY_TEST_FAULT": "pause:0:5", "DOCCLASSIFY_TEST_PAUSED": str(paused)})
    signal_group_when_paused(proc, paused)
    assert proc.wait(timeout=120) == 143, log.read_text()[-4000:]
    text = log.read_text()
    assert "Traceback" not in text and "DataLoader worker" not in text, text[-4000:]
    assert text.count("received SIGTERM: stopping after the current step") == 1
    assert text.count(f"stop requested during epoch 1 (step 2/3). The last-state checkpoint is saved; continue with: "
                      f"python -m docclassify.train resume={run_dir}") == 1
    state = saved_state(run_dir / "checkpoints" / "fold0_last.pt")
    assert (state["epoch"], state["updates"], state["partial"]["step"]) == (1, 5, 2)
    assert not (run_dir / "results.json").exists()

    # Same command again in the same dir continues (here in-process: cheaper than a new interpreter).
    run_kfold(compose_train([*overrides(tiny_data, cache)], run_dir))
    assert_same_run(reference, run_dir)


def test_stop_mid_epoch_saves_that_step_and_resumes_exactly(reference, tiny_data, cache, tmp_path):
    # 51 training images, batch 16 -> 3 updates per epoch; update 5 is epoch 1, step 2 of 3.
    cfg = compose_train(overrides(tiny_data, cache), tmp_path)
    with pytest.raises(StopRequested, match=r"epoch 1 \(step 2/3\)"):
        run_kfold(cfg, [SignalAt(fold=0, update=5)])
    state = saved_state(tmp_path / "checkpoints" / "fold0_last.pt")
    assert state["epoch"] == 1 and state["updates"] == 5 and state["partial"]["step"] == 2
    assert len(state["history"]) == 1
    run_kfold(compose_train(overrides(tiny_data, cache), tmp_path))
    assert_same_run(reference, tmp_path)


def test_finished_fold_is_kept_and_later_folds_match(reference, tiny_data, cache, tmp_path):
    """A run that stopped between folds: fold 0 is not retrained, fold 1 is what it would have been."""
    run_kfold(compose_train([*overrides(tiny_data, cache), "folds.run=[0]"], tmp_path))
    fold0 = (tmp_path / "folds" / "fold0.json").read_bytes()
    results = run_kfold(compose_train(overrides(tiny_data, cache), tmp_path))
    assert (tmp_path / "folds" / "fold0.json").read_bytes() == fold0 and results["folds_run"] == [0, 1]
    assert_same_run(reference, tmp_path)


def test_same_seed_identical_and_other_seed_differs(reference, tiny_data, cache, tmp_path):
    run_kfold(compose_train(overrides(tiny_data, cache), tmp_path / "same"))
    assert (tmp_path / "same" / "oof.csv").read_bytes() == (reference / "oof.csv").read_bytes()
    run_kfold(compose_train(overrides(tiny_data, cache, seed=12), tmp_path / "other"))
    assert not np.allclose(np.load(tmp_path / "other" / "oof_logits.npy"), np.load(reference / "oof_logits.npy"))


def test_resume_with_more_epochs_follows_the_longer_schedule(tiny_data, tmp_path):
    base = ["data=competition", f"data.root={tiny_data}", *TINY, "folds.n=2", "folds.run=[0]"]
    run_kfold(compose_train([*base, "trainer.epochs=2"], tmp_path))
    results = run_kfold(compose_train([*base, "trainer.epochs=4"], tmp_path))
    history = results["folds"][0]["history"]
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]
    # Cosine over 2 epochs ends at min_lr (1e-6); re-planned over 4, epoch 2 is still well above it.
    assert history[1]["lr"] < 1e-5 and history[2]["lr"] > 1e-4 and history[3]["lr"] < history[2]["lr"]


def test_resume_refuses_another_validation_or_monitor_but_accepts_a_run_dir_from_before_it(tmp_path):
    """Finished folds keep the best epoch their monitor picked and the robust rows their copies made:
    resuming them under another validation / trainer.monitor would pool incomparable folds."""
    from omegaconf import OmegaConf

    from docclassify.engine.resume import check_resume_compatible

    base = {"data": {"name": "x"}, "model": {}, "ensemble": {}, "seed": 1, "folds": {"n": 2},
            "trainer": {"monitor": "auto"}}
    both = {**base, "validation": {"name": "both", "copies": 2}}
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    check_resume_compatible(run_dir, OmegaConf.create(both))  # writes run_config.yaml
    check_resume_compatible(run_dir, OmegaConf.create(both))
    for other in ({**both, "validation": {"name": "clean"}}, {**both, "trainer": {"monitor": "clean"}}):
        with pytest.raises(Exception, match=r"different config \(\['validation'\]\)"):
            check_resume_compatible(run_dir, OmegaConf.create(other))
    old = tmp_path / "old"  # a run dir written before the validation group existed
    old.mkdir()
    check_resume_compatible(old, OmegaConf.create(base))
    check_resume_compatible(old, OmegaConf.create(both))
