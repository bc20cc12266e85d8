"""Training the class-group specialists of a finished run (``specialists=auto``).

For each group (groups.py, from the run's pooled OOF rows: its robust selecting copies' when it has
them, so the copies inference fits the specialist's weight on chose nothing) a
specialist is the run's own resolved config with these changes, trained by
engine.kfold.run_kfold into ``<run dir>/specialists/<group>/``:

- ``data.exclude``: every training row whose class is not in the group (and every row the run
  itself left out), so the specialist learns only the group's classes (its classifier keeps all
  K outputs; inference reads the group's columns);
- ``folds.file``: the run's folds.csv, so a specialist's fold k trains on none of the rows of the
  run's fold k: its predictions of the run's OOF rows of fold k are out-of-fold, like the run's;
- ``data.img_size``: the run's size times ``size_scale`` (finer print);
- ``trainer.epochs`` when ``specialists.epochs`` is set; no pseudo-labels, no shift report, no
  submission; ``validation.distort=auto`` replaced by the profile the run fitted.

A specialist dir is a normal run dir (results.json, oof.csv, checkpoints/); ``specialist.json``
records its group and parent. Training again resumes: finished folds are kept.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf, open_dict

from docclassify.specialists import GROUPS_FILE, SPECIALIST_FILE, SPECIALISTS_DIR
from docclassify.specialists.groups import Group, find_groups
from docclassify.utils.io import atomic_write_csv, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


def oof_predictions(run_dir: Path, results: dict) -> tuple[pd.Series, pd.Series, str]:
    """(targets, predictions, view) of the run's pooled OOF rows the groups are chosen on: the robust
    selecting copies (oof_robust_select.csv: the copies that make choices, so the estimating copies
    that inference fits the mixing weight on chose nothing), else the robust rows, else the clean."""
    robust = results.get("cv_macro_f1_robust") is not None
    for view, name in (("robust_select", "oof_robust_select.csv"), ("robust", "oof_robust.csv"), ("clean", "oof.csv")):
        path = run_dir / name
        if path.is_file() and (robust or view == "clean"):
            oof = pd.read_csv(path, dtype={"ID": str})
            return oof["target"], oof["pred"], view
    raise FileNotFoundError(f"{run_dir}: no oof.csv (not a finished run)")


def specialist_config(cfg: DictConfig, run_dir: Path, spec_dir: Path, group: Group, results: dict,
                      settings: DictConfig) -> tuple[DictConfig, list[str]]:
    """The run's config changed into the group's specialist (see the module doc), and the changes as
    overrides (recorded in the specialist's run_overrides.yaml)."""
    from docclassify.data.sources import load_source

    source = load_source(cfg.data, cfg.paths.cache_dir)
    folds = pd.read_csv(run_dir / "folds.csv", dtype={"ID": str})
    keep = set(folds["ID"][(folds["fold"] >= 0) & folds["target"].isin(group.classes)])
    exclude = sorted(set(source.train["ID"].astype(str)) - keep)
    atomic_write_csv(pd.DataFrame({"ID": exclude}), spec_dir / "exclude.csv")
    changes = {"data.exclude": str((spec_dir / "exclude.csv").resolve()),
               "folds.file": str((run_dir / "folds.csv").resolve()),
               "data.img_size": int(round(int(results["folds"][0]["img_size"]) * float(settings.size_scale))),
               "paths.output_dir": str(spec_dir.resolve()), "submit": False, "resume": None,
               "pseudo.source": None, "shift.report": False}
    if cfg.data.get("relabel"):  # a row is relabelled or excluded, never both (data.sources.apply_decisions)
        relabel = pd.read_csv(Path(str(cfg.data.relabel)).expanduser(), dtype=str)
        relabel = relabel[~relabel["ID"].isin(set(exclude))]
        atomic_write_csv(relabel, spec_dir / "relabel.csv")
        changes["data.relabel"] = str((spec_dir / "relabel.csv").resolve()) if len(relabel) else None
    if settings.get("epochs"):
        changes["trainer.epochs"] = int(settings.epochs)
    spec = copy.deepcopy(cfg)
    with open_dict(spec):
        for key, value in changes.items():
            OmegaConf.update(spec, key, value, merge=False)
        spec.specialists = {"name": "none"}
        validation = spec.get("validation")
        if validation is not None and validation.get("distort") == "auto":  # the profile the run fitted
            validation.distort = dict(results["validation"]["profile"])
    overrides = [f"{k}={'null' if v is None else str(v).lower() if isinstance(v, bool) else v}"
                 for k, v in changes.items() if k != "paths.output_dir"] + ["specialists=none"]
    return spec, overrides


def train_specialist(cfg: DictConfig, run_dir: Path, group: Group, results: dict, settings: DictConfig) -> Path:
    """One group's specialist, trained (or resumed) into ``<run dir>/specialists/<group>/``."""
    from docclassify.engine import distributed
    from docclassify.engine.kfold import run_kfold

    spec_dir = run_dir / SPECIALISTS_DIR / group.name
    if distributed.is_main():
        spec_dir.mkdir(parents=True, exist_ok=True)
    with distributed.main_first():  # rank 0 writes exclude.csv (the others read it)
        spec, overrides = specialist_config(cfg, run_dir, spec_dir, group, results, settings)
    if distributed.is_main():
        saved = run_dir / "run_overrides.yaml"
        base = OmegaConf.to_container(OmegaConf.load(saved)) if saved.is_file() else []
        if not (spec_dir / "run_overrides.yaml").is_file():  # what made it (engine.resume keeps the first)
            atomic_write_text(spec_dir / "run_overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(
                [o for o in base if not o.startswith(("specialists=", "submit="))] + overrides)))
    names = [results["classes"][c] for c in group.classes]
    log.info("specialists: group %s (%s): %d of the run's OOF rows, %.1f%% confused within it; training on its "
             "classes only at %d px into %s", group.name, ", ".join(names), group.rows, 100 * group.rate,
             spec.data.img_size, spec_dir)
    spec_results = run_kfold(spec, [])
    if distributed.is_main():
        atomic_write_json(spec_dir / SPECIALIST_FILE, {
            **group.as_dict(), "class_names": names, "parent": str(run_dir.resolve()),
            "img_size": int(spec.data.img_size), "cv_macro_f1": spec_results.get("cv_macro_f1"),
            "cv_macro_f1_robust": spec_results.get("cv_macro_f1_robust")})
    return spec_dir


