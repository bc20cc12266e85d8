"""``adapt=bn|tent``: test-time adaptation of every fold model to the images it is about to predict,
guarded on the robust OOF rows.

- ``bn``: the BatchNorm layers' running means and variances re-estimated on the test images (one
  pass, cumulative average, no labels): the shifted test set is normalised by its own statistics.
  A model without BatchNorm (ConvNeXt, ViT: LayerNorm) has nothing to re-estimate and is left as
  trained (the log says so).
- ``tent`` (Wang et al., ICLR 2021): one pass over the test images in batches, each step lowering
  the mean entropy of the predictions by SGD (``adapt.lr``, momentum 0.9) on the norm layers' affine
  parameters only; BatchNorm layers normalise by the batch and keep the test statistics (as bn),
  LayerNorm backbones adapt their LayerNorm scales and shifts. A model with no norm layer is left
  as trained.

The adaptation works on a copy of the weights in memory: the run dir is never written. A kept
run's adapted norm layers (a few tensors per fold) are kept in memory, so the later options
(second_pass, specialists' gating) predict with the adapted models too. The guard:
each fold model is adapted the same way to the copies of the OOF rows it did not train on (the
rows decisions are fitted on, fit_on: the robust copies by default) and predicts them; a run's
adapted models are used for the test set only when the adapted OOF predictions beat the trained
ones' cross-fitted macro F1 (a choice of two, cross-fitted with image groups kept together, as
decision=macro_f1). Then the run's OOF rows are its adapted predictions too (the ensemble weights
and the temperature are fitted on them).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from docclassify.predict.stage import FoldInput, cross_fit, fold_average, fold_inputs
from docclassify.utils.choices import ADAPT_MODES

log = logging.getLogger(__name__)

NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
MOMENTUM = 0.9


def norm_layers(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """(BatchNorm layers that keep running statistics, LayerNorm / GroupNorm layers) of ``model``."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    lns = [m for m in model.modules() if isinstance(m, (nn.LayerNorm, nn.GroupNorm))]
    return bns, lns


