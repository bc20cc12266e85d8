"""Folds as separate jobs: `docclassify.train -m folds.run=[0],[1]`, merged by docclassify.aggregate."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import TINY, run_cli
from sklearn.metrics import f1_score

from docclassify.aggregate import AggregateError, find_job_dirs, merge_jobs
from docclassify.aggregate import main as aggregate_main
from docclassify.models.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow  # every test uses fold_sweep: two training jobs


@pytest.fixture(scope="module")
def fold_sweep(tiny_data, tmp_path_factory) -> Path:
    """Two one-fold jobs of one 2-fold split (basic launcher), merged by the Hydra callback."""
    sweep = tmp_path_factory.mktemp("fold_jobs") / "sweep"
    run_cli("docclassify.train", [
        "-m", "data=competition", f"data.root={tiny_data}", *TINY, "folds.n=2", "folds.run=[0],[1]", "seed=5",
        f"hydra.sweep.dir={sweep}", "+hydra.callbacks.aggregate._target_=docclassify.aggregate.AggregateFolds",
    ], env={"DOCCLASSIFY_CACHE": str(sweep.parent / "cache")})
    return sweep


def test_jobs_merge_into_one_k_fold_run(fold_sweep, tmp_path):
    jobs = find_job_dirs(fold_sweep)
    assert [j.name for j in jobs] == ["0", "1"]
    job_results = [json.loads((j / "results.json").read_text()) for j in jobs]
    assert [r["folds_run"] for r in job_results] == [[0], [1]]

    merged = json.loads((fold_sweep / "results.json").read_text())  # written by the on_multirun_end callback
    # Same form as one K-fold run's results (plus where it came from).
    assert set(merged) == set(job_results[0]) | {"merged_from"} and merged["merged_from"] == ["0", "1"]
    assert [set(f) for f in merged["folds"]] == [set(job_results[0]["folds"][0])] * 2
    assert merged["folds_run"] == [0, 1] and merged["n_folds"] == 2

    folds = pd.read_csv(fold_sweep / "folds.csv", dtype={"ID": str})
    oof = pd.read_csv(fold_sweep / "oof.csv", dtype={"ID": str})
    job_oof = pd.read_csv(jobs[0] / "oof.csv", dtype={"ID": str})
    assert list(oof.columns) == list(job_oof.columns)
    assert list(oof["ID"]) == list(folds["ID"])  # every training row once, in train.csv order
    assert merged["n_oof_rows"] == len(folds) == len(np.load(fold_sweep / "oof_logits.npy"))
    assert merged["cv_macro_f1"] == f1_score(oof["target"], oof["pred"], average="macro")
    logits = np.load(fold_sweep / "oof_logits.npy")
    for k, job in enumerate(jobs):  # each fold's rows carry that job's logits
        rows = (folds["fold"] == k).to_numpy()
        np.testing.assert_array_equal(logits[rows], np.load(job / "oof_logits.npy"))
    cfg = yaml.safe_load((fold_sweep / "run_config.yaml").read_text())
    assert cfg["folds"]["run"] == [0, 1] and cfg["seed"] == 5

    # The robust view (validation=both by default) merges the same way: every row's estimating copy
    # (copy 1) in oof_robust.csv, its selecting copy (copy 0) in oof_robust_select.csv.
    for name, copy, key in (("oof_robust", 1, ""), ("oof_robust_select", 0, "_select")):
        robust = pd.read_csv(fold_sweep / f"{name}.csv", dtype={"ID": str})
        assert list(robust["ID"]) == list(folds["ID"]) and list(robust["copy"]) == [copy] * len(folds)
        assert merged[f"cv_macro_f1_robust{key}"] == f1_score(robust["target"], robust["pred"], average="macro")
        robust_logits = np.load(fold_sweep / f"{name}_logits.npy")
        for k, job in enumerate(jobs):
            rows = (folds["fold"] == k).to_numpy()
            np.testing.assert_array_equal(robust_logits[rows], np.load(job / f"{name}_logits.npy"))
    assert merged["objective"] == merged["cv_macro_f1_robust_select"] and merged["monitor"] == "robust"
    assert merged["validation"] == job_results[0]["validation"] and merged["validation"]["copies"] == 2

    # Checkpoints resolve relative to the merged dir (hard links to the jobs' files here).
    for f, job in zip(merged["folds"], jobs):
        path = fold_sweep / f["checkpoint"]
        assert os.path.samefile(path, job / f["checkpoint"])
        model, ckpt = load_checkpoint(path)
        assert ckpt["fold"] == f["fold"] and model(torch.zeros(1, 3, 32, 32)).shape == (1, 17)

    # The CLI does the same merge into another dir.
    out = tmp_path / "merged"
    proc = run_cli("docclassify.aggregate", [str(fold_sweep), "--out", str(out)])
    assert json.loads(proc.stdout.strip().splitlines()[-1])["cv_macro_f1"] == merged["cv_macro_f1"]
    assert (out / "oof.csv").read_text() == (fold_sweep / "oof.csv").read_text()
    assert load_checkpoint(out / "checkpoints" / "fold1_best.safetensors")[1]["fold"] == 1


def _copy_job(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_merge_refuses_other_splits_and_repeated_folds(fold_sweep, tmp_path, capsys):
    job0, job1 = find_job_dirs(fold_sweep)

    twin = _copy_job(job0, tmp_path / "twin")
    with pytest.raises(AggregateError, match="fold 0 was trained by two jobs"):
        merge_jobs([job0, job1, twin], tmp_path / "out_dup")

    other_seed = _copy_job(job1, tmp_path / "seed")
    cfg = yaml.safe_load((other_seed / "run_config.yaml").read_text())
    cfg["seed"] = 6
    (other_seed / "run_config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(AggregateError, match="seed differs"):
        merge_jobs([job0, other_seed], tmp_path / "out_seed")

    other_split = _copy_job(job1, tmp_path / "split")
    folds = pd.read_csv(other_split / "folds.csv", dtype={"ID": str})
    folds.loc[0, "fold"] = 1 - folds.loc[0, "fold"]  # one row in the other fold
    folds.to_csv(other_split / "folds.csv", index=False)
    with pytest.raises(AggregateError, match="folds.csv differ"):
        merge_jobs([job0, other_split], tmp_path / "out_split")

    other_view = _copy_job(job1, tmp_path / "view")
    cfg = yaml.safe_load((other_view / "run_config.yaml").read_text())
    cfg["validation"]["seed"] = 1  # other robust copies: their scores would not pool
    (other_view / "run_config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(AggregateError, match="validation differs"):
        merge_jobs([job0, other_view], tmp_path / "out_view")

    other_pseudo = _copy_job(job1, tmp_path / "pseudo")  # other test images added to training
    results = json.loads((other_pseudo / "results.json").read_text())
    results["pseudo"] = {"source": "/teacher", "n_added": 3}
    (other_pseudo / "results.json").write_text(json.dumps(results))
    with pytest.raises(AggregateError, match="different pseudo-label selections"):
        merge_jobs([job0, other_pseudo], tmp_path / "out_pseudo")

    unfinished = _copy_job(job1, tmp_path / "unfinished")
    (unfinished / "results.json").unlink()
    with pytest.raises(AggregateError, match="has not finished"):
        merge_jobs([job0, unfinished], tmp_path / "out_unfinished")
    assert aggregate_main([str(tmp_path / "nothing_here")]) == 2  # the CLI's exit status and message
    assert "no such directory" in capsys.readouterr().err


def test_infer_accepts_the_merged_run(fold_sweep, tiny_data, tmp_path):
    output = tmp_path / "submission.csv"
    run_cli("docclassify.infer", [f"runs=[{fold_sweep}]", "tta=none", f"output={output}",
                                  f"hydra.run.dir={tmp_path / 'infer'}"])
    summary = json.loads((tmp_path / "infer" / "summary.json").read_text())
    assert [r["dir"] for r in summary["runs"]] == [str(fold_sweep)]  # the merged run, not its two jobs
    assert [f["fold"] for f in summary["runs"][0]["folds"]] == [0, 1]
    sub = pd.read_csv(output, dtype={"ID": str})
    sample = pd.read_csv(tiny_data / "sample_submission.csv", dtype={"ID": str})
    assert list(sub["ID"]) == list(sample["ID"]) and sub["target"].between(0, 16).all()
