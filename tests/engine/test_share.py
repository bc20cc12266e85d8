"""A job's share of the machine (engine/share.py): torch threads and loader workers follow the
docclassify jobs running on this host (a registry of live PIDs), torchrun's local world size and
trainer.threads; the choice is logged."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
import torch
from conftest import TINY, compose_train

from docclassify.engine import share


@pytest.fixture
def sleeper():
    """Another live process (a stand-in for a second docclassify job)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def _register(folder, proc) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{share.socket.gethostname()}-{proc.pid}.json").write_text(
        json.dumps({"pid": proc.pid, "start": share._start_time(proc.pid)}))


def _tw(s: share.Share) -> tuple[int, int]:
    return s.threads, s.workers


def test_decide_divides_the_cores_among_the_jobs(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert _tw(share.decide(None, jobs=1, cores=8)) == (8, 4)     # alone: every core, 4 workers at most
    assert _tw(share.decide(None, jobs=2, cores=8)) == (4, 3)
    assert _tw(share.decide(None, jobs=3, cores=2)) == (1, 0)     # never below one thread
    assert _tw(share.decide(3, jobs=4, cores=2)) == (3, 2)        # trainer.threads wins
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert share.decide(None, jobs=1, cores=8).threads == 2      # a user's OMP_NUM_THREADS caps auto
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert share.decide(None, jobs=2, cores=8, local_world=2).threads == 4  # torchrun's default 1 is not a cap


def test_registry_counts_live_jobs_and_drops_dead_ones(tmp_path, sleeper):
    reg = share.JobRegistry(tmp_path / "jobs")
    reg.register()
    assert reg.live() == 1
    _register(tmp_path / "jobs", sleeper)
    assert reg.live() == 2
    sleeper.kill()
    sleeper.wait()
    assert reg.live() == 1 and len(list((tmp_path / "jobs").iterdir())) == 1  # the dead entry is gone
    # a PID that now belongs to another process (another start time) is not the registered job
    (tmp_path / "jobs" / f"{reg.host}-1.json").write_text(json.dumps({"pid": 1, "start": "0"}))
    assert reg.live() == 1
    reg.unregister()
    assert reg.live() == 0


def test_a_second_job_halves_the_threads_at_the_next_refresh(tmp_path, sleeper, monkeypatch, caplog):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(share, "usable_cores", lambda: 4)
    before = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO, logger="docclassify.engine.share"):
            alone = share.start(None, tmp_path)
            assert (alone.jobs, alone.threads, torch.get_num_threads(), share.default_workers()) == (1, 4, 4, 3)
            _register(tmp_path / share.REGISTRY, sleeper)
            shared = share.refresh()
            assert (shared.jobs, shared.threads, torch.get_num_threads(), share.default_workers()) == (2, 2, 2, 1)
            monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun ranks count before they register
            assert share.refresh().threads == 1
        assert "threads: 2 torch thread(s), 1 loader worker(s) by default (auto: 4 core(s) / 2 docclassify job(s)" \
            in caplog.text
    finally:
        share.stop()
        torch.set_num_threads(before)
    assert not list((tmp_path / share.REGISTRY).glob(f"*-{share.os.getpid()}.json"))


@pytest.mark.slow
def test_trainer_threads_sets_the_runs_threads(tiny_data, tmp_path, caplog):
    from docclassify.engine.kfold import run_kfold
    from docclassify.tracking.callbacks import Callback

    seen = []

    class Threads(Callback):
        def on_epoch_end(self, fold, epoch, metrics):
            seen.append(torch.get_num_threads())

    before = torch.get_num_threads()
    cfg = compose_train(["data=competition", f"data.root={tiny_data}", *TINY, "folds.n=2", "folds.run=[0]",
                         "validation=clean", "trainer.threads=3"], tmp_path / "run")
    try:
        with caplog.at_level(logging.INFO, logger="docclassify.engine.share"):
            run_kfold(cfg, [Threads()])
    finally:
        torch.set_num_threads(before)
    assert seen == [3]
    assert "threads: 3 torch thread(s), 2 loader worker(s) by default (trainer.threads=3)" in caplog.text
    assert share._ACTIVE is None  # the run left the registry
