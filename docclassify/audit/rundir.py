"""What the audit reads from a training run dir: results.json (classes), its config (the data
source and cache dir), oof.csv / oof_robust.csv and folds.csv (the labels training used)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from docclassify.data.sources import DataError, DataSource, load_source
from docclassify.predict.run_dirs import CONFIG_FILES, OOF_FILE, RESULTS_FILE

OOF_ROBUST_FILE, FOLDS_FILE = "oof_robust.csv", "folds.csv"
OOF_VIEWS = ("clean", "clean+robust")


class AuditError(DataError):
    """The run dir cannot be audited (the message names the file and the fix)."""


@dataclass
class AuditRun:
    path: Path
    classes: list[str]
    config: dict  # the run's resolved config (plain containers)

    @property
    def cache_dir(self) -> str:
        cache = (self.config.get("paths") or {}).get("cache_dir")
        if not cache or "${" in str(cache):  # an unresolved Hydra copy: the environment's default
            cache = os.environ.get("DOCCLASSIFY_CACHE", str(Path.home() / ".cache" / "docclassify"))
        return str(cache)

    def source(self) -> DataSource:
        """The run's data source as train.csv gives it (decisions not applied: the audit sees all images)."""
        from omegaconf.errors import OmegaConfBaseException

        try:
            return load_source(OmegaConf.create(self.config.get("data") or {}), self.cache_dir)
        except OmegaConfBaseException as exc:
            raise AuditError(f"{self.path}: the run's data config is incomplete ({str(exc).splitlines()[0]})") from exc

    def training_labels(self) -> pd.Series:
        """ID -> label the run trained with (after data.relabel / data.exclude), from folds.csv."""
        path = self.path / FOLDS_FILE
        if not path.is_file():
            return pd.Series(dtype=np.int64)
        folds = pd.read_csv(path, dtype={"ID": str})
        return folds.set_index("ID")["target"].astype(np.int64)


def read_run(run_dir: str | Path) -> AuditRun:
    run_dir = Path(run_dir).expanduser()
    results_path = run_dir / RESULTS_FILE
    if not results_path.is_file():
        raise AuditError(f"{run_dir}: no {RESULTS_FILE}; audit a finished run of `python -m docclassify.train` "
                         "(all folds: the audit ranks every training image by its out-of-fold prediction)")
    results = json.loads(results_path.read_text())
    config_path = next((run_dir / c for c in CONFIG_FILES if (run_dir / c).is_file()), None)
    if config_path is None:
        raise AuditError(f"{run_dir}: neither {' nor '.join(CONFIG_FILES)} found, so the run's data is unknown")
    config = OmegaConf.to_container(OmegaConf.load(config_path), resolve=False)
    return AuditRun(run_dir, list(results["classes"]), config)


def _probs(table: pd.DataFrame, classes: list[str], path: Path) -> np.ndarray:
    missing = [c for c in ("ID", "target", *classes) if c not in table.columns]
    if missing:
        raise AuditError(f"{path}: missing column(s) {missing[:5]}; expected ID, target and one probability "
                         "column per class of results.json")
    probs = table[classes].to_numpy(dtype=np.float64)
    if not np.isfinite(probs).all():
        raise AuditError(f"{path}: non-finite probabilities")
    return probs


def read_oof(run: AuditRun, views: str = "clean") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(IDs, given labels, probabilities) of the run's OOF rows. ``clean+robust``: each image's
    clean row averaged with its distorted copies of oof_robust.csv (robust validation)."""
    path = run.path / OOF_FILE
    if not path.is_file():
        raise AuditError(f"{run.path}: {OOF_FILE} not found (a finished training run writes it)")
    oof = pd.read_csv(path, dtype={"ID": str})
    probs = _probs(oof, run.classes, path)
    if views == "clean+robust":
        robust_path = run.path / OOF_ROBUST_FILE
        if not robust_path.is_file():
            raise AuditError(f"--oof clean+robust: {robust_path} not found (train with validation=both or robust), "
                             "or use --oof clean")
        robust = pd.read_csv(robust_path, dtype={"ID": str})
        by_id = pd.DataFrame(_probs(robust, run.classes, robust_path)).groupby(robust["ID"].to_numpy())
        total = by_id.sum().reindex(oof["ID"]).fillna(0.0).to_numpy()
        count = by_id.size().reindex(oof["ID"]).fillna(0).to_numpy()
        probs = (probs + total) / (1.0 + count)[:, None]
    elif views != "clean":
        raise AuditError(f"--oof {views}: expected one of {', '.join(OOF_VIEWS)}")
    return oof["ID"].to_numpy(dtype=str), oof["target"].to_numpy(dtype=np.int64), probs
