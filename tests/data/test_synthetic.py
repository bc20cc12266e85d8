"""Tests of the built-in synthetic data set (docclassify.data.synthetic)."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

from docclassify.data import synthetic as S
from docclassify.data.synthetic import store as synthetic_store

SMALL = S.SyntheticSpec(n_train_per_class=4, n_test_per_class=3, long_side=96, seed=0)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        return next(csv.reader(f))


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    return S.generate(tmp_path_factory.mktemp("syn") / "a", SMALL, progress=False)


def test_class_names_and_counts():
    assert len(S.CLASS_NAMES) == 17
    assert S.CLASS_NAMES[5] == "driver_lisence"
    assert S.CLASS_NAMES[0] == "account_number"
    assert S.CLASS_NAMES[16] == "vehicle_registration_plate"
    counts = S.train_counts(S.SyntheticSpec(n_train_per_class=100))
    assert counts[1] == 46 and counts[13] == 74 and counts[14] == 50
    assert all(c == 100 for i, c in enumerate(counts) if i not in (1, 13, 14))
    assert min(S.train_counts(S.SyntheticSpec(n_train_per_class=8))) == 6
    assert S.train_counts(S.SyntheticSpec(n_train_per_class=4)) == [4] * 17
    assert S.train_counts(S.SyntheticSpec(n_train_per_class=30, imbalance=False)) == [30] * 17
    with pytest.raises(ValueError):
        S.SyntheticSpec(n_train_per_class=0)


def test_layout_and_csvs(small_set: Path):
    root = small_set
    for name in ("train.csv", "meta.csv", "sample_submission.csv", "test_labels.csv",
                 "test_distortions.csv", "synthetic_spec.json", S.COMPLETE_MARKER):
        assert (root / name).is_file(), name
    assert header(root / "train.csv") == ["ID", "target"]
    assert header(root / "meta.csv") == ["target", "class_name"]
    assert header(root / "sample_submission.csv") == ["ID", "target"]
    assert header(root / "test_labels.csv") == ["ID", "target"]

    meta = read_csv(root / "meta.csv")
    assert [int(r["target"]) for r in meta] == list(range(17))
    assert tuple(r["class_name"] for r in meta) == S.CLASS_NAMES

    train = read_csv(root / "train.csv")
    assert len(train) == sum(S.train_counts(SMALL))
    assert {int(r["target"]) for r in train} == set(range(17))
    assert all(r["ID"].startswith("train_") and r["ID"].endswith(".jpg") for r in train)
    assert sorted(p.name for p in (root / "train").iterdir()) == sorted(r["ID"] for r in train)

    sub = read_csv(root / "sample_submission.csv")
    labels = read_csv(root / "test_labels.csv")
    test_files = sorted(p.name for p in (root / "test").iterdir())
    sub_ids = [r["ID"] for r in sub]
    assert sorted(sub_ids) == test_files
    assert sub_ids != sorted(sub_ids)  # shuffled: row order must be respected by users
    assert all(r["target"] == "0" for r in sub)
    assert {r["ID"] for r in labels} == set(sub_ids)
    label_targets = [int(r["target"]) for r in labels]
    assert sorted(label_targets) == sorted(list(range(17)) * SMALL.n_test_per_class)
    assert label_targets != sorted(label_targets)  # test IDs are not ordered by class

    info = json.loads((root / "synthetic_spec.json").read_text())
    assert info["generator_version"] == S.GENERATOR_VERSION
    assert info["spec"]["n_train_per_class"] == 4 and info["spec"]["long_side"] == 96

    sizes = set()
    for sub_dir in ("train", "test"):
        for p in sorted((root / sub_dir).iterdir())[:20]:
            with Image.open(p) as im:
                assert im.mode == "RGB"
                assert im.format == "JPEG"
                assert max(im.size) <= SMALL.long_side
                sizes.add(im.size)
    assert len(sizes) > 5  # sizes vary


def test_test_split_is_distorted(small_set: Path):
    rows = read_csv(small_set / "test_distortions.csv")
    assert {r["ID"] for r in rows} == {r["ID"] for r in read_csv(small_set / "test_labels.csv")}
    ks = [int(r["rot90_k"]) for r in rows]
    assert 0 in ks and len({k for k in ks if k}) >= 2
    assert any(int(r["rot90_k"]) in (1, 3) for r in rows)
    assert any(float(r["angle"]) != 0 for r in rows)
    assert any(float(r["blur"]) > 0 for r in rows)
    assert any(float(r["noise"]) > 0 for r in rows)
    assert any(int(r["jpeg_quality"]) < 50 for r in rows)
    # a quarter turn swaps the orientation of a portrait form to landscape and so on: at
    # least one test image is landscape although its class is drawn in portrait
    portrait = {1, 3, 4, 6, 7, 9, 10, 11, 12, 13, 14, 15}
    labels = {r["ID"]: int(r["target"]) for r in read_csv(small_set / "test_labels.csv")}
    turned = [r["ID"] for r in rows if int(r["rot90_k"]) in (1, 3) and float(r["angle"]) == 0
              and float(r["crop"]) == 0 and labels[r["ID"]] in portrait]
    assert turned
    for i in turned:
        with Image.open(small_set / "test" / i) as im:
            assert im.width > im.height


def test_deterministic(small_set: Path, tmp_path: Path):
    again = S.generate(tmp_path / "b", SMALL, progress=False)
    for name in ("train.csv", "meta.csv", "sample_submission.csv", "test_labels.csv",
                 "test_distortions.csv", "synthetic_spec.json", "test_phone_labels.csv",
                 "test_phone_sample_submission.csv", "test_phone_distortions.csv"):
        assert (again / name).read_bytes() == (small_set / name).read_bytes(), name
    for sub_dir in ("train", "test", "test_phone"):
        for p in sorted((small_set / sub_dir).iterdir())[:15]:
            assert np.array_equal(pixels(p), pixels(again / sub_dir / p.name)), p.name
    # every sample differs from the others
    train = sorted((small_set / "train").iterdir())
    hashes = {hash(pixels(p).tobytes()) for p in train}
    assert len(hashes) == len(train)


# ------------------------------------------------------------------------------------------ the test profiles
def test_the_test_split_is_drawn_from_its_profile_file():
    """test/'s draw (distortion/synthetic.py) takes every probability and range from
    profiles/synthetic_test.yaml: over many draws each step fires as often as the file says, within
    its ranges."""
    from docclassify.distortion.synthetic import draw_test_image, test_profile

    p = test_profile()
    page = Image.new("RGB", (48, 64), (235, 235, 235))
    recs = [draw_test_image(page, np.random.default_rng([9, i]), 64)[1] for i in range(600)]
    share = {k: np.mean([f(r) for r in recs]) for k, f in {
        "rot90_p": lambda r: r["rot90_k"] > 0, "flip_p": lambda r: r["flip"] != "none",
        "angle_p": lambda r: r["angle"] != 0, "crop_p": lambda r: r["crop"] > 0, "blur_p": lambda r: r["blur"] > 0,
        "exposure_p": lambda r: r["gamma"] != 1.0, "noise_p": lambda r: r["noise"] > 0,
        "jpeg_p": lambda r: r["jpeg_quality"] != 92}.items()}
    assert share == pytest.approx({k: p[k] for k in share}, abs=0.06)
    turned = [r for r in recs if r["angle"]]
    assert all(p["angle_min"] - 1e-3 <= abs(r["angle"]) <= p["angle"] + 1e-3 for r in turned)
    lo, hi = p["jpeg_quality"]
    assert {r["jpeg_quality"] for r in recs if r["jpeg_quality"] != 92} <= set(range(lo, hi + 1))
    assert all(p["noise_min"] * 255 - 1e-3 <= r["noise"] <= p["noise_std"] * 255 + 1e-3 for r in recs if r["noise"])
    assert all(p["blur_min"] * 64 - 1e-3 <= r["blur"] <= p["blur_sigma"] * 64 + 1e-3 for r in recs if r["blur"])
    assert 0.4 < np.mean([r["flip"] == "v" for r in recs if r["flip"] != "none"]) < 0.6


def test_an_edited_test_profile_changes_the_test_split(monkeypatch):
    """The numbers live in the profile: no quarter turns there, none in the split."""
    from docclassify.distortion import synthetic

    edited = {**synthetic.test_profile(), "rot90_p": 0.0}
    monkeypatch.setattr(synthetic, "test_profile", lambda: edited)
    recs = [S.make_image(SMALL, "test", i, i % 17)[1] for i in range(1, 40)]
    assert all(r["rot90_k"] == 0 for r in recs)
    assert any(r["angle"] for r in recs)  # the other steps still fire


def test_the_test_splits_shared_steps_are_the_pil_operations_they_replaced():
    """crop, quarter turns and mirror images of test/ go through distortion/steps.py; they must give
    PIL's pixels (what GENERATOR_VERSION 1 wrote), so the split's bytes stay as they were."""
    from docclassify.distortion import steps

    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 29, 3), dtype=np.uint8))
    arr = np.asarray(img)
    turns = {1: Image.Transpose.ROTATE_90, 2: Image.Transpose.ROTATE_180, 3: Image.Transpose.ROTATE_270}
    for k, t in turns.items():
        np.testing.assert_array_equal(steps.rotate90(arr, k), np.asarray(img.transpose(t)))
    np.testing.assert_array_equal(steps.mirror(arr, "h"), np.asarray(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
    np.testing.assert_array_equal(steps.mirror(arr, "v"), np.asarray(img.transpose(Image.Transpose.FLIP_TOP_BOTTOM)))
    left, right, top, bottom = 0.11, 0.03, 0.07, 0.12
    box = (round(left * 29), round(top * 37), 29 - round(right * 29), 37 - round(bottom * 37))
    np.testing.assert_array_equal(steps.crop(arr, [left, top, right, bottom]), np.asarray(img.crop(box)))


def test_the_phone_split_is_a_second_labelled_distorted_test_split(small_set: Path):
    """test_phone/: other pages, as many per class as test/, with labels, a shuffled sample
    submission and each image's drawn distortion (phone_photo), saved at the drawn JPEG quality."""
    from docclassify.distortion import measure
    from docclassify.distortion.synthetic import phone_profile

    labels = read_csv(small_set / "test_phone_labels.csv")
    sub = [r["ID"] for r in read_csv(small_set / "test_phone_sample_submission.csv")]
    files = sorted(p.name for p in (small_set / "test_phone").iterdir())
    assert sorted(sub) == files == sorted(r["ID"] for r in labels) and sub != sorted(sub)
    assert sorted(int(r["target"]) for r in labels) == sorted(list(range(17)) * SMALL.n_test_per_class)
    assert not set(files) & {p.name for p in (small_set / "test").iterdir()}  # IDs of their own
    records = {r["ID"]: json.loads(r["params"]) for r in read_csv(small_set / "test_phone_distortions.csv")}
    assert set(records) == set(files)
    lo, hi = phone_profile()["jpeg_quality"]
    for name, params in records.items():
        assert lo <= params["jpeg"] <= hi
        assert abs(measure.jpeg_quality(small_set / "test_phone" / name) - params["jpeg"]) <= 2
    fired = {step for params in records.values() for step in params}
    assert {"perspective", "shadow", "exposure", "noise", "blur"} <= fired
    # each image is what its record says: the page drawn again from (spec, index) gives the same values
    index = files.index(sub[0]) + 1
    _, rec = S.make_image(SMALL, "test_phone", index, int(next(r["target"] for r in labels if r["ID"] == sub[0])))
    assert rec["params"] == records[sub[0]]


