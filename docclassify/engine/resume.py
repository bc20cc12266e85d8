"""What makes a resumed run equal an uninterrupted one.

- ``ResumableSampler``: the seeded per-epoch shuffle of DistributedSampler that can start an
  epoch part-way, so a run stopped (SIGTERM/SIGINT) after k batches continues with batch k+1.
- ``rng_state`` / ``set_rng_state``: the global torch/numpy/python generators at a stop point.
- ``resume_config``: ``resume=RUN_DIR`` alone re-composes the run's own command line.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DistributedSampler

log = logging.getLogger(__name__)

OVERRIDES_FILE = "run_overrides.yaml"


class ResumableSampler(DistributedSampler):
    """DistributedSampler (shuffle seeded by seed + epoch; DDP-ready) whose next epochs can skip
    their first ``n`` indices. A DataLoader batches consecutive indices, so skipping
    ``k * batch_size`` yields exactly batches k+1.. of the same epoch order."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.start = 0

    def skip(self, n: int) -> None:
        self.start = int(n)

    def __iter__(self):
        return iter(list(super().__iter__())[self.start:])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save_overrides(run_dir: Path) -> None:
    """Keep the command line that created ``run_dir`` (Hydra's own .hydra/overrides.yaml is
    rewritten by any later command that uses the same hydra.run.dir)."""
    from hydra.core.hydra_config import HydraConfig

    from docclassify.utils.io import atomic_write_text

    path = run_dir / OVERRIDES_FILE
    if path.is_file() or not HydraConfig.initialized():
        return
    task = [o for o in HydraConfig.get().overrides.task if not o.startswith("resume=")]
    atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(task)))


def _key(override: str) -> str:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_override(override).key_or_group


def resume_config(cfg: DictConfig) -> DictConfig:
    """``resume=RUN_DIR``: the config of the run in RUN_DIR, re-composed from the overrides it was
    started with plus this command line's (which win, e.g. trainer.epochs=20 to train longer).
    Without a saved command line (or resume) the config is returned unchanged."""
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig

    if not cfg.get("resume") or not HydraConfig.initialized():
        return cfg
    path = Path(str(cfg.resume)).expanduser() / OVERRIDES_FILE
    if not path.is_file():
        return cfg
    current = list(HydraConfig.get().overrides.task)
    given = {_key(o) for o in current}
    saved = [o for o in OmegaConf.to_container(OmegaConf.load(path)) if _key(o) not in given]
    log.info("resume=%s: continuing with its original overrides %s%s", cfg.resume, saved,
             f" and {current}" if current else "")
    return compose(config_name=HydraConfig.get().job.config_name, overrides=[*saved, *current])
