"""The second stage's place in predict/pipeline.py (issue 32, docs/second-stage.md): ``adapt`` before the
ensemble is fitted, then ``tta.per_class``, ``second_pass`` and ``specialists`` after it; each guarded on
the OOF rows (predict/stage.py holds what they share, one module per option)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from docclassify.predict.adapt import run_adapt
from docclassify.predict.fitting import OofFit
from docclassify.predict.imagestore import ImageStore
from docclassify.predict.members import Member
from docclassify.predict.oof_rows import OofInputs
from docclassify.predict.run_dirs import Run
from docclassify.predict.second_pass import SecondPassSettings, run_second_pass
from docclassify.predict.settings import InferGroups, Settings
from docclassify.predict.specialists import run_specialists
from docclassify.predict.stage import build_stage, refit_decision
from docclassify.predict.testdata import DataSet
from docclassify.predict.tta_auto import TtaChoice, run_per_class


@dataclass
class FirstPass:
    """The first pass's objects the options start from: the runs, their data and images, how the fold
    models predict, and the members they made."""

    runs: list[Run]
    datasets: list[DataSet]
    store: ImageStore
    predictor: object  # views.TtaPredictor or orientation.OrientPredictor
    device: torch.device
    members: list[Member]


def adapt(groups: InferGroups, settings: Settings, first: FirstPass,
          oof: OofInputs | None) -> tuple[dict | None, dict]:
    """[second stage 1/4] adapt=bn|tent: the fold models adapted to the test images (before the ensemble is
    fitted). Returns (summary.json's entry, the kept runs' adapted norm states)."""
    if not settings.second_stage:
        return None, {}
    predictor = first.predictor
    return run_adapt(groups.adapt, first.runs, first.datasets, first.store, first.members, oof,
                     lambda m, im, r, meta: predictor.predict(m, im, r, meta)[1], settings.average,
                     settings.batch_size, first.device)


def refine(groups: InferGroups, settings: Settings, first: FirstPass, oof_fit: OofFit, adapted: dict,
           adapt_summary: dict | None, choice: TtaChoice | None, tta_average: str) -> tuple[np.ndarray | None, dict]:
    """[second stage 2-4/4] after the ensemble is fitted: (the test probabilities they leave, None when
    none ran; summary.json's entries). The decision rule is refitted on the OOF rows they changed."""
    stage = build_stage(first.runs, first.datasets, first.store, first.members, oof_fit, settings,
                        first.predictor, first.device, adapted) if settings.second_stage else None
    if stage is None:
        return None, {}
    second = {}
    # [2/4] tta=auto tta.per_class=true: a view set per predicted class
    if choice is not None and groups.tta.per_class:
        second["tta_per_class"] = run_per_class(stage, choice, tta_average, (adapt_summary or {}).get("applied"))
    # [3/4] second_pass.enabled: unsure images re-predicted through restoration views
    if SecondPassSettings.of(groups.second_pass).enabled:
        second["second_pass"] = run_second_pass(stage, SecondPassSettings.of(groups.second_pass))
    # [4/4] specialists.enabled: top-2 in a confused class group -> the group's specialist
    if groups.specialists.enabled:
        second["specialists"] = run_specialists(stage)
    refit_decision(stage, oof_fit, settings.decision)
    return stage.test_probs, second
