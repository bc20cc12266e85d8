"""The documented command-line interfaces, combined the way a competition user chains them: one
training run with every robustness and macro-F1 option at once, a per-fold multi-model run, both
combined by infer with orientation TTA + the decision rule + greedy selection and with stacking,
a pseudo-label round from that infer run, and the audit. Each feature has its own tests; this one
catches options that work alone but not together."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from sklearn.metrics import f1_score

pytestmark = pytest.mark.slow

COMMON = ["model.pretrained=false", "data.img_size=32", "trainer.epochs=2", "trainer.batch_size=16", "folds.n=2",
          "seed=3", "data.num_workers=0", "logger=none"]


def _check_run(run_dir) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    oof = pd.read_csv(run_dir / "oof.csv")
    assert results["cv_macro_f1"] == pytest.approx(f1_score(oof["target"], oof["pred"], average="macro"))
    robust = pd.read_csv(run_dir / "oof_robust.csv")
    assert results["cv_macro_f1_robust"] == pytest.approx(f1_score(robust["target"], robust["pred"], average="macro"))
    return results


def test_the_options_compose_from_training_to_a_pseudo_label_round(tiny_data, tmp_path, isolated_env):
    data = ["data=competition", f"data.root={tiny_data}"]
    robust_run, multi_run = tmp_path / "robust", tmp_path / "multi"
    run_cli("docclassify.train", [*data, *COMMON, "model=tiny", "pipeline=highperf", "schedule.warmup_epochs=1",
                                  "trainer.lr=1e-3", "augment.orientation=dihedral",
                                  "model.orientation_head=dihedral8", "loss=focal", "data.sampler=balanced",
                                  "augment.match_validation=true", "validation=both", "validation.distort=auto",
                                  "trainer.deterministic=true", f"hydra.run.dir={robust_run}"], env=isolated_env)
    robust = _check_run(robust_run)
    assert robust["monitor"] == "robust" and robust["objective"] == robust["cv_macro_f1_robust_select"]
    assert robust["orientation"] is not None  # the head's accuracy, accuracy by orientation
    # validated on the same (fitted) profile: infer pairs the two runs' robust copies by ID#copy below,
    # which runs validated on other copies would be refused for (tests/predict/test_infer.py)
    run_cli("docclassify.train", [*data, *COMMON, "ensemble=multi_model",
                                  "ensemble.fold_models={0:tiny,1:tiny_convnext}", "folds.run=[0,1]",
                                  "validation.distort=auto", f"hydra.run.dir={multi_run}"], env=isolated_env)
    assert [f["model_option"] for f in _check_run(multi_run)["folds"]] == ["tiny", "tiny_convnext"]

    n_test = len(pd.read_csv(tiny_data / "sample_submission.csv"))
    runs = f"runs=[{robust_run},{multi_run}]"
    for name, options in (("orient", ["tta=orient", "decision=macro_f1", "ensemble.weights=greedy"]),
                          ("stack", ["tta=dihedral", "ensemble.weights=stack"])):
        out = tmp_path / f"submission_{name}.csv"
        run_cli("docclassify.infer", [runs, *options, f"output={out}", f"hydra.run.dir={tmp_path / name}"],
                env=isolated_env)
        submission = pd.read_csv(out)
        assert len(submission) == n_test and submission["ID"].is_unique
        probs = pd.read_csv(tmp_path / name / "test_probs.csv")
        np.testing.assert_allclose(probs.drop(columns="ID").to_numpy().sum(axis=1), 1.0, atol=1e-4)
    assert json.loads((tmp_path / "stack" / "summary.json").read_text())["ensemble"]["weights_mode"] == "stack"

    pseudo_run = tmp_path / "pseudo"
    run_cli("docclassify.train", [*data, *COMMON, "model=tiny", f"pseudo.source={tmp_path / 'orient'}",
                                  "pseudo.threshold=null", "pseudo.top_fraction=0.5", "pseudo.soft=true",
                                  f"hydra.run.dir={pseudo_run}"], env=isolated_env)
    pseudo = _check_run(pseudo_run)["pseudo"]
    assert abs(pseudo["n_added"] - 0.5 * n_test) <= 1 and sum(pseudo["per_class"].values()) == pseudo["n_added"]
    # The pseudo rows trained but were never validated: the OOF rows are the training rows only.
    assert len(pd.read_csv(pseudo_run / "oof.csv")) == len(pd.read_csv(tiny_data / "train.csv"))

    run_cli("docclassify.audit", [str(robust_run)], env=isolated_env)
    assert len(pd.read_csv(robust_run / "label_issues.csv")) == len(pd.read_csv(tiny_data / "train.csv"))