def test_generation_order_does_not_matter():
    a, _ = S.make_image(SMALL, "test", 7, 3)
    S.make_image(SMALL, "test", 8, 4)
    b, _ = S.make_image(SMALL, "test", 7, 3)
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_other_seed_differs(small_set: Path, tmp_path: Path):
    other = S.SyntheticSpec(n_train_per_class=4, n_test_per_class=3, long_side=96, seed=1)
    out = S.generate(tmp_path / "c", other, progress=False)
    same = 0
    for p in sorted((small_set / "train").iterdir())[:10]:
        a, b = pixels(p), pixels(out / "train" / p.name)
        same += int(a.shape == b.shape and np.array_equal(a, b))
    assert same == 0


def test_ensure_synthetic_caches(tmp_path: Path, capsys):
    cache = tmp_path / "cache"
    d1 = S.ensure_synthetic(cache, SMALL)
    assert d1 == cache / f"synthetic-{S.spec_hash(SMALL)}"
    assert (d1 / S.COMPLETE_MARKER).is_file()
    assert "generated synthetic data set" in capsys.readouterr().out
    m = (d1 / "train.csv").stat().st_mtime_ns
    d2 = S.ensure_synthetic(cache, SMALL)
    assert d2 == d1 and (d1 / "train.csv").stat().st_mtime_ns == m
    assert capsys.readouterr().out == ""
    other = S.SyntheticSpec(n_train_per_class=4, n_test_per_class=3, long_side=64, seed=0)
    d3 = S.ensure_synthetic(cache, other)
    assert d3 != d1 and (d3 / S.COMPLETE_MARKER).is_file()
    assert sorted(p.name for p in cache.iterdir()) == sorted([d1.name, d3.name])