def train_specialists(cfg: DictConfig, run_dir: str | Path) -> list[Path]:
    """``specialists=auto``: find the run's most confused class groups and train a specialist for each
    (skipped, said in the log, when none reaches specialists.min_rate)."""
    from docclassify.engine import distributed

    settings, run_dir = cfg.specialists, Path(run_dir)
    distributed.barrier()  # rank 0 has written results.json and the OOF files
    results = json.loads((run_dir / "results.json").read_text())
    y, pred, view = oof_predictions(run_dir, results)
    groups = find_groups(y.to_numpy(), pred.to_numpy(), len(results["classes"]), int(settings.max_groups),
                         int(settings.max_size), float(settings.min_rate))
    if distributed.is_main():
        atomic_write_json(run_dir / SPECIALISTS_DIR / GROUPS_FILE, {
            "fit_on": view, "rows": int(len(y)), "min_rate": float(settings.min_rate),
            "max_groups": int(settings.max_groups), "max_size": int(settings.max_size),
            "groups": [g.as_dict() for g in groups]})
    if not groups:
        log.info("specialists: no class pair of %s is confused in %.0f%% or more of its %s OOF rows: no specialist "
                 "trained", run_dir, 100 * float(settings.min_rate), view)
        return []
    log.info("specialists: %d group(s) from the %s OOF rows of %s: %s", len(groups), view, run_dir,
             ", ".join(f"{g.name} ({100 * g.rate:.1f}%)" for g in groups))
    return [train_specialist(cfg, run_dir, g, results, settings) for g in groups]
