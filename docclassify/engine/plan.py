"""Plan the folds of a run: which model option and image size each selected fold trains.

``ensemble.fold_models`` (or the ensemble option's ``preset``) overrides ``model`` per fold;
``data.use_pretrained=false`` forces every fold's model to train from scratch. Every (model,
size) pair is checked to run before any fold starts (fixed-size architectures refuse sizes they
cannot take, naming the ones they accept).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from docclassify.config import load_option
from docclassify.config_schema import DataCommon, EnsembleConfig, FoldsConfig, ModelConfig
from docclassify.data.sources import DataError
from docclassify.models.factory import check_input_size


@dataclass
class FoldPlan:
    fold: int
    model_cfg: ModelConfig
    img_size: int


def _as_fold_dict(raw) -> dict[int, object]:
    raw = OmegaConf.to_container(raw, resolve=True) if isinstance(raw, DictConfig) else dict(raw or {})
    return {int(k): v for k, v in raw.items()}


def fold_model_overrides(ensemble: EnsembleConfig, n_folds: int) -> dict[int, object]:
    """fold -> model option name (or {model, img_size}) from ensemble.fold_models, else its preset."""
    overrides = _as_fold_dict(ensemble.fold_models)
    bad = sorted(k for k in overrides if not 0 <= k < n_folds)
    if bad:
        raise DataError(f"ensemble.fold_models: fold(s) {bad} out of range for folds.n={n_folds}")
    if not overrides:  # the option's preset mapping, cut to the folds that exist
        overrides = {k: v for k, v in _as_fold_dict(ensemble.preset).items() if k < n_folds}
    return overrides


def model_option(name: str) -> ModelConfig:
    """A model option (conf/model/<name>.yaml) as its typed settings, the schema's defaults under it."""
    node = load_option("model", name)
    keys = OmegaConf.masked_copy(node, [k for k in node if k != "defaults"])
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), keys))


def plan_folds(model: ModelConfig, data: DataCommon, folds: FoldsConfig, ensemble: EnsembleConfig,
               selected: list[int]) -> list[FoldPlan]:
    """Model and image size of every ``selected`` fold (ensemble.fold_models overrides ``model``); each
    argument is its group's typed settings."""
    overrides = fold_model_overrides(ensemble, int(folds.n))
    plans, chosen_by = [], {}
    for k in selected:
        model_cfg, size = model, None
        chosen_by[k] = f"model={model.name}"
        if k in overrides:
            spec = overrides[k]
            name = spec["model"] if isinstance(spec, dict) else str(spec)
            size = spec.get("img_size") if isinstance(spec, dict) else None
            option = model_option(name)
            chosen_by[k] = f"ensemble.fold_models fold {k} ({name})"
            # model.pretrained=false on the command line applies to all folds; the orientation head learns from
            # the run's augmentation, not from an architecture: every fold gets it.
            model_cfg = dataclasses.replace(option, pretrained=bool(model.pretrained) and bool(option.pretrained),
                                            orientation_head=model.orientation_head)
        if not data.use_pretrained:
            model_cfg = dataclasses.replace(model_cfg, pretrained=False)
        size = size or data.img_size or model_cfg.img_size
        plans.append(FoldPlan(k, model_cfg, int(size)))
    for plan in plans:  # before any fold trains: a size the architecture cannot run at is refused
        check_input_size(plan.model_cfg.timm_name, plan.img_size, chosen_by[plan.fold])
    return plans
