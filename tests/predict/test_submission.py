import numpy as np
import pandas as pd
import pytest

from docclassify.predict.submission import (
    build_probability_frame,
    build_submission,
    check_submission,
    write_outputs,
    write_submission,
)


def _sample(n=8, seed=0):
    ids = [f"img{i:03d}.jpg" for i in range(n)]
    order = np.random.default_rng(seed).permutation(n)
    return pd.DataFrame({"ID": [ids[i] for i in order], "target": 0})


def _preds(n=8, k=4):
    ids = [f"img{i:03d}.jpg" for i in range(n)]
    return ids, np.arange(n) % k  # class of img i is i % k


def test_row_order_follows_shuffled_sample():
    sample = _sample()
    ids, classes = _preds()
    sub = build_submission(sample, ids, classes, num_classes=4)
    assert list(sub.columns) == ["ID", "target"]
    assert sub["ID"].tolist() == sample["ID"].tolist()
    expected = [int(s[3:6]) % 4 for s in sample["ID"]]
    assert sub["target"].tolist() == expected
    assert sub["target"].dtype == np.int64
    # predictions given in another order give the same submission
    perm = np.random.default_rng(5).permutation(len(ids))
    sub2 = build_submission(sample, [ids[i] for i in perm], classes[perm], num_classes=4)
    pd.testing.assert_frame_equal(sub, sub2)


def test_probabilities_are_argmaxed():
    sample = _sample(4)
    ids = [f"img{i:03d}.jpg" for i in range(4)]
    probs = np.eye(3)[[2, 0, 1, 2]] * 0.7 + 0.1
    sub = build_submission(sample, ids, probs, num_classes=3)
    lookup = dict(zip(ids, [2, 0, 1, 2]))
    assert sub["target"].tolist() == [lookup[i] for i in sample["ID"]]


def test_extra_sample_columns_kept_exactly():
    sample = _sample(3).assign(extra="x")
    ids, classes = _preds(3)
    sub = build_submission(sample, ids, classes)
    assert list(sub.columns) == ["ID", "target", "extra"]
    assert sub["extra"].tolist() == ["x"] * 3


def test_missing_ids_raise_and_are_named():
    sample = _sample()
    ids, classes = _preds()
    with pytest.raises(ValueError, match=r"missing from the predictions: 1 ID\(s\): 'img005.jpg'"):
        build_submission(sample, ids[:5] + ids[6:], np.delete(classes, 5))


def test_extra_ids_raise_and_are_named():
    sample = _sample()
    ids, classes = _preds()
    with pytest.raises(ValueError, match="not in the sample: 1 ID.*'ghost.jpg'"):
        build_submission(sample, ids + ["ghost.jpg"], np.append(classes, 1))


def test_many_missing_ids_are_truncated_with_count():
    sample = pd.DataFrame({"ID": [f"x{i}" for i in range(30)], "target": 0})
    with pytest.raises(ValueError, match="30 ID.*and 20 more"):
        build_submission(sample, ["other"], np.array([0]))


def test_duplicate_ids_raise():
    sample = _sample()
    dup = pd.concat([sample, sample.iloc[[2]]], ignore_index=True)
    ids, classes = _preds()
    with pytest.raises(ValueError, match="sample has duplicate IDs.*" + sample["ID"][2]):
        build_submission(dup, ids, classes)
    with pytest.raises(ValueError, match="predictions have duplicate IDs.*img001.jpg"):
        build_submission(sample, ids + ["img001.jpg"], np.append(classes, 0))


def test_prediction_value_checks():
    sample = _sample(4)
    ids, classes = _preds(4)
    with pytest.raises(ValueError, match="out of range"):
        build_submission(sample, ids, classes + 3, num_classes=4)
    with pytest.raises(ValueError, match="4 IDs but 3"):
        build_submission(sample, ids, classes[:3])
    with pytest.raises(ValueError, match="whole numbers"):
        build_submission(sample, ids, classes + 0.5)


def test_check_submission_catches_misalignment():
    sample = _sample()
    ids, classes = _preds()
    sub = build_submission(sample, ids, classes, num_classes=4)
    check_submission(sample, sub, num_classes=4)
    shifted = sub.copy()
    shifted["ID"] = np.roll(shifted["ID"].to_numpy(), 1)  # planted misaligned file
    with pytest.raises(ValueError, match="not in the sample's order"):
        check_submission(sample, shifted)
    with pytest.raises(ValueError, match="columns"):
        check_submission(sample, sub[["target", "ID"]])
    with pytest.raises(ValueError, match="rows"):
        check_submission(sample, sub.iloc[:-1])
    bad = sub.copy()
    bad.loc[0, "target"] = 9
    with pytest.raises(ValueError, match="out of range"):
        check_submission(sample, bad, num_classes=4)
    with pytest.raises(ValueError, match="integers"):
        check_submission(sample, sub.assign(target=sub["target"] + 0.5))


def test_write_submission_refuses_misaligned(tmp_path):
    sample = _sample()
    ids, classes = _preds()
    sub = build_submission(sample, ids, classes)
    shifted = sub.assign(ID=np.roll(sub["ID"].to_numpy(), 1))
    with pytest.raises(ValueError):
        write_submission(tmp_path / "sub.csv", sample, shifted)
    assert not (tmp_path / "sub.csv").exists()
    write_submission(tmp_path / "sub.csv", sample, sub)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "sub.csv"), sub)


def test_probability_frame():
    frame = build_probability_frame(["a", "b"], np.array([[0.1, 0.9], [0.6, 0.4]]),
                                    ["cat", "dog"])
    assert list(frame.columns) == ["ID", "cat", "dog"]
    assert frame["ID"].tolist() == ["a", "b"]
    with pytest.raises(ValueError):
        build_probability_frame(["a"], np.array([[0.1, 0.9]]), ["cat", "cat"])
    with pytest.raises(ValueError):
        build_probability_frame(["a", "b"], np.array([[0.1, 0.9]]), ["cat", "dog"])


def test_write_outputs_roundtrip(tmp_path):
    sample = _sample(6)
    ids = [f"img{i:03d}.jpg" for i in range(6)]
    probs = np.random.default_rng(0).dirichlet(np.ones(3), size=6)
    paths = write_outputs(tmp_path / "out", sample, ids, probs, ["a", "b", "c"])
    sub = pd.read_csv(paths["submission"])
    assert sub["ID"].tolist() == sample["ID"].tolist()
    lookup = dict(zip(ids, probs.argmax(1)))
    assert sub["target"].tolist() == [lookup[i] for i in sub["ID"]]
    frame = pd.read_csv(paths["probs"])
    np.testing.assert_allclose(frame[["a", "b", "c"]].to_numpy(), probs, rtol=1e-7)


def test_atomic_write_keeps_old_file_when_to_csv_raises(tmp_path, monkeypatch):
    sample = _sample()
    ids, classes = _preds()
    sub = build_submission(sample, ids, classes)
    path = tmp_path / "submission.csv"
    path.write_text("old,content\n1,2\n")

    def broken_to_csv(self, buf, *args, **kwargs):
        buf.write("ID,target\nimg000.jpg,")  # half a file, then a crash
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", broken_to_csv)
    with pytest.raises(OSError, match="disk full"):
        write_submission(path, sample, sub)
    assert path.read_text() == "old,content\n1,2\n"
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]  # no temp left
