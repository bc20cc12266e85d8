"""Weights & Biases tracking (``logger=wandb``): one W&B run per fold, one summary run per experiment.

- Mode: ``logger.mode`` if set, else ``WANDB_MODE`` from the environment, else ``online`` when an
  API key is configured (WANDB_API_KEY, WANDB_IDENTITY_TOKEN_FILE or a netrc entry for the
  W&B host) and ``offline`` otherwise. The key check reads only the environment and the netrc
  file, so without a key there is never a network attempt (or a login prompt that hangs).
- Runs: ``group`` = the experiment (``logger.group``; the study / sweep in a Hydra multirun;
  else ``<experiment or pipeline>-<run dir name>``), ``job_type`` = ``fold<k>`` (``summary`` for
  the cv summary run), name = ``<model>-<pipeline>-fold<k>`` (prefixed ``t<job num>`` in a
  sweep), tags = ``logger.tags`` + pipeline, model, experiment. The run config is the resolved
  Hydra config plus the fold, the command-line overrides and, in a sweep, the trial.
  Every run is finished before the next starts, so folds never log into one another.
- Artefacts: the summary run logs a ``results`` artefact (results.json, oof.csv, folds.csv, the
  report files); with ``logger.log_checkpoints=true`` each fold run logs its best weights as a
  ``model`` artefact. ``InferenceTracker`` logs an infer run (``job_type=infer``) in the group of
  the training run it predicted with (read from the run dir's wandb_run.json), with a
  ``predictions`` artefact (submission.csv, test_probs.csv, summary.json, the test report).
- Secrets: URL passwords (a sweep's storage) are masked in the config, the overrides and the
  command line W&B records.
- Offline runs are written under ``$WANDB_DIR/wandb`` (default: the run dir) and uploaded
  later with ``wandb sync``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import netrc
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from omegaconf import DictConfig, OmegaConf

from docclassify.metrics import softmax
from docclassify.tracking import reports
from docclassify.tracking.callbacks import Callback
from docclassify.utils.choices import WANDB_MODES
from docclassify.utils.io import atomic_write_json
from docclassify.utils.redact import has_password, redact_config

log = logging.getLogger(__name__)

DEFAULT_HOST = "https://api.wandb.ai"
# Written into a training run dir: where its W&B runs went, so inference can join their group.
RUN_FILE = "wandb_run.json"
# The files of a training run's "results" artefact (those that exist) and of an infer run's
# "predictions" artefact.
RESULT_FILES = ("results.json", "oof.csv", "oof_logits.npy", "folds.csv", "run_config.yaml", reports.REPORT_MD,
                reports.PER_CLASS_CSV, reports.CONFUSION_PNG, reports.CURVES_PNG, "misclassified_fold*.png")
PREDICTION_FILES = ("submission.csv", "test_probs.csv", "summary.json", reports.REPORT_MD, reports.PER_CLASS_CSV,
                    reports.CONFUSION_PNG, reports.MISCLASSIFIED_PNG)


# ---------------------------------------------------------------------------------------------
# Mode and identity (pure)
# ---------------------------------------------------------------------------------------------

def _netrc_path(env) -> Path:
    if env.get("NETRC"):
        return Path(env["NETRC"]).expanduser()
    home = Path(env.get("HOME") or Path.home())
    return home / ("_netrc" if os.name == "nt" and not (home / ".netrc").exists() else ".netrc")


def has_credentials(env=None) -> bool:
    """True when W&B has a key without asking: env var, identity token file or a netrc entry."""
    env = os.environ if env is None else env
    if env.get("WANDB_API_KEY") or env.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlsplit(env.get("WANDB_BASE_URL") or DEFAULT_HOST).netloc
    try:
        entry = netrc.netrc(str(_netrc_path(env))).authenticators(host)
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return bool(entry and entry[2])


def resolve_mode(configured: str | None, env=None) -> str:
    """logger.mode > WANDB_MODE > online with a key / offline without one."""
    env = os.environ if env is None else env
    if configured:
        if configured not in WANDB_MODES:
            raise ValueError(f"logger.mode={configured!r}: expected one of {WANDB_MODES} or null")
        return configured
    mode = (env.get("WANDB_MODE") or "").strip().lower()
    if mode:
        mode = {"dryrun": "offline", "run": "online"}.get(mode, mode)
        if mode not in WANDB_MODES:
            raise ValueError(f"WANDB_MODE={env['WANDB_MODE']!r}: expected one of {WANDB_MODES}")
        return mode
    return "online" if has_credentials(env) else "offline"


def hydra_context() -> dict[str, Any]:
    """What Hydra knows about this job: overrides, multirun, job number, sweep dir, study name and
    the keys the sweeper searches (``hydra.sweeper.params``)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except (ImportError, ValueError):  # run_training called outside Hydra
        return {"overrides": [], "multirun": False}
    overrides = [str(o) for o in (hc.overrides.task or [])]
    multirun = hc.mode == RunMode.MULTIRUN
    ctx: dict[str, Any] = {"overrides": overrides, "multirun": bool(multirun)}
    if multirun:
        sweeper = hc.get("sweeper") or {}
        params = sweeper.get("params") if hasattr(sweeper, "get") else None
        ctx.update(job_num=hc.job.get("num"), sweep_dir=str(hc.sweep.dir),
                   study_name=sweeper.get("study_name") if hasattr(sweeper, "get") else None,
                   search_keys=[str(k) for k in params] if params else None)
    return ctx


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["trainer.lr=1e-3", "model=resnet18"]`` -> ``{"trainer.lr": 0.001, "model": "resnet18"}`` (Hydra's parser)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser, out = OverridesParser.create(), {}
    for item in overrides:
        try:
            (o,) = parser.parse_overrides([item])
        except HydraException:  # not a key=value override: keep it visible in hydra_overrides only
            continue
        value = o.value()
        plain = isinstance(value, (str, int, float, bool, list, dict, type(None)))
        out[o.key_or_group] = value if plain else str(value)
    return out


def _safe(name: Any) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))


