"""DDP stops: any rank's stop (prune, failure, SIGTERM, non-finite loss, a killed rank) ends every
rank promptly with one message; a mid-epoch resume restores every rank's RNG state, so a stopped
and resumed 2-process run equals an uninterrupted one.

Real `torchrun --standalone --nproc_per_node=2` (gloo on CPU); faults are injected on one rank by
tests/distributed/faulty_train.py (DOCCLASSIFY_TEST_FAULT=KIND:RANK:STEP). The subprocess timeout
is the hang guard: without these stops a rank waits for the gloo timeout (30 minutes)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, run_cli

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                       reason="torch.distributed with gloo is not available in this torch build"),
]

HERE = Path(__file__).resolve().parent
ARGS = ["model=tiny", "model.pretrained=false", "data.img_size=32", "trainer.batch_size=8", "data.num_workers=0",
        "logger=none", "folds.n=2", "folds.run=[0]", "trainer.deterministic=true", "shift.report=false"]


def torchrun(data: Path, run_dir: Path, *extra: str, fault: str | None = None,
             timeout: int = 300) -> subprocess.CompletedProcess:
    """2 ranks of docclassify.train (through faulty_train); returns the finished process (any exit code).
    The launcher is forked from this process (run_cli); its ranks are new interpreters, as torchrun starts them."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("DOCCLASSIFY_TEST_FAULT", None)
    if fault:
        env["DOCCLASSIFY_TEST_FAULT"] = fault
    return run_cli("torch.distributed.run", ["--standalone", "--nproc_per_node=2", "-m", "faulty_train",
                                             "data=competition", f"data.root={data}", *ARGS, *extra,
                                             f"hydra.run.dir={run_dir}"],
                   cwd=run_dir.parent, env=env, timeout=timeout, check=False)


def _output(proc) -> str:
    return proc.stdout + proc.stderr


def _worker_exit_codes(proc) -> list[int]:
    """torchrun's summary of failed workers ("exitcode  : N"); empty when every worker exited 0."""
    return [int(line.split(":")[1].split()[0]) for line in _output(proc).splitlines()
            if line.strip().startswith("exitcode")]


def test_failure_on_one_rank_stops_both_with_one_message(tiny_data, tmp_path):
    proc = torchrun(tiny_data, tmp_path / "run", "trainer.epochs=3", fault="raise:1:2")
    out = _output(proc)
    assert proc.returncode != 0
    message = "rank 0 stopping: rank 1 failed with RuntimeError: injected failure on this rank. Every rank stopped"
    assert out.count(message) == 1, out[-6000:]
    assert out.count("Traceback (most recent call last)") <= 2  # rank 1's own error, torchrun's summary
    assert message in (tmp_path / "run" / "train.log").read_text()
    assert sorted(_worker_exit_codes(proc)) == [1, 1]  # both ranks ended (none killed by the hang guard)


def test_failure_while_loading_the_data_stops_the_waiting_rank(tiny_data, tmp_path):
    proc = torchrun(tiny_data, tmp_path / "run", fault="setup:1:0")
    out = _output(proc)
    assert out.count("rank 1 failed with RuntimeError: injected failure while loading the data") == 1, out[-6000:]
    assert not list((tmp_path / "run").rglob("fold0*"))


def test_killed_rank_is_reported_by_the_other(tiny_data, tmp_path):
    proc = torchrun(tiny_data, tmp_path / "run", "trainer.epochs=3", fault="kill:1:2")
    out = _output(proc)
    assert out.count("rank 0 stopping: another rank exited without a message (killed by a signal") == 1, out[-6000:]
    assert -9 in _worker_exit_codes(proc) and 1 in _worker_exit_codes(proc)


def test_nonfinite_loss_on_one_rank_stops_both_once(tiny_data, tmp_path):
    proc = torchrun(tiny_data, tmp_path / "run", "trainer.epochs=3", fault="nan:1:2")
    out = _output(proc)
    message = "NonFiniteLossError: non-finite loss on another DDP rank (this rank's: "  # rank 0 reports rank 1's
    assert out.count("NonFiniteLossError:") == 1 and message in out, out[-6000:]
    assert "at epoch 0, step 1 of 3" in out
    assert sorted(_worker_exit_codes(proc)) == [1, 1]


def test_pruned_trial_exits_on_every_rank(tiny_data, tmp_path):
    import optuna

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="ddp_prune", storage=storage, direction="maximize")
    trial = study.ask()
    proc = torchrun(tiny_data, tmp_path / "run", "trainer.epochs=3", "++hparams_search.trial.study=ddp_prune",
                    f"++hparams_search.trial.number={trial.number}", f"++hparams_search.trial.storage='{storage}'",
                    "++hparams_search.pruner._target_=optuna.pruners.ThresholdPruner",
                    "++hparams_search.pruner.lower=2.0")  # every macro F1 is below 2: pruned at the first report
    out = _output(proc)
    assert proc.returncode == 0, out[-6000:]
    assert out.count("the sweep's pruner stopped this trial") == 1 and "Traceback" not in out
    record = json.loads((tmp_path / "run" / "sweep_trial.json").read_text())
    assert record["state"] == "pruned" and record["step"] == 0
    assert not (tmp_path / "run" / "results.json").exists()
    assert len(optuna.load_study(study_name="ddp_prune", storage=storage).trials[0].intermediate_values) == 1


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from docclassify.models.checkpoint import load_best_weights, load_resume_state

    best = load_best_weights(run_dir / "checkpoints" / "fold0_best.safetensors")
    last = load_resume_state(run_dir / "checkpoints" / "fold0_last.pt")["model"]
    return {**{f"best.{k}": v for k, v in best.items()}, **{f"last.{k}": v for k, v in last.items()}}


def test_sigterm_on_one_rank_then_resume_equals_an_uninterrupted_run(tiny_data, tmp_path):
    """Mixup and dropout draw from each rank's own generators in the main process: the resumed
    epoch matches only if every rank gets its own RNG state back."""
    args = ["trainer.epochs=2", "augment.mixup_alpha=0.4", "regularization.drop_rate=0.3"]
    whole = tmp_path / "whole"
    assert torchrun(tiny_data, whole, *args).returncode == 0

    stopped = tmp_path / "stopped"
    proc = torchrun(tiny_data, stopped, *args, fault="sigterm:1:2")  # rank 1 only, 2nd step of epoch 0
    out = _output(proc)
    assert proc.returncode != 0 and sorted(_worker_exit_codes(proc)) == [143, 143], out[-6000:]
    assert out.count("stop requested during epoch 0 (step 2/3)") == 1
    assert f"resume={stopped}" in (stopped / "train.log").read_text()
    from docclassify.models.checkpoint import load_resume_state

    partial = load_resume_state(stopped / "checkpoints" / "fold0_last.pt")["state"]["partial"]
    assert partial["step"] == 2 and len(partial["rng_by_rank"]) == 2
    assert not torch.equal(partial["rng_by_rank"][0]["torch"], partial["rng_by_rank"][1]["torch"])

    assert torchrun(tiny_data, stopped, *args).returncode == 0  # the same command again: resumes
    assert (stopped / "oof.csv").read_text() == (whole / "oof.csv").read_text()
    a, b = _weights(whole), _weights(stopped)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    np.testing.assert_array_equal(np.load(whole / "oof_logits.npy"), np.load(stopped / "oof_logits.npy"))
