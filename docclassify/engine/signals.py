"""SIGTERM/SIGINT: finish the current step, keep the last-state checkpoint, exit non-zero.

A second Ctrl-C exits at once (KeyboardInterrupt)."""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)


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