def trial_params(hctx: dict[str, Any]) -> dict[str, Any]:
    """The values of this sweep job: the searched keys (all overrides when the sweeper names none)."""
    params = parse_overrides(hctx.get("overrides", []))
    params = {k: v for k, v in params.items() if not k.startswith("hparams_search.trial.")}
    keys = hctx.get("search_keys")
    return {k: v for k, v in params.items() if k in keys} if keys else params


def run_identity(cfg: DictConfig, run_dir: Path, hctx: dict[str, Any]) -> dict[str, Any]:
    """group, name prefix, tags and the trial (study, number, params) of this experiment's W&B runs.

    In an Optuna sweep the trial comes from ``hparams_search.trial`` (set by the sweeper); in a
    plain Hydra multirun from the job number and the sweep dir.
    """
    pipeline, experiment = cfg.get("pipeline"), cfg.get("experiment")
    logger = cfg.logger
    # The Optuna trial as sweep.trial_info reads it (only its study and number: the storage is the
    # sweep callback's); read here so tracking stays below sweep (.importlinter).
    trial, optuna_trial = None, OmegaConf.select(cfg, "hparams_search.trial", default=None)
    if optuna_trial is not None and optuna_trial.get("number") is not None:
        trial = {"study": str(optuna_trial.study), "number": int(optuna_trial.number), "params": trial_params(hctx)}
    elif hctx.get("multirun"):
        study = hctx.get("study_name") or Path(hctx["sweep_dir"]).name
        trial = {"study": str(study), "number": hctx.get("job_num"), "params": trial_params(hctx)}
    if trial is not None:
        group, prefix = logger.get("group") or trial["study"], f"t{trial['number']}-"
    else:
        group, prefix = logger.get("group") or f"{experiment or pipeline or 'train'}-{run_dir.name}", ""
    tags = [str(t) for t in (logger.get("tags") or [])]
    tags += [str(t) for t in (pipeline, experiment) if t]
    if trial:
        tags.append("sweep")
    return {"group": str(group), "prefix": prefix, "tags": tags, "trial": trial,
            "overrides": redact_config(list(hctx.get("overrides", [])))}


