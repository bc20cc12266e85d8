"""The inference flow of ``python -m docclassify.infer``: training runs -> a submission, read top to bottom.

    settings       predict/settings.py     the infer config's top-level keys, checked once
    runs           predict/run_dirs.py         run dirs or sweep folders -> Runs (checkpoints, classes, OOF files)
    1 test data    predict/testdata.py     each run's own data config + infer's data.* overrides, or a loose
                   predict/imagestore.py   folder; the test images decoded once per (size, resize, pad)
    2 members      predict/members.py      per run, per fold model: the test images (and its OOF rows)
    3 views        predict/views.py        how a fold model predicts: the tta option's views (tta=auto: the
                   predict/tta_auto.py     set that scores best on the OOF rows); orient: predict/upright.py
      OOF rows     predict/oof_rows.py     which OOF rows are fitted on (fit_on), re-predicted with the views
    4 averaging    predict/averaging.py    a run's folds averaged: the member's test log-probabilities
      2nd stage    predict/second_stage.py adapt, tta.per_class, second_pass, specialists (guarded on OOF rows)
    5 fitting      predict/fitting.py      weights or stacker, temperature, decision biases: OOF rows only
    6 decision     predict/ensemble.py     members combined -> probabilities (test_probs.csv);
                   predict/decision.py     the rule -> the classes (submission.csv)
    7 outputs      predict/outputs.py      submission.csv, test_probs.csv, summary.json, the test report

Everything that can be wrong with the input (runs, checkpoints, classes, test images, sample submission,
test labels, settings) is checked before the first prediction, and nothing is written until every
prediction is made: a bad input stops the run with a clear error and no output files.

One ensemble member is one run: its folds' test predictions are averaged, and its out-of-fold (OOF)
predictions, each row predicted by the fold that did not train on it, stand for it when weights, the
temperature and the decision rule are fitted (no row a model trained on is used). With ``oof_tta=true``
and views beyond the identity, the OOF rows are predicted again with the same views, so what is fitted
matches the TTA-averaged test probabilities. ``fit_on`` picks those rows: ``robust`` (the distorted
copies, oof_robust.csv: what the test looks like; the default when every run has them) or ``clean``
(oof.csv); ``top_k``, the weights, the temperature and ``tta=auto`` all follow it.

The deployment's RunRunner (deploy/runs.py) runs steps 3, 4 and 6 with these same functions
(views.make_predictor, averaging.average_folds, ensemble.ensemble_test_probs, decision.apply_biases).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from docclassify.engine.setup import resolve_device
from docclassify.predict import second_stage
from docclassify.predict.decision import decide
from docclassify.predict.ensemble import ensemble_test_probs
from docclassify.predict.estimate import estimate_test_f1
from docclassify.predict.fitting import fit_on_oof
from docclassify.predict.imagestore import decode_test_images
from docclassify.predict.logit_store import LogitStore
from docclassify.predict.members import predict_members
from docclassify.predict.oof_rows import needs_oof, prepare_oof
from docclassify.predict.outputs import build_outputs, write_output_files, write_test_report
from docclassify.predict.run_dirs import (
    Run,
    check_same_robust_copies,
    discover_runs,
    resolve_fit_on,
    select_top_k,
)
from docclassify.predict.settings import Settings, infer_groups, read_settings
from docclassify.predict.testdata import (
    DATA_OVERRIDES,
    load_data,
    load_test_labels,
    require_training_rows,
)
from docclassify.predict.tta import resolve_tta
from docclassify.predict.tta_auto import choose_tta
from docclassify.predict.views import make_predictor

log = logging.getLogger(__name__)


def find_runs(cfg: DictConfig, settings: Settings, auto_tta: bool) -> list[Run]:
    """The runs of ``runs=[...]`` (the top_k best by their cv figure on the fit_on rows), with
    ``settings.fit_on`` resolved against them."""
    runs = discover_runs(OmegaConf.to_container(cfg.runs) if OmegaConf.is_config(cfg.runs) else cfg.runs)
    settings.fit_on = resolve_fit_on(runs, settings.fit_on)
    runs = select_top_k(runs, cfg.top_k, settings.fit_on)
    if settings.fit_on == "robust" and len(runs) > 1 and (needs_oof(settings, len(runs)) or auto_tta):
        check_same_robust_copies(runs)  # their robust rows are paired by ID#copy
    return runs


def run_inference(cfg: DictConfig, out_dir: str | Path) -> dict:
    """Predict the test set with the runs of ``cfg.runs`` and write the outputs into ``out_dir``.

    Returns the summary dict (also written as summary.json).
    """
    t_start = time.time()
    groups = infer_groups(cfg)  # the tta, adapt, second_pass, specialists, ensemble and data groups, typed once
    settings, tta = read_settings(cfg, groups), groups.tta
    auto_tta = str(tta.name) == "auto"  # the views are chosen in step 3, on the OOF rows
    views, tta_average = resolve_tta({"name": "none" if auto_tta else tta.name, "average": tta.average})
    runs = find_runs(cfg, settings, auto_tta)

    # 1 test data: the runs' test set, its labels when known, its images decoded up front
    cache_dir = str(cfg.paths.cache_dir)
    datasets = load_data(runs, {k: getattr(groups.data, k) for k in DATA_OVERRIDES}, cache_dir, cfg.get("inputs"))
    # a loose folder without the training images: the saved OOF predictions, as they are
    settings.oof_tta = settings.oof_tta and require_training_rows(datasets, auto_tta, settings.second_stage)
    source = datasets[0].source
    y_test = load_test_labels(source)
    device = resolve_device(cfg.device)
    log.info("%d run(s), %d fold model(s), %d test images, TTA %s (%s average), decisions fitted on the %s "
             "OOF rows, device %s", len(runs), sum(len(r.folds) for r in runs), len(source.test),
             tta.name, tta_average, settings.fit_on, device)
    store = decode_test_images(runs, datasets, cache_dir, bool(tta.deskew))
    # fold predictions made before (same checkpoint, views, images) are read, not predicted again
    logit_store = LogitStore(cache_dir, settings.reuse_logits and not settings.second_stage,
                             "reuse_logits=false" if not settings.reuse_logits else "a second-stage option is on")

    # 3 views: the option's, or tta=auto's choice on the OOF rows; then the OOF rows to fit on
    choice = choose_tta(runs, datasets, store, settings, tta_average, device, logit_store) if auto_tta else None
    views = choice.views if choice is not None else views
    oof = prepare_oof(runs, datasets, settings, views, settings.fit_on, predicted=choice is not None)

    # 2 members, 4 fold averaging: every fold model on the test images (and its OOF rows), folds averaged
    predictor = make_predictor(str(tta.name), views, tta_average, settings.batch_size, device, tta.upright_flip)
    members = predict_members(runs, datasets, store, predictor, settings.average, oof, logit_store)
    logit_store.log_counts()
    if choice is not None and oof is not None and oof.repredict:  # the chosen set's OOF predictions
        for member, logits in zip(members, choice.oof_logits):
            member.oof_logits = logits
    first = second_stage.FirstPass(runs, datasets, store, predictor, device, members)
    adapt_summary, adapted = second_stage.adapt(groups, settings, first, oof)  # adapted members, before fitting

    # 5 fitting on the OOF rows; 6 decision: the members combined, then the rule
    oof_fit = fit_on_oof(members, oof, settings.average, settings.weights, settings.calibrate, settings.decision,
                         settings.mimic_fold_average)
    probs = ensemble_test_probs([m.test_logits for m in members], oof_fit.weights, settings.average,
                                oof_fit.stacker, oof_fit.temperature if settings.calibrate else None)
    # the test F1 estimated without labels: a confidence threshold fitted on the OOF rows, applied to these
    # images; of the first pass (a second-stage option's changes are guarded on the OOF rows, not estimated)
    estimate = estimate_test_f1(oof_fit.probs, oof_fit.rows.y, probs) \
        if settings.estimate and oof_fit.probs is not None else None
    refined, second = second_stage.refine(groups, settings, first, oof_fit, adapted, adapt_summary, choice, tta_average)
    probs = refined if refined is not None else probs
    pred = decide(probs, oof_fit.decision)  # test_probs.csv keeps the probabilities; the rule moves the argmax

    # 7 outputs: built and checked, then written together
    tta_info = {"name": str(tta.name), "views": [v.name for v in views], "average": tta_average}
    outputs = build_outputs(source, members, oof_fit, settings, tta_info, choice, probs, pred, y_test, store,
                            device, {"adapt": adapt_summary, **second}, getattr(predictor, "estimator", None))
    outputs.summary["estimate"] = estimate
    outputs.summary["logits_reused"] = logit_store.summary()
    outputs.summary["seconds"] = round(time.time() - t_start, 2)
    write_output_files(outputs, Path(out_dir), settings.output)
    if y_test is not None:
        write_test_report(Path(out_dir), y_test, probs, pred, runs[0].classes, source.test["ID"].tolist(),
                          store.get(datasets[0], "test", runs[0].folds[0].meta),
                          f"Test set: {len(runs)} run(s), TTA {tta.name}", outputs.summary["orientation"])
    return outputs.summary
