"""What makes a resumed run equal an uninterrupted one.

- ``ResumableSampler``: the seeded per-epoch shuffle of DistributedSampler that can start an
  epoch part-way, so a run stopped (SIGTERM/SIGINT) after k batches continues with batch k+1.
- ``rng_states`` / ``restore_rng_states``: the global torch/numpy/python generators of every DDP
  rank at a stop point.
- ``resume_config``: ``resume=RUN_DIR`` alone re-composes the run's own command line.
- ``resolve_run_dir`` / ``check_resume_compatible``: which dir a run writes to, and a refusal to
  mix another experiment's state into it.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DistributedSampler

log = logging.getLogger(__name__)

OVERRIDES_FILE = "run_overrides.yaml"
RUN_CONFIG_FILE = "run_config.yaml"
# What must match for a run dir's saved folds to be continued by this config.
COMPATIBLE_KEYS = ("data", "model", "n_folds", "ensemble", "seed", "pseudo", "validation")


class ResumableSampler(DistributedSampler):
    """DistributedSampler (shuffle seeded by seed + epoch; DDP-ready) whose next epochs can skip
    their first ``n`` indices. A DataLoader batches consecutive indices, so skipping
    ``k * batch_size`` yields exactly batches k+1.. of the same epoch order.

    ``limit``: each epoch keeps only the first ``limit`` indices of its order (of this rank;
    trainer.limit_train_batches), so skipping and resuming work within the shorter epoch.

    ``weights`` (one per dataset row, data.sampler=balanced|sqrt): each epoch is one global draw
    with replacement of ``total_size`` rows (as many as an epoch without weights), by those
    weights, seeded by seed + epoch alike on every rank; rank r keeps draws r, r + world, ...
    (DistributedSampler's split), so the ranks share one sample and no draw is used twice."""

    def __init__(self, *args, limit: int | None = None, weights=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.start = 0
        self.limit = None if limit is None else int(limit)
        self.weights = None if weights is None else torch.as_tensor(np.asarray(weights), dtype=torch.float64)
        if self.weights is not None and (len(self.weights) != len(self.dataset) or not bool((self.weights >= 0).all())
                                         or not float(self.weights.sum()) > 0):
            raise ValueError(f"sampling weights: expected {len(self.dataset)} non-negative weights, not all 0")

    def skip(self, n: int) -> None:
        self.start = int(n)

    def _epoch_length(self) -> int:
        return self.num_samples if self.limit is None else min(self.num_samples, self.limit)

    def _epoch_order(self) -> list[int]:
        """This rank's indices of the current epoch, before limit and skip."""
        if self.weights is None:
            return list(super().__iter__())
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        draw = torch.multinomial(self.weights, self.total_size, replacement=True, generator=g).tolist()
        return draw[self.rank:self.total_size:self.num_replicas]

    def __iter__(self):
        return iter(self._epoch_order()[:self._epoch_length()][self.start:])

    def __len__(self) -> int:
        return max(0, self._epoch_length() - self.start)


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def rng_states() -> dict:
    """The generators of every DDP rank at a stop point (a collective: every rank calls it):
    ``rng`` this rank's (rank 0 saves the state), ``rng_by_rank`` all of them, in rank order."""
    from docclassify.engine import distributed

    return {"rng": rng_state(), "rng_by_rank": distributed.all_gather_objects(rng_state())}


def restore_rng_states(saved: dict) -> None:
    """This rank's generators from :func:`rng_states` (the same number of processes resumes exactly;
    another number, or a state saved before per-rank states, gives every rank rank 0's)."""
    from docclassify.engine import distributed

    by_rank = saved.get("rng_by_rank") or []
    if len(by_rank) == distributed.world_size():
        set_rng_state(by_rank[distributed.rank()])
        return
    if distributed.is_main():
        log.warning("resuming a part-done epoch with %d process(es), stopped with %d: every rank continues with "
                    "rank 0's random state, so the rest of this epoch draws differently than an uninterrupted "
                    "run would", distributed.world_size(), len(by_rank) or 1)
    set_rng_state(saved["rng"])


def save_overrides(run_dir: Path) -> None:
    """Keep the command line that created ``run_dir`` (Hydra's own .hydra/overrides.yaml is
    rewritten by any later command that uses the same hydra.run.dir)."""
    from hydra.core.hydra_config import HydraConfig

    from docclassify.utils.io import atomic_write_text

    path = run_dir / OVERRIDES_FILE
    if path.is_file() or not HydraConfig.initialized():
        return
    from docclassify.utils.redact import redact_config

    task = redact_config([o for o in HydraConfig.get().overrides.task if not o.startswith("resume=")])
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


def resolve_run_dir(cfg: DictConfig) -> Path:
    """``resume=RUN_DIR`` when given (it must exist), else Hydra's run dir of this job."""
    if cfg.get("resume"):
        from docclassify.data.sources import DataError

        run_dir = Path(str(cfg.resume)).expanduser()
        if not run_dir.is_dir():
            raise DataError(f"resume={cfg.resume}: run directory not found")
        return run_dir
    return Path(cfg.paths.output_dir)


def _compat_view(c: dict) -> dict:
    out = {k: c.get(k) for k in ("data", "model", "ensemble", "seed")}
    out["n_folds"] = (c.get("folds") or {}).get("n")
    # pseudo off (or a run dir from before pseudo-labels) compares equal; on, every pseudo key must match
    pseudo = c.get("pseudo") or {}
    out["pseudo"] = pseudo if pseudo.get("source") else None
    # What picked each finished fold's best epoch and made its robust OOF rows (a run dir from before
    # robust validation has no validation key: nothing to compare).
    if c.get("validation") is not None:
        out["validation"] = {"validation": c["validation"], "monitor": (c.get("trainer") or {}).get("monitor")}
    return json.loads(json.dumps(out, default=str))


def check_resume_compatible(run_dir: Path, cfg: DictConfig) -> None:
    """A run dir holding another experiment's state must not be silently mixed with this one.
    The first run in a dir writes its resolved config (run_config.yaml) for later runs to compare."""
    from docclassify.config import plain_config
    from docclassify.data.sources import DataError
    from docclassify.utils.io import atomic_write_text

    path = run_dir / RUN_CONFIG_FILE
    current = _compat_view(plain_config(cfg))
    if not path.is_file():
        atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(plain_config(cfg))))
        return
    saved = _compat_view(OmegaConf.to_container(OmegaConf.load(path), resolve=True))

    def same(key: str) -> bool:
        return json.dumps(saved.get(key), sort_keys=True, default=str) == \
            json.dumps(current.get(key), sort_keys=True, default=str)

    diff = [k for k in COMPATIBLE_KEYS if not same(k) and not (k == "validation" and saved.get(k) is None)]
    if diff:
        raise DataError(f"{run_dir} holds a run with a different config ({diff}); "
                        "use a new hydra.run.dir or resume with the original settings")
