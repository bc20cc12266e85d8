"""data.relabel / data.exclude: decisions files applied to the training rows, checked, recorded."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest
from conftest import TINY, run_cli

from docclassify.data.sources import DataError, apply_decisions, load_competition


@pytest.fixture
def source(data):
    return load_competition(data)


def _write(path, text: str):
    path.write_text(text)
    return path


def test_relabel_changes_targets_and_records_file_hash_and_changes(source, tmp_path):
    ids, targets = source.train["ID"].tolist(), source.train["target"].tolist()
    new0, new1 = (targets[0] + 1) % 17, (targets[1] + 5) % 17
    relabel = _write(tmp_path / "relabel.csv", f"ID,target,note\n{ids[0]},{new0},wrong\n{ids[1]},{new1},x\n"
                                               f"{ids[2]},{targets[2]},kept\n")
    out = apply_decisions(source, relabel=str(relabel))
    got = dict(zip(out.train["ID"], out.train["target"]))
    assert got[ids[0]] == new0 and got[ids[1]] == new1 and got[ids[2]] == targets[2]
    assert len(out.train) == len(source.train) and out.train["target"].dtype.kind == "i"
    info = out.decisions["relabel"]
    assert info["sha256"] == hashlib.sha256(relabel.read_bytes()).hexdigest()
    assert info["file"] == str(relabel.resolve()) and info["n_rows"] == 3 and info["n_changed"] == 2
    assert info["changed"][0] == {"ID": ids[0], "from": targets[0], "to": new0}
    assert source.train["target"].tolist() == targets  # the source itself is left as it was


def test_exclude_drops_rows_and_relative_paths_read_from_the_working_dir(source, tmp_path, monkeypatch):
    ids = source.train["ID"].tolist()
    _write(tmp_path / "exclude.csv", f"ID,reason\n{ids[3]},blank page\n{ids[7]},duplicate\n")
    monkeypatch.chdir(tmp_path)
    out = apply_decisions(source, exclude="exclude.csv")
    assert len(out.train) == len(source.train) - 2
    assert not out.train["ID"].isin([ids[3], ids[7]]).any()
    assert out.decisions["exclude"]["ids"] == sorted([ids[3], ids[7]]) and out.decisions["exclude"]["n_rows"] == 2


def test_no_decisions_leave_the_source_unchanged(source):
    assert apply_decisions(source, None, None) is source


@pytest.mark.parametrize("key, text, expected", [
    ("relabel", "ID,target\n{id0},3\nnot_an_image.jpg,2\n", ["data.relabel", "1 ID(s) not in the training set",
                                                            "line 3: 'not_an_image.jpg'"]),
    ("relabel", "ID,target\n{id0},abc\n{id1},99\n{id2},4\n", ["class indices 0..16", "line 2: 'abc'",
                                                             "line 3: '99'"]),
    ("relabel", "ID,target\n{id0},3\n{id1},2\n{id0},4\n", ["duplicate IDs", "lines 2, 4"]),
    ("relabel", "ID,label\n{id0},3\n", ["missing column(s) ['target']"]),
    ("relabel", "ID,target\n{id0},\n", ["empty values in rows 2"]),
    ("exclude", "image\n{id0}\n", ["data.exclude", "missing column(s) ['ID']"]),
    ("exclude", "ID\n{id0}\nghost.png\n", ["data.exclude", "line 3: 'ghost.png'"]),
])
def test_bad_decision_files_are_refused_naming_file_line_and_value(source, tmp_path, key, text, expected):
    ids = source.train["ID"].tolist()
    path = _write(tmp_path / f"{key}.csv", text.format(id0=ids[0], id1=ids[1], id2=ids[2]))
    with pytest.raises(DataError) as err:
        apply_decisions(source, **{key: str(path)})
    message = str(err.value)
    assert str(path) in message
    for part in expected:
        assert part in message, message


def test_missing_file_and_an_id_both_relabelled_and_excluded_are_refused(source, tmp_path):
    with pytest.raises(DataError, match=r"data.relabel=nowhere.csv: file not found"):
        apply_decisions(source, relabel="nowhere.csv")
    ids = source.train["ID"].tolist()
    relabel = _write(tmp_path / "r.csv", f"ID,target\n{ids[0]},1\n{ids[1]},2\n")
    exclude = _write(tmp_path / "e.csv", f"ID\n{ids[1]}\n")
    with pytest.raises(DataError, match=f"both list {ids[1]}.*decide once"):
        apply_decisions(source, relabel=str(relabel), exclude=str(exclude))


@pytest.mark.slow
def test_training_applies_and_records_decisions_and_refuses_a_bad_file_before_training(tiny_data, tmp_path):
    train = pd.read_csv(tiny_data / "train.csv")
    ids, targets = train["ID"].tolist(), train["target"].tolist()
    relabel = _write(tmp_path / "relabel.csv", f"ID,target\n{ids[0]},{(targets[0] + 1) % 17}\n")
    exclude = _write(tmp_path / "exclude.csv", f"ID\n{ids[1]}\n{ids[2]}\n")
    run_dir = tmp_path / "run"
    run_cli("docclassify.train", ["data=competition", f"data.root={tiny_data}", *TINY, "folds.n=2",
                                  f"data.relabel={relabel}", f"data.exclude={exclude}", f"hydra.run.dir={run_dir}"])
    folds = pd.read_csv(run_dir / "folds.csv")
    oof = pd.read_csv(run_dir / "oof.csv")
    assert len(folds) == len(train) - 2 and not folds["ID"].isin([ids[1], ids[2]]).any()
    assert not oof["ID"].isin([ids[1], ids[2]]).any() and len(oof) == len(train) - 2
    assert folds.set_index("ID").at[ids[0], "target"] == (targets[0] + 1) % 17
    assert oof.set_index("ID").at[ids[0], "target"] == (targets[0] + 1) % 17
    data = json.loads((run_dir / "results.json").read_text())["data"]
    assert data["relabel"]["sha256"] == hashlib.sha256(relabel.read_bytes()).hexdigest()
    assert data["relabel"]["changed"] == [{"ID": ids[0], "from": targets[0], "to": (targets[0] + 1) % 17}]
    assert data["exclude"]["ids"] == sorted([ids[1], ids[2]])
    assert data["exclude"]["sha256"] == hashlib.sha256(exclude.read_bytes()).hexdigest()

    bad = _write(tmp_path / "bad.csv", f"ID,target\n{ids[0]},17\n")
    proc = run_cli("docclassify.train", ["data=competition", f"data.root={tiny_data}", *TINY, "folds.n=2",
                                         f"data.relabel={bad}", f"hydra.run.dir={tmp_path / 'bad_run'}"], check=False)
    assert proc.returncode != 0
    assert f"data.relabel {bad}" in proc.stderr and "line 2: '17'" in proc.stderr
    assert not (tmp_path / "bad_run" / "checkpoints").exists() or not any((tmp_path / "bad_run" / "checkpoints")
                                                                           .iterdir())
