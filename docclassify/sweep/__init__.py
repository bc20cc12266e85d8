"""Optuna sweep extras: pruning, best-config export, trial summaries."""

from __future__ import annotations

from omegaconf import DictConfig


def build_sweep_callbacks(cfg: DictConfig) -> list:
    """Callbacks a sweep trial needs (e.g. reporting to Optuna for pruning); none outside sweeps."""
    return []