# ---------------------------------------------------------------------------------------------
# Runs and artefacts (shared by training and inference)
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _redacted_argv():
    """W&B records the command line (sys.argv); a password typed there (hydra.sweeper.storage=...)
    must not go with it."""
    saved = sys.argv
    if any(has_password(a) for a in saved):
        sys.argv = redact_config(list(saved))
    try:
        yield
    finally:
        sys.argv = saved


def init_run(run_dir: Path, mode: str, config: dict, **kwargs):
    """``wandb.init`` of one of our runs: a fresh run (never a previous one continued), the config
    with passwords masked, offline files beside the run's outputs unless WANDB_DIR says otherwise."""
    import wandb

    if not os.environ.get("WANDB_DIR"):  # keep offline runs beside the run's other outputs
        kwargs["dir"] = str(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    with _redacted_argv():
        return wandb.init(config=redact_config(config), mode=mode, reinit="create_new", **kwargs)


def artifact_name(group: str, kind: str) -> str:
    return _safe(f"{group}-{kind}")[:128]


def log_files(run, folder: Path, name: str, kind: str, patterns, metadata: dict | None = None,
              aliases: list[str] | None = None) -> list[str]:
    """Log the files of ``folder`` matching ``patterns`` (names or globs) as one artefact; returns
    their names (nothing is logged when none exists)."""
    import wandb

    files = list(dict.fromkeys(p for pattern in patterns for p in sorted(folder.glob(pattern)) if p.is_file()))
    if not files:
        return []
    artifact = wandb.Artifact(name, type=kind, metadata=redact_config(metadata or {}))
    for path in files:
        artifact.add_file(str(path), name=path.relative_to(folder).as_posix())
    run.log_artifact(artifact, aliases=aliases)
    return [p.relative_to(folder).as_posix() for p in files]


# ---------------------------------------------------------------------------------------------
# The callback
# ---------------------------------------------------------------------------------------------

class WandbTracker(Callback):
    def __init__(self, cfg: DictConfig, run_dir: str | Path):
        from docclassify.config import plain_config

        self.run_dir = Path(run_dir)
        self.logger = cfg.logger
        self.mode = resolve_mode(cfg.logger.get("mode"))
        self.identity = run_identity(cfg, self.run_dir, hydra_context())
        self.pipeline = cfg.get("pipeline") or "custom"
        self.config = plain_config(cfg)
        self.log_checkpoints = bool(cfg.logger.get("log_checkpoints", False))
        self.classes: list[str] = []
        self.run = None

    # -- run management -----------------------------------------------------------------------
    def _init(self, name: str, job_type: str, extra_config: dict, extra_tags: list[str]):
        self._finish(0)  # never let two of our runs be open at once
        tags = list(dict.fromkeys(t[:64] for t in [*self.identity["tags"], *extra_tags]))
        config = {**self.config, **extra_config, "run_dir": str(self.run_dir),
                  "hydra_overrides": self.identity["overrides"]}
        if self.identity["trial"]:
            config["trial"] = self.identity["trial"]
        self.run = init_run(self.run_dir, self.mode, config, project=self.logger.get("project"),
                            entity=self.logger.get("entity"), group=self.identity["group"], job_type=job_type,
                            name=self.identity["prefix"] + name, tags=tags)
        return self.run

    def _finish(self, exit_code: int) -> None:
        if self.run is not None:
            run, self.run = self.run, None
            run.finish(exit_code=exit_code)

    # -- hooks --------------------------------------------------------------------------------
    def on_run_start(self, info):
        self.classes = list(info["classes"])
        # Where this experiment's runs go: `docclassify.infer` on this run dir joins the group.
        atomic_write_json(self.run_dir / RUN_FILE, {"project": self.logger.get("project"),
                                                    "entity": self.logger.get("entity"),
                                                    "group": self.identity["group"], "mode": self.mode})
        if self.mode == "offline":
            log.info("W&B: offline runs (no API key / WANDB_MODE=offline); upload later with `wandb sync %s`",
                     Path(os.environ.get("WANDB_DIR") or self.run_dir) / "wandb" / "offline-run-*")

    def on_fold_start(self, fold, info):
        model = info.get("model_option") or info.get("model")
        run = self._init(f"{_safe(model)}-{_safe(self.pipeline)}-fold{fold}", f"fold{fold}",
                         {"fold": fold, "fold_info": dict(info)}, [str(model)])
        run.define_metric("train/step")
        run.define_metric("train/*", step_metric="train/step")
        run.define_metric("epoch")
        for prefix in ("val/*", "val_robust/*", "val_per_class_f1/*", "epoch/*", "perf/*"):
            run.define_metric(prefix, step_metric="epoch")
        for prefix in ("val", "val_robust"):
            run.define_metric(f"{prefix}/macro_f1", summary="max")
            run.define_metric(f"{prefix}/loss", summary="min")

    def on_step_end(self, fold, step, metrics):
        if self.run is not None:
            self.run.log({"train/loss": metrics["train/loss"], "train/lr": metrics["train/lr"],
                          "train/step": metrics["step"]})

    def on_epoch_end(self, fold, epoch, m):
        if self.run is None:
            return
        data = {"epoch": epoch + 1, "epoch/train_loss": m["train_loss"], "epoch/lr": m["lr"],
                "val/loss": m["val_loss"], "val/macro_f1": m["val_macro_f1"], "val/accuracy": m["val_accuracy"],
                "val_robust/loss": m.get("val_loss_robust"), "val_robust/macro_f1": m.get("val_macro_f1_robust"),
                "val_robust/accuracy": m.get("val_accuracy_robust"),
                "val/monitored": m.get("val_monitored"), "val/best_monitored": m.get("best_monitored"),
                "val/best_macro_f1": m["best_macro_f1"], "perf/epoch_s": m["epoch_s"],
                "perf/img_per_s": m["img_per_s"], "epoch/p_advanced": m.get("p_advanced"),
                "epoch/mixup": m.get("mixup")}
        if m.get("max_grad_norm") is not None:
            data["epoch/max_grad_norm"] = m["max_grad_norm"]
        data.update(orientation_epoch_metrics(m))
        for name, f1 in zip(self.classes, m.get("val_per_class_f1") or []):
            data[f"val_per_class_f1/{_safe(name)}"] = f1
        self.run.log({k: v for k, v in data.items() if v is not None})

    def on_fold_end(self, fold, outcome):
        if self.run is None:
            return
        import wandb

        probs = softmax(outcome["val_logits"])
        y_true = np.asarray(outcome["val_targets"], dtype=np.int64)
        y_pred = probs.argmax(1)
        self._log_evaluation(y_true, y_pred, f"fold {fold}")
        if outcome.get("images") is not None:
            fig = reports.misclassified_grid(outcome["images"], outcome["val_index"], outcome["val_ids"], probs,
                                             y_true, self.classes, f"fold {fold}: most confidently wrong")
            self.run.log({"val/misclassified": wandb.Image(reports.figure_to_pil(fig),
                                                           caption="true / predicted (probability)")})
        self.run.summary.update({"best_macro_f1": outcome["best_macro_f1"],
                                 "best_macro_f1_robust": outcome.get("best_macro_f1_robust"),
                                 "monitor": outcome.get("monitor"), "best_epoch": outcome["best_epoch"] + 1,
                                 "epochs_run": outcome.get("epochs_run"), "fold_seconds": outcome.get("seconds")})
        if self.log_checkpoints:
            self._log_weights(fold, outcome)
        self._finish(0)

    def _log_weights(self, fold: int, outcome: dict) -> None:
        """The fold's best weights (and any description file beside them) as a "model" artefact."""
        best = Path(outcome.get("checkpoint") or f"checkpoints/fold{fold}_best.safetensors")
        meta = {k: outcome.get(k) for k in ("fold", "model", "model_option", "img_size", "best_macro_f1",
                                            "best_epoch", "weights")}
        files = log_files(self.run, self.run_dir, artifact_name(self.identity["group"], f"fold{fold}-model"), "model",
                          [best.as_posix(), f"{best.parent.as_posix()}/{best.stem}.*"], meta, aliases=["best"])
        log.info("W&B: fold %d weights logged as an artefact (%s)", fold, ", ".join(files) or "none found")

    def _log_evaluation(self, y_true, y_pred, title: str) -> None:
        import wandb

        table = reports.per_class_table(y_true, y_pred, self.classes)
        self.run.log({
            "val/confusion_matrix": wandb.plot.confusion_matrix(y_true=y_true.tolist(), preds=y_pred.tolist(),
                                                                class_names=self.classes, title=title),
            "val/confusion_matrix_image": wandb.Image(reports.figure_to_pil(
                reports.plot_confusion_matrix(y_true, y_pred, self.classes, title))),
            "val/per_class": wandb.Table(dataframe=table.astype({"class_index": int})),
        })

    def on_run_end(self, results):
        import wandb

        folds = reports.fold_results_from_run_dir(self.run_dir, results)
        run = self._init("cv", "summary", {"folds_run": results["folds_run"]}, ["summary"])
        y_true = np.concatenate([f.y_true for f in folds]) if folds else np.zeros(0, np.int64)
        y_pred = np.concatenate([f.y_pred for f in folds]) if folds else np.zeros(0, np.int64)
        if len(y_true):
            self._log_evaluation(y_true, y_pred, "OOF (all folds run)")
        fold_cols = ["fold", "model", "img_size", "best_macro_f1", "best_macro_f1_robust", "best_epoch", "epochs_run",
                     "seconds"]
        run.log({"cv/folds": wandb.Table(columns=fold_cols, data=[[f.get(c) for c in fold_cols]
                                                                   for f in results["folds"]]),
                 "cv/curves": wandb.Image(reports.figure_to_pil(
                     reports.plot_curves({f.fold: f.history for f in folds})))})
        summary = {"cv/macro_f1": results["cv_macro_f1"], "cv/accuracy": results["cv_accuracy"],
                   "cv/mean_fold_macro_f1": results["mean_fold_macro_f1"], "cv/n_oof_rows": results["n_oof_rows"],
                   "cv/macro_f1_robust": results.get("cv_macro_f1_robust"), "monitor": results.get("monitor"),
                   # The number a sweep optimises (what docclassify.train returns), for parallel coordinates.
                   "objective": results.get("objective", results["cv_macro_f1"])}
        summary.update(orientation_run_metrics(results.get("orientation")))
        if results.get("pseudo"):  # pseudo.source: how many test images joined training, per class
            summary["pseudo/n_added"] = results["pseudo"]["n_added"]
            summary.update({f"pseudo/per_class/{c}": n for c, n in results["pseudo"]["per_class"].items()})
        run.summary.update(summary)
        files = log_files(run, self.run_dir, artifact_name(self.identity["group"], "results"), "results",
                          RESULT_FILES, {"cv_macro_f1": results["cv_macro_f1"], "folds_run": results["folds_run"]})
        log.info("W&B: run artefact with %s", ", ".join(files))
        self._finish(0)

    def close(self):
        # Still open here = the fold or summary did not end normally: mark the run failed.
        try:
            self._finish(1)
        except Exception:  # closing must never mask the original error
            log.exception("W&B: finishing the run failed")


def orientation_epoch_metrics(m: dict) -> dict:
    """An epoch's orientation numbers (engine/orientation_head.py): the head's loss and accuracy on the turned
    validation copies, the classifier's accuracy by orientation."""
    out = {"epoch/train_orientation_loss": m.get("train_orientation_loss"),
           "val/orientation_accuracy": m.get("val_orientation_accuracy")}
    out.update({f"val/accuracy_{c}": m.get(f"val_accuracy_{c}") for c in ("upright", "turned", "mirrored")})
    return {k: v for k, v in out.items() if v is not None}


def orientation_run_metrics(orientation: dict | None) -> dict:
    """results.json's ``orientation`` as summary values of the cv run."""
    if not orientation:
        return {}
    out = {"cv/orientation_head_accuracy": orientation.get("head_accuracy")}
    out.update({f"cv/accuracy_{c}": a for c, a in (orientation.get("accuracy_by_orientation") or {}).items()})
    return {k: v for k, v in out.items() if v is not None}


def orientation_test_metrics(orientation: dict | None) -> dict:
    """summary.json's ``orientation`` (predict/upright.py): test accuracy by orientation (with test
    labels) and the share of test images turned back (tta=orient*)."""
    if not orientation:
        return {}
    out = {f"test/accuracy_{c}": v["accuracy"] for c, v in (orientation.get("accuracy") or {}).items()}
    out.update({f"test/turned_back_{k}": v for k, v in (orientation.get("turned_back") or {}).items()})
    if orientation.get("estimate_matches_known") is not None:
        out["test/orientation_estimate_matches_known"] = orientation["estimate_matches_known"]
    return out


# ---------------------------------------------------------------------------------------------
# Inference runs
# ---------------------------------------------------------------------------------------------

def training_identity(run_dir: Path) -> dict:
    """project / entity / group of a training run's W&B runs ({} when it was not tracked). A run
    merged by docclassify.aggregate has it in its job dirs (they share the sweep's group)."""
    for path in [run_dir / RUN_FILE, *sorted(run_dir.glob(f"*/{RUN_FILE}"))]:
        if path.is_file():
            return json.loads(path.read_text())
    return {}


def inference_identity(logger: DictConfig, run_dir: Path, out_dir: Path) -> dict:
    """Where an infer run goes: ``logger.group`` (with logger.project/entity) when set, else the
    group (and project, entity) of the first training run, else ``infer-<infer dir name>``."""
    if logger.get("group"):
        return {"project": logger.get("project"), "entity": logger.get("entity"), "group": str(logger.group)}
    trained = training_identity(run_dir)
    if trained.get("group"):
        return {"project": trained.get("project") or logger.get("project"), "entity": trained.get("entity"),
                "group": str(trained["group"])}
    return {"project": logger.get("project"), "entity": logger.get("entity"), "group": f"infer-{out_dir.name}"}


class InferenceTracker:
    """``logger=wandb`` for ``docclassify.infer``: one W&B run (job_type ``infer``) in the training
    experiment's group with the test scores (when labels are known), the report images and a
    ``predictions`` artefact (submission.csv, test_probs.csv, summary.json, the test report)."""

    def __init__(self, cfg: DictConfig, out_dir: str | Path):
        from docclassify.config import plain_config

        self.logger, self.out_dir = cfg.logger, Path(out_dir)
        self.mode = resolve_mode(cfg.logger.get("mode"))
        self.tta = str(cfg.tta.name) if cfg.get("tta") is not None else "none"
        self.config = plain_config(cfg)

    def log(self, summary: dict) -> None:
        """Log the finished inference (its files are in the infer dir); a W&B error is logged, not
        raised: the submission is written already."""
        try:
            self._log(summary)
        except Exception:  # noqa: BLE001 - tracking must never cost the outputs
            log.exception("W&B: logging the inference run failed (its outputs are complete in %s)", self.out_dir)

    def _log(self, summary: dict) -> None:
        import wandb

        ident = inference_identity(self.logger, Path(summary["runs"][0]["dir"]), self.out_dir)
        tags = list(dict.fromkeys([*(str(t) for t in (self.logger.get("tags") or [])), "infer"]))
        run = init_run(self.out_dir, self.mode, {**self.config, "runs_used": [r["dir"] for r in summary["runs"]]},
                       project=ident["project"], entity=ident["entity"], group=ident["group"], job_type="infer",
                       name=f"infer-{_safe(self.tta)}", tags=tags)
        try:
            scores = summary.get("test_metrics") or {}
            run.summary.update({"n_test": summary["n_test"], "temperature": summary["temperature"],
                                **({"oof/macro_f1": summary["oof"]["macro_f1"]} if summary.get("oof") else {}),
                                **{f"test/{k}": scores[k] for k in ("macro_f1", "accuracy") if k in scores},
                                **orientation_test_metrics(summary.get("orientation"))})
            images = {f"test/{Path(n).stem}": wandb.Image(str(self.out_dir / n))
                      for n in (reports.CONFUSION_PNG, reports.MISCLASSIFIED_PNG) if (self.out_dir / n).is_file()}
            if images:
                run.log(images)
            files = log_files(run, self.out_dir, artifact_name(ident["group"], "predictions"), "predictions",
                              PREDICTION_FILES, {"tta": summary.get("tta"), "runs": [r["dir"] for r in summary["runs"]],
                                                 **{f"test_{k}": scores[k] for k in ("macro_f1", "accuracy")
                                                    if k in scores}})
            log.info("W&B: infer run in group %s with %s", ident["group"], ", ".join(files))
        except BaseException:
            run.finish(exit_code=1)
            raise
        run.finish(exit_code=0)


def build_inference_tracker(cfg: DictConfig, out_dir: str | Path) -> InferenceTracker | None:
    """The tracker of an infer run (None for logger=none or W&B disabled). Checked before any work:
    logger=csv (per-epoch training metrics) has nothing to log for inference."""
    from docclassify.config_schema import ConfigError

    name = OmegaConf.select(cfg, "logger.name", default="none")
    if name == "none":
        return None
    if name != "wandb":
        raise ConfigError(f"logger={name}: inference is tracked with logger=wandb or not at all (logger=none); "
                          "logger=csv writes training's per-epoch metrics, and infer's outputs are CSV files already")
    tracker = InferenceTracker(cfg, out_dir)
    return None if tracker.mode == "disabled" else tracker


def log_study(cfg: DictConfig, sweep_dir: Path, study_name: str, images: dict[str, Path], trials) -> None:
    """``logger=wandb`` at the end of an Optuna sweep: one run (job_type ``study``) in the group of
    the study's trials, with the study's pictures (sweep/plots.py) and the trials table. A W&B error
    is logged, not raised: the sweep is finished and its files are written."""
    if OmegaConf.select(cfg, "logger.name", default="none") != "wandb":
        return
    mode = resolve_mode(cfg.logger.get("mode"))
    if mode == "disabled":
        return
    try:
        import wandb

        run = init_run(Path(sweep_dir), mode, {"study": study_name, "n_trials": len(trials)},
                       project=cfg.logger.get("project"), entity=cfg.logger.get("entity"),
                       group=str(cfg.logger.get("group") or study_name), job_type="study",
                       name=f"study-{_safe(study_name)}",
                       tags=list(dict.fromkeys([*(str(t) for t in (cfg.logger.get("tags") or [])), "sweep"])))
        try:
            run.log({f"study/{name}": wandb.Image(str(path)) for name, path in images.items()}
                    | {"study/trials": wandb.Table(dataframe=trials.astype(str))})
        finally:
            run.finish()
        log.info("W&B: study run in group %s with %s", cfg.logger.get("group") or study_name,
                 ", ".join(["trials", *images]))
    except Exception:  # noqa: BLE001 - tracking must never cost a finished sweep
        log.exception("W&B: logging the study failed (its files are in %s)", sweep_dir)
