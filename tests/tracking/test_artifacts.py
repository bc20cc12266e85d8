"""W&B artefacts (results, weights, predictions), infer runs in the training's group, the test
report of a labelled infer run, and logger=csv.

Offline W&B runs are read back from their ``.wandb`` files (``test_tracking.wandb_records``); an
artefact's manifest lists its files with their MD5 digests, compared with the files on disk.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY, compose_train, run_cli
from PIL import Image
from tracking.test_tracking import read_offline_run, wandb_records  # tests/ is on sys.path

from docclassify.tracking import reports, wandb_tracker
from docclassify.tracking.csv_logger import metrics_path

TINY_NO_LOGGER = [o for o in TINY if not o.startswith("logger=")]


def artifacts_of(run_folder: Path) -> dict[str, dict]:
    """type -> {"name", "files": {path: md5 digest}} of the artefacts an offline run logged."""
    (log_file,) = run_folder.glob("run-*.wandb")
    out = {}
    for rec in wandb_records(log_file):
        if rec.WhichOneof("record_type") == "artifact" and rec.artifact.type != "run_table":
            out[rec.artifact.type] = {"name": rec.artifact.name, "metadata": json.loads(rec.artifact.metadata or "{}"),
                                      "files": {e.path: e.digest for e in rec.artifact.manifest.contents}}
    return out


def md5(path: Path) -> str:
    return base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode()


@pytest.mark.slow
def test_wandb_artifacts_and_the_labelled_infer_run_of_submit(tiny_data, tmp_path):
    """One command: train (W&B offline, weights logged), then submit on the labelled test set."""
    run_dir, wandb_dir = tmp_path / "run", tmp_path / "wandb_home"
    run_cli("docclassify.train", [
        "data=competition", f"data.root={tiny_data}", *TINY_NO_LOGGER, "logger=wandb", "logger.log_checkpoints=true",
        "folds.n=2", "folds.run=[0]", "submit=true", "infer.data.test_labels=test_labels.csv",
        f"hydra.run.dir={run_dir}",
    ], env={"WANDB_MODE": "offline", "WANDB_DIR": str(wandb_dir), "WANDB_API_KEY": "",
            "WANDB_DATA_DIR": str(tmp_path / "wandb_data")})
    folders = sorted((wandb_dir / "wandb").glob("offline-run-*"))
    runs = {r["job_type"]: r for r in map(read_offline_run, folders)}
    assert sorted(runs) == ["fold0", "infer", "summary"]
    assert len({r["group"] for r in runs.values()}) == 1  # the infer run joined the training's group
    assert json.loads((run_dir / wandb_tracker.RUN_FILE).read_text())["group"] == runs["infer"]["group"]

    results = artifacts_of(runs["summary"]["folder"])["results"]
    assert set(results["files"]) == {"results.json", "oof.csv", "oof_logits.npy", "folds.csv", "run_config.yaml",
                                     "report.md", "per_class.csv", "confusion_matrix.png", "curves.png",
                                     "misclassified_fold0.png"}
    assert all(digest == md5(run_dir / name) for name, digest in results["files"].items())
    assert results["metadata"]["cv_macro_f1"] == pytest.approx(json.loads((run_dir / "results.json").read_text())
                                                               ["cv_macro_f1"])
    model = artifacts_of(runs["fold0"]["folder"])["model"]
    best = "checkpoints/fold0_best.safetensors"
    assert set(model["files"]) == {best} and model["files"][best] == md5(run_dir / best)

    # The infer dir: submission + the training-style report of the labelled test set.
    infer_dir = run_dir / "infer"
    summary = json.loads((infer_dir / "summary.json").read_text())
    predictions = artifacts_of(runs["infer"]["folder"])["predictions"]
    assert set(predictions["files"]) == {"submission.csv", "test_probs.csv", "summary.json", "report.md",
                                         "per_class.csv", "confusion_matrix.png", "misclassified.png"}
    assert all(digest == md5(infer_dir / name) for name, digest in predictions["files"].items())
    test_f1 = summary["test_metrics"]["macro_f1"]
    assert runs["infer"]["summary"]["test/macro_f1"] == pytest.approx(test_f1)
    table = pd.read_csv(infer_dir / "per_class.csv")
    assert table.loc[table["class"] != reports.MACRO_ROW, "f1"].mean() == pytest.approx(test_f1, abs=1e-6)
    assert f"macro F1: {test_f1:.4f}" in (infer_dir / "report.md").read_text()
    for name in ("confusion_matrix.png", "misclassified.png"):
        with Image.open(infer_dir / name) as img:
            assert img.format == "PNG" and min(img.size) > 200


class StubRun:
    """What WandbTracker calls on a run, recorded."""

    def __init__(self):
        self.logged, self.summary = [], {}

    def log(self, data):
        self.logged.append(data)

    def finish(self, exit_code=0):
        self.exit_code = exit_code


def test_weights_are_logged_only_with_log_checkpoints(tiny_data, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(wandb_tracker, "log_files", lambda run, folder, name, kind, patterns, *a, **k:
                        calls.append((kind, name, list(patterns))) or [])
    rng = np.random.default_rng(0)
    outcome = {"val_logits": rng.normal(size=(20, 17)), "val_targets": rng.integers(0, 17, 20), "images": None,
               "best_macro_f1": 0.5, "best_epoch": 0, "epochs_run": 1, "seconds": 1.0, "fold": 1,
               "checkpoint": "checkpoints/fold1_best.safetensors"}
    for flag in (False, True):
        cfg = compose_train(["data=competition", f"data.root={tiny_data}", *TINY_NO_LOGGER, "logger=wandb",
                             "logger.mode=offline", f"logger.log_checkpoints={flag}"], tmp_path)
        tracker = wandb_tracker.WandbTracker(cfg, tmp_path)
        tracker.classes, tracker.run = [f"c{i}" for i in range(17)], StubRun()
        tracker.on_fold_end(1, outcome)
    (call,) = calls  # only the log_checkpoints=true tracker logged weights
    assert call[0] == "model" and call[1].endswith("fold1-model")
    assert call[2] == ["checkpoints/fold1_best.safetensors", "checkpoints/fold1_best.*"]


def test_infer_joins_the_training_group_unless_logger_group_is_set(tmp_path):
    from omegaconf import OmegaConf

    logger = OmegaConf.create({"project": "p", "entity": None, "group": None})
    run = tmp_path / "run"
    run.mkdir()
    assert wandb_tracker.inference_identity(logger, run, tmp_path / "inf")["group"] == "infer-inf"
    (run / wandb_tracker.RUN_FILE).write_text(json.dumps({"project": "q", "entity": "e", "group": "exp-1"}))
    assert wandb_tracker.inference_identity(logger, run, tmp_path / "inf") == {"project": "q", "entity": "e",
                                                                                "group": "exp-1"}
    logger.group = "mine"
    assert wandb_tracker.inference_identity(logger, run, tmp_path / "inf") == {"project": "p", "entity": None,
                                                                                "group": "mine"}


def test_logger_csv_builds_the_csv_logger_and_infer_refuses_it(tiny_data, tmp_path):
    from docclassify.config_schema import ConfigError
    from docclassify.tracking import build_trackers
    from docclassify.tracking.csv_logger import CsvLogger

    def kinds(logger: str) -> list[str]:
        cfg = compose_train(["data=competition", f"data.root={tiny_data}", *TINY_NO_LOGGER, f"logger={logger}"],
                            tmp_path)
        return [type(t).__name__ for t in build_trackers(cfg, tmp_path)]

    assert kinds("csv") == ["Progress", "LocalReports", CsvLogger.__name__]
    assert CsvLogger.__name__ not in kinds("none")
    from hydra import compose, initialize_config_dir

    from docclassify.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        infer_cfg = compose("infer", overrides=["logger=csv"])
    with pytest.raises(ConfigError, match="logger=csv"):
        wandb_tracker.build_inference_tracker(infer_cfg, tmp_path)


@pytest.mark.slow
def test_logger_csv_writes_one_row_per_epoch_per_fold_and_resume_appends(tiny_data, tmp_path):
    from docclassify.engine.kfold import run_kfold
    from docclassify.train import build_callbacks

    def train(epochs: int) -> dict:
        cfg = compose_train(["data=competition", f"data.root={tiny_data}", *TINY_NO_LOGGER, "logger=csv",
                             "folds.n=2", f"trainer.epochs={epochs}"], tmp_path)
        return run_kfold(cfg, build_callbacks(cfg))

    results = train(2)
    for fold in results["folds"]:
        table = pd.read_csv(metrics_path(tmp_path, fold["fold"]))
        assert table["epoch"].tolist() == [1, 2]
        np.testing.assert_allclose(table["val_macro_f1"], [h["val_macro_f1"] for h in fold["history"]], rtol=1e-9)
        np.testing.assert_allclose(table["train_loss"], [h["train_loss"] for h in fold["history"]], rtol=1e-9)
        assert {"val_loss", "val_accuracy", "lr", "best_macro_f1", "img_per_s", "epoch_s"} <= set(table.columns)
        assert sum(c.startswith("f1/") for c in table.columns) == 17
    assert sorted(p.parent.name for p in tmp_path.rglob("metrics.csv")) == ["fold0", "fold1"]
    # Resumed with more epochs: the folds continue, their files keep epochs 1-2 and get epoch 3.
    results = train(3)
    for fold in results["folds"]:
        table = pd.read_csv(metrics_path(tmp_path, fold["fold"]))
        assert table["epoch"].tolist() == [1, 2, 3]
        np.testing.assert_allclose(table["val_macro_f1"], [h["val_macro_f1"] for h in fold["history"]], rtol=1e-9)
