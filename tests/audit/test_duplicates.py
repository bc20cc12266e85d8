"""Near-duplicates: planted copies (resized, re-encoded, cropped, turned, combined) are found within
train and across train/test, label conflicts are flagged, and grouped folds keep copies together."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import TINY, compose_train
from omegaconf import OmegaConf

from docclassify.audit.duplicate_report import duplicate_report
from docclassify.audit.planted import plant_copies
from docclassify.data import duplicates as dups
from docclassify.data.folds import assign_folds, duplicate_groups_for
from docclassify.data.sources import DataError, load_competition


@pytest.fixture(scope="module")
def planted_data(tmp_path_factory):
    """Synthetic look-alike documents (256 px) with 2 copies of each kind in train and in test, and 2
    train copies with another label than their original."""
    from docclassify.data.synthetic import SyntheticSpec, generate

    root = tmp_path_factory.mktemp("planted")
    generate(root, SyntheticSpec(n_train_per_class=8, n_test_per_class=2, long_side=256, seed=4, imbalance=False),
             progress=False)
    planted = pd.concat([plant_copies(root, 2, split="train", seed=1),
                         plant_copies(root, 2, split="test", seed=2),
                         plant_copies(root, 1, kinds=("reencoded", "cropped"), split="train", conflict=True, seed=3)],
                        ignore_index=True)
    return root, planted


def _pairs(report: pd.DataFrame, split: str) -> set[frozenset]:
    part = report[report["split"] == split]
    return {frozenset(p) for p in zip(part["ID_a"], part["ID_b"])}


def _origin(planted: pd.DataFrame):
    source = dict(zip(planted["ID"], planted["source"]))

    def origin(i: str) -> str:
        while i in source:
            i = source[i]
        return i

    return origin


def test_planted_copies_are_found_within_train_and_across_train_test(planted_data, tmp_path):
    root, planted = planted_data
    source = load_competition(root)
    report = duplicate_report(source, pd.Series(dtype=np.int64), str(tmp_path / "cache"),
                              dups.DEFAULT_MAX_DISTANCE, dups.DEFAULT_MIN_SIMILARITY)
    for split, pair_split in (("train", "train/train"), ("test", "train/test")):
        part = planted[planted["split"] == split]
        want = {frozenset(p) for p in zip(part["ID"], part["source"])}
        missed = want - _pairs(report, pair_split)
        assert not missed, f"{pair_split}: planted copies not found: {missed}"
    origin = _origin(planted)
    unplanted = [(a, b) for a, b in zip(report["ID_a"], report["ID_b"]) if origin(a) != origin(b)]
    assert not unplanted, f"distinct look-alike documents reported as duplicates: {unplanted}"
    # Copies with another label than their original come first, flagged; the rest agree.
    conflict_ids = set(planted["ID"].iloc[-2:])  # the conflict=True copies
    flagged = report[report["label_conflict"]]
    assert {i for p in zip(flagged["ID_a"], flagged["ID_b"]) for i in p} & conflict_ids == conflict_ids
    assert report["label_conflict"].iloc[: len(flagged)].all()
    assert (report.loc[report["split"] == "train/train", "label_conflict"].sum()
            == sum(1 for a, b in _pairs(report, "train/train") if {a, b} & conflict_ids))
    turned = report[report["ID_b"].str.contains("turned") | report["ID_a"].str.contains("turned")]
    assert len(turned) >= 4 and (turned["orientation"] != "identity").all()


def test_a_hash_alone_does_not_separate_look_alike_documents_from_copies(planted_data, tmp_path):
    """Why the alignment step exists: at the distance that finds 3% crops, many distinct pairs are candidates."""
    root, planted = planted_data
    fp = dups.fingerprints(list(load_competition(root).train["path"]), tmp_path / "cache")
    candidates = dups.hash_candidates(fp, None, dups.DEFAULT_MAX_DISTANCE)
    confirmed = dups.find_duplicates(fp, None)
    assert len(candidates) > 5 * len(confirmed) and len(confirmed) >= 10


def test_fingerprints_and_scored_pairs_are_cached_by_content(planted_data, tmp_path, monkeypatch):
    root, _ = planted_data
    paths = list(load_competition(root).train["path"])
    first = dups.fingerprints(paths, tmp_path)
    pairs = dups.find_duplicates(first, None, 12, 0.91, cache_dir=tmp_path)

    def boom(*args, **kwargs):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(dups, "compute_fingerprints", boom)
    monkeypatch.setattr(dups, "aligned_similarity", boom)
    again = dups.fingerprints(paths, tmp_path)
    np.testing.assert_array_equal(again.hashes, first.hashes)
    pd.testing.assert_frame_equal(dups.find_duplicates(again, None, 12, 0.91, cache_dir=tmp_path), pairs,
                                  check_dtype=False)
    # Another set of images (one file fewer) is another key: computed afresh.
    with pytest.raises(AssertionError, match="recomputed"):
        dups.fingerprints(paths[:-1], tmp_path)


def test_grouped_folds_keep_duplicates_together_and_the_keys_change_the_groups(planted_data, tmp_path):
    root, planted = planted_data
    train = load_competition(root).train
    cfg = OmegaConf.create({"group_duplicates": True, "duplicate_distance": 12, "duplicate_similarity": 0.91})
    groups, summary = duplicate_groups_for(cfg, list(train["path"]), tmp_path)
    targets = train["target"].to_numpy()
    grouped = assign_folds(targets, 4, seed=0, groups=groups)
    plain = assign_folds(targets, 4, seed=0)
    fold = dict(zip(train["ID"], grouped))
    copies = planted[planted["split"] == "train"]
    assert all(fold[c] == fold[s] for c, s in zip(copies["ID"], copies["source"]))
    plain_fold = dict(zip(train["ID"], plain))
    assert any(plain_fold[c] != plain_fold[s] for c, s in zip(copies["ID"], copies["source"]))
    assert summary["pairs"] >= len(copies) and summary["images_in_groups"] >= 2 * summary["groups"]
    for c in np.unique(targets):  # still stratified: every class in every fold
        assert set(grouped[targets == c]) == set(range(4))
    # duplicate_distance=0 keeps only hash-identical copies; a similarity of 0.999 only near-exact ones.
    strict_distance = duplicate_groups_for(OmegaConf.merge(cfg, {"duplicate_distance": 0}), list(train["path"]),
                                           tmp_path)[1]
    strict_similarity = duplicate_groups_for(OmegaConf.merge(cfg, {"duplicate_similarity": 0.999}),
                                             list(train["path"]), tmp_path)[1]
    assert 0 < strict_distance["pairs"] < summary["pairs"]
    assert 0 < strict_similarity["pairs"] < summary["pairs"]
    assert duplicate_groups_for(OmegaConf.create({"group_duplicates": False}), [], tmp_path) == (None, None)


def test_groups_that_leave_a_class_in_too_few_folds_are_refused():
    targets = np.array([0] * 6 + [1] * 6)
    groups = np.array([0, 0, 0, 1, 1, 1] + list(range(2, 8)))  # class 0: 2 groups
    with pytest.raises(DataError, match=r"folds.group_duplicates=true, folds.n=3.*class 0: 2 group\(s\)"):
        assign_folds(targets, 3, seed=0, groups=groups)
    assert set(assign_folds(targets, 2, seed=0, groups=groups)) == {0, 1}


def test_training_data_load_groups_duplicates_and_records_them(planted_data, tmp_path):
    """The engine's load_run_data with folds.group_duplicates (no training): folds.csv keeps each copy
    with its original; without it some copies land in another fold."""
    from docclassify.engine.kfold import load_run_data, start_run
    from docclassify.tracking.callbacks import CallbackList

    root, planted = planted_data
    data = tmp_path / "data"
    shutil.copytree(root, data)
    copies = planted[planted["split"] == "train"]
    folds = {}
    for grouped in (True, False):
        run_dir = tmp_path / f"run_{grouped}"
        cfg = compose_train(["data=competition", f"data.root={data}", *TINY, "folds.n=4",
                             f"folds.group_duplicates={grouped}", f"paths.cache_dir={tmp_path / 'cache'}"], run_dir)
        run_data = load_run_data(start_run(cfg, CallbackList([])))
        assert (run_data.duplicate_groups is not None) == grouped
        table = pd.read_csv(run_dir / "folds.csv").set_index("ID")["fold"]
        folds[grouped] = [table[c] == table[s] for c, s in zip(copies["ID"], copies["source"])]
    assert all(folds[True]) and not all(folds[False])


def test_the_default_run_groups_duplicates_and_changes_nothing_without_them(planted_data, tiny_data, tmp_path):
    """Issue 26 item 9: the default config keeps each copy with its original (a copy in another fold
    validates an image the model trained on); a data set without duplicates gets exactly the folds it
    got without grouping (StratifiedKFold's), so grouping by default costs the search only."""
    from docclassify.engine.kfold import load_run_data, start_run
    from docclassify.tracking.callbacks import CallbackList

    root, planted = planted_data
    copies = planted[planted["split"] == "train"]
    run_dir = tmp_path / "default"
    cfg = compose_train(["data=competition", f"data.root={root}", *TINY, "folds.n=4",
                         f"paths.cache_dir={tmp_path / 'cache'}"], run_dir)  # no folds.* override
    assert cfg.folds.group_duplicates is True
    run_data = load_run_data(start_run(cfg, CallbackList([])))
    table = pd.read_csv(run_dir / "folds.csv").set_index("ID")["fold"]
    assert all(table[c] == table[s] for c, s in zip(copies["ID"], copies["source"]))
    assert run_data.duplicate_groups["pairs"] >= len(copies)
    # no duplicate found: the folds of the ungrouped splitter, row for row
    train = load_competition(tiny_data).train
    targets = train["target"].to_numpy()
    groups, summary = duplicate_groups_for(cfg.folds, list(train["path"]), tmp_path / "cache")
    assert summary["pairs"] == 0
    np.testing.assert_array_equal(assign_folds(targets, 4, 7, groups), assign_folds(targets, 4, 7))
    np.testing.assert_array_equal(assign_folds(targets, 4, 7, np.arange(len(targets))), assign_folds(targets, 4, 7))
