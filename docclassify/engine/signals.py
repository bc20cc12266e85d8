"""SIGTERM/SIGINT: inside the training loop (StopFlag) finish the current step, keep the last-state
checkpoint, exit non-zero (a second Ctrl-C exits at once); outside it (interrupts_raise) stop at
once with an :class:`Interrupted` exception, so temp files are removed and the entrypoint says so."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator

log = logging.getLogger(__name__)


# The two exceptions that stop the epoch loop (engine/epoch.py raises them, re-exports them), here so
# engine.distributed can tell them apart without importing epoch.
class NonFiniteLossError(FloatingPointError):
    pass


class StopRequested(Exception):
    """Raised inside the loop after a SIGTERM/SIGINT once the current optimiser update has finished.

    ``progress`` is what the epoch had done by then (an :class:`~docclassify.engine.epoch.EpochProgress`
    as a dict), so the caller can save a mid-epoch state that resumes exactly; None between epochs."""

    def __init__(self, message: str, progress: dict | None = None) -> None:
        super().__init__(message)
        self.progress = progress


class StopFlag:
    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handler(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum
        log.warning("received %s: stopping after the current step and saving state "
                    "(Ctrl-C again to exit at once)", signal.Signals(signum).name)

    def install(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT outside the training loop (data loading, inference, writing results): stop
    at once. A KeyboardInterrupt, so ``except Exception`` blocks let it through while cleanup code
    (temp files of atomic writes) still runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # what the shell reports for a process the signal ended


@contextlib.contextmanager
def interrupts_raise() -> Iterator[None]:
    """SIGTERM (and SIGINT) raise :class:`Interrupted` in the main thread instead of ending the process
    on the spot, so files being written are cleaned up and the entrypoint reports one line. The
    training loop installs its graceful StopFlag on top of this and restores it afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            if signal.getsignal(sig) is not signal.SIG_IGN:  # held (hold_interrupts): stay held until exit
                signal.signal(sig, old)


def hold_interrupts() -> None:
    """From here on SIGTERM/SIGINT are ignored: the process is already stopping (e.g. reporting why,
    while torchrun sends SIGTERM to every rank of a group that has a failed rank)."""
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)


@contextlib.contextmanager
def interrupts_reported(prog: str, consequence: str) -> Iterator[None]:
    """:func:`interrupts_raise` for a whole command: an interrupt ends it with one line on stderr
    (``prog: interrupted by SIGTERM: <consequence>``) and exit code 128 + the signal (143, 130)."""
    with interrupts_raise():
        try:
            yield
        except Interrupted as exc:
            message = f"{prog}: interrupted by {exc}: {consequence}"
            log.error("%s", message)  # the run's log file says why it ends here
            print(message, file=sys.stderr, flush=True)
            raise SystemExit(exc.exit_code) from None
