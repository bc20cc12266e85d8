"""Run dirs -> a :class:`~docclassify.deploy.bundle.BundleSpec`, and the torch runner of
``Predictor.from_run`` (needs torch; export uses the same spec).

An *infer run dir* (``python -m docclassify.infer`` wrote summary.json there) gives everything infer
decided: its runs and their weights, the fold checkpoints, the TTA views or orientation mode, deskew,
how folds and runs are averaged, the temperature and the decision biases (applied only when infer
applied them). *Training run dirs* give their folds with equal weights, the ``tta`` asked for, no
temperature and the argmax: what infer would predict with ``calibrate=false``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from docclassify.deploy.bundle import (
    BundleError,
    BundleSpec,
    DecisionSpec,
    FoldSpec,
    InputSpec,
    MemberSpec,
    TtaSpec,
)

SUMMARY_FILE = "summary.json"
INFER_CONFIG = "infer_config.yaml"  # export writes the infer options it ran with here (in its infer dir)


def is_infer_dir(path: Path) -> bool:
    return (path / SUMMARY_FILE).is_file() and not (path / "results.json").is_file()


def infer_config(infer_dir: Path) -> dict:
    """The infer options of an infer run dir (Hydra's .hydra/config.yaml, or export's infer_config.yaml;
    {} when neither is there: the defaults of conf/infer.yaml hold)."""
    from omegaconf import OmegaConf

    for name in (INFER_CONFIG, ".hydra/config.yaml"):
        if (infer_dir / name).is_file():
            return OmegaConf.to_container(OmegaConf.load(infer_dir / name), resolve=False)
    return {}


def views_of(name: str, view_names: list[str]) -> list[list]:
    """The bundle's views ([name, k, mirror]) of an infer run's TTA views; angle/zoom views are refused."""
    from docclassify.predict.tta import VIEW_SETS

    known = {v.name: v for views in VIEW_SETS.values() for v in views}
    out = []
    for view_name in view_names:
        view = known.get(view_name)
        if view is None or not view.is_dihedral:
            raise BundleError(f"tta={name}: view {view_name!r} turns by a small angle or zooms; a bundle "
                              "reproduces exact flips and quarter turns only: use tta=none, flip, rot90, dihedral, "
                              "essential, orient or orient_soft")
        out.append([view.name, int(view.k), bool(view.hflip)])
    return out


def fold_spec(checkpoint: Path, fold: int, mode: str, upright_flip: bool | None) -> FoldSpec:
    from docclassify.models.checkpoint import read_checkpoint
    from docclassify.predict.upright import upright_flip_for

    meta = read_checkpoint(checkpoint)["meta"]
    return FoldSpec(int(fold), str(checkpoint), str(meta["timm_name"]),
                    InputSpec(int(meta["img_size"]), str(meta["resize"]), int(meta["pad_value"]),
                              [float(m) for m in meta["mean"]], [float(s) for s in meta["std"]]),
                    str(meta.get("orientation_head") or "none"),
                    upright_flip_for(upright_flip, meta) if mode == "orient" else False, str(checkpoint))


def tta_spec(name: str, views: list[str] | None, average: str, deskew: bool) -> TtaSpec:
    from docclassify.predict.tta import ORIENT_MODES, get_views

    if name in ORIENT_MODES:
        return TtaSpec(name, [], average, deskew, name)
    if views is None:
        try:
            views = [v.name for v in get_views(name)]
        except ValueError as exc:
            raise BundleError(f"tta={name!r}: {exc}") from None
    return TtaSpec("views", views_of(name, views), average, deskew, name)


def spec_from_infer(infer_dir: Path) -> BundleSpec:
    """Everything an infer run decided (see the module docstring)."""
    try:
        summary = json.loads((infer_dir / SUMMARY_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"{infer_dir / SUMMARY_FILE}: cannot be read ({exc})") from exc
    if summary.get("ensemble", {}).get("stacked"):
        raise BundleError(f"{infer_dir}: its runs are combined by a stacked logistic regression "
                          "(ensemble.weights=stack), which a bundle does not reproduce; run infer with "
                          "ensemble.weights=equal, oof or greedy")
    cfg = infer_config(infer_dir)
    tta_cfg = cfg.get("tta") or {}
    tta = summary["tta"]
    spec_tta = tta_spec(str(tta.get("chosen") or tta["name"]), list(tta["views"]), str(tta["average"]),
                        tta.get("deskew") is not None)
    flip = tta_cfg.get("upright_flip", False)
    members = []
    for run in summary["runs"]:
        run_dir = Path(run["dir"])
        folds = [fold_spec(run_dir / f["checkpoint"], f["fold"], spec_tta.mode, flip) for f in run["folds"]]
        members.append(MemberSpec(run_dir.name, float(run["weight"]), folds))
    decision = summary.get("decision") or {}
    biases = decision.get("biases") if decision.get("applied") else None
    classes = classes_of(members)  # the checkpoints' class order (infer checked every run has it)
    spec = BundleSpec(classes, members, spec_tta, str(summary["ensemble"]["average"]),
                      float(summary.get("temperature", 1.0)), DecisionSpec(str(decision.get("rule", "argmax")), biases),
                      source={"infer_dir": str(infer_dir), "runs": [r["dir"] for r in summary["runs"]],
                              "test_metrics": (summary.get("test_metrics") or {}).get("macro_f1")})
    return spec


def classes_of(members: list[MemberSpec]) -> list[str]:
    from docclassify.models.checkpoint import read_checkpoint

    return list(read_checkpoint(members[0].folds[0].checkpoint)["meta"]["classes"])


def spec_from_training_runs(paths: Sequence[str | Path], tta: str, upright_flip: bool | None,
                            deskew: bool) -> BundleSpec:
    from docclassify.predict.run_dirs import discover_runs

    runs = discover_runs([str(p) for p in paths])
    spec_tta = tta_spec(tta, None, "prob", deskew)
    members = [MemberSpec(r.path.name, 1.0 / len(runs),
                          [fold_spec(fm.checkpoint, fm.fold, spec_tta.mode, upright_flip) for fm in r.folds])
               for r in runs]
    return BundleSpec(runs[0].classes, members, spec_tta, "prob", 1.0, DecisionSpec(),
                      source={"runs": [str(r.path) for r in runs]})


def spec_of_runs(runs: str | Path | Sequence[str | Path], tta: str = "none", upright_flip: bool | None = False,
                 deskew: bool = False) -> BundleSpec:
    """An infer run dir alone -> its decisions; else training run dirs (or sweep folders)."""
    paths = [Path(runs)] if isinstance(runs, (str, Path)) else [Path(r) for r in runs]
    if not paths:
        raise BundleError("runs: empty; give an infer run dir or training run dirs")
    infer_dirs = [p for p in paths if is_infer_dir(p.expanduser())]
    if infer_dirs:
        if len(paths) > 1:
            raise BundleError(f"runs: {infer_dirs[0]} is an infer run dir; give it alone (it names its own "
                              "training runs), or training run dirs only")
        if tta != "none" or deskew:
            raise BundleError(f"tta={tta}, deskew={deskew}: {paths[0]} is an infer run dir, whose own TTA and deskew "
                              "are used; leave them out, or give its training run dirs")
        return spec_from_infer(paths[0].expanduser())
    return spec_from_training_runs(paths, tta, upright_flip, deskew)


class RunRunner:
    """Fold checkpoints run by infer's own steps (predict/pipeline.py): the views (predict/views.py
    make_predictor), fold averaging (predict/averaging.py average_folds) and the decision step
    (predict/ensemble.py ensemble_test_probs, the decision biases)."""

    def __init__(self, spec: BundleSpec, device: str = "cpu"):
        import torch  # here, not at the top: a bundle's spec is read without torch

        from docclassify.models.checkpoint import load_checkpoint

        self.spec, self.device = spec, torch.device(device)
        self.loaded = [load_checkpoint(f.checkpoint or f.file, self.device) for f in spec.folds]

    def predict_fold(self, index: int, fold: FoldSpec, images: np.ndarray, batch_size: int):
        from docclassify.predict.tta import View
        from docclassify.predict.views import make_predictor

        model, ckpt = self.loaded[index]
        tta = self.spec.tta
        views = [View(name, k=int(k), hflip=bool(m)) for name, k, m in tta.views]
        # one predictor per call: its last_estimates are this call's
        predictor = make_predictor(tta.mode, views, tta.average, batch_size, self.device, fold.upright_flip)
        probs, logits = predictor.predict(model, images, np.arange(len(images)), ckpt["meta"])
        return probs, logits, predictor.last_estimates

    def fold_average(self, fold_preds: list[np.ndarray], average: str) -> np.ndarray:
        from docclassify.predict.averaging import average_folds

        return average_folds(fold_preds, average)

    def finish(self, member_logs: list[np.ndarray], weights: list[float], average: str, temperature: float,
               biases: list[float] | None) -> tuple[np.ndarray, np.ndarray]:
        from docclassify.metrics import safe_log
        from docclassify.predict.decision import apply_biases
        from docclassify.predict.ensemble import ensemble_test_probs

        probs = ensemble_test_probs(member_logs, list(weights), average, temperature=temperature)
        return probs, apply_biases(safe_log(probs), biases)
