"""Progress display: tqdm bars on a terminal, one log line per epoch everywhere.

On a TTY (stderr): an epoch bar per fold (ETA of the fold) and a step bar per epoch with the
smoothed train loss, lr and images/s (ETA of the epoch); log records are routed above the bars.
In a non-interactive log (a file, a pipe, a cluster job) no bars are drawn: the epoch lines
(and the every-N-steps lines of ``trainer.log_every_n_steps``) are all that is written.
Set TQDM_DISABLE=1 to get the plain lines on a terminal too.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time

import numpy as np

from docclassify.tracking.callbacks import Callback

log = logging.getLogger("docclassify.progress")


def interactive_stderr() -> bool:
    if os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def _clock() -> float:
    return time.perf_counter()


def logged_batches(batches, total: int, what: str, every_s: float = 10.0):
    """Yield ``batches`` (each a tensor of images, or a tuple led by one), logging every
    ``every_s`` seconds how many of ``total`` images are done, the rate and the time left: a long
    prediction (infer's folds, tens of seconds each on a CPU) is not silent."""
    t0 = last = _clock()
    done = 0
    for batch in batches:
        yield batch
        first = batch[0] if isinstance(batch, (tuple, list)) else batch
        done += len(first)
        now = _clock()
        if now - last >= every_s and done < total:
            last = now
            rate = done / max(now - t0, 1e-9)
            log.info("%s: %d/%d images (%.0f img/s, %.0f s left)", what, done, total, rate, (total - done) / rate)


def epoch_line(fold: int, epoch: int, epochs: int, m: dict) -> str:
    """One epoch: train loss, the clean and robust validation views (those validated), lr, speed and
    the best monitored value so far (``best robust 0.8123`` names what trainer.monitor picks)."""
    views = [f"{name}_loss {m[loss]:.4f}  {name}_f1 {m[f1]:.4f}  {name}_acc {m[acc]:.4f}"
             for name, loss, f1, acc in (("val", "val_loss", "val_macro_f1", "val_accuracy"),
                                         ("robust", "val_loss_robust", "val_macro_f1_robust", "val_accuracy_robust"))
             if m.get(f1) is not None]
    best = m.get("best_monitored", m.get("best_macro_f1"))
    return (f"fold {fold} epoch {epoch + 1}/{epochs}  train_loss {m['train_loss']:.4f}  {'  '.join(views)}  "
            f"lr {m['lr']:.3g}  {m['img_per_s']:.0f} img/s  {m['epoch_s']:.1f}s  "
            f"best {m.get('monitor', 'clean')} {best:.4f}{orientation_part(m)}")


def orientation_part(m: dict) -> str:
    """The turned validation copies (engine/orientation_head.py): the head's accuracy, accuracy when turned."""
    if m.get("val_orientation_counts") is None:
        return ""
    head = m.get("val_orientation_accuracy")
    turned = [m.get(f"val_accuracy_{c}") for c in ("turned", "mirrored") if m.get(f"val_accuracy_{c}") is not None]
    return ((f"  orient_head {head:.3f}" if head is not None else "")
            + (f"  acc_turned {np.mean(turned):.4f}" if turned else ""))


class Progress(Callback):
    """One line per epoch (logging); tqdm bars on top when ``interactive``."""

    def __init__(self, epochs: int, log_every_n_steps: int = 0, batch_size: int = 0, accum_steps: int = 1,
                 interactive: bool | None = None):
        self.epochs, self.every = int(epochs), int(log_every_n_steps or 0)
        self.batch_size, self.accum = int(batch_size or 0), max(1, int(accum_steps or 1))
        self.interactive = interactive_stderr() if interactive is None else bool(interactive)
        self._redirect: contextlib.ExitStack | None = None
        self._fold_bar = self._step_bar = None
        self._steps_per_epoch = 0
        self._loss_ema: float | None = None
        self._t0 = 0.0

    # -- lines (always) ---------------------------------------------------------------------
    def on_step_end(self, fold, step, metrics):
        if self.every and step % self.every == 0:
            log.info("fold %d step %d  loss %.4f  lr %.3g", fold, step, metrics["train/loss"], metrics["train/lr"])
        if self.interactive:
            self._step_bar_update(fold, step, metrics)

    def on_epoch_end(self, fold, epoch, m):
        if self.interactive:
            self._close_step_bar()
            if self._fold_bar is not None:
                self._fold_bar.update(epoch + 1 - self._fold_bar.n)
                keys = (("val_f1", "val_macro_f1"), ("robust_f1", "val_macro_f1_robust"), ("best", "best_monitored"))
                shown = {k: f"{m[key]:.4f}" for k, key in keys if m.get(key) is not None}
                self._fold_bar.set_postfix(shown)
        log.info("%s", epoch_line(fold, epoch, self.epochs, m))

    # -- bars (TTY only) --------------------------------------------------------------------
    def on_run_start(self, info):
        if self.interactive and self._redirect is None:
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._redirect = contextlib.ExitStack()
            # Every console log handler writes through tqdm, so lines appear above the bars.
            self._redirect.enter_context(logging_redirect_tqdm(loggers=[logging.getLogger(), *_named_loggers()]))

    def on_fold_start(self, fold, info):
        self._steps_per_epoch = int(info.get("steps_per_epoch") or 0)
        if not self.interactive:
            return
        from tqdm.auto import tqdm

        self._close_bars()
        self._fold_bar = tqdm(total=self.epochs, desc=f"fold {fold} {info.get('model_option', '')}".strip(),
                              unit="epoch", position=0, dynamic_ncols=True, leave=True)

    def _step_bar_update(self, fold, step, metrics):
        from tqdm.auto import tqdm

        loss = float(metrics["train/loss"])
        if self._step_bar is None:
            # The epoch of this step from the optimiser-update count (also right after a resume).
            per_epoch = max(1, math.ceil(self._steps_per_epoch / self.accum)) if self._steps_per_epoch else 0
            epoch = (max(int(step), 1) - 1) // per_epoch if per_epoch else 0
            self._step_bar = tqdm(total=self._steps_per_epoch or None, desc=f"  epoch {epoch + 1}/{self.epochs}",
                                  unit="step", position=1, dynamic_ncols=True, leave=False)
            self._t0, self._loss_ema = _clock(), None
        self._loss_ema = loss if self._loss_ema is None or not math.isfinite(self._loss_ema) \
            else 0.9 * self._loss_ema + 0.1 * loss
        bar = self._step_bar
        bar.update(1)
        post = {"loss": f"{self._loss_ema:.4f}", "lr": f"{metrics['train/lr']:.3g}"}
        if self.batch_size and bar.n >= 2:
            # Timed from the end of the epoch's first step (the bar starts there): the steps after it.
            # Counting the first step's images over the microseconds since gave img/s=1848429.
            elapsed = max(_clock() - self._t0, 1e-9)
            post["img/s"] = f"{(bar.n - 1) * self.batch_size / elapsed:.0f}"
        bar.set_postfix(post, refresh=False)  # drawn at tqdm's own refresh rate

    def _close_step_bar(self):
        if self._step_bar is not None:
            self._step_bar.close()
            self._step_bar = None

    def _close_bars(self):
        self._close_step_bar()
        if self._fold_bar is not None:
            self._fold_bar.close()
            self._fold_bar = None

    def on_fold_end(self, fold, outcome):
        self._close_bars()

    def close(self):
        try:
            self._close_bars()
        finally:
            if self._redirect is not None:
                self._redirect.close()
                self._redirect = None


def _named_loggers() -> list[logging.Logger]:
    """Loggers with their own console handlers (Hydra configures some with propagate=False)."""
    return [lg for lg in logging.Logger.manager.loggerDict.values()
            if isinstance(lg, logging.Logger) and lg.handlers and not lg.propagate]
