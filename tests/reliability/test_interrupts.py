"""SIGTERM outside the training loop (while the data is read and decoded): the run stops at once
with one line and exit code 143, writes no fold state, and the same command again trains. SIGTERM to
a sweep's whole process group mid-trial: one line, exit 143, the trial recorded as failed with its
parameters queued, and the same sweep command continues with them."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import optuna
import pytest
from conftest import REPO, TINY, run_cli, signal_group_when_paused, start_cli
from optuna.trial import TrialState

pytestmark = pytest.mark.slow  # the rerun trains


def _fault_env(fault: str | None, **extra: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "distributed"), str(REPO),
                                                        os.environ.get("PYTHONPATH", "")]), **extra}
    env.pop("DOCCLASSIFY_TEST_FAULT", None)
    if fault:
        env["DOCCLASSIFY_TEST_FAULT"] = fault
    return env


def _train(data: Path, run_dir: Path, fault: str | None) -> subprocess.CompletedProcess:
    return run_cli("faulty_train", ["data=competition", f"data.root={data}", *TINY, "folds.n=2", "folds.run=[0]",
                                    "shift.report=true",  # its files are written before the signal: none half-written
                                    f"hydra.run.dir={run_dir}"], env=_fault_env(fault), check=False)


def test_sigterm_while_loading_stops_at_once_with_one_line(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    proc = _train(tiny_data, run_dir, "setup_sigterm:0:0")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 143, out[-4000:]
    assert out.count("interrupted by SIGTERM outside the training loop; every finished fold is kept") == 1
    assert "Traceback" not in out and "injected failure" not in out  # the signal, not the later error
    assert not list(run_dir.rglob("fold0*")) and not list(run_dir.rglob("*.tmp"))
    assert _train(tiny_data, run_dir, None).returncode == 0
    assert (run_dir / "results.json").is_file()


def test_group_sigterm_mid_trial_stops_the_sweep_in_one_line_and_the_same_command_continues(tiny_data, tmp_path):
    """`-m hparams_search=optuna_single_fold` with 2 DataLoader workers: SIGTERM to the process group at
    trial 0's step 2 of 4."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    args = ["-m", "hparams_search=optuna_single_fold", "data=competition", f"data.root={tiny_data}",
            *[a for a in TINY if not a.startswith("data.num_workers")], "data.num_workers=2", "folds.n=3",
            f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=s", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    paused, log = tmp_path / "paused", tmp_path / "sweep.out"
    proc = start_cli("faulty_train", [*args, "hydra.sweeper.n_trials=2"], log=log, new_session=True,
                     env=_fault_env("pause:0:2", DOCCLASSIFY_TEST_PAUSED=str(paused)))
    signal_group_when_paused(proc, paused, signal.SIGTERM)
    proc.wait(timeout=300)
    out = log.read_text()
    assert proc.returncode == 143, out[-4000:]
    assert "Traceback" not in out and "DataLoader worker" not in out, out[-4000:]
    assert out.count("stop requested during epoch 0 (step 2/4): the sweep stops here (this trial recorded as failed, "
                     "its parameters queued to run first); run the same sweep command again") == 1, out[-4000:]
    stopped, queued = optuna.load_study(study_name="s", storage=storage).trials
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["docclassify:interrupted"] == "SIGTERM"
    assert queued.state == TrialState.WAITING

    run_cli("docclassify.train", [*args, "hydra.sweeper.n_trials=1"])  # the same sweep command
    trials = optuna.load_study(study_name="s", storage=storage).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].params == stopped.params and (tmp_path / "sweep" / "1" / "results.json").is_file()
