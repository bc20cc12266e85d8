"""data/validation.py (with docclassify/distortion/copies.py): a robust copy is a pure function of
(seed, image ID, copy index), the same bytes whatever the thread count, process, cache or the
other rows; built once and cached."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import REPO
from omegaconf import OmegaConf
from PIL import Image

from docclassify.config_schema import DistortProfile
from docclassify.data import cache
from docclassify.data import validation as V
from docclassify.distortion import copies as C
from docclassify.distortion import profile as P

SIZE = 32


def spec(**over) -> C.RobustSpec:
    profile = OmegaConf.to_container(OmegaConf.structured(DistortProfile))
    d = {"copies": 2, "seed": 0, "profile": profile, **over}
    return C.RobustSpec.from_dict(d)


@pytest.fixture
def rows(tiny_data):
    train = pd.read_csv(tiny_data / "train.csv", dtype={"ID": str})
    return [tiny_data / "train" / i for i in train["ID"]], train["ID"].tolist()


@pytest.fixture(autouse=True)
def _fresh_process_cache(monkeypatch):
    monkeypatch.setattr(cache, "_OPEN", {})  # every test starts like a new process


def build(paths, ids, s, threads=None):
    out = np.empty((len(paths) * s.copies, SIZE, SIZE, 3), np.uint8)
    assert V.build_copies(paths, ids, s, SIZE, "pad", 0, out, threads=threads) == []
    return out


def test_copies_do_not_depend_on_threads_cache_or_the_other_rows(rows, tmp_path):
    paths, ids = rows
    s = spec()
    one = build(paths, ids, s, threads=1)
    np.testing.assert_array_equal(one, build(paths, ids, s, threads=4))
    np.testing.assert_array_equal(one, V.robust_copies(paths, ids, s, SIZE, "pad", 0, tmp_path / "cache"))
    np.testing.assert_array_equal(one, V.robust_copies(paths, ids, s, SIZE, "pad", 0, None))  # data.cache=false
    # A row's copies depend on its ID, not on its position or on which rows come with it.
    order = list(range(len(ids)))[::-3]
    subset = build([paths[i] for i in order], [ids[i] for i in order], s)
    np.testing.assert_array_equal(subset, one[C.copy_rows(order, s.copies)])
    assert not np.array_equal(one[0], one[1])  # two copies of one image differ


def test_copies_are_the_same_bytes_in_another_process(rows, tmp_path):
    paths, ids = rows
    s = spec(copies=3, seed=5)
    here = V.robust_copies(paths, ids, s, SIZE, "pad", 0, tmp_path / "a")
    code = ("import json, sys; from pathlib import Path; from docclassify.data import validation as V; "
            "from docclassify.distortion import copies as C; "
            "a = json.loads(sys.argv[1]); "
            "V.robust_copies([Path(p) for p in a['paths']], a['ids'], C.RobustSpec.from_dict(a['spec']), "
            f"{SIZE}, 'pad', 0, a['cache'])")
    arg = json.dumps({"paths": [str(p) for p in paths], "ids": ids, "spec": s.as_dict(), "cache": str(tmp_path / "b")})
    # Python's str hash differs per process (PYTHONHASHSEED): the copies must not.
    hash_seed = str(1 + int(os.environ.get("PYTHONHASHSEED", "0") or 0) % 1000)
    subprocess.run([sys.executable, "-c", code, arg], check=True, cwd=REPO,
                   env={**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(REPO)})
    (built,) = (tmp_path / "b" / "robust").glob("*.npy")
    assert built.name == next((tmp_path / "a" / "robust").glob("*.npy")).name  # the same cache key
    np.testing.assert_array_equal(np.load(built), here)


def test_seed_and_copy_index_pick_the_pixels(rows):
    paths, ids = rows
    a, b = build(paths[:4], ids[:4], spec(seed=0)), build(paths[:4], ids[:4], spec(seed=1))
    assert not np.array_equal(a, b)
    renamed = build(paths[:4], [f"other_{i}" for i in ids[:4]], spec(seed=0))  # the ID seeds the copy
    assert not np.array_equal(a, renamed)
    draw = C.copy_rng(0, "x.jpg", 1).random()
    assert draw == C.copy_rng(0, "x.jpg", 1).random() != C.copy_rng(0, "x.jpg", 0).random()


def test_built_once_then_reused_and_keyed_by_every_setting(rows, tmp_path, monkeypatch):
    paths, ids = rows
    calls = []
    real = V.build_copies
    monkeypatch.setattr(V, "build_copies", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = V.robust_copies(paths, ids, spec(), SIZE, "pad", 0, tmp_path)
    monkeypatch.setattr(cache, "_OPEN", {})  # another process: maps the file, builds nothing
    again = V.robust_copies(paths, ids, spec(), SIZE, "pad", 0, tmp_path)
    assert len(calls) == 1 and isinstance(again, np.memmap)
    np.testing.assert_array_equal(first, again)
    key = V.copies_key(paths, ids, spec(), SIZE, "pad", 0)
    profile = {**spec().profile, "angle": 5.0}
    others = [V.copies_key(paths, ids, spec(copies=3), SIZE, "pad", 0),
              V.copies_key(paths, ids, spec(seed=1), SIZE, "pad", 0),
              V.copies_key(paths, ids, spec(profile=profile), SIZE, "pad", 0),
              V.copies_key(paths, ids, spec(), 48, "pad", 0),
              V.copies_key(paths, ids, spec(), SIZE, "stretch", 0),
              V.copies_key(paths, ids, spec(), SIZE, "pad", 255),
              V.copies_key(paths[::-1], ids[::-1], spec(), SIZE, "pad", 0)]
    assert len({key, *others}) == len(others) + 1


def test_images_are_distorted_at_their_own_resolution_bounded(tmp_path):
    big = tmp_path / "big.png"
    Image.fromarray(np.full((3000, 1500, 3), 200, np.uint8)).save(big)
    assert V.working_image(big, 64).shape == (C.MIN_WORKING_SIDE, C.MIN_WORKING_SIDE // 2, 3)
    assert V.working_image(big, 800).shape == (1600, 800, 3)  # 2 x img_size when that is larger
    small = tmp_path / "small.png"
    Image.fromarray(np.full((300, 200, 3), 200, np.uint8)).save(small)
    assert V.working_image(small, 64).shape == (300, 200, 3)


def test_an_undecodable_image_is_reported_and_padded(rows, tmp_path):
    paths, ids = rows
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    out = np.empty((3 * 2, SIZE, SIZE, 3), np.uint8)
    assert V.build_copies([paths[0], bad, paths[1]], ids[:3], spec(), SIZE, "pad", 7, out) == [1]
    assert (out[2:4] == 7).all() and not (out[0] == 7).all()


def test_a_spec_recorded_before_the_photo_steps_existed_rebuilds_its_copies(rows):
    """results.json of a run made before background/desk/shadow/glare/channel/occlusion_count:
    its profile lacks those keys, so their steps stay off (not today's defaults)."""
    paths, ids = rows
    old_keys = ("rot90_p", "flip_p", "angle_p", "angle", "crop_p", "crop", "perspective_p", "perspective", "blur_p",
                "blur_sigma", "color_p", "brightness", "contrast", "noise_p", "noise_std", "jpeg_p", "jpeg_quality",
                "occlusion_p", "occlusion_size")
    today = spec().profile
    recorded = C.RobustSpec.from_dict({"copies": 2, "seed": 0, "profile": {k: today[k] for k in old_keys}})
    assert all(recorded.profile[k] == 0.0 for k in ("background_p", "desk_p", "shadow_p", "glare_p", "channel_p"))
    assert recorded.profile["occlusion_count"] == 1
    explicit_off = spec(profile={**today, **P.ADDED_LATER_OFF})
    np.testing.assert_array_equal(build(paths, ids, recorded), build(paths, ids, explicit_off))
    assert not np.array_equal(build(paths, ids, recorded), build(paths, ids, spec()))  # today's defaults differ
    assert C.RobustSpec.from_dict(spec().as_dict()) == spec()  # a spec recorded now round-trips


def test_deskewed_copies_are_each_copy_deskewed_before_its_resize(rows, tmp_path):
    """robust_copies(deskew=True), what infer predicts under tta.deskew: each copy as draw_copy gives
    it, deskewed at working resolution, then resized; cached apart from the plain copies."""
    from docclassify.data.deskew import deskew
    from docclassify.data.images import resize_image

    paths, ids = rows
    profile = OmegaConf.to_container(OmegaConf.structured(DistortProfile))
    s = spec(profile={**profile, "angle_p": 1.0, "angle": 12.0, "angle_min": 6.0})
    plain = V.robust_copies(paths, ids, s, SIZE, "pad", 0, tmp_path / "cache")
    skewed = V.robust_copies(paths, ids, s, SIZE, "pad", 0, tmp_path / "cache", deskew=True)
    image = V.working_image(paths[0], SIZE)
    by_hand = resize_image(deskew(C.draw_copy(image, s, ids[0], 1)[0])[0], SIZE, "pad", 0)
    np.testing.assert_array_equal(skewed[1], by_hand)
    assert not np.array_equal(plain, skewed)
    assert V.copies_key(paths, ids, s, SIZE, "pad", 0) != V.copies_key(paths, ids, s, SIZE, "pad", 0, deskew=True)
