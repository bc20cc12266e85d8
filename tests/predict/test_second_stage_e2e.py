"""The second stage through the real commands: `docclassify.train specialists=auto` trains a class-group
specialist into the run dir with the run's folds, and `docclassify.infer` with every second-stage
option on predicts, reports each option's guard, changes predictions only where an option was
applied, and never writes to the run dir. (Whether each option helps is shown on models built for
it: tests/predict/test_second_stage.py.)"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY, run_cli

pytestmark = pytest.mark.slow

TRAIN = [*TINY, "trainer.epochs=2", "folds.n=3", "shift.report=true"]  # every file of the run dir is digested
OPTIONS = ["tta=auto", "tta.per_class=true", "adapt=bn", "second_pass.enabled=true", "second_pass.max_share=1.0",
           "specialists.enabled=true"]


@pytest.fixture(scope="module")
def run(tiny_data, tmp_path_factory, isolated_env) -> Path:
    """A tiny 3-fold run on the tiny data set, with one class-group specialist (specialists=auto)."""
    run_dir = tmp_path_factory.mktemp("second_stage") / "run"
    run_cli("docclassify.train", ["data=competition", f"data.root={tiny_data}", *TRAIN, "specialists=auto",
                                  "specialists.min_rate=0.0", "specialists.max_groups=1", f"hydra.run.dir={run_dir}"],
            env=isolated_env)
    return run_dir


def digests(run_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file() and "infer" not in p.parts}


def test_a_specialist_trains_on_its_group_with_the_runs_folds_at_twice_the_size(run):
    groups = json.loads((run / "specialists" / "groups.json").read_text())
    assert groups["fit_on"] == "robust_select" and len(groups["groups"]) == 1  # the copies that make choices
    group = groups["groups"][0]
    spec = run / "specialists" / group["name"]
    info = json.loads((spec / "specialist.json").read_text())
    assert info["classes"] == group["classes"] and Path(info["parent"]) == run.resolve()
    parent_folds = pd.read_csv(run / "folds.csv", dtype={"ID": str}).set_index("ID")
    own = pd.read_csv(spec / "folds.csv", dtype={"ID": str}).set_index("ID")
    assert set(own["target"]) == set(group["classes"])                  # its classes' rows only
    assert (own["fold"] == parent_folds.loc[own.index, "fold"]).all()   # each in the run's own fold
    assert len(own) == int(parent_folds["target"].isin(group["classes"]).sum())
    results = json.loads((spec / "results.json").read_text())
    parent = json.loads((run / "results.json").read_text())
    assert {f["img_size"] for f in results["folds"]} == {2 * parent["folds"][0]["img_size"]}
    assert set(pd.read_csv(spec / "oof.csv")["target"]) <= set(group["classes"])


def test_infer_with_every_option_reports_each_guard_and_changes_only_what_it_applied(run, tmp_path, isolated_env):
    before = digests(run)
    run_cli("docclassify.infer", [f"runs=[{run}]", "tta=auto", f"hydra.run.dir={tmp_path / 'plain'}"],
            env=isolated_env)
    run_cli("docclassify.infer", [f"runs=[{run}]", *OPTIONS, f"hydra.run.dir={tmp_path / 'all'}"], env=isolated_env)
    assert digests(run) == before                                        # the run dir is never written
    plain = json.loads((tmp_path / "plain" / "summary.json").read_text())
    summary = json.loads((tmp_path / "all" / "summary.json").read_text())
    assert plain["second_stage"] is None
    stage = summary["second_stage"]
    assert set(stage) == {"adapt", "tta_per_class", "second_pass", "specialists"}
    assert stage["adapt"]["runs"][0]["norm_layers"] == ["batchnorm"]     # model=tiny: timm's test_resnet
    for entry in (stage["adapt"]["runs"][0], stage["second_pass"], *stage["specialists"]["groups"]):
        if "cross_fitted_gain" in entry:
            assert not entry["applied"] or entry["cross_fitted_gain"] > 0  # applied only with a gain
    if stage["adapt"]["applied"]:
        assert not stage["tta_per_class"]["applied"] and "adapt" in stage["tta_per_class"]["note"]
    a = pd.read_csv(tmp_path / "plain" / "submission.csv")
    b = pd.read_csv(tmp_path / "all" / "submission.csv")
    assert a["ID"].tolist() == b["ID"].tolist()
    applied = [e for e in (stage["tta_per_class"], stage["second_pass"], *stage["specialists"]["groups"])
               if e.get("applied")]
    for entry in applied:
        assert entry["test_changed"] <= entry["test_touched"]
    if not stage["adapt"]["applied"]:  # the same first pass: only what an applied option changed differs
        assert int((a["target"] != b["target"]).sum()) <= sum(e["test_changed"] for e in applied)


def test_submit_true_uses_the_specialists_it_trains(run, isolated_env):
    run_cli("docclassify.train", [f"resume={run}", "specialists=auto", "specialists.min_rate=0.0",
                                  "specialists.max_groups=1", "submit=true"], env=isolated_env)
    overrides = (run / "infer" / "infer_overrides.yaml").read_text()
    assert "specialists.enabled=true" in overrides
    summary = json.loads((run / "infer" / "summary.json").read_text())
    used = summary["second_stage"]["specialists"]["groups"][0]["specialists"]
    trained = [p.resolve() for p in sorted((run / "specialists").iterdir()) if p.is_dir()]
    assert [Path(p).resolve() for p in used] == trained
