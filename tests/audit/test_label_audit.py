"""The label audit: `python -m docclassify.audit RUN_DIR` on a real run whose labels were flipped on purpose."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

from docclassify.audit import main
from docclassify.audit.rundir import AuditRun, read_oof
from docclassify.data.sources import apply_decisions, load_competition

N_PER_CLASS, FLIP_SHARE = 20, 0.05


@pytest.fixture(scope="module")
def flipped_data(tmp_path_factory):
    """340 synthetic training images (17 classes x 20, 64 px) with 5% of the labels flipped to another class."""
    from docclassify.data.synthetic import SyntheticSpec, generate

    root = tmp_path_factory.mktemp("flipped")
    generate(root, SyntheticSpec(n_train_per_class=N_PER_CLASS, n_test_per_class=2, long_side=64, seed=5,
                                 imbalance=False), progress=False)
    train = pd.read_csv(root / "train.csv")
    rng = np.random.default_rng(0)
    rows = rng.choice(len(train), size=round(FLIP_SHARE * len(train)), replace=False)
    true = train["target"].copy()
    train.loc[rows, "target"] = (true[rows] + rng.integers(1, 17, size=len(rows))) % 17
    train.to_csv(root / "train.csv", index=False)
    return root, pd.DataFrame({"ID": train["ID"][rows], "true": true[rows], "given": train["target"][rows]})


@pytest.mark.slow
def test_audit_ranks_flipped_labels_on_top_and_its_suggestions_fix_them(flipped_data, tmp_path, isolated_env):
    root, flipped = flipped_data
    run_dir, out = tmp_path / "run", tmp_path / "audit"
    # A real 5-fold run: tiny ResNet, 48 px, 6 epochs (cv macro F1 ~0.85 against the noisy labels); the audit
    # reads the clean OOF rows, so no robust copies are built (validation=clean), and none of the run's own reports
    # (trainer.enable_reports=false: the same oof.csv, measured, 1.4 CPU s less). fp32 (trainer.amp=none): the
    # assertions' margins were measured in fp32; the quick preset's amp=auto is bf16 on a bf16 CPU.
    run_cli("docclassify.train", ["data=competition", f"data.root={root}", "model=tiny", "model.pretrained=false",
                                  "data.img_size=48", "trainer.epochs=6", "trainer.batch_size=16", "data.num_workers=0",
                                  "logger=none", "folds.n=5", "validation=clean", "shift.report=false",
                                  "trainer.enable_reports=false", "trainer.amp=none", f"hydra.run.dir={run_dir}"],
            env=isolated_env)
    proc = run_cli("docclassify.audit", [str(run_dir), "--out", str(out)], env=isolated_env)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])

    table = pd.read_csv(out / "label_issues.csv")
    assert list(table.columns[:7]) == ["rank", "ID", "given", "given_name", "suggested", "suggested_name", "score"]
    assert len(table) == 17 * N_PER_CLASS and table["rank"].tolist() == list(range(1, len(table) + 1))
    assert table["score"].is_monotonic_increasing
    top = table.head(len(table) // 10)
    share = flipped["ID"].isin(top["ID"]).mean()
    assert share >= 0.7, f"only {share:.0%} of the flipped labels in the top 10%"
    # The suggestion is the true label for most flipped images in the top.
    hits = top.merge(flipped, on="ID")
    assert (hits["suggested"] == hits["true"]).mean() >= 0.6
    assert summary["labels"]["n_rows"] == len(table) and summary["labels"]["n_flagged"] == int(table["flagged"].sum())
    assert (out / "label_issues.png").stat().st_size > 10_000
    assert (out / "duplicates.csv").is_file() and "train_pairs" in summary["duplicates"]

    # The audit's output feeds the decisions file: the flagged rows' suggestions, applied, change exactly those
    # whose suggestion differs from the given label.
    flagged = table[table["flagged"]]
    decisions = tmp_path / "relabel.csv"
    flagged[["ID", "suggested"]].rename(columns={"suggested": "target"}).to_csv(decisions, index=False)
    applied = apply_decisions(load_competition(root), relabel=str(decisions)).decisions["relabel"]
    assert applied["n_rows"] == len(flagged)
    assert {c["ID"] for c in applied["changed"]} == set(flagged.loc[flagged["suggested"] != flagged["given"], "ID"])

def _fake_run(path, classes, oof: pd.DataFrame, robust: pd.DataFrame | None = None):
    path.mkdir()
    (path / "results.json").write_text(json.dumps({"classes": classes}))
    (path / "run_config.yaml").write_text("data:\n  name: competition\n")
    oof.to_csv(path / "oof.csv", index=False)
    if robust is not None:
        robust.to_csv(path / "oof_robust.csv", index=False)
    return AuditRun(path, classes, {})


def test_robust_views_are_averaged_with_the_clean_row_only_when_asked(tmp_path):
    classes = ["a", "b"]
    oof = pd.DataFrame({"ID": ["x", "y"], "target": [0, 1], "pred": [0, 1], "a": [0.9, 0.2], "b": [0.1, 0.8]})
    robust = pd.DataFrame({"ID": ["x", "x", "y"], "copy": [0, 1, 0], "target": [0, 0, 1], "pred": [1, 1, 1],
                           "a": [0.3, 0.0, 0.2], "b": [0.7, 1.0, 0.8]})
    run = _fake_run(tmp_path / "run", classes, oof, robust)
    ids, labels, clean = read_oof(run, "clean")
    np.testing.assert_allclose(clean, [[0.9, 0.1], [0.2, 0.8]])
    _, _, mixed = read_oof(run, "clean+robust")
    np.testing.assert_allclose(mixed, [[0.4, 0.6], [0.2, 0.8]])  # x: (0.9 + 0.3 + 0.0) / 3
    assert ids.tolist() == ["x", "y"] and labels.tolist() == [0, 1]


def test_audit_refuses_what_it_cannot_audit_with_clear_messages(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "no results.json" in capsys.readouterr().err
    classes = ["a", "b"]
    oof = pd.DataFrame({"ID": ["x"], "target": [0], "pred": [0], "a": [0.9], "b": [0.1]})
    _fake_run(tmp_path / "run", classes, oof)
    assert main([str(tmp_path / "run"), "--oof", "clean+robust"]) == 2
    err = capsys.readouterr().err
    assert "oof_robust.csv not found" in err and "--oof clean" in err
    assert main([str(tmp_path / "run"), "--max-distance", "70", "--top", "-1"]) == 2
    err = capsys.readouterr().err
    assert "--max-distance 70: expected 0..64" in err and "--top -1" in err
    assert main([str(tmp_path / "run")]) == 2  # its run_config.yaml names no data folder
    assert "the run's data config is incomplete" in capsys.readouterr().err
