"""engine/loaders.Loader: its worker processes ignore SIGTERM (a signal to the whole process group
reaches them too; the main process stops the run) and close() ends them at once. The real runs
under a group-wide SIGTERM are in tests/reliability (training, a sweep) and tests/predict."""

from __future__ import annotations

import os
import signal
import time

import torch
from torch.utils.data import TensorDataset

from docclassify.engine.loaders import Loader


def test_a_worker_ignores_sigterm_keeps_serving_and_close_ends_it_at_once():
    loader = Loader(TensorDataset(torch.arange(64.0)), batch_size=8, num_workers=1, persistent_workers=True)
    assert torch.cat([b for (b,) in loader]).tolist() == list(range(64))
    (worker,) = loader._iterator._workers
    os.kill(worker.pid, signal.SIGTERM)  # what `timeout`, SLURM or docker stop send it
    time.sleep(0.5)
    assert worker.is_alive()
    assert torch.cat([b for (b,) in loader]).tolist() == list(range(64))  # no "worker is killed by signal"
    start = time.monotonic()
    loader.close()
    assert worker.exitcode == 0 and time.monotonic() - start < 4  # told to exit, not left to a join timeout
