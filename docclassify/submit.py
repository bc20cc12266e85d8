"""``submit=true``: one command from data to a submission.

    python -m docclassify.train data=competition data.root=DIR submit=true infer.tta=flip

trains as usual, then predicts the test set with the run just trained, exactly as

    python -m docclassify.infer runs=[RUN_DIR] tta=flip ...

would (the same conf/infer.yaml composed with the same overrides, the same code), and writes
the infer outputs (submission.csv, test_probs.csv, summary.json; with test labels the test
report) into ``<run dir>/infer/``. The ``infer.*`` keys of train.yaml are the infer options
(TTA, calibration, output path, ...); ``infer.overrides`` passes any other key of
conf/infer.yaml. It composes with ``-m`` (every job submits from its own run) and with
``resume`` (finished folds are kept; the submission is made once training is complete).

Before training, the options and the data's test set are checked, so a run never trains for
hours and then fails to submit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from docclassify.config import CONF_DIR
from docclassify.config_schema import ConfigError, schema_errors
from docclassify.sweep.study import quote_value
from docclassify.utils.io import atomic_write_text

log = logging.getLogger("docclassify.submit")

SUBMIT_DIR = "infer"  # inside the training run dir
OVERRIDES_FILE = "infer_overrides.yaml"


def _value(value) -> str:
    """A config value as a Hydra override value (strings quoted, so paths with any character work)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if isinstance(value, (int, float)) else quote_value(str(value))


def infer_overrides(cfg: DictConfig, run_dir: Path) -> list[str]:
    """The `docclassify.infer` command line that ``submit=true`` runs for ``run_dir``."""
    node = cfg.infer
    out = [f"runs=[{quote_value(str(run_dir))}]", f"tta={node.tta}"]
    if node.tta_average is not None:
        out.append(f"tta.average={node.tta_average}")
    out += [f"ensemble.average={node.average}", f"calibrate={_value(node.calibrate)}", f"decision={node.decision}",
            f"oof_tta={_value(node.oof_tta)}", f"batch_size={int(node.batch_size)}",
            f"device={_value(node.device)}", f"output={_value(node.output)}",
            f"paths.cache_dir={_value(cfg.paths.cache_dir)}"]
    out += [f"data.{k}={_value(v)}" for k, v in node.data.items() if v is not None]
    if cfg.get("specialists") is not None and cfg.specialists.name != "none":  # trained before the infer
        out.append("specialists.enabled=true")
    if cfg.logger.name == "wandb":  # tracked in the training experiment's group
        out.append("logger=wandb")
    return out + [str(o) for o in node.overrides]


def compose_infer(overrides: list[str]) -> DictConfig:
    """conf/infer.yaml composed with ``overrides``, as `python -m docclassify.infer` would."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # inside the training job (its search path)
        return compose(config_name="infer", overrides=overrides)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="infer", overrides=overrides)


def _with_training_logger(infer_cfg: DictConfig, cfg: DictConfig) -> DictConfig:
    """The training's W&B settings (project, mode, tags, ...) for the infer run."""
    if cfg.logger.name == "wandb":
        for key in ("project", "entity", "mode", "group", "tags"):
            OmegaConf.update(infer_cfg, f"logger.{key}", cfg.logger.get(key), merge=False)
    return infer_cfg


@dataclass
class Submission:
    """What ``submit=true`` runs after training (built, and its input checked, before training)."""

    cfg: DictConfig

    def run(self, run_dir: Path) -> dict:
        """Predict the test set with the trained run; returns the infer run's summary."""
        from docclassify.infer import infer

        run_dir = Path(run_dir).resolve()
        out_dir = run_dir / SUBMIT_DIR
        overrides = infer_overrides(self.cfg, run_dir)
        infer_cfg = _with_training_logger(compose_infer(overrides), self.cfg)
        atomic_write_text(out_dir / OVERRIDES_FILE, OmegaConf.to_yaml(OmegaConf.create(overrides)))
        log.info("submit: predicting the test set with %s, as `python -m docclassify.infer %s`", run_dir,
                 " ".join(overrides))
        summary = infer(infer_cfg, out_dir)
        submission = out_dir / summary["files"]["submission"]
        scores = summary.get("test_metrics")
        if scores is not None:
            log.info("submit: test macro F1 %.4f, accuracy %.4f", scores["macro_f1"], scores["accuracy"])
        print(f"Submission: {submission}" + (f" (also {summary['files']['output']})"
                                             if summary["files"].get("output") else ""), flush=True)
        return summary


def result_line(results: dict, summary: dict | None) -> str:
    """The run's last line: the cv figures and, when the test labels are known, the test's."""
    robust = results.get("cv_macro_f1_robust")
    line = f"Result: macro F1, cv {results['cv_macro_f1']:.4f} (clean OOF rows)"
    if robust is not None:
        line += f", {robust:.4f} (robust: their distorted copies)"
    estimate, oof = (summary or {}).get("estimate"), (summary or {}).get("oof")
    if estimate:
        line += (f" | estimate {estimate['macro_f1']:.4f} (no labels: the test images' confidence, "
                 f"thresholded as on the {oof['fit_on']} OOF rows)")
    elif oof:
        line += f" | estimate {oof['macro_f1']:.4f} (the {oof['fit_on']} OOF rows predicted as the test)"
    scores = (summary or {}).get("test_metrics")
    if scores is not None:
        tta = (summary.get("tta") or {}).get("name", "none")
        deskew = " + deskew" if (summary.get("tta") or {}).get("deskew") else ""
        line += (f" | test {scores['macro_f1']:.4f} ({summary['n_test']} labelled test images, "
                 f"tta={tta}{deskew})")
    return line


def check_test_set(cfg: DictConfig) -> None:
    """The training data must have a test set to submit for (sample_submission + test images)."""
    from docclassify.data.sources import load_source

    source = load_source(cfg.data, cfg.paths.cache_dir)
    if source.test is None or source.sample_submission is None:
        raise ConfigError(f"submit=true: the data at {source.root} has no test set (no sample_submission.csv / "
                          "test/ folder), so there is nothing to submit; add them, point data.test_dir / "
                          "data.sample_submission at them, or train with submit=false")


def prepare_submission(cfg: DictConfig) -> Submission | None:
    """``submit=true``: the infer options and the test set, checked before any training (None when
    submit=false, or on a torchrun rank other than 0: rank 0 submits)."""
    from docclassify.engine import distributed

    mode = str(cfg.get("submit")).lower()  # true | false | auto (YAML booleans or the strings)
    if mode in ("false", "none"):
        return None
    auto = mode == "auto"
    if auto and cfg.get("hparams_search") is not None:
        return None  # every trial would predict the test set; the sweep's objective never reads it
    errors = schema_errors(cfg.infer, "infer")
    if errors:
        raise ConfigError("; ".join(errors))
    compose_infer(infer_overrides(cfg, Path(".")))  # unknown keys in infer.overrides fail here
    if distributed.init_from_env() and not distributed.is_main():
        return None
    if auto:
        if not has_labelled_test_set(cfg):
            return None
    else:
        check_test_set(cfg)
    return Submission(cfg)


def has_labelled_test_set(cfg: DictConfig) -> bool:
    """submit=auto: the data has test images and their labels (the synthetic data's test split)."""
    from docclassify.data.sources import DataError, load_source

    try:
        source = load_source(cfg.data, cfg.paths.cache_dir)
    except DataError:
        return False  # training reports the data's problem itself, with its own message
    return source.test is not None and source.sample_submission is not None and source.test_labels is not None
