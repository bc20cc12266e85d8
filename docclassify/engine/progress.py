"""Plain progress output: one line per epoch (and optionally every N steps)."""

from __future__ import annotations

import logging

from docclassify.engine.callbacks import Callback

log = logging.getLogger("docclassify.progress")


class EpochLines(Callback):
    def __init__(self, epochs: int, log_every_n_steps: int = 0):
        self.epochs, self.every = int(epochs), int(log_every_n_steps or 0)

    def on_step_end(self, fold, step, metrics):
        if self.every and step % self.every == 0:
            log.info("fold %d step %d  loss %.4f  lr %.3g", fold, step, metrics["train/loss"], metrics["train/lr"])

    def on_epoch_end(self, fold, epoch, m):
        log.info("fold %d epoch %d/%d  train_loss %.4f  val_loss %.4f  val_f1 %.4f  acc %.4f  lr %.3g  "
                 "%.0f img/s  %.1fs  best %.4f", fold, epoch + 1, self.epochs, m["train_loss"], m["val_loss"],
                 m["val_macro_f1"], m["val_accuracy"], m["lr"], m["img_per_s"], m["epoch_s"], m["best_macro_f1"])
