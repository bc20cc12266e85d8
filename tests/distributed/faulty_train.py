"""``python -m faulty_train ARGS``: ``python -m docclassify.train ARGS`` with a fault injected on one
rank, for the DDP tests (tests/distributed/test_ddp_stops.py). DOCCLASSIFY_TEST_FAULT=KIND:RANK:STEP,
KIND one of raise (an exception), sigterm (the signal to this rank only), kill (SIGKILL), nan (a
non-finite loss) at the STEP-th training step of that rank (1-based), pause (write the file
DOCCLASSIFY_TEST_PAUSED and wait there, mid-epoch with the DataLoader workers up, until a signal asks
the run to stop: the test sends it, see conftest.signal_group_when_paused), or setup /
setup_sigterm (an exception / SIGTERM while the data is loaded, before any training)."""

from __future__ import annotations

import os
import runpy
import signal
import time
from pathlib import Path


def _inject(kind: str, step: int) -> None:
    import docclassify.engine.epoch as epoch_mod

    if kind in ("setup", "setup_sigterm"):
        import docclassify.engine.kfold as kfold_mod

        def failing_copies(run, data):
            if kind == "setup_sigterm":
                os.kill(os.getpid(), signal.SIGTERM)
            raise RuntimeError("injected failure while loading the data")

        kfold_mod.add_robust_copies = failing_copies
        return
    real, calls = epoch_mod.forward_losses, {"n": 0}

    def forward_losses(parts, images, targets, ctx, *args, **kwargs):  # what the step loop calls
        calls["n"] += 1
        if calls["n"] == step:
            if kind == "raise":
                raise RuntimeError("injected failure on this rank")
            if kind in ("sigterm", "kill"):
                os.kill(os.getpid(), signal.SIGTERM if kind == "sigterm" else signal.SIGKILL)
            if kind == "pause":
                Path(os.environ["DOCCLASSIFY_TEST_PAUSED"]).write_text(str(os.getpid()))
                deadline = time.monotonic() + 120
                while not getattr(ctx.stop_flag, "requested", False) and time.monotonic() < deadline:
                    time.sleep(0.01)
        loss, head_loss = real(parts, images, targets, ctx, *args, **kwargs)
        return (loss * float("nan") if kind == "nan" and calls["n"] == step else loss), head_loss

    epoch_mod.forward_losses = forward_losses


fault = os.environ.get("DOCCLASSIFY_TEST_FAULT")
if fault:
    kind, rank, step = fault.split(":")
    if int(os.environ.get("RANK", "0")) == int(rank):
        _inject(kind, int(step))
runpy.run_module("docclassify.train", run_name="__main__", alter_sys=True)
