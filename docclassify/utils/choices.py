"""The allowed values of every config key that takes one of a fixed set of strings, declared once.

Each set is a ``Literal`` type (for annotations) and its tuple (``typing.get_args``: for the schema's
``key(choices=...)``, checks and messages). The schema (docclassify/config_schema.py), the code that
acts on a value, the YAML comments and the config reference (docs/gen_config_reference.py) all take
them from here; tests/config/test_choices_declared_once.py fails on a set spelled again elsewhere.
The tuple's order is the order messages and docs list the values in.

This module imports nothing from the package or from omegaconf/hydra, so every layer may use it (the
torch-free Predictor included).

Why the schema's fields stay annotated ``str`` (``amp: str = key("none", choices=AMP)``), not with these
Literals: OmegaConf 2.3 (the floor in pyproject.toml, 2.3.1 here) and the 2.4.0 dev releases refuse a
``Literal[...]`` annotation in a structured config ("ValidationError: Unexpected type annotation:
Literal[...]"), so the schema would not compose. ``Literal`` support was merged into OmegaConf after those
releases (omry/omegaconf#1272; ``Optional[Literal]`` as for ``trainer.profiler`` is a further change,
#1271). An Enum, which OmegaConf 2.3 does accept, would hand the code Enum members instead of the strings
every comparison, log line and results.json write uses today. Until OmegaConf's floor has Literal nodes,
the schema checks a value against ``choices`` (config_schema.py ``key``) and the Literals type the code
that acts on a value; tests/config/test_choices_declared_once.py fails once the installed OmegaConf takes
Literal annotations while the schema still says ``str``.
"""

from __future__ import annotations

from typing import Literal, get_args

# ------------------------------------------------------------------------------------------ trainer
Amp = Literal["none", "auto", "bf16", "fp16"]
AMP: tuple[str, ...] = get_args(Amp)
LrScale = Literal["none", "linear", "sqrt"]
LR_SCALE: tuple[str, ...] = get_args(LrScale)
# trainer.monitor: auto = robust when validation has a robust view (validation=robust|both), else clean.
Monitor = Literal["auto", "robust", "clean", "mean"]
MONITOR: tuple[str, ...] = get_args(Monitor)
Profiler = Literal["pytorch"]
PROFILERS: tuple[str, ...] = get_args(Profiler)
# schedule.name (the schedule group's options; timm names).
Schedule = Literal["cosine", "constant"]
SCHEDULES: tuple[str, ...] = get_args(Schedule)

# ------------------------------------------------------------------------------------------ data
Resize = Literal["pad", "stretch"]
RESIZE: tuple[str, ...] = get_args(Resize)
OnBadImage = Literal["error", "skip"]
ON_BAD_IMAGE: tuple[str, ...] = get_args(OnBadImage)
Sampler = Literal["natural", "balanced", "sqrt"]
SAMPLERS: tuple[str, ...] = get_args(Sampler)

# ------------------------------------------------------------------------------------------ model, augment
# augment.orientation: the group of exact turns/mirrors applied (data/dihedral.py).
OrientationGroup = Literal["none", "rot90", "dihedral"]
ORIENTATION_GROUPS: tuple[str, ...] = get_args(OrientationGroup)
# model.orientation_head (data/dihedral.py HEADS: its number of labels).
OrientationHead = Literal["none", "rot4", "dihedral8"]
ORIENTATION_HEADS: tuple[str, ...] = get_args(OrientationHead)
MixupMode = Literal["batch", "pair", "elem"]
MIXUP_MODES: tuple[str, ...] = get_args(MixupMode)

# ------------------------------------------------------------------------------------------ validation, logger, submit
# The validation options with a robust view (validation=robust|both).
RobustValidationName = Literal["robust", "both"]
ROBUST_VALIDATIONS: tuple[str, ...] = get_args(RobustValidationName)
# logger= (the logger group's options).
Logger = Literal["none", "csv", "wandb"]
LOGGERS: tuple[str, ...] = get_args(Logger)
WandbMode = Literal["online", "offline", "disabled"]
WANDB_MODES: tuple[str, ...] = get_args(WandbMode)
# train's ensemble.name (per-fold models).
TrainEnsemble = Literal["none", "multi_model"]
TRAIN_ENSEMBLES: tuple[str, ...] = get_args(TrainEnsemble)
# submit: auto = when the data has labelled test images, outside a sweep (submit.py).
Submit = Literal["auto", "true", "false"]
SUBMIT: tuple[str, ...] = get_args(Submit)

# ------------------------------------------------------------------------------------------ inference
# auto: every set scored on the runs' OOF rows (fit_on), the best kept (predict/tta_auto.py); orient /
# orient_soft: each image's orientation estimated and undone (predict/upright.py).
TtaSet = Literal["none", "flip", "rot90", "dihedral", "essential", "comprehensive", "auto", "orient",
                 "orient_soft"]
TTA_SETS: tuple[str, ...] = get_args(TtaSet)
# The TTA sets that estimate and undo each image's orientation instead of averaging views.
OrientMode = Literal["orient", "orient_soft"]
ORIENT_MODES: tuple[str, ...] = get_args(OrientMode)
# How views, folds and runs are averaged: probabilities or logits.
Average = Literal["prob", "logit"]
AVERAGES: tuple[str, ...] = get_args(Average)
# ensemble.weights of infer (predict/ensemble.py).
WeightMode = Literal["equal", "oof", "greedy", "stack"]
WEIGHT_MODES: tuple[str, ...] = get_args(WeightMode)
# argmax, or per-class biases fitted for macro F1 on the OOF rows (predict/decision.py).
Decision = Literal["argmax", "macro_f1"]
DECISIONS: tuple[str, ...] = get_args(Decision)
# The OOF rows inference decides on: auto = robust when every run has a robust view, else clean.
FitOn = Literal["auto", "robust", "clean"]
FIT_ON: tuple[str, ...] = get_args(FitOn)
# adapt= (test-time adaptation, predict/adapt.py).
AdaptMode = Literal["none", "bn", "tent"]
ADAPT_MODES: tuple[str, ...] = get_args(AdaptMode)

# ------------------------------------------------------------------------------------------ export
ExportFormat = Literal["onnx", "torchscript", "openvino"]
EXPORT_FORMATS: tuple[str, ...] = get_args(ExportFormat)
Quantize = Literal["none", "int8"]
QUANTIZE: tuple[str, ...] = get_args(Quantize)
Exporter = Literal["auto", "dynamo", "torchscript"]
EXPORTERS: tuple[str, ...] = get_args(Exporter)
