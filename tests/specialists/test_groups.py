"""specialists/groups.py: the class groups a run confuses most, from its pooled OOF predictions; and
folds.file, the run's folds its specialists train with."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from docclassify.data.folds import folds_from_file
from docclassify.errors import DataError
from docclassify.specialists.groups import find_groups, pair_rates


def confusions(pairs: dict[tuple[int, int], int], n: int = 20, k: int = 17) -> tuple[np.ndarray, np.ndarray]:
    """Targets (n rows per class) and predictions with ``pairs[(a, b)]`` rows of class a predicted as b."""
    y = np.repeat(np.arange(k), n)
    pred = y.copy()
    for (a, b), count in pairs.items():
        rows = np.flatnonzero((y == a) & (pred == a))[:count]
        pred[rows] = b
    return y, pred


def test_near_twins_form_a_clique_and_the_next_pair_a_group_of_its_own():
    y, pred = confusions({(3, 7): 8, (7, 3): 6, (4, 7): 5, (14, 4): 4, (12, 14): 7, (1, 2): 1})
    groups = find_groups(y, pred, 17, max_groups=3, max_size=3, min_rate=0.05)
    assert [g.classes for g in groups] == [(3, 4, 7), (12, 14)]  # (1, 2): 1 of 40 rows, under min_rate
    first = groups[0]
    assert first.name == "g3-4-7" and first.rows == 60 and first.confused == 8 + 6 + 5
    assert first.rate == pytest.approx(19 / 60)
    # 14 -> 4 joined no group: 4 is in a full group (max_size 3), and 14 in another
    assert [g.classes for g in find_groups(y, pred, 17, max_groups=1)] == [(3, 4, 7)]
    assert [g.classes for g in find_groups(y, pred, 17, max_size=2)] == [(3, 7), (12, 14)]  # 4 and 14: taken
    assert find_groups(y, y, 17) == []


def test_pair_rates_count_errors_both_ways_over_both_classes():
    y, pred = confusions({(0, 1): 4, (1, 0): 2}, n=10, k=3)
    rates = pair_rates(y, pred, 3)
    assert rates[0, 1] == rates[1, 0] == pytest.approx(6 / 20) and rates[0, 2] == 0 and rates[0, 0] == 0


def test_folds_file_gives_each_row_its_fold_and_names_what_is_wrong(tmp_path):
    path = tmp_path / "folds.csv"
    pd.DataFrame({"ID": ["a", "b", "c", "d"], "target": [0, 1, 0, 1], "fold": [0, 1, 2, -1]}).to_csv(path, index=False)
    assert folds_from_file(path, ["c", "a", "d"], 3).tolist() == [2, 0, -1]
    with pytest.raises(DataError, match="1 training row.*have no fold.*'x'"):
        folds_from_file(path, ["a", "x"], 3)
    with pytest.raises(DataError, match=r"fold\(s\) \[2\] outside 0..1"):
        folds_from_file(path, ["a", "c"], 2)
    with pytest.raises(DataError, match="file not found"):
        folds_from_file(tmp_path / "none.csv", ["a"], 3)
    pd.DataFrame({"ID": ["a"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match="needs columns ID and fold"):
        folds_from_file(tmp_path / "bad.csv", ["a"], 3)


def test_a_specialist_is_its_runs_config_on_the_groups_rows_with_the_runs_folds(tiny_data, tmp_path):
    """specialists.size_scale and specialists.epochs set the specialist's input size and epochs;
    data.exclude leaves only the group's rows; folds.file is the run's folds.csv."""
    import json

    from conftest import TINY, compose_train

    from docclassify.specialists.groups import Group
    from docclassify.specialists.training import specialist_config

    cfg = compose_train(["data=competition", f"data.root={tiny_data}", *TINY, "specialists=auto",
                         "specialists.size_scale=1.5", "specialists.epochs=7"], tmp_path / "run")
    run_dir, spec_dir = tmp_path / "run", tmp_path / "run" / "specialists" / "g3-7"
    spec_dir.mkdir(parents=True)
    train = pd.read_csv(tiny_data / "train.csv", dtype={"ID": str})
    pd.DataFrame({"ID": train["ID"], "target": train["target"], "fold": np.arange(len(train)) % 5}).to_csv(
        run_dir / "folds.csv", index=False)
    results = {"folds": [{"img_size": 32}], "validation": {"profile": {}}}
    spec, overrides = specialist_config(cfg, run_dir, spec_dir, Group((3, 7), 0, 0), results, cfg.specialists)
    assert spec.data.img_size == 48 and spec.trainer.epochs == 7 and spec.specialists.name == "none"
    assert spec.folds.file == str((run_dir / "folds.csv").resolve()) and not spec.submit
    excluded = set(pd.read_csv(spec.data.exclude, dtype={"ID": str})["ID"])
    assert set(train["ID"]) - excluded == set(train["ID"][train["target"].isin([3, 7])])
    assert "data.img_size=48" in overrides and json.dumps(overrides)
    assert cfg.data.img_size == 32 and cfg.specialists.name == "auto"  # the run's own config is untouched
