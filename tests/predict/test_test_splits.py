"""One run on the built-in synthetic data, scored on either of its labelled test splits by
``docclassify.infer``: test/ by default, test_phone/ with data.test_dir / test_labels /
sample_submission (docs/synthetic-data.md)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import TINY, run_cli
from sklearn.metrics import f1_score

pytestmark = pytest.mark.slow  # trains a run

SPEC = ["data.n_train_per_class=6", "data.n_test_per_class=2", "data.long_side=64"]
PHONE = ["data.test_dir=test_phone", "data.test_labels=test_phone_labels.csv",
         "data.sample_submission=test_phone_sample_submission.csv"]


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory, isolated_env):
    run_dir = tmp_path_factory.mktemp("synthetic") / "run"
    run_cli("docclassify.train", [*SPEC, *TINY, "folds.n=2", "folds.run=[0]", f"hydra.run.dir={run_dir}"],
            env=isolated_env)
    return run_dir


def _score(run_dir, out_dir, isolated_env, *extra):
    run_cli("docclassify.infer", [f"runs=[{run_dir}]", *extra, f"hydra.run.dir={out_dir}"], env=isolated_env)
    summary = json.loads((out_dir / "summary.json").read_text())
    return pd.read_csv(out_dir / "submission.csv", dtype={"ID": str}), summary


def test_infer_scores_the_run_on_either_synthetic_test_split(synthetic_run, tmp_path, isolated_env):
    from docclassify.data.synthetic import SyntheticSpec, ensure_synthetic

    root = ensure_synthetic(isolated_env["DOCCLASSIFY_CACHE"], SyntheticSpec(6, 2, 64, 0))  # the run's data
    test_sub, test_summary = _score(synthetic_run, tmp_path / "test", isolated_env)
    phone_sub, phone_summary = _score(synthetic_run, tmp_path / "phone", isolated_env, *PHONE)
    for sub, summary, sample, labels in ((test_sub, test_summary, "sample_submission.csv", "test_labels.csv"),
                                         (phone_sub, phone_summary, "test_phone_sample_submission.csv",
                                          "test_phone_labels.csv")):
        assert sub["ID"].tolist() == pd.read_csv(root / sample, dtype={"ID": str})["ID"].tolist()
        truth = pd.read_csv(root / labels, dtype={"ID": str}).set_index("ID").loc[sub["ID"], "target"]
        assert summary["test_metrics"]["macro_f1"] == pytest.approx(f1_score(truth, sub["target"], average="macro"))
    assert all(i.startswith("test_phone_") for i in phone_sub["ID"]) and len(phone_sub) == len(test_sub) == 34
