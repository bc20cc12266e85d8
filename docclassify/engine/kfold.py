"""The K-fold run of one experiment: what ``python -m docclassify.train`` does.

    start_run      checks, run dir, seed, device, AMP (a RunContext)
    load_run_data  data source -> fold plans -> decoded images per size -> fold assignment
                   (+ pseudo.source: the selected test images and their teacher labels, data/pseudo.py)
    add_robust_copies  the distortion profile -> every row's distorted copies per size (validation)
    run_fold       for each selected fold (engine.fold: build, epochs, best checkpoint, OOF logits)
    pool_oof       the folds' OOF rows -> oof.csv + cv macro F1, oof_robust.csv + its F1 (engine.oof)
    results.json   written last; the value returned to Hydra (and a sweep) is the objective: the
                   pooled value trainer.monitor picks (robust, clean or their mean)

Each finished fold is written to disk at once, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from docclassify.config_schema import (
    AugmentConfig,
    CleanValidation,
    ConstantSchedule,
    DataCommon,
    EnsembleConfig,
    FoldsConfig,
    ModelConfig,
    RegularizationConfig,
    RobustValidation,
    ShiftCheck,
    TrainerConfig,
    check_config,
    group_settings,
)
from docclassify.data.cache import handle_bad_images, load_images
from docclassify.data.folds import assign_folds, duplicate_groups_for, folds_from_file, folds_to_run
from docclassify.data.images import image_size
from docclassify.data.pseudo import (
    SELECTION_FILE,
    PseudoSet,
    check_unchanged,
    load_pseudo_set,
    selection_frame,
)
from docclassify.data.sources import DataSource, apply_decisions, load_source
from docclassify.data.validation import robust_copies
from docclassify.distortion import describe, normalise_profile, resolve_profile
from docclassify.distortion.copies import RobustSpec
from docclassify.distortion.report import run_shift_check
from docclassify.engine import distributed, share
from docclassify.engine.epoch import StopRequested
from docclassify.engine.evaluate import monitored_value, resolve_monitor, validated_views
from docclassify.engine.fold import run_fold
from docclassify.engine.losses import check_loss_config
from docclassify.engine.oof import RESULTS_FILE, copies_recipe, pool_oof
from docclassify.engine.plan import FoldPlan, plan_folds
from docclassify.engine.resume import check_resume_compatible, resolve_run_dir, save_overrides
from docclassify.engine.setup import (
    AmpSettings,
    amp_settings,
    channels_last_setting,
    resolve_device,
    seed_everything,
    set_deterministic,
)
from docclassify.engine.signals import StopFlag
from docclassify.tracking import phases
from docclassify.tracking.callbacks import Callback, CallbackList
from docclassify.utils.io import atomic_group, atomic_write_csv, atomic_write_json

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    """Where and how this run trains (shared by every fold). ``trainer``, ``data_settings``, ``augment``,
    ``regularization``, ``model``, ``schedule``, ``validation``, ``folds``, ``ensemble`` and ``shift`` are the
    typed objects of those groups (built once by :func:`group_settings`): the loaders, the epoch loop, the
    augmentation, the fold plan and the fold's parts receive them, not ``cfg``. ``loss`` stays the composed
    node: it is instantiated from its ``_target_`` (a user's own loss class has keys no schema declares)."""

    cfg: DictConfig
    run_dir: Path
    seed: int
    device: torch.device
    amp: AmpSettings
    stop: StopFlag
    callback: Callback
    trainer: TrainerConfig
    data_settings: DataCommon
    augment: AugmentConfig
    regularization: RegularizationConfig
    model: ModelConfig
    schedule: ConstantSchedule
    validation: CleanValidation | RobustValidation
    folds: FoldsConfig
    ensemble: EnsembleConfig
    shift: ShiftCheck
    loss: DictConfig

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def fold_dir(self) -> Path:
        return self.run_dir / "folds"


@dataclass
class RunData:
    """The training rows of this run, decoded once per image size, and their fold assignment."""

    source: DataSource
    plans: list[FoldPlan]
    images_by_size: dict[int, object]
    folds: np.ndarray          # validation fold of every row (-1: always trains)
    keep: np.ndarray           # False for rows skipped as undecodable (data.on_bad_image=skip)
    skipped_ids: list[str]
    # validation.distort=auto: the profile fitted from the train-vs-test shift (distortion/report.py), else None
    fitted_profile: dict | None = None
    duplicate_groups: dict | None = None  # folds.group_duplicates: what was grouped (results.json)
    robust: RobustSpec | None = None  # the robust view's profile, copies and seed (None: validation=clean)
    copies_by_size: dict[int, object] = field(default_factory=dict)  # every row's copies per size
    own_sizes: list | None = None  # (height, width) of every row's image file (augment.match_validation)
    # pseudo.source: test images that join every fold's training rows (never a validation fold)
    pseudo: PseudoSet | None = None

    @property
    def targets(self) -> np.ndarray:
        return self.source.train["target"].to_numpy()

    @property
    def ids(self) -> np.ndarray:
        return self.source.train["ID"].to_numpy()

    @property
    def classes(self) -> list[str]:
        return self.source.classes

    @property
    def num_classes(self) -> int:
        return self.source.num_classes

    def match_profile(self) -> dict:
        """The profile augment.match_validation trains with: the robust copies' (validation.distort,
        or the fitted one for auto), under validation=clean the default profile."""
        return dict(self.robust.profile) if self.robust is not None else normalise_profile({})

    def image_sizes(self) -> list:
        """Every row's (height, width) as decoded, from the file headers (read once; None: unreadable),
        the pseudo rows' after the training rows' (their row numbers in a fold's training set)."""
        if self.own_sizes is None:
            paths = list(self.source.train["path"])
            if self.pseudo is not None:
                paths += [self.source.test["path"].iloc[int(r)] for r in self.pseudo.test_rows]
            self.own_sizes = [image_size(p) for p in paths]
        return self.own_sizes

    def validation_rows(self, k: int) -> np.ndarray:
        return np.flatnonzero((self.folds == k) & self.keep)

    def training_rows(self, k: int) -> np.ndarray:
        return np.flatnonzero((self.folds != k) & self.keep)


def run_kfold(cfg: DictConfig, callbacks: list[Callback] | None = None) -> dict:
    """Train every selected fold and write results.json / oof.csv. Returns the results dict."""
    t_start = time.time()
    run = start_run(cfg, CallbackList(callbacks))
    data = load_run_data(run)
    with phases.spend("robust copies"):
        add_robust_copies(run, data)
    log_match(run, data)
    run.stop.install()  # SIGTERM/SIGINT from here on: finish the step, save the state, exit
    run.callback.on_run_start(run_info(run, data))
    outcomes = []
    try:
        for plan in data.plans:
            # A signal during the previous fold's last validation (all DDP ranks decide together).
            if not distributed.all_ranks_true(not run.stop.requested):
                raise StopRequested(f"stop requested before fold {plan.fold}")
            outcomes.append(run_fold(plan, run, data))
    except BaseException:
        run.callback.close()  # trackers finish their runs (marked failed) even when training stops
        raise
    finally:
        run.stop.uninstall()
        share.stop()
    try:
        with phases.spend("reports"):
            results = finish_run(run, data, outcomes, time.time() - t_start)
        run.callback.on_run_end(results)
    finally:
        run.callback.close()
    robust = results.get("cv_macro_f1_robust")
    log.info("cv macro F1 %.4f%s over %d OOF rows (%s); objective (%s) %.4f -> %s", results["cv_macro_f1"],
             f", robust {robust:.4f}" if robust is not None else "", results["n_oof_rows"],
             ", ".join(f"fold {f['fold']}: {f['best_macro_f1']:.4f}" for f in results["folds"]),
             results["monitor"], results["objective"], run.run_dir)
    return results


# RunContext's typed fields: the group each is built from and its schema (a tuple: one of its options' schemas).
TYPED_GROUPS = {"trainer": ("trainer", TrainerConfig), "data_settings": ("data", DataCommon),
                "augment": ("augment", AugmentConfig), "regularization": ("regularization", RegularizationConfig),
                "model": ("model", ModelConfig), "schedule": ("schedule", ConstantSchedule),
                "validation": ("validation", (CleanValidation, RobustValidation)), "folds": ("folds", FoldsConfig),
                "ensemble": ("ensemble", EnsembleConfig), "shift": ("shift", ShiftCheck)}


def run_settings(cfg: DictConfig) -> dict:
    """RunContext's settings fields from a composed, checked config: every group of TYPED_GROUPS as its typed
    object, and the loss group's node (instantiated from its ``_target_``: a user's own loss class takes keys
    no schema declares, so it has no typed object)."""
    settings = {name: group_settings(cfg, group, schema) for name, (group, schema) in TYPED_GROUPS.items()}
    return {**settings, "loss": cfg.loss}


def start_run(cfg: DictConfig, callback: Callback) -> RunContext:
    """Checks, typed group settings, process group, run dir, determinism, seed, device and AMP, before
    any data is read."""
    check_config(cfg)
    check_loss_config(cfg.loss)  # a wrong loss._target_ or argument: stop before any data is read
    settings = run_settings(cfg)  # after check_config: the old key names applied
    trainer = settings["trainer"]
    distributed.init_from_env()  # under torchrun: join the process group (only rank 0 writes files)
    run_dir = resolve_run_dir(cfg)
    if distributed.is_main():
        for d in (run_dir / "checkpoints", run_dir / "folds"):
            d.mkdir(parents=True, exist_ok=True)
    set_deterministic(bool(trainer.deterministic))
    seed_everything(int(cfg.seed))
    device = distributed.device_for(resolve_device(trainer.device))
    share.start(trainer.threads, cfg.paths.cache_dir)  # this job's threads and loader workers
    return RunContext(cfg, run_dir, int(cfg.seed), device, amp_settings(trainer.amp, device),
                      StopFlag(), callback, **settings)


def load_run_data(run: RunContext) -> RunData:
    """Data source, fold plans, decoded images (once per image size) and the fold of every row."""
    cfg, data_settings = run.cfg, run.data_settings
    with distributed.main_first():  # rank 0 builds generated data / caches, the other ranks reuse them
        source = load_source(data_settings, cfg.paths.cache_dir)
    source = apply_decisions(source, data_settings.relabel, data_settings.exclude)
    pseudo = load_pseudo_set(cfg.get("pseudo"), source)  # a bad pseudo.source stops here, before any decoding
    n_folds = int(run.folds.n)
    plans = plan_folds(run.model, data_settings, run.folds, run.ensemble, folds_to_run(run.folds.run, n_folds))
    if distributed.is_main():
        check_resume_compatible(run.run_dir, cfg)
        save_overrides(run.run_dir)
    # Train-vs-test shift: a few log lines, shift.png / shift.json; fits validation.distort=auto.
    with distributed.main_first(), phases.spend("shift report"):  # rank 0 measures (and caches)
        fitted_profile = run_shift_check(source, run.validation, run.shift, data_settings, cfg.paths.cache_dir,
                                         run.run_dir, write=distributed.is_main())
    paths = list(source.train["path"])
    images_by_size, bad_rows = {}, set()
    for size in sorted({p.img_size for p in plans}):
        # Every image is decoded before the first epoch (into the cache, or once up front with
        # data.cache=false: then only rank 0 checks and the other ranks take its list).
        with distributed.main_first(), phases.spend("decode cache"):
            images_by_size[size], bad = load_images(paths, size, data_settings, cfg.paths.cache_dir,
                                                    check=distributed.is_main())
        bad_rows.update(distributed.broadcast_object(bad))
    if cfg.get("submit"):  # submit=true predicts the test set after training: its images are checked now
        check_test_images(source, sorted({p.img_size for p in plans}), data_settings, cfg.paths.cache_dir)
    # One decision (and one warning) for the bad images of every image size.
    skipped = sorted(handle_bad_images(source.train["ID"].tolist(), sorted(bad_rows), data_settings.on_bad_image))
    keep = ~source.train["ID"].isin(skipped).to_numpy()
    targets = source.train["target"].to_numpy()
    row_ids = np.flatnonzero(keep)  # positions in source.train that take part
    folds = np.full(len(source.train), -1, dtype=np.int64)
    if run.folds.file:  # folds.file: another run's folds (class-group specialists: their run's)
        grouped = None
        folds[row_ids] = folds_from_file(run.folds.file, source.train["ID"].to_numpy(dtype=str)[row_ids], n_folds)
    else:
        with distributed.main_first():
            groups, grouped = duplicate_groups_for(run.folds, [paths[i] for i in row_ids], cfg.paths.cache_dir)
        folds[row_ids] = assign_folds(targets[row_ids], n_folds, run.seed, groups)
    if distributed.is_main():
        atomic_write_csv(pd.DataFrame({"ID": source.train["ID"], "target": targets, "fold": folds}),
                         run.run_dir / "folds.csv")
    data = RunData(source, plans, images_by_size, folds, keep, skipped, fitted_profile, grouped)
    data.pseudo = load_pseudo_images(run, source, pseudo, sorted({p.img_size for p in plans}))
    return data


def load_pseudo_images(run: RunContext, source: DataSource, pseudo: PseudoSet | None,
                       sizes: list[int]) -> PseudoSet | None:
    """pseudo.source: the selected test images (data/pseudo.py) decoded, and the selection written to
    pseudo_labels.csv (a resumed run must find it equal: the same teacher, the same rows)."""
    if pseudo is None:
        return None
    if len(pseudo):
        decode_pseudo_images(run, source, pseudo, sizes)
    frame = selection_frame(pseudo, source.classes)
    if distributed.is_main():
        check_unchanged(run.run_dir, frame)
        atomic_write_csv(frame, run.run_dir / SELECTION_FILE, index=False)
    counts = ", ".join(f"{c} {n}" for c, n in pseudo.counts(source.classes).items() if n)
    log.info("pseudo.source=%s: %d of %d test images added to every fold's training rows (%s labels, weight %g)%s",
             pseudo.source, len(pseudo), pseudo.n_pool, "soft" if pseudo.soft else "hard", pseudo.weight,
             f": {counts}" if counts else "")
    return pseudo


def decode_pseudo_images(run: RunContext, source: DataSource, pseudo: PseudoSet, sizes: list[int]) -> None:
    """The test split decoded at every training size through the same cache as the training images
    (the entry inference reuses); a selected image that cannot be decoded is left out with a warning."""
    paths, bad = list(source.test["path"]), set()
    for size in sizes:
        with distributed.main_first():
            pseudo.images_by_size[size], found = load_images(paths, size, run.data_settings, run.cfg.paths.cache_dir,
                                                             check=distributed.is_main())
        bad.update(distributed.broadcast_object(found))
    undecodable = np.isin(pseudo.test_rows, sorted(bad))
    if undecodable.any():
        log.warning("pseudo.source: %d selected test image(s) cannot be decoded and are left out: %s",
                    int(undecodable.sum()), ", ".join(np.asarray(pseudo.ids)[undecodable][:20]))
        pseudo.drop(~undecodable)


def check_test_images(source: DataSource, sizes: list[int], data_settings: DataCommon, cache_dir) -> None:
    """Every test image decoded (into the decode cache inference reuses, or once up front with
    data.cache=false) at every size the folds train at; an undecodable one stops the run before
    the first epoch (inference would refuse it after training; test rows cannot be skipped)."""
    from docclassify.data.sources import DataError
    from docclassify.errors import format_ids

    if source.test is None or source.test.empty:
        return
    paths, bad = list(source.test["path"]), set()
    for size in sizes:
        with distributed.main_first():
            _, found = load_images(paths, size, data_settings, cache_dir, check=distributed.is_main())
        bad.update(distributed.broadcast_object(found))
    if bad:
        ids = source.test["ID"].iloc[sorted(bad)].tolist()
        raise DataError(f"submit=true: {len(ids)} test image(s) cannot be decoded: {format_ids(ids, limit=50)}. "
                        "Fix or replace them (every test row needs a prediction), or train with submit=false")


def resolve_distort_profile(run: RunContext, data: RunData) -> dict:
    """The distortion profile of the robust copies: ``validation.distort`` as given (its keys, a
    shipped profile's name or a YAML path: distortion/profile.py), or for ``auto`` the one fitted
    from the data's measured train-vs-test shift (distortion/report.py, which also saves it in the
    run dir)."""
    distort = run.validation.distort
    if distort != "auto":
        return resolve_profile(distort)
    # Fitted (and saved as distort_profile.yaml) by the shift check in load_run_data, which refuses
    # auto when the data has no test images.
    return normalise_profile(data.fitted_profile)


def add_robust_copies(run: RunContext, data: RunData) -> None:
    """With a robust view (validation=robust|both): every training row's distorted copies at every
    image size the folds train at, built once (cached like the decoded images)."""
    validation = run.validation
    if "robust" not in validated_views(validation):
        return
    with distributed.main_first():  # an auto profile is fitted (and saved) by rank 0 first
        profile = resolve_distort_profile(run, data)
    data.robust = RobustSpec(profile, int(validation.copies), int(validation.seed))
    settings, train = run.data_settings, data.source.train
    cache_dir = run.cfg.paths.cache_dir if settings.cache else None
    for size in sorted({p.img_size for p in data.plans}):
        with distributed.main_first():
            data.copies_by_size[size] = robust_copies(list(train["path"]), list(train["ID"]), data.robust, size,
                                                      settings.resize, int(settings.pad_value), cache_dir)
    log.info("validation=%s: %d distorted copies of every validation image (seed %d); trainer.monitor=%s picks "
             "the best epoch", validation.name, data.robust.copies, data.robust.seed,
             resolve_monitor(validation, str(run.trainer.monitor)))
    if isinstance(validation.distort, str):  # a named profile or a file: say what it draws
        log.info("validation.distort=%s: %s", validation.distort, describe(profile))


def log_match(run: RunContext, data: RunData) -> None:
    """augment.match_validation: say which profile the training samples are distorted with."""
    augment = run.augment
    if not augment.match_validation:
        return
    validation = run.validation
    origin = ("the default profile" if data.robust is None else
              "the fitted profile of validation.distort=auto" if data.fitted_profile is not None else
              f"validation.distort={validation.distort}" if isinstance(validation.distort, str) else
              "validation.distort")
    log.info("augment.match_validation: %.0f%% -> %.0f%% of the training samples distorted like the robust "
             "copies (%s; validation=%s), drawn fresh per sample and epoch", 100 * augment.match_p_start,
             100 * augment.match_p_end, origin, validation.name if validation is not None else "clean")


def run_info(run: RunContext, data: RunData) -> dict:
    """What on_run_start tells the trackers (and the log) about the run."""
    folds = [p.fold for p in data.plans]
    n_train = int(data.keep.sum())
    log.info("%s: %d training images, %d classes, folds %s of %d, device %s, AMP %s%s", data.source.name, n_train,
             data.num_classes, folds, int(run.folds.n), run.device, run.amp.name,
             ", channels-last" if channels_last_of(run) else "")
    return {"run_dir": str(run.run_dir), "classes": data.classes, "folds": folds, "n_train": n_train,
            "n_pseudo": len(data.pseudo) if data.pseudo is not None else 0,
            "device": str(run.device), "amp": run.amp.name}


def channels_last_of(run: RunContext) -> bool:
    return channels_last_setting(run.trainer.channels_last, run.amp, run.device)


def run_objective(pooled: dict, monitor: str) -> float:
    """The run's objective (what a sweep optimises): the pooled value ``monitor`` picks (for the robust
    view the selecting copies', which already picked the epochs: a sweep picks among trials on them too,
    and cv_macro_f1_robust stays a figure nothing was chosen on)."""
    return monitored_value({"val_macro_f1": pooled["cv_macro_f1"],
                            "val_macro_f1_robust": pooled.get("cv_macro_f1_robust"),
                            "val_macro_f1_robust_select": pooled.get("cv_macro_f1_robust_select")}, monitor)


def run_results(pooled: dict, cfg, data_info: dict, skipped_ids: list[str], outcomes: list[dict],
                robust: RobustSpec | None = None) -> dict:
    """results.json: the pooled OOF metrics and folds, the objective, plus what identifies the run."""
    validation = cfg.get("validation")
    monitor = resolve_monitor(validation, str(OmegaConf.select(cfg, "trainer.monitor", default="auto")))
    return {
        **pooled,
        "monitor": monitor, "objective": run_objective(pooled, monitor),
        "validation": {"name": str(validation.name) if validation is not None else "clean",
                       **(robust.as_dict() if robust is not None else {}),
                       **({"copies_recipe": copies_recipe(robust, [o["img_size"] for o in outcomes])}
                          if robust is not None else {})},
        "n_folds": int(cfg.folds.n),
        "data": data_info,
        "pipeline": cfg.get("pipeline"), "experiment": cfg.get("experiment"), "debug": cfg.get("debug"),
        "augment": cfg.augment.name, "ensemble": cfg.ensemble.name,
        # loss and sampler (a run dir of an older version, merged by aggregate, has neither: null / natural)
        "loss": OmegaConf.to_container(cfg.loss) if cfg.get("loss") is not None else None,
        "sampler": cfg.data.get("sampler", "natural"),
        "skipped_images": list(skipped_ids),
        "skipped_steps": int(sum(o.get("skipped_steps", 0) for o in outcomes)),
    }


def finish_run(run: RunContext, data: RunData, outcomes: list[dict], seconds: float) -> dict:
    """Pool the OOF rows (oof.csv, oof_robust.csv, their logits), then write results.json (rank 0):
    the files appear together, so a failed write or an interrupt keeps the previous set whole."""
    main = distributed.is_main()
    with atomic_group():
        pooled = pool_oof(run.run_dir, data.source.train, data.classes, outcomes, write=main)
        data_info = {"name": data.source.name, "root": str(data.source.root), **data.source.decisions,
                     **({"duplicate_groups": data.duplicate_groups} if data.duplicate_groups else {})}
        results = run_results(pooled, run.cfg, data_info, data.skipped_ids, outcomes, data.robust)
        results["pseudo"] = data.pseudo.as_dict(data.classes) if data.pseudo is not None else None
        results["seconds"] = round(seconds, 2)
        results["amp"] = run.amp.name  # the precision trainer.amp resolved to (auto: by device and CPU)
        results["channels_last"] = channels_last_of(run)  # trainer.channels_last resolved (null: by amp, device)
        results["distributed"] = distributed.scaling(run.trainer)  # world size, effective batch, lr used
        if main:
            atomic_write_json(run.run_dir / RESULTS_FILE, results)
    return results
