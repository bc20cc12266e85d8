"""Hooks the fit loop calls: trackers, progress, pruning plug in here without touching it."""

from __future__ import annotations

from typing import Any


class Callback:
    """Override what you need. ``on_epoch_end`` may raise to stop the run (e.g. optuna.TrialPruned)."""

    def on_run_start(self, info: dict[str, Any]) -> None: ...
    def on_fold_start(self, fold: int, info: dict[str, Any]) -> None: ...
    def on_step_end(self, fold: int, step: int, metrics: dict[str, float]) -> None: ...
    def on_epoch_end(self, fold: int, epoch: int, metrics: dict[str, float]) -> None: ...
    def on_fold_end(self, fold: int, outcome: dict[str, Any]) -> None: ...
    def on_run_end(self, results: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


class CallbackList(Callback):
    def __init__(self, callbacks: list[Callback] | None = None):
        self.callbacks = list(callbacks or [])

    def _call(self, name: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, name)(*args)

    def on_run_start(self, info):
        self._call("on_run_start", info)

    def on_fold_start(self, fold, info):
        self._call("on_fold_start", fold, info)

    def on_step_end(self, fold, step, metrics):
        self._call("on_step_end", fold, step, metrics)

    def on_epoch_end(self, fold, epoch, metrics):
        self._call("on_epoch_end", fold, epoch, metrics)

    def on_fold_end(self, fold, outcome):
        self._call("on_fold_end", fold, outcome)

    def on_run_end(self, results):
        self._call("on_run_end", results)

    def close(self):
        self._call("close")
