"""Experiment tracking: W&B offline runs per fold, local reports, progress display.

The W&B checks read the real offline ``.wandb`` files with wandb's own protobuf schema
(``wandb.proto.wandb_internal_pb2.Record``); the container is LevelDB's log format
(32 KiB blocks, 7-byte chunk headers) after a 7-byte ``:W&B`` file header.
"""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY, compose_train, run_cli
from PIL import Image
from sklearn.metrics import f1_score

from docclassify.metrics import softmax
from docclassify.tracking import reports
from docclassify.tracking.progress import Progress
from docclassify.tracking.wandb_tracker import (
    has_credentials,
    parse_overrides,
    resolve_mode,
    run_identity,
)

TINY_NO_LOGGER = [o for o in TINY if not o.startswith("logger=")]


# ---------------------------------------------------------------------------------------------
# Reading offline W&B runs
# ---------------------------------------------------------------------------------------------

def wandb_records(path: Path):
    """Every Record of a .wandb file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 2):  # FULL / FIRST
            pending = chunk
        else:  # MIDDLE / LAST
            pending += chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(pending)
            yield rec


def read_offline_run(run_folder: Path) -> dict:
    """run info, history rows (flat key -> JSON value), summary and config of one offline run."""
    (log_file,) = run_folder.glob("run-*.wandb")
    out = {"history": [], "summary": {}, "config": {}, "folder": run_folder}
    for rec in wandb_records(log_file):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out.update(group=rec.run.run_group, job_type=rec.run.job_type, name=rec.run.display_name,
                       tags=list(rec.run.tags))
            out["config"].update({i.key: json.loads(i.value_json) for i in rec.run.config.update})
        elif kind == "history":
            out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                   for i in rec.history.item})
        elif kind == "summary":
            out["summary"].update({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                   for i in rec.summary.update})
        elif kind == "config":
            out["config"].update({i.key: json.loads(i.value_json) for i in rec.config.update})
    return out


# ---------------------------------------------------------------------------------------------
# End to end: logger=wandb (offline) and logger=none
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_wandb_offline_one_run_per_fold_and_local_reports(tiny_data, tmp_path):
    run_dir, wandb_dir = tmp_path / "run", tmp_path / "wandb_home"
    run_cli("docclassify.train", [
        "data=competition", f"data.root={tiny_data}", *TINY_NO_LOGGER, "logger=wandb", "logger.tags=[unit]",
        "trainer.epochs=2", "folds.n=3", "folds.run=[0,1]", "seed=5", f"hydra.run.dir={run_dir}",
    ], env={"WANDB_MODE": "offline", "WANDB_DIR": str(wandb_dir), "WANDB_API_KEY": ""})
    results = json.loads((run_dir / "results.json").read_text())

    runs = [read_offline_run(p) for p in sorted((wandb_dir / "wandb").glob("offline-run-*"))]
    folds = {r["job_type"]: r for r in runs if r["job_type"].startswith("fold")}
    assert sorted(folds) == ["fold0", "fold1"] and len(runs) == 3  # + the cv summary run
    assert len({r["group"] for r in runs}) == 1 and runs[0]["group"]
    for f in results["folds"]:
        run = folds[f"fold{f['fold']}"]
        assert run["name"] == f"tiny-quick-fold{f['fold']}" and "unit" in run["tags"]
        assert run["config"]["fold"] == f["fold"]
        assert run["config"]["trainer"]["epochs"] == 2  # the resolved config
        # Every epoch's val macro F1 (and nothing from the other fold: finished runs never mix).
        epochs = [(h["epoch"], h["val/macro_f1"]) for h in run["history"] if "val/macro_f1" in h]
        assert [e for e, _ in epochs] == [1, 2]
        np.testing.assert_allclose([v for _, v in epochs], [h["val_macro_f1"] for h in f["history"]], rtol=1e-9)
        robust = [h["val_robust/macro_f1"] for h in run["history"] if "val_robust/macro_f1" in h]
        np.testing.assert_allclose(robust, [h["val_macro_f1_robust"] for h in f["history"]], rtol=1e-9)
        assert sum("train/loss" in h for h in run["history"]) >= 2 * 3  # per step: 2 epochs x 3 batches
        per_class = [h for h in run["history"] if "val/macro_f1" in h][-1]
        assert all(f"val_per_class_f1/{c}" in per_class for c in results["classes"])
        logged = {k: v for h in run["history"] for k, v in h.items()}
        assert logged["val/confusion_matrix_table/_type"] == "table-file"
        assert logged["val/confusion_matrix_table/nrows"] == 17 * 17
        assert logged["val/confusion_matrix_image/_type"] == "image-file"
        assert logged["val/misclassified/_type"] == "image-file"
        assert logged["val/per_class/nrows"] == 17
        assert (run["folder"] / "files" / logged["val/confusion_matrix_image/path"]).is_file()
        assert run["summary"]["best_macro_f1"] == pytest.approx(f["best_macro_f1"])
    (summary,) = [r for r in runs if r["job_type"] == "summary"]
    assert summary["summary"]["cv/macro_f1"] == pytest.approx(results["cv_macro_f1"])
    assert summary["summary"]["cv/macro_f1_robust"] == pytest.approx(results["cv_macro_f1_robust"])
    assert summary["summary"]["objective"] == pytest.approx(results["objective"])
    assert not (run_dir / "wandb").exists()  # WANDB_DIR decides where offline runs go

    # Local reports: PNGs that open, per-class CSV consistent with results.json.
    for name in ("confusion_matrix.png", "curves.png", "misclassified_fold0.png", "misclassified_fold1.png"):
        with Image.open(run_dir / name) as img:
            img.verify()
        with Image.open(run_dir / name) as img:
            assert img.format == "PNG" and min(img.size) > 200
    table = pd.read_csv(run_dir / "per_class.csv")
    assert set(table["scope"]) == {"fold0", "fold1", "oof"}
    for f in results["folds"]:
        rows = table[(table["scope"] == f"fold{f['fold']}") & (table["class"] != reports.MACRO_ROW)]
        assert len(rows) == 17
        assert rows["f1"].mean() == pytest.approx(f["best_macro_f1"], abs=1e-6)
    oof = table[(table["scope"] == "oof") & (table["class"] == reports.MACRO_ROW)]
    assert oof["f1"].item() == pytest.approx(results["cv_macro_f1"], abs=1e-6)
    md = (run_dir / "report.md").read_text()
    assert "(finished)" in md and f"{results['cv_macro_f1']:.4f}" in md
    # The fold table: clean and robust macro F1 of each fold's best epoch (validation=both).
    assert "| robust macro F1 |" in md.split("## Folds", 1)[1].split("\n")[2]
    for f in results["folds"]:
        assert f"{f['best_macro_f1_robust']:.4f}" in md.split("## Folds", 1)[1].split("##", 1)[0]
    for link in ("confusion_matrix.png", "curves.png", "per_class.csv", "misclassified_fold1.png"):
        assert f"({link})" in md


@pytest.mark.slow
def test_wandb_and_report_show_accuracy_by_orientation(tiny_data, tmp_path):
    """With orientation augmentation and a head: the per-epoch head accuracy and accuracy by orientation
    in W&B, the pooled figures in the cv summary run and in report.md."""
    run_dir, wandb_dir = tmp_path / "run", tmp_path / "wandb_home"
    run_cli("docclassify.train", [
        "data=competition", f"data.root={tiny_data}", *TINY_NO_LOGGER, "logger=wandb", "trainer.epochs=2",
        "folds.n=3", "folds.run=[0]", "augment.orientation=dihedral", "model.orientation_head=dihedral8",
        f"hydra.run.dir={run_dir}"], env={"WANDB_MODE": "offline", "WANDB_DIR": str(wandb_dir), "WANDB_API_KEY": ""})
    results = json.loads((run_dir / "results.json").read_text())
    runs = {r["job_type"]: r for r in (read_offline_run(p) for p in (wandb_dir / "wandb").glob("offline-run-*"))}
    epochs = [h for h in runs["fold0"]["history"] if "val/orientation_accuracy" in h]
    assert [h["epoch"] for h in epochs] == [1, 2]
    assert [h["val/orientation_accuracy"] for h in epochs] == pytest.approx(
        [h["val_orientation_accuracy"] for h in results["folds"][0]["history"]])
    assert all("val/accuracy_turned" in h and "epoch/train_orientation_loss" in h for h in epochs)
    summary = runs["summary"]["summary"]
    assert summary["cv/orientation_head_accuracy"] == pytest.approx(results["orientation"]["head_accuracy"])
    by_orientation = results["orientation"]["accuracy_by_orientation"]
    assert summary["cv/accuracy_mirrored"] == pytest.approx(by_orientation["mirrored"])
    md = (run_dir / "report.md").read_text()
    assert "## Accuracy by orientation" in md and "| mirrored |" in md and "orientation head (dihedral8)" in md


@pytest.mark.slow
def test_logger_none_writes_reports_but_no_wandb_folder(tiny_data, tmp_path, monkeypatch):
    from docclassify.engine.kfold import run_kfold
    from docclassify.train import build_callbacks

    wandb_dir = tmp_path / "wandb_home"
    monkeypatch.setenv("WANDB_MODE", "offline")  # W&B would write if it were used at all
    monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
    run_dir = tmp_path / "run"
    cfg = compose_train(["data=competition", f"data.root={tiny_data}", *TINY, "folds.n=3", "folds.run=[2]"], run_dir)
    results = run_kfold(cfg, build_callbacks(cfg))
    assert not wandb_dir.exists() and not (run_dir / "wandb").exists()
    assert not list(run_dir.rglob("*.wandb"))
    for name in ("confusion_matrix.png", "curves.png", "per_class.csv", "report.md"):
        assert (run_dir / name).is_file()
    table = pd.read_csv(run_dir / "per_class.csv")
    fold2 = table[(table["scope"] == "fold2") & (table["class"] != reports.MACRO_ROW)]
    assert fold2["f1"].mean() == pytest.approx(results["folds"][0]["best_macro_f1"], abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Units: mode resolution, identity, reports, progress
# ---------------------------------------------------------------------------------------------

def test_mode_offline_without_key_online_with_one(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home)}
    assert not has_credentials(env) and resolve_mode(None, env) == "offline"
    assert resolve_mode(None, {**env, "WANDB_API_KEY": "x" * 40}) == "online"
    (home / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    assert has_credentials(env) and resolve_mode(None, env) == "online"
    # A key for another host does not count; WANDB_BASE_URL picks the host.
    assert not has_credentials({**env, "WANDB_BASE_URL": "https://wandb.example.com"})
    # WANDB_MODE from the environment and logger.mode win, in that order.
    assert resolve_mode(None, {**env, "WANDB_MODE": "offline"}) == "offline"
    assert resolve_mode(None, {**env, "WANDB_MODE": "disabled"}) == "disabled"
    assert resolve_mode("offline", {**env, "WANDB_MODE": "online"}) == "offline"
    with pytest.raises(ValueError, match="logger.mode"):
        resolve_mode("sometimes", env)
    with pytest.raises(ValueError, match="WANDB_MODE"):
        resolve_mode(None, {"WANDB_MODE": "maybe"})


def test_build_trackers_by_logger_mode_and_rank(tiny_data, tmp_path, monkeypatch):
    from docclassify.tracking import build_trackers
    from docclassify.tracking.progress import Progress
    from docclassify.tracking.reports import LocalReports
    from docclassify.tracking.wandb_tracker import WandbTracker

    def kinds(logger: str) -> list[type]:
        cfg = compose_train(["data=competition", f"data.root={tiny_data}", *TINY_NO_LOGGER, f"logger={logger}"],
                            tmp_path)
        return [type(t) for t in build_trackers(cfg, tmp_path)]

    monkeypatch.setenv("WANDB_MODE", "offline")
    assert kinds("wandb") == [Progress, LocalReports, WandbTracker]
    assert kinds("none") == [Progress, LocalReports]
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert kinds("wandb") == [Progress, LocalReports]
    monkeypatch.setenv("RANK", "1")  # torchrun worker: rank 0 reports for everyone
    assert kinds("wandb") == []


def test_sweep_trials_group_by_study_and_carry_their_params(tiny_data, tmp_path):
    from omegaconf import open_dict

    cfg = compose_train(["data=competition", f"data.root={tiny_data}", *TINY_NO_LOGGER, "logger=wandb",
                         "logger.tags=[a]"], tmp_path)
    sweep = {"overrides": ["trainer.lr=0.003", "model=tiny", "+x=abc"], "multirun": True, "job_num": 4,
             "sweep_dir": str(tmp_path / "multirun" / "day"), "study_name": None, "search_keys": None}
    ident = run_identity(cfg, tmp_path / "4", sweep)  # a plain Hydra multirun: grouped by its sweep dir
    assert ident["group"] == "day" and ident["prefix"] == "t4-"
    assert ident["trial"] == {"study": "day", "number": 4, "params": {"trainer.lr": 0.003, "model": "tiny", "x": "abc"}}
    assert ident["tags"] == ["a", "quick", "sweep"]
    # An Optuna trial (hparams_search.trial, set by the sweeper): its study and number; the params
    # are the searched keys only.
    with open_dict(cfg):
        cfg.hparams_search = {"trial": {"study": "lr_study", "number": 7, "storage": None}}
    optuna_job = {**sweep, "study_name": "lr_study", "search_keys": ["trainer.lr"],
                  "overrides": [*sweep["overrides"], "hparams_search.trial.number=7"]}
    ident = run_identity(cfg, tmp_path / "7", optuna_job)
    assert (ident["group"], ident["prefix"]) == ("lr_study", "t7-")
    assert ident["trial"] == {"study": "lr_study", "number": 7, "params": {"trainer.lr": 0.003}}
    assert run_identity(cfg, tmp_path, {**optuna_job, "overrides": []})["trial"]["params"] == {}
    with open_dict(cfg):
        del cfg["hparams_search"]
        cfg.logger.group = "mine"
    single = run_identity(cfg, tmp_path / "2024-01-01_10-00-00", {"overrides": [], "multirun": False})
    assert single["group"] == "mine" and single["trial"] is None and single["prefix"] == ""
    with open_dict(cfg):
        cfg.logger.group = None
    single_dir = tmp_path / "2024-01-01_10-00-00"
    assert run_identity(cfg, single_dir, {"overrides": []})["group"] == "quick-2024-01-01_10-00-00"
    assert parse_overrides(["a.b=1e-3", "c=[1,2]", "noeq"]) == {"a.b": 1e-3, "c": [1, 2]}


@pytest.mark.slow
def test_multirun_jobs_are_separate_wandb_runs_with_their_params(tiny_data, tmp_path):
    sweep_dir, wandb_dir = tmp_path / "sweep", tmp_path / "wandb_home"
    run_cli("docclassify.train", [
        "-m", "data=competition", f"data.root={tiny_data}", *TINY_NO_LOGGER, "logger=wandb", "folds.n=3",
        "folds.run=[0]", "trainer.lr=0.001,0.003", f"hydra.sweep.dir={sweep_dir}",
    ], env={"WANDB_MODE": "offline", "WANDB_DIR": str(wandb_dir), "WANDB_API_KEY": ""})
    runs = [read_offline_run(p) for p in sorted((wandb_dir / "wandb").glob("offline-run-*"))]
    assert sorted(r["name"] for r in runs) == ["t0-cv", "t0-tiny-quick-fold0", "t1-cv", "t1-tiny-quick-fold0"]
    assert {r["group"] for r in runs} == {"sweep"}
    for r in runs:
        job = int(r["name"][1])
        assert r["config"]["trial"]["number"] == job
        assert r["config"]["trial"]["params"]["trainer.lr"] == [0.001, 0.003][job] == r["config"]["trainer"]["lr"]
        f1 = [h["val/macro_f1"] for h in r["history"] if "val/macro_f1" in h]
        if r["job_type"] == "fold0":  # one epoch each: a trial never logs into the other's run
            results = json.loads((sweep_dir / str(job) / "results.json").read_text())
            assert f1 == [pytest.approx(results["folds"][0]["history"][0]["val_macro_f1"])]
        else:
            assert r["job_type"] == "summary" and r["summary"]["objective"] == pytest.approx(
                json.loads((sweep_dir / str(job) / "results.json").read_text())["objective"])


def test_per_class_macro_matches_sklearn_with_absent_classes():
    classes = [f"c{i}" for i in range(6)]
    y_true = np.array([0, 0, 1, 1, 2, 2, 3])
    y_pred = np.array([0, 1, 1, 1, 2, 4, 3])  # class 4 predicted but absent, class 5 absent from both
    table = reports.per_class_table(y_true, y_pred, classes)
    assert np.isnan(table.loc[5, "f1"]) and table.loc[4, "f1"] == 0.0
    assert table["f1"].mean() == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0))
    assert table["support"].tolist() == [2, 2, 2, 1, 0, 0] and table["predicted"].tolist() == [1, 3, 1, 1, 1, 0]
    assert reports.top_confusions(y_true, y_pred, classes) == [("c0", "c1", 1), ("c2", "c4", 1)]
    probs = np.eye(6)[y_pred] * 0.5 + 0.5 / 6
    probs[1] = [0.3, 0.5, 0.2, 0, 0, 0]  # wrong, but p(true)=0.3: less bad than sample 5
    assert reports.worst_misclassified(probs, y_true).tolist() == [5, 1]


def test_write_classification_report_for_inference(tmp_path):
    classes = ["cat", "dog", "bird"]
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 3, 60)
    y_pred = np.where(rng.random(60) < 0.7, y_true, rng.integers(0, 3, 60))
    paths = reports.write_classification_report(tmp_path / "infer", y_true, y_pred, classes, "Test set")
    with Image.open(paths["confusion_matrix"]) as img:
        assert img.format == "PNG"
    table = pd.read_csv(paths["per_class"])
    macro = table[table["class"] == reports.MACRO_ROW]["f1"].item()
    assert macro == pytest.approx(f1_score(y_true, y_pred, average="macro"), abs=1e-6)
    assert f"{f1_score(y_true, y_pred, average='macro'):.4f}" in paths["report"].read_text()
    assert not list((tmp_path / "infer").glob(".*.tmp"))  # atomic writes leave no temp files
    with pytest.raises(ValueError, match="labels"):
        reports.write_classification_report(tmp_path, y_true, y_pred[:-1], classes)


def test_report_after_each_fold_shows_the_folds_so_far(tmp_path):
    """Between folds of a long run the report is already there (marked in progress), with the grid."""
    classes = ["a", "b", "c"]
    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, (12, 16, 16, 3), dtype=np.uint8)
    val_index = np.arange(0, 12, 2)
    targets = np.array([0, 1, 2, 0, 1, 2])
    logits = np.eye(3)[[0, 2, 2, 1, 1, 0]] * 3.0  # 3 of 6 wrong
    cb = reports.LocalReports(tmp_path)
    cb.on_run_start({"classes": classes, "folds": [0, 1]})
    outcome = {"val_logits": logits, "val_targets": targets, "val_index": val_index.tolist(),
               "val_ids": [f"img{i}" for i in val_index], "images": images, "best_epoch": 1, "model": "m",
               "history": [_epoch(0, 0.2), _epoch(1, 0.4)], "seconds": reports.INTERIM_REPORT_MIN_S}
    cb.on_fold_end(0, outcome)
    md = (tmp_path / "report.md").read_text()
    assert "(in progress)" in md and "[grid](misclassified_fold0.png)" in md
    with Image.open(tmp_path / "misclassified_fold0.png") as img:
        assert img.size[0] > 300
    table = pd.read_csv(tmp_path / "per_class.csv")
    macro = table[(table["scope"] == "fold0") & (table["class"] == reports.MACRO_ROW)]["f1"].item()
    assert macro == pytest.approx(f1_score(targets, logits.argmax(1), average="macro"), abs=1e-6)
    assert reports.worst_misclassified(softmax(logits), targets).tolist() == [1, 3, 5]

    quick = reports.LocalReports(tmp_path / "quick")  # a fold of seconds: only its grid until the run ends
    quick.on_run_start({"classes": classes, "folds": [0, 1]})
    quick.on_fold_end(0, {**outcome, "seconds": 3.0})
    assert sorted(p.name for p in (tmp_path / "quick").iterdir()) == ["misclassified_fold0.png"]


def _epoch(epoch: int, f1: float, robust: float | None = None) -> dict:
    return {"epoch": epoch, "train_loss": 1.0, "val_loss": 1.1, "val_macro_f1": f1, "val_accuracy": f1, "lr": 1e-3,
            "img_per_s": 100.0, "epoch_s": 1.0, "best_macro_f1": f1, "val_loss_robust": None if robust is None else 2.0,
            "val_macro_f1_robust": robust, "val_accuracy_robust": robust,
            "monitor": "clean" if robust is None else "robust", "val_monitored": f1 if robust is None else robust,
            "best_monitored": f1 if robust is None else robust}


def test_progress_lines_in_logs_and_bars_on_a_terminal(caplog, capsys):
    quiet = Progress(epochs=2, log_every_n_steps=0, batch_size=8, interactive=False)
    with caplog.at_level(logging.INFO, logger="docclassify.progress"):
        quiet.on_run_start({"classes": ["a"]})
        quiet.on_fold_start(0, {"model_option": "tiny", "steps_per_epoch": 3})
        for epoch in range(2):
            for s in range(3):
                quiet.on_step_end(0, epoch * 3 + s + 1, {"train/loss": 1.0, "train/lr": 1e-3, "step": s})
            quiet.on_epoch_end(0, epoch, _epoch(epoch, 0.5))
        quiet.on_epoch_end(0, 1, _epoch(1, 0.5, robust=0.25))  # validation=both: both views in the line
        quiet.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and lines[1].startswith("fold 0 epoch 2/2") and "img/s" in lines[1]
    assert "val_f1 0.5000" in lines[1] and "robust_f1" not in lines[1] and lines[1].endswith("best clean 0.5000")
    assert "val_f1 0.5000" in lines[2] and "robust_f1 0.2500" in lines[2] and "best robust 0.2500" in lines[2]
    assert capsys.readouterr().err == ""  # no bar in a non-interactive log

    bars = Progress(epochs=2, log_every_n_steps=2, batch_size=8, interactive=True)
    bars.on_run_start({"classes": ["a"]})
    bars.on_fold_start(1, {"model_option": "tiny", "steps_per_epoch": 3})
    for s in range(3):
        bars.on_step_end(1, s + 1, {"train/loss": 0.5, "train/lr": 1e-3, "step": s + 1})
    bars._step_bar.refresh()
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "loss=" in err and "img/s=" in err and "3/3" in err
    bars.on_epoch_end(1, 0, _epoch(0, 0.25))
    bars.on_fold_end(1, {})
    bars.close()
    assert bars._redirect is None and bars._fold_bar is None
