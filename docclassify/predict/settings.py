"""The infer config's top-level keys, checked once (each error names the key), and its groups as typed
objects (OmegaConf.to_object, built once): predict/pipeline.py's settings, read before any run is loaded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from docclassify.config_schema import (
    AdaptConfig,
    InferData,
    InferEnsemble,
    InferSpecialists,
    SecondPassConfig,
    TentAdaptConfig,
    TTAConfig,
    group_settings,
)
from docclassify.data.sources import DataError
from docclassify.predict.decision import DECISIONS
from docclassify.predict.ensemble import AVERAGES
from docclassify.predict.outputs import SUBMISSION_FILE
from docclassify.predict.second_pass import SecondPassSettings
from docclassify.utils.choices import WEIGHT_MODES

# Weight modes that need every run's OOF rows to be the same rows (they learn from them jointly).
SELECTION_MODES = ("greedy", "stack")


@dataclass
class Settings:
    weights: str
    average: str
    calibrate: bool
    oof_tta: bool
    batch_size: int
    output: Path | None
    fit_on: str = "auto"  # auto, robust or clean: resolved against the runs in run_inference
    decision: str = "argmax"  # argmax or macro_f1 (predict/decision.py)
    mimic_fold_average: bool = True  # fit on OOF rows scaled like fold averages (mimic_fold_averages)
    second_stage: bool = False  # adapt, tta.per_class, second_pass or specialists on (they need OOF rows)
    estimate: bool = True  # one run: its OOF rows predicted as the test is, their F1 in summary.json's "oof"
    reuse_logits: bool = True  # fold predictions read from / written to the logit store (predict/logit_store.py)


@dataclass
class InferGroups:
    """The infer config's groups as their schema dataclasses: the pipeline's steps receive these, not cfg."""

    tta: TTAConfig
    adapt: AdaptConfig | TentAdaptConfig
    second_pass: SecondPassConfig
    specialists: InferSpecialists
    ensemble: InferEnsemble
    data: InferData


# InferGroups' fields: the schema of each (a tuple: one of its options' schemas).
INFER_GROUPS = {"tta": TTAConfig, "adapt": (AdaptConfig, TentAdaptConfig), "second_pass": SecondPassConfig,
                "specialists": InferSpecialists, "ensemble": InferEnsemble, "data": InferData}


def infer_groups(cfg: DictConfig) -> InferGroups:
    """Every group of a composed, checked infer config as its typed object (OmegaConf.to_object)."""
    return InferGroups(**{group: group_settings(cfg, group, schema) for group, schema in INFER_GROUPS.items()})


def read_settings(cfg: DictConfig, groups: InferGroups) -> Settings:
    """The top-level inference keys, checked (each error names the key); ``groups``: infer_groups(cfg)."""
    weights, average = str(groups.ensemble.weights), str(groups.ensemble.average)
    if weights not in WEIGHT_MODES:
        raise DataError(f"ensemble.weights={weights!r}: expected one of {', '.join(WEIGHT_MODES)}")
    if average not in AVERAGES:
        raise DataError(f"ensemble.average={average!r}: expected one of {', '.join(AVERAGES)}")
    decision = str(cfg.get("decision", "argmax"))
    if decision not in DECISIONS:
        raise DataError(f"decision={decision!r}: expected one of {', '.join(DECISIONS)}")
    batch_size = cfg.batch_size
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size={batch_size!r}: expected a positive integer")
    output = Path(str(cfg.output)).expanduser() if cfg.output else None
    if output is not None and output.is_dir():
        output = output / SUBMISSION_FILE
    return Settings(weights, average, bool(cfg.calibrate), bool(cfg.oof_tta), batch_size, output,
                    str(cfg.get("fit_on", "auto")), decision, bool(cfg.get("mimic_fold_average", True)),
                    second_stage_on(groups), bool(cfg.get("estimate", True)), bool(cfg.get("reuse_logits", True)))


def second_stage_on(groups: InferGroups) -> bool:
    """Whether any second-stage option is on (docs/second-stage.md)."""
    return bool(str(groups.adapt.name) != "none"
                or SecondPassSettings.of(groups.second_pass).enabled
                or bool(groups.specialists.enabled)
                or (str(groups.tta.name) == "auto" and bool(groups.tta.per_class)))