def norm_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The norm layers' parameters and buffers (all that adaptation changes), copied to the CPU: kept
    per fold model so the later options predict with the adapted model without a second pass."""
    names = {name for name, m in model.named_modules() if isinstance(m, NORMS)}
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k.rpartition(".")[0] in names}


def kind_of(model: nn.Module) -> str:
    """batchnorm, layernorm or none: which norm layers adaptation can use."""
    bns, lns = norm_layers(model)
    return "batchnorm" if bns else "layernorm" if lns else "none"


def _restart_statistics(bns: list[nn.Module]) -> None:
    """Running statistics emptied and re-estimated as a cumulative average of what follows."""
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()


def adapt_bn(model: nn.Module, batches) -> nn.Module | None:
    """A copy of ``model`` whose BatchNorm statistics are those of ``batches`` (None: no BatchNorm)."""
    model = copy.deepcopy(model).eval()
    bns, _ = norm_layers(model)
    if not bns:
        return None
    _restart_statistics(bns)
    with torch.no_grad():
        for x in batches:
            model(x)
    return model.eval()


def entropy(logits: torch.Tensor) -> torch.Tensor:
    log_p = torch.log_softmax(logits.float(), dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def adapt_tent(model: nn.Module, batches, lr: float) -> nn.Module | None:
    """A copy of ``model`` after one TENT pass over ``batches`` (None: no norm layer with affine
    parameters)."""
    model = copy.deepcopy(model).eval()
    bns, lns = norm_layers(model)
    params = [p for m in bns + lns for p in (getattr(m, "weight", None), getattr(m, "bias", None))
              if isinstance(p, nn.Parameter)]
    if not params:
        return None
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    _restart_statistics(bns)
    opt = torch.optim.SGD(params, lr=float(lr), momentum=MOMENTUM)
    with torch.enable_grad():
        for x in batches:
            loss = entropy(model(x)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    for p in params:
        p.requires_grad_(False)
    return model.eval()


def adapted(model: nn.Module, images: np.ndarray, rows: np.ndarray, meta: dict, mode: str, lr: float,
            batch_size: int, device) -> nn.Module | None:
    """``model`` adapted (``mode``) to ``images[rows]`` (normalised like training), or None when it has
    nothing ``mode`` can adapt."""
    from docclassify.predict.tta import normalised_batches

    batches = normalised_batches(images, np.asarray(rows), meta, batch_size, device)
    if mode == "bn":
        return adapt_bn(model, batches)
    if mode == "tent":
        return adapt_tent(model, batches, lr)
    raise ValueError(f"adapt={mode!r}: expected one of {', '.join(ADAPT_MODES)}")


def adaptable(model: nn.Module, mode: str) -> bool:
    """Whether ``mode`` has something to adapt in ``model`` (bn: BatchNorm; tent: any norm layer)."""
    bns, lns = norm_layers(model)
    return bool(bns) if mode == "bn" else bool(bns or lns)


@dataclass
class Adapted:
    """What adapting one run's fold models gave: the report, and when the guard keeps it, the adapted
    test logits per fold and OOF logits (in the rows' order)."""

    report: dict
    test_folds: list[np.ndarray] | None = None
    oof: np.ndarray | None = None
    states: dict[int, dict[str, dict]] | None = None  # per fold: the norm state adapted to "test" and to "oof"


def adapt_folds(folds: list[FoldInput], rows: np.ndarray, fold_of: np.ndarray, y: np.ndarray, groups: np.ndarray,
                predict, mode: str, lr: float, batch_size: int, device, label: str = "",
                base: np.ndarray | None = None) -> Adapted:
    """One run's fold models ``folds``: each adapted to its OOF images (``rows`` of get_oof, the OOF rows
    whose validation fold ``fold_of`` is its fold) and to the test set. The guard compares the adapted
    OOF predictions with the trained ones (``base``, or predicted here when None)."""
    from docclassify.metrics import macro_f1

    n, k = len(rows), len(folds[0].meta["classes"])
    base = np.asarray(base, dtype=np.float64) if base is not None else np.full((n, k), np.nan)
    oof_adapted, test_folds, kinds, states = np.full((n, k), np.nan), [], set(), {}
    for f in folds:
        model = f.load()
        kinds.add(kind_of(model))
        if not adaptable(model, mode):
            break
        mine = np.flatnonzero(fold_of == f.fold)
        oof_images, test = f.get_oof(), f.get_test()
        if len(mine):
            if np.isnan(base[mine]).any():
                base[mine] = predict(model, oof_images, rows[mine], f.meta)
            on_oof = adapted(model, oof_images, rows[mine], f.meta, mode, lr, batch_size, device)
            oof_adapted[mine] = predict(on_oof, oof_images, rows[mine], f.meta)
            states.setdefault(f.fold, {})["oof"] = norm_state(on_oof)
            del on_oof
        on_test = adapted(model, test, np.arange(len(test)), f.meta, mode, lr, batch_size, device)
        test_folds.append(predict(on_test, test, np.arange(len(test)), f.meta))
        states.setdefault(f.fold, {})["test"] = norm_state(on_test)
        del model, on_test
    report = {"mode": mode, "norm_layers": sorted(kinds), "applied": False}
    if len(test_folds) != len(folds):
        what = "BatchNorm layers" if mode == "bn" else "norm layers"
        log.info("adapt=%s: %s has no %s (%s): left as trained%s", mode, label, what, ", ".join(sorted(kinds)),
                 "; adapt=tent adapts LayerNorm affine parameters" if mode == "bn" and "layernorm" in kinds else "")
        report["note"] = f"no {what}: left as trained"
        return Adapted(report)
    base_pred, new_pred = base.argmax(axis=1), oof_adapted.argmax(axis=1)
    candidates = np.stack([base_pred, new_pred])
    guard = cross_fit(lambda r: int(macro_f1(y[r], new_pred[r]) > macro_f1(y[r], base_pred[r])),
                      lambda j, r: candidates[j][r], y, groups, base_pred)
    applied = guard.applied and guard.choice == 1
    report.update(guard.as_dict(), applied=applied, oof_macro_f1_adapted=float(macro_f1(y, new_pred)))
    log.info("adapt=%s: %s (%s): OOF macro F1 %.4f trained vs %.4f adapted, cross-fitted %.4f -> %.4f: %s", mode,
             label, ", ".join(sorted(kinds)), guard.base_f1, report["oof_macro_f1_adapted"], guard.base_f1,
             guard.crossed_f1, "adapted models predict the test set" if applied else "trained models kept")
    return Adapted(report, test_folds, oof_adapted, states) if applied else Adapted(report)


def run_adapt(adapt_cfg, runs, datasets, store, members, oof, predict, average: str, batch_size: int,
              device) -> tuple[dict | None, dict[int, dict]]:
    """``adapt=bn|tent`` over every run (see the module doc): a kept run's member gets the adapted test
    logits, and its OOF rows the adapted predictions. Returns (summary.json's entry, None for adapt=none;
    the kept runs' adapted norm states: run index -> fold -> {"test", "oof"}, for the later options)."""
    from docclassify.predict.oof_rows import plan_view_oof
    from docclassify.predict.run_dirs import split_robust_key

    mode = str(adapt_cfg.name) if adapt_cfg is not None else "none"
    if mode == "none":
        return None, {}
    t0 = time.time()
    lr = float(getattr(adapt_cfg, "lr", 1e-3))  # adapt=tent's (TentAdaptConfig); bn has no lr
    reports, states = [], {}
    for i, (run, ds, member) in enumerate(zip(runs, datasets, members)):
        keys, y, _ = oof.saved[i]
        rows, fold_of = plan_view_oof(run, ds, keys, oof.view)
        groups = split_robust_key(keys)[0] if oof.view == "robust" else np.asarray(keys, dtype=str)
        result = adapt_folds(fold_inputs(run, ds, store, run, oof.view, device, 0, run.path.name), rows, fold_of, y,
                             groups, predict, mode, lr, batch_size, device, run.path.name,
                             member.oof_logits if oof.repredict else None)
        reports.append({"run": str(run.path), **result.report})
        if result.oof is None:
            continue
        states[i] = result.states
        member.fold_test_logits = np.stack([np.asarray(z, dtype=np.float32) for z in result.test_folds])
        member.test_logits = fold_average(result.test_folds, average)
        if oof.repredict:
            member.oof_logits = result.oof
        else:
            oof.saved[i] = (keys, y, result.oof)
    return {"mode": mode, "runs": reports, "applied": any(r["applied"] for r in reports),
            "seconds": round(time.time() - t0, 2)}, states