def test_ensure_synthetic_regenerates_incomplete(tmp_path: Path):
    cache = tmp_path / "cache"
    name = S.synthetic_dir_name(SMALL)
    # a crashed generator's temp dir (dead pid on this host) and a half folder without marker
    leftover = cache / f".{name}.tmp-{socket.gethostname()}~999999999~abc"
    leftover.mkdir(parents=True)
    (leftover / "train.csv").write_text("ID,target\n")
    half = cache / name
    (half / "train").mkdir(parents=True)
    (half / "train.csv").write_text("ID,target\n")
    d = S.ensure_synthetic(cache, SMALL)
    assert d == half and (d / S.COMPLETE_MARKER).is_file()
    assert len(read_csv(d / "train.csv")) == sum(S.train_counts(SMALL))
    assert not leftover.exists()
    assert [p.name for p in cache.iterdir()] == [name]


def test_ensure_synthetic_lost_race_uses_winner(tmp_path: Path, monkeypatch):
    cache = tmp_path / "cache"
    real_generate = S.generate

    def racing_generate(out_dir, spec, progress=True):
        res = real_generate(out_dir, spec, progress=progress)
        # meanwhile another process finished first and renamed its folder into place
        winner = cache / S.synthetic_dir_name(spec)
        real_generate(winner, spec, progress=False)
        (winner / "winner").write_text("1")
        return res

    # ensure_synthetic calls the generate it imported into its own module
    monkeypatch.setattr(synthetic_store, "generate", racing_generate)
    d = S.ensure_synthetic(cache, SMALL)
    assert (d / "winner").is_file() and (d / S.COMPLETE_MARKER).is_file()
    assert [p.name for p in cache.iterdir()] == [d.name]  # our temp dir was removed


