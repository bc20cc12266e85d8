"""Inference building blocks: exact TTA, temperature scaling, ensembling, submissions.

Submodules: :mod:`.tta` (needs torch), :mod:`.calibration`, :mod:`.ensemble`,
:mod:`.submission` (numpy/scipy/pandas only). Names are imported lazily, so importing
``docclassify.predict.submission`` does not pull in torch. The flow that uses them,
``python -m docclassify.infer``, is :func:`.pipeline.run_inference` (with :mod:`.runs`,
which finds the training runs).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "tta": (
        "View", "VIEW_SETS", "apply_view", "apply_view_numpy", "get_views", "predict_tta",
        "predict_tta_batches", "resolve_tta",
    ),
    "calibration": (
        "apply_temperature", "calibration_report", "ece", "fit_temperature", "nll",
    ),
    "ensemble": ("combine", "fit_oof_weights", "normalize_weights"),
    "submission": (
        "build_probability_frame", "build_submission", "check_submission", "write_outputs",
        "write_probability_frame", "write_submission",
    ),
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}

__all__ = [
    "VIEW_SETS",
    "View",
    "apply_temperature",
    "apply_view",
    "apply_view_numpy",
    "build_probability_frame",
    "build_submission",
    "calibration_report",
    "check_submission",
    "combine",
    "ece",
    "fit_oof_weights",
    "fit_temperature",
    "get_views",
    "nll",
    "normalize_weights",
    "predict_tta",
    "predict_tta_batches",
    "resolve_tta",
    "write_outputs",
    "write_probability_frame",
    "write_submission",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
