"""How a stopped run ends (engine/stops.py) and the per-rank RNG state of a mid-epoch stop, without
torchrun (tests/distributed/test_ddp_stops.py runs the real 2-process cases)."""

from __future__ import annotations

import logging
import random
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from docclassify.engine import distributed
from docclassify.engine.distributed import MainStopped, PeerStopped
from docclassify.engine.epoch import StopRequested
from docclassify.engine.resume import restore_rng_states, rng_state, rng_states
from docclassify.engine.signals import Interrupted, interrupts_raise
from docclassify.engine.stops import reported_stops, stop_report

RUN = Path("/runs/x")


class TrialPruned(Exception):
    """Stands for optuna.TrialPruned (matched by name and module)."""


TrialPruned.__module__ = "optuna.exceptions"


@pytest.mark.parametrize("exc,code,text", [
    (StopRequested("stop requested during epoch 3 (step 2/9)"), 143, "continue with: python -m docclassify.train "
                                                                      "resume=/runs/x"),
    (Interrupted(signal.SIGTERM), 143, "interrupted by SIGTERM outside the training loop"),
    (Interrupted(signal.SIGINT), 130, "interrupted by SIGINT"),
    (TrialPruned("pruned at fold 0 epoch 2/5"), 0, "pruned at fold 0 epoch 2/5: the sweep's pruner stopped"),
    (MainStopped("rank 0 stopped: TrialPruned: x", pruned=True), 0, None),
    (MainStopped("rank 0 stopped: ValueError: x", pruned=False), 1, None),
    (PeerStopped("rank 0 stopping: rank 1 failed with OSError: x", True), 1, "Every rank stopped"),
])
def test_each_stop_has_its_exit_code_and_message(exc, code, text):
    got_code, message = stop_report(exc, RUN)
    assert got_code == code
    assert (message is None) if text is None else (text in message)


def test_other_errors_pass_through_and_a_stop_exits_with_its_code(caplog):
    assert stop_report(ValueError("bug"), RUN) is None
    with pytest.raises(ValueError, match="bug"), reported_stops(RUN):
        raise ValueError("bug")
    caplog.set_level(logging.ERROR, logger="docclassify.train")
    with pytest.raises(SystemExit) as err, reported_stops(RUN):
        raise StopRequested("stop requested after epoch 1")
    assert err.value.code == 143 and "resume=/runs/x" in caplog.records[0].getMessage()


def test_sigterm_raises_interrupted_and_the_handler_is_restored():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as err, interrupts_raise():
        signal.raise_signal(signal.SIGTERM)
    assert err.value.exit_code == 143 and signal.getsignal(signal.SIGTERM) is before


def test_prune_on_rank_0_is_raised_there():
    def prune():
        raise TrialPruned("pruned")

    with pytest.raises(TrialPruned):
        distributed.on_main_then_shared(prune)
    calls = []
    distributed.on_main_then_shared(lambda: calls.append(1))
    assert calls == [1]


def _draw() -> tuple:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_rng_state_of_each_rank_is_restored(caplog):
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    saved = rng_states()  # one process: [its own state]
    expected = _draw()
    restore_rng_states(saved)
    assert _draw() == expected
    # Saved by 2 processes, resumed by 1: rank 0's state, with a warning.
    other = {**rng_state(), "torch": torch.manual_seed(5).get_state()}
    restore_rng_states({"rng": saved["rng"], "rng_by_rank": [saved["rng"], other]})
    assert _draw() == expected
    assert "continues with rank 0's random state" in caplog.text
