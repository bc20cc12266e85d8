"""How a training run that stops early ends: one message (rank 0), the right exit code, every rank.

    StopRequested   SIGTERM/Ctrl-C in the training loop: state saved, exit 143 (130 for Ctrl-C)
    Interrupted     SIGTERM/Ctrl-C before training or while results are written: exit 143/130
    TrialPruned     the sweep's pruner stopped the trial (outside a multirun): exit 0
    PeerStopped     another torchrun rank failed or was killed: exit 1, naming it and its error
    MainStopped     (ranks other than 0) rank 0 stopped at a shared point, e.g. a prune: rank 0's code

Under torchrun only rank 0 reports; the other ranks exit with the same code and say nothing
(a rank's own unexpected error prints its traceback, since rank 0 shows only its first line, and
that rank exits at once so the others stop now). Anything else propagates to the entrypoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

from docclassify.engine import distributed
from docclassify.engine.distributed import MainStopped, PeerStopped
from docclassify.engine.epoch import NonFiniteLossError, StopRequested
from docclassify.engine.signals import Interrupted

log = logging.getLogger("docclassify.train")


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _user_error(exc: BaseException) -> bool:
    """An error the user can fix (its one-line message is the whole report)."""
    from docclassify.data.sources import DataError

    return isinstance(exc, DataError) or any(c.__name__ in ("UserError", "ConfigError") for c in type(exc).__mro__)


def stop_report(exc: BaseException, run_dir: Path) -> tuple[int, str | None] | None:
    """(exit code, rank 0's message) of a stop reported in one line; None for other exceptions."""
    if isinstance(exc, (StopRequested, Interrupted)) and _in_multirun():
        code = 143 if isinstance(exc, StopRequested) else exc.exit_code
        where = exc if isinstance(exc, StopRequested) else f"interrupted by {exc}"
        return code, (f"{where}: the sweep stops here (this trial recorded as failed, its parameters queued to run "
                      "first); run the same sweep command again to continue the study")
    if isinstance(exc, StopRequested):
        return 143, (f"{exc}. The last-state checkpoint is saved; continue with: "
                     f"python -m docclassify.train resume={run_dir}")
    if isinstance(exc, Interrupted):
        return exc.exit_code, (f"interrupted by {exc} outside the training loop; every finished fold is kept: "
                               f"run the same command again (or resume={run_dir}) to continue")
    if isinstance(exc, MainStopped):
        return (0 if exc.pruned else 1), None
    if distributed.is_prune(exc) and not _in_multirun():
        return 0, f"{str(exc) or 'trial pruned'}: the sweep's pruner stopped this trial (see sweep_trial.json)"
    if isinstance(exc, PeerStopped):
        return 1, f"{exc}. Every rank stopped; the run dir keeps what finished: {run_dir}"
    return None


def _leave_follower(exc: BaseException, report: tuple[int, str | None] | None) -> None:
    """A rank other than 0 ends: quietly with rank 0's exit code when rank 0 reports the stop; on its
    own failure (announced to rank 0, which names it) at once, which closes its connections so the
    other ranks stop now instead of when this process has torn itself down."""
    if report is not None:
        if isinstance(exc, PeerStopped) and not exc.announced:  # rank 0 may be the one gone: say it here
            log.error("%s", report[1])
        raise SystemExit(report[0]) from None
    if isinstance(exc, NonFiniteLossError):  # every rank raised it at the same step; rank 0 reports it
        raise SystemExit(1) from None
    user = _user_error(exc)
    if not user:  # an unexpected error: its traceback is only here
        traceback.print_exception(exc)
    _exit_now(2 if user else 1)


@contextlib.contextmanager
def reported_stops(run_dir: Path) -> Iterator[None]:
    """Around a training run: the stops above end the process with their code and one message."""
    try:
        with distributed.stops_together():
            yield
    except BaseException as exc:  # noqa: BLE001 - turned into an exit code, or re-raised
        if isinstance(exc, SystemExit):
            raise
        report = stop_report(exc, run_dir)
        if distributed.launch_rank() != 0:  # (the process group may be left already)
            _leave_follower(exc, report)
        if report is None:
            raise
        code, message = report
        if message:
            (log.warning if code == 0 else log.error)("%s", message)
        if isinstance(exc, PeerStopped):  # a peer is gone: no clean teardown to wait for (seconds with gloo)
            _exit_now(code)
        raise SystemExit(code) from None


def _exit_now(code: int) -> None:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