def test_cli(tmp_path: Path):
    out = tmp_path / "cli"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run(
        [sys.executable, "-m", "docclassify.data.synthetic", str(out), "--n-train-per-class",
         "2", "--n-test-per-class", "1", "--long-side", "64", "--seed", "3", "--quiet"],
        check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert len(read_csv(out / "train.csv")) == 34
    assert len(read_csv(out / "sample_submission.csv")) == 17
    assert len(list((out / "test").glob("*.jpg"))) == 17
    assert len(list((out / "test_phone").glob("*.jpg"))) == len(read_csv(out / "test_phone_labels.csv")) == 17
    info = json.loads((out / "synthetic_spec.json").read_text())
    assert info["spec"] == {"n_train_per_class": 2, "n_test_per_class": 1, "long_side": 64,
                            "seed": 3, "imbalance": True}


def test_a_training_run_can_see_the_phone_split(tmp_path: Path):
    """data.test_dir / test_labels / sample_submission of data=synthetic pick the test split a train
    command sees (its shift report, validation.distort=auto, submit=true), as infer's data.* do."""
    from conftest import compose_train

    from docclassify.data.sources import load_source

    keys = ["data.n_train_per_class=2", "data.n_test_per_class=2", "data.long_side=48"]
    phone = ["data.test_dir=test_phone", "data.test_labels=test_phone_labels.csv",
             "data.sample_submission=test_phone_sample_submission.csv"]
    default = load_source(compose_train(keys, tmp_path / "a").data, tmp_path)
    other = load_source(compose_train([*keys, *phone], tmp_path / "b").data, tmp_path)
    assert {Path(p).parent.name for p in default.test["path"]} == {"test"}
    assert {Path(p).parent.name for p in other.test["path"]} == {"test_phone"}
    assert set(other.test["ID"]) == set(other.test_labels["ID"]) and not set(other.test["ID"]) & set(default.test["ID"])
