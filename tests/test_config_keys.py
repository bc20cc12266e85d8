"""Every config key changes behaviour (issue 13: config that means what it says).

For every leaf key of every option of the augment, regularization, schedule, loss and validation
groups (the profile under ``validation.distort`` key by key), for every key of the trainer group
and for data.sampler, two values must give different outputs of the real code:

- ``pixels``: augmented pixels of real (synthetic) document images, a few seeds and epochs,
  through ``TrainTransform`` (augment keys that act per sample);
- ``lr``: the lr trajectory of ``engine.optim.build_optimizer`` + ``build_scheduler`` (schedule
  keys, trainer.lr / epochs);
- ``training``: a real fold, two short epochs of a tiny model: ``engine.fold.prepare_fold`` +
  ``fit_fold`` (losses and lr of every step, validation logits, the evaluated weights, the files
  written): mixup, regularization, loss, data.sampler and trainer keys;
- ``trackers``: the callbacks ``tracking.build_trackers`` wires;
- ``copies``: the robust validation copies of real images (``validation.copies``, ``seed`` and every
  ``validation.distort.*`` key), built from the config like a run builds them
  (``engine.kfold.resolve_distort_profile`` + ``data.validation.robust_copies``).

A key may need others switched on to act (``ema_decay`` needs ``ema: true``, a basic-set
strength needs samples that take the basic set): each probe names those ``enable`` overrides.
Keys with no numbers to compare (names, I/O, speed-only or multi-process switches) are listed in
EXEMPT with the reason and the test that shows their effect. A key in the schema that is
neither probed nor exempt fails ``test_every_key_is_probed_or_exempt``; hard-coding a key in the
code (making it dead) fails its probe.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, TINY, compose_train
from omegaconf import OmegaConf, open_dict

from docclassify.config import CONF_DIR
from docclassify.config_schema import (
    SCHEMAS,
    DistortProfile,
    TrainerConfig,
    apply_aliases,
    schema_errors,
)
from docclassify.tracking.callbacks import Callback

CPU = torch.device("cpu")
GROUPS = ("augment", "regularization", "schedule", "loss")
# Keys of other groups probed here: (group, option composed for the probe, key).
EXTRA_KEYS = [("data", "competition", "data.sampler")]
PIXEL_SIZE, TRAIN_SIZE = 48, 32


@dataclass(frozen=True)
class Probe:
    kind: str                  # pixels | lr | training | trackers | copies
    values: tuple              # two values that must give different outputs
    enable: dict = field(default_factory=dict)  # other keys (same group unless dotted) that let it act


BASIC = {"advanced_p_start": 0.0, "advanced_p_end": 0.0}      # every sample takes the basic set
ADVANCED = {"advanced_p_start": 1.0, "advanced_p_end": 1.0}   # every sample takes the advanced set


def _adv(values, step: str | None = None) -> Probe:
    """An advanced-set key, with its step (a OneOf or a transform's probability) always on."""
    return Probe("pixels", values, {**ADVANCED, **({f"advanced_{step}_p": 1.0} if step else {})})


def _mix(values, **enable) -> Probe:
    return Probe("training", values, enable)


MATCH = {"match_validation": True, **BASIC}  # every sample may take the match step, then the basic set


def _copies(values, step: str | None = None, **enable) -> Probe:
    """A validation key, probed on the robust copies; ``step``: the distortion step switched always on."""
    on = {f"validation.distort.{step}_p": 1.0} if step else {}
    return Probe("copies", values, {**on, **{f"validation.distort.{k}": v for k, v in enable.items()}})


PROBES: dict[str, Probe] = {
    # -- augment: the basic set
    "augment.rotate_limit": Probe("pixels", (2.0, 30.0), BASIC),
    "augment.scale_limit": Probe("pixels", (0.0, 0.3), BASIC),
    "augment.shift_limit": Probe("pixels", (0.0, 0.2), BASIC),
    "augment.crop_p": Probe("pixels", (0.0, 1.0), BASIC),
    "augment.crop_scale": Probe("pixels", (0.9, 0.4), {**BASIC, "crop_p": 1.0}),
    "augment.color_jitter": Probe("pixels", (0.0, 0.5), BASIC),
    # -- augment: both sets
    "augment.hflip": Probe("pixels", (False, True)),
    "augment.vflip": Probe("pixels", (False, True)),
    # -- augment: orientation (after either set, every option)
    "augment.orientation": Probe("pixels", ("none", "dihedral")),
    "augment.orientation_p": Probe("pixels", (0.2, 0.9), {"orientation": "rot90"}),
    # -- augment: which set (and the old names, through config_schema.apply_aliases)
    "augment.advanced_p_start": Probe("pixels", (0.0, 1.0)),
    "augment.advanced_p_end": Probe("pixels", (0.0, 1.0)),
    "augment.hard_p_start": Probe("pixels", (None, 1.0), BASIC),
    "augment.hard_p_end": Probe("pixels", (None, 1.0), BASIC),
    # -- augment: training for the robust copies' distortions (distortion/match.py)
    "augment.match_validation": Probe("pixels", (False, True), BASIC),
    "augment.match_p_start": Probe("pixels", (0.2, 0.9), MATCH),
    "augment.match_p_end": Probe("pixels", (0.2, 0.9), MATCH),
    # -- augment: the advanced set
    "augment.advanced_rot90_p": _adv((0.0, 1.0)),
    "augment.advanced_warp_p": _adv((0.0, 1.0)),
    "augment.advanced_perspective_scale": _adv(([0.03, 0.08], [0.15, 0.2]), "warp"),
    "augment.advanced_rotate_limit": _adv((15.0, 60.0), "warp"),
    "augment.advanced_scale_limit": _adv((0.1, 0.4), "warp"),
    "augment.advanced_shift_limit": _adv((0.0, 0.2), "warp"),
    "augment.advanced_elastic_alpha": _adv((20.0, 80.0), "warp"),
    "augment.advanced_elastic_sigma": _adv((6.0, 12.0), "warp"),
    "augment.advanced_grid_steps": _adv((5, 10), "warp"),
    "augment.advanced_grid_distort": _adv((0.2, 0.6), "warp"),
    "augment.advanced_crop_p": _adv((0.0, 1.0)),
    "augment.advanced_crop_scale": _adv((0.9, 0.4), "crop"),
    "augment.advanced_blur_p": _adv((0.0, 1.0)),
    "augment.advanced_blur_limit": _adv((3, 15), "blur"),
    "augment.advanced_downscale": _adv(([0.4, 0.8], [0.2, 0.3]), "blur"),
    "augment.advanced_noise_p": _adv((0.0, 1.0)),
    "augment.advanced_noise_std": _adv(([0.02, 0.12], [0.3, 0.4]), "noise"),
    "augment.advanced_jpeg_p": _adv((0.0, 1.0)),
    "augment.advanced_jpeg_quality": _adv(([30, 90], [5, 10]), "jpeg"),
    "augment.advanced_light_p": _adv((0.0, 1.0)),
    "augment.advanced_color_jitter": _adv((0.3, 0.8), "light"),
    "augment.advanced_gamma": _adv(([60.0, 160.0], [200.0, 300.0]), "light"),
    "augment.advanced_shadow_intensity": _adv(([0.5, 0.5], [0.9, 0.9]), "light"),
    "augment.advanced_dropout_p": _adv((0.0, 1.0)),
    "augment.advanced_dropout_holes": _adv(([1, 4], [8, 10]), "dropout"),
    "augment.advanced_dropout_size": _adv(([0.05, 0.15], [0.3, 0.4]), "dropout"),
    # -- augment: mixup / cutmix (targets and loss of the training steps)
    "augment.mixup_alpha": _mix((0.0, 0.8)),
    "augment.cutmix_alpha": _mix((0.0, 1.0)),
    "augment.mixup_prob": _mix((1.0, 0.3), mixup_alpha=0.8),
    "augment.mixup_switch_prob": _mix((0.0, 1.0), mixup_alpha=0.8, cutmix_alpha=1.0),
    "augment.mixup_mode": _mix(("batch", "elem"), mixup_alpha=0.8),
    "augment.mixup_off_epoch": _mix((None, 1), mixup_alpha=0.8),
    # -- regularization (weights after the steps, the loss, the evaluated weights)
    "regularization.label_smoothing": Probe("training", (0.0, 0.2)),
    "regularization.weight_decay": Probe("training", (0.0, 0.5)),
    "regularization.drop_rate": Probe("training", (0.0, 0.5)),
    "regularization.drop_path_rate": Probe("training", (0.0, 0.5)),
    "regularization.ema": Probe("training", (False, True)),
    "regularization.ema_decay": Probe("training", (0.5, 0.9), {"ema": True}),
    "regularization.ema_warmup": Probe("training", (True, False), {"ema": True, "ema_decay": 0.9}),
    "regularization.layer_decay": Probe("training", (None, 0.5)),
    "regularization.orientation_loss_weight": Probe(
        "training", (0.5, 2.0), {"model.orientation_head": "rot4", "augment.orientation": "rot90"}),
    # -- loss (the probe's fold trains on 2 rows of each of 16 classes and none of the 17th)
    "loss.gamma": Probe("training", (0.0, 2.0)),
    "loss.tau": Probe("training", (0.0, 1.0)),
    "loss.beta": Probe("training", (0.0, 0.99)),
    # -- data (the order and repetition of the training draws)
    "data.sampler": Probe("training", ("natural", "balanced")),
    # -- schedule (the lr of every update)
    "schedule.warmup_epochs": Probe("lr", (0, 1)),
    "schedule.warmup_lr": Probe("lr", (1e-6, 1e-4), {"warmup_epochs": 1}),
    "schedule.min_lr": Probe("lr", (1e-6, 1e-4)),
    # -- trainer
    "trainer.epochs": Probe("lr", (2, 4)),
    "trainer.lr": Probe("lr", (1e-3, 3e-3)),
    "trainer.batch_size": Probe("training", (8, 16)),
    "trainer.optimizer": Probe("training", ("adamw", "sgd")),
    "trainer.amp": Probe("training", ("none", "bf16")),
    "trainer.grad_clip": Probe("training", (None, 0.01)),
    "trainer.accum_steps": Probe("training", (1, 2)),
    "trainer.limit_train_batches": Probe("training", (None, 1)),
    "trainer.limit_val_batches": Probe("training", (None, 1)),
    "trainer.overfit_batches": Probe("training", (0, 1)),
    "trainer.profiler": Probe("training", (None, "pytorch")),
    "trainer.enable_reports": Probe("trackers", (True, False)),
    # -- validation: the robust copies (their number, seed and distortion profile)
    "validation.copies": _copies((1, 3)),
    "validation.seed": _copies((0, 1)),
    "validation.distort.rot90_p": _copies((0.0, 1.0)),
    "validation.distort.flip_p": _copies((0.0, 1.0)),
    "validation.distort.angle_p": _copies((0.0, 1.0)),
    "validation.distort.angle": _copies((5.0, 60.0), "angle"),
    "validation.distort.crop_p": _copies((0.0, 1.0)),
    "validation.distort.crop": _copies((0.05, 0.3), "crop"),
    "validation.distort.perspective_p": _copies((0.0, 1.0)),
    "validation.distort.perspective": _copies((0.02, 0.3), "perspective"),
    "validation.distort.blur_p": _copies((0.0, 1.0), blur_sigma=0.03),  # visible at these 64 px images
    "validation.distort.blur_sigma": _copies((0.01, 0.05), "blur"),
    "validation.distort.color_p": _copies((0.0, 1.0)),
    "validation.distort.brightness": _copies(([-0.1, 0.25], [0.3, 0.4]), "color"),
    "validation.distort.contrast": _copies(([0.7, 1.3], [0.2, 0.3]), "color"),
    "validation.distort.noise_p": _copies((0.0, 1.0)),
    "validation.distort.noise_std": _copies((0.05, 0.3), "noise"),
    "validation.distort.jpeg_p": _copies((0.0, 1.0)),
    "validation.distort.jpeg_quality": _copies(([30, 90], [5, 8]), "jpeg"),
    "validation.distort.occlusion_p": _copies((0.0, 1.0)),
    "validation.distort.occlusion_size": _copies((0.1, 0.4), "occlusion"),
    "validation.distort.occlusion_count": _copies((1, 8), "occlusion"),
    # background: the corners of a rotation (no desk, whose surface takes precedence)
    "validation.distort.background_p": _copies((0.0, 1.0), "angle", desk_p=0.0),
    "validation.distort.background_texture": _copies((0.0, 1.0), "desk"),
    "validation.distort.desk_p": _copies((0.0, 1.0)),
    "validation.distort.desk_scale": _copies(([0.6, 0.9], [0.3, 0.4]), "desk"),
    "validation.distort.desk_tilt": _copies((0.0, 0.3), "desk"),
    "validation.distort.shadow_p": _copies((0.0, 1.0)),
    "validation.distort.shadow_strength": _copies((0.3, 0.9), "shadow"),
    "validation.distort.glare_p": _copies((0.0, 1.0)),
    "validation.distort.glare_strength": _copies((0.3, 0.9), "glare"),
    "validation.distort.glare_size": _copies((0.1, 0.6), "glare"),
    "validation.distort.channel_p": _copies((0.0, 1.0)),
    "validation.distort.channel_contrast": _copies(([0.8, 1.25], [2.0, 3.0]), "channel"),
    # the shipped test profiles' keys (distortion/profiles/): lower ends of ranges, vertical flips,
    # toned backgrounds, exposure, motion blur, moire
    "validation.distort.angle_min": _copies((0.0, 15.0), "angle"),
    "validation.distort.flip_vertical": _copies((0.0, 1.0), "flip"),
    "validation.distort.background_tones": _copies(([], [30]), "angle", desk_p=0.0, background_p=1.0),
    "validation.distort.background_jitter": _copies((0.0, 40.0), "angle", desk_p=0.0, background_p=1.0,
                                                    background_tones=[128]),
    "validation.distort.blur_min": _copies((0.0, 0.03), "blur", blur_sigma=0.04),
    "validation.distort.noise_min": _copies((0.0, 0.2), "noise", noise_std=0.3),
    "validation.distort.exposure_p": _copies((0.0, 1.0)),
    "validation.distort.exposure_gain": _copies(([0.55, 1.5], [0.3, 0.4]), "exposure"),
    "validation.distort.exposure_contrast": _copies(([0.6, 1.4], [2.0, 3.0]), "exposure"),
    "validation.distort.exposure_gamma": _copies(([0.5, 2.0], [2.0, 3.0]), "exposure"),
    "validation.distort.motion_p": _copies((0.0, 1.0), motion_length=0.2),  # visible at these 64 px images
    "validation.distort.motion_length": _copies((0.02, 0.2), "motion"),
    "validation.distort.moire_p": _copies((0.0, 1.0)),
    "validation.distort.moire_strength": _copies((0.3, 0.9), "moire"),
}

# key -> (why nothing here compares numbers, the test that shows its effect or None)
EXEMPT: dict[str, tuple[str, str | None]] = {
    "augment.name": ("the option's name; results.json records it",
                     "tests/engine/test_debug.py::test_debug_fast_runs_one_fold_of_a_few_batches_without_reports"),
    "loss._target_": ("the class the option's other keys build; each option is a different loss",
                      "tests/engine/test_losses.py::test_each_option_builds_its_class_and_a_user_class_takes_the_protocol"),
    "schedule.name": ("the option's identity (each schedule option allows only its own name)",
                      "tests/test_config_keys.py::test_schedule_options_give_different_lr"),
    "trainer.eval_batch_size": ("prediction batch size: the same logits in any batch size (eval mode); it also "
                                "sizes limit_val_batches", "tests/engine/test_debug.py::test_debug_rows"),
    "trainer.device": ("where the model runs (cpu / cuda), not what it computes", None),
    "trainer.threads": ("torch intra-op threads of the job: speed only, the same numbers",
                        "tests/engine/test_share.py::test_trainer_threads_sets_the_runs_threads"),
    "trainer.deterministic": ("bitwise reproducibility of a run, not different numbers",
                              "tests/reliability/test_resume.py::test_same_seed_identical_and_other_seed_differs"),
    "trainer.channels_last": ("memory format: speed only, the same model",
                              "tests/engine/test_perf_paths.py::test_channels_last_trains_like_contiguous"),
    "trainer.compile": ("torch.compile: speed only, the same model",
                        "tests/engine/test_perf_paths.py::test_compile_wraps_the_model_and_trains_the_same"),
    "trainer.log_every_n_steps": ("progress lines (I/O)",
                                  "tests/tracking/test_tracking.py::test_progress_lines_in_logs_and_bars_on_a_terminal"),
    "trainer.lr_scale": ("acts only with more than one process (torchrun)",
                         "tests/distributed/test_ddp.py::test_lr_scale_rules_and_single_process_scaling"),
    "trainer.sync_bn": ("acts only under torchrun on CUDA",
                        "tests/distributed/test_ddp.py::test_sync_bn_converts_batchnorm_under_ddp_and_refuses_cpu"),
    "trainer.skip_nonfinite": ("acts only on a NaN/inf loss",
                               "tests/reliability/test_nonfinite_and_bad_images.py::test_nonfinite_steps_skipped_and_counted"),
    "trainer.early_stopping_patience": ("acts only when validation F1 stalls for that many epochs",
                                        "tests/engine/test_techniques.py::test_early_stopping_stops_and_fp16_uses_the_scaler"),
    "trainer.monitor": ("which validation view picks the best epoch (a fold's outcome when the clean and robust "
                        "curves disagree)", "tests/engine/test_robust_validation.py::"
                        "test_monitor_decides_best_epoch_checkpoint_and_early_stopping"),
    "validation.name": ("the option's identity (clean, robust, both: which views are validated)",
                        "tests/engine/test_robust_validation.py::"
                        "test_validation_robust_predicts_the_clean_rows_once_with_the_best_weights"),
}


# ----------------------------------------------------------------------------- the keys
def _schema_of(group: str, option: str):
    """The dataclass an option's YAML starts from (``/schema/<group>/<name>@_here_``, or that of the
    option of the same group it composes: ``defaults: [robust]``)."""
    text = (CONF_DIR / group / f"{option}.yaml").read_text()
    found = re.search(rf"/schema/{group}/(\w+)@_here_", text)
    if found:
        return SCHEMAS[(group, found.group(1))]
    base = next(str(d) for d in OmegaConf.create(text).defaults if str(d) != "_self_")
    return _schema_of(group, base)


def group_keys() -> list[tuple[str, str, str]]:
    """(group, option, dotted key) of every leaf key of every option of GROUPS, of the trainer, and
    EXTRA_KEYS."""
    out = []
    for group in GROUPS:
        for path in sorted((CONF_DIR / group).glob("*.yaml")):
            out += [(group, path.stem, f"{group}.{f.name}") for f in dataclasses.fields(_schema_of(group, path.stem))]
    out += [("trainer", "default", f"trainer.{f.name}") for f in dataclasses.fields(TrainerConfig)]
    profile = [f"distort.{d.name}" for d in dataclasses.fields(DistortProfile)]  # validation.distort, key by key
    for path in sorted((CONF_DIR / "validation").glob("*.yaml")):
        for f in dataclasses.fields(_schema_of("validation", path.stem)):
            out += [("validation", path.stem, f"validation.{name}") for name in
                    (profile if f.name == "distort" else [f.name])]
    return out + EXTRA_KEYS


ALL_KEYS = group_keys()
# The inner loop (-m "not slow") probes one option per group; the other options are marked slow.
FAST_OPTIONS = {"augment": "advanced", "regularization": "strong", "schedule": "warmup_cosine", "trainer": "default",
                "validation": "both", "loss": "focal", "data": "competition"}
PROBED = [pytest.param(g, o, k, id=f"{g}/{o}:{k.split('.', 1)[1]}",
                       marks=() if FAST_OPTIONS[g] == o else pytest.mark.slow)
          for g, o, k in ALL_KEYS if k in PROBES]


def test_every_key_is_probed_or_exempt():
    keys = {k for _, _, k in ALL_KEYS}
    missing = sorted(keys - set(PROBES) - set(EXEMPT))
    assert not missing, f"keys with neither an effect probe nor an exemption (add one to PROBES): {missing}"
    assert not set(PROBES) & set(EXEMPT)
    assert not (set(PROBES) | set(EXEMPT)) - keys, "entries for keys that no longer exist"
    assert {"augment.advanced_gamma", "regularization.ema_decay", "schedule.min_lr", "trainer.grad_clip", "loss.gamma",
            "data.sampler"} <= keys


def test_exemptions_name_a_test_that_exists():
    for key, (reason, test) in EXEMPT.items():
        assert reason
        if test is None:
            continue
        path, name = test.split("::")
        assert re.search(rf"^def {name}\(", (REPO / path).read_text(), re.M), f"{key}: {test} not found"


def test_presets_set_only_probed_or_exempt_keys():
    """pipeline/ and experiment/ files select options and pin values: every value they pin is a key
    checked here (a preset cannot pin a dead key)."""
    keys = set(PROBES) | set(EXEMPT)
    for folder in ("pipeline", "experiment", "debug"):
        for path in (CONF_DIR / folder).glob("*.yaml"):
            raw = OmegaConf.to_container(OmegaConf.load(path))
            pinned = {f"{g}.{k}" for g, node in raw.items() if g in (*GROUPS, "trainer") for k in node}
            assert pinned <= keys, f"{path.name}: {sorted(pinned - keys)}"


# ----------------------------------------------------------------------------- probes
@pytest.fixture(scope="module")
def probe_data(tiny_data, tmp_path_factory):
    """48 real rows of the tiny data set: 16 validation rows (fold 0), 32 training rows."""
    from docclassify.data.cache import load_images

    train = pd.read_csv(tiny_data / "train.csv")
    rows = np.concatenate([np.flatnonzero(train["target"].to_numpy() == c)[:3] for c in range(16)])
    folds = np.full(len(train), -1)
    folds[rows] = 1
    folds[rows[::3]] = 0
    keep = folds >= 0
    paths = [tiny_data / "train" / i for i in train["ID"]]
    data_cfg = OmegaConf.create({"cache": True, "resize": "pad", "pad_value": 0})
    cache = tmp_path_factory.mktemp("probe_cache")
    return SimpleNamespace(
        train=train, keep=keep, folds=folds, classes=[str(c) for c in range(17)],
        pixels=np.asarray(load_images(paths, PIXEL_SIZE, data_cfg, cache)[0])[rows[:4]],
        images=load_images(paths, TRAIN_SIZE, data_cfg, cache)[0],
        copy_rows=([paths[r] for r in rows[:6]], [train["ID"][r] for r in rows[:6]]))


@pytest.fixture(scope="module", autouse=True)
def _no_heap_trim():
    """build_loaders hands freed memory back to the OS before forking workers (gc.collect +
    malloc_trim: ~0.5 s in a test process, most of a probe's time); the probes fork none."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("docclassify.engine.loaders.release_freed_memory", lambda: None)
        yield


@pytest.fixture(scope="module")
def base_configs(tiny_data, tmp_path_factory):
    """option -> its composed train config (tiny model, 2 folds, batch 8, 2 epochs), composed once."""
    cache: dict[tuple[str, str], object] = {}

    def get(group: str, option: str):
        if (group, option) not in cache:
            # validation=clean: the training probe builds the fold's rows by hand, without robust copies (the
            # robust view changes no training step; the validation group's own probes select theirs).
            over = [*TINY, "data=competition", f"data.root={tiny_data}", f"data.img_size={TRAIN_SIZE}", "folds.n=2",
                    "trainer.batch_size=8", "trainer.eval_batch_size=8", "trainer.epochs=2", "validation=clean"]
            if group != "data":  # data=competition above; a validation option overrides validation=clean
                over.append(f"{group}={option}")
            cfg = compose_train(over, tmp_path_factory.mktemp("run"))
            with open_dict(cfg):  # Hydra's own node: large to copy, read by no probe
                del cfg["hydra"]
            cache[(group, option)] = cfg
        return cache[(group, option)]

    return get


def with_values(cfg, group: str, values: dict):
    """A copy of ``cfg`` with ``values`` (keys of ``group`` unless dotted), checked like a run's config."""
    cfg = cfg.copy()
    dotted = [name if "." in name else f"{group}.{name}" for name in values]
    for name, value in zip(dotted, values.values(), strict=True):
        OmegaConf.update(cfg, name, value, merge=False)
    apply_aliases(cfg)  # as check_config does: the old key names set the new ones
    errors = [e for g in {name.split(".")[0] for name in dotted} | {group} for e in schema_errors(cfg[g], g)]
    assert not errors, errors  # the probes use allowed values
    return cfg


def pixels(cfg, data, run_dir: Path) -> dict:
    """Augmented pixels: 4 images x 4 draws x 3 epochs through TrainTransform (with the match step
    of augment.match_validation, drawing from the default profile)."""
    from docclassify.data.augment import TrainTransform
    from docclassify.distortion import normalise_profile
    from docclassify.distortion.match import build_match

    match = build_match(cfg.augment, normalise_profile({}), PIXEL_SIZE, epochs=3, seed=0)
    transform = TrainTransform(cfg.augment, PIXEL_SIZE, epochs=3, seed=0, pad_value=0, match=match)
    out = []
    for epoch in range(3):
        transform.set_epoch(epoch)
        out += [transform(image, 4 * i + draw)[0] for i, image in enumerate(data.pixels) for draw in range(4)]
    return {"pixels": np.stack(out)}


def lr(cfg, data, run_dir: Path) -> dict:
    """The lr after every update of the fold's optimiser and schedule (4 updates per epoch)."""
    from docclassify.config_schema import ConstantSchedule
    from docclassify.engine.kfold import group_settings
    from docclassify.engine.optim import build_optimizer, build_scheduler

    epochs = int(cfg.trainer.epochs)
    optimizer = build_optimizer(torch.nn.Linear(2, 2), cfg.trainer.optimizer, float(cfg.trainer.lr), 0.0)
    schedule = group_settings(cfg, "schedule", ConstantSchedule)
    scheduler = build_scheduler(optimizer, schedule, epochs, updates_per_epoch=4)
    out = [optimizer.param_groups[0]["lr"]]
    for update in range(1, 4 * epochs + 1):
        scheduler.step_update(num_updates=update)
        out.append(optimizer.param_groups[0]["lr"])
    return {"lr": np.asarray(out)}


class _Steps(Callback):
    """Records the loss and lr of every step."""

    def __init__(self):
        self.steps = []

    def on_step_end(self, fold, step, metrics):
        self.steps.append((metrics["train/loss"], metrics["train/lr"]))


def training(cfg, data, run_dir: Path) -> dict:
    """Fold 0 through the real engine (prepare_fold + fit_fold): step losses and lrs, validation
    logits, the evaluated weights, the files written."""
    from docclassify.engine.fold import fit_fold, prepare_fold
    from docclassify.engine.kfold import RunContext, RunData, run_settings
    from docclassify.engine.parts import eval_model
    from docclassify.engine.plan import FoldPlan
    from docclassify.engine.setup import amp_settings
    from docclassify.engine.signals import StopFlag

    steps = _Steps()
    run = RunContext(cfg, run_dir, int(cfg.seed), CPU, amp_settings(cfg.trainer.amp, CPU), StopFlag(), steps,
                     **run_settings(cfg))
    source = SimpleNamespace(train=data.train, classes=data.classes, num_classes=len(data.classes))
    plan = FoldPlan(0, run.model, TRAIN_SIZE)
    job = prepare_fold(plan, run, RunData(source, [plan], {TRAIN_SIZE: data.images}, data.folds, data.keep, []))
    outcome = fit_fold(job, run)
    weights = torch.cat([v.float().reshape(-1) for v in eval_model(job.parts).state_dict().values()])
    return {"steps": np.asarray(steps.steps), "val_logits": outcome["val_logits"], "weights": weights.numpy(),
            "files": sorted(p.name for p in run_dir.rglob("*") if p.is_file())}


def trackers(cfg, data, run_dir: Path) -> dict:
    from docclassify.tracking import build_trackers

    return {"trackers": [type(t).__name__ for t in build_trackers(cfg, run_dir)]}


def copies(cfg, data, run_dir: Path) -> dict:
    """The robust copies of 6 real images, built from the config as a run builds them."""
    from docclassify.data.validation import robust_copies
    from docclassify.distortion.copies import RobustSpec
    from docclassify.config_schema import RobustValidation
    from docclassify.engine.kfold import group_settings, resolve_distort_profile

    validation = group_settings(cfg, "validation", RobustValidation)
    profile = resolve_distort_profile(SimpleNamespace(validation=validation), SimpleNamespace(fitted_profile=None))
    spec = RobustSpec(profile, int(validation.copies), int(validation.seed))
    paths, ids = data.copy_rows
    return {"copies": np.asarray(robust_copies(paths, ids, spec, PIXEL_SIZE, "pad", 0, None))}


PROBE_FUNCTIONS = {"pixels": pixels, "lr": lr, "training": training, "trackers": trackers, "copies": copies}


_RESULTS: dict[tuple[str, str], dict] = {}
# What a probe reads of the config (its memo key); the training probe reads all of it.
MEMO_SCOPE = {"pixels": lambda cfg: cfg.augment, "lr": lambda cfg: {"trainer": cfg.trainer, "schedule": cfg.schedule},
              "copies": lambda cfg: cfg.validation}


def run_probe(kind: str, cfg, data, run_dir: Path, reuse: bool = True) -> dict:
    """The probe's outputs; a config probed before (e.g. an option's defaults, the first value of
    many keys) reuses its outputs unless ``reuse`` is false."""
    memo = (kind, OmegaConf.to_yaml(MEMO_SCOPE.get(kind, lambda c: c)(cfg), resolve=False))
    if reuse and memo in _RESULTS:
        return _RESULTS[memo]
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    _RESULTS[memo] = PROBE_FUNCTIONS[kind](cfg, data, run_dir)
    return _RESULTS[memo]


def same(a: dict, b: dict) -> bool:
    """Exactly equal outputs (CPU, one thread, seeded: a probe repeats bit for bit)."""
    def eq(x, y):
        if isinstance(x, list):
            return x == y
        return np.shape(x) == np.shape(y) and np.array_equal(x, y)

    return a.keys() == b.keys() and all(eq(a[k], b[k]) for k in a)


@pytest.mark.parametrize("group,option,key", PROBED)
def test_two_values_change_the_outputs(group, option, key, base_configs, probe_data, tmp_path):
    probe = PROBES[key]
    base = base_configs(group, option)
    outputs = [run_probe(probe.kind, with_values(base, group, {**probe.enable, key: value}), probe_data,
                         tmp_path / f"v{i}") for i, value in enumerate(probe.values)]
    assert not same(*outputs), (f"{key} under {group}={option}: {probe.values[0]!r} and {probe.values[1]!r} give "
                                f"identical {probe.kind} outputs: the key is read but changes nothing")


@pytest.mark.parametrize("kind,group,option", [("pixels", "augment", "advanced"), ("training", "augment", "highperf"),
                                               ("lr", "schedule", "warmup_cosine")])
def test_a_probe_repeats_exactly(kind, group, option, base_configs, probe_data, tmp_path):
    """The null check behind every comparison above: the same config gives the same outputs."""
    cfg = with_values(base_configs(group, option), group, {})
    first, again = (run_probe(kind, cfg, probe_data, tmp_path / d, reuse=False) for d in "ab")
    assert same(first, again)


def test_schedule_options_give_different_lr(base_configs, probe_data, tmp_path):
    out = {o: run_probe("lr", base_configs("schedule", o), probe_data, tmp_path / o)["lr"]
           for o in ("constant", "cosine", "warmup_cosine")}
    assert not np.array_equal(out["constant"], out["cosine"])
    assert not np.array_equal(out["cosine"], out["warmup_cosine"])
    assert np.ptp(out["constant"][1:]) == 0 and out["cosine"][-1] < out["cosine"][1]


def test_model_orientation_head_changes_training(base_configs, probe_data, tmp_path):
    """model.orientation_head (the model group is not probed above): a head adds its loss to every
    step and its weights to the model."""
    base = with_values(base_configs("augment", "basic"), "augment", {"orientation": "rot90"})
    outputs = [run_probe("training", with_values(base, "model", {"orientation_head": head}), probe_data,
                         tmp_path / head) for head in ("none", "rot4", "dihedral8")]
    assert not same(outputs[0], outputs[1]) and not same(outputs[1], outputs[2])
    assert len(outputs[1]["weights"]) > len(outputs[0]["weights"])  # the head's parameters


def test_old_key_names_set_the_new_ones(base_configs):
    cfg = with_values(base_configs("augment", "basic"), "augment", {"hard_p_start": 0.25, "hard_p_end": 0.75})
    assert (cfg.augment.advanced_p_start, cfg.augment.advanced_p_end) == (0.25, 0.75)
    assert cfg.augment.hard_p_start is None
