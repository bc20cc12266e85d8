"""The decoded-image cache: exact pixels, content keys, corruption recovery, concurrent builds,
and the uncached path (data.cache=false) feeding training exactly the same inputs."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, TINY, compose_train
from PIL import Image

from docclassify.data import cache
from docclassify.data.cache import LazyImages, cached_images, content_key
from docclassify.data.images import load_image


@pytest.fixture(autouse=True)
def _fresh_process_state(monkeypatch):
    """Each test starts like a new process: no opened arrays, no remembered file digests."""
    monkeypatch.setattr(cache, "_OPEN", {})
    monkeypatch.setattr(cache, "_DIGESTS", {})


def _paths(root: Path, n: int | None = None) -> list[Path]:
    paths = sorted((root / "train").glob("*.jpg"))
    return paths[:n] if n else paths


def _copy_images(tiny_data: Path, dst: Path, n: int) -> list[Path]:
    dst.mkdir(parents=True)
    out = []
    for p in _paths(tiny_data, n):
        shutil.copy2(p, dst / p.name)
        out.append(dst / p.name)
    return out


def _data_file(cache_dir: Path, paths, size, policy="pad", pad=0) -> Path:
    return cache_dir / "decoded" / f"{content_key(paths, size, policy, pad)}.npy"


@pytest.mark.parametrize("size,policy,pad", [(32, "pad", 0), (40, "stretch", 0), (24, "pad", 127)])
def test_cached_array_equals_fresh_decode(tiny_data, tmp_path, size, policy, pad):
    paths = _paths(tiny_data)
    arr, bad = cached_images(paths, size, policy, pad, tmp_path)
    assert bad == [] and arr.shape == (len(paths), size, size, 3) and arr.dtype == np.uint8
    for i, p in enumerate(paths):
        assert np.array_equal(arr[i], load_image(p, size, policy, pad)), p.name
    # A later process maps the same file instead of decoding again.
    cache._OPEN.clear()
    again, _ = cached_images(paths, size, policy, pad, tmp_path)
    assert np.array_equal(np.asarray(again), np.asarray(arr))
    assert len(list((tmp_path / "decoded").glob("*.npy"))) == 1


def test_key_depends_on_size_policy_pad_and_order(tiny_data):
    paths = _paths(tiny_data, 5)
    base = content_key(paths, 32, "pad", 0)
    assert base == content_key([str(p) for p in paths], 32, "pad", 0)
    assert len({base, content_key(paths, 48, "pad", 0), content_key(paths, 32, "stretch", 0),
                content_key(paths, 32, "pad", 255), content_key(paths[::-1], 32, "pad", 0)}) == 5


def test_changed_image_rebuilds(tiny_data, tmp_path):
    paths = _copy_images(tiny_data, tmp_path / "imgs", 8)
    first, _ = cached_images(paths, 32, "pad", 0, tmp_path / "c")
    old_row = np.array(first[3])
    key_before = content_key(paths, 32, "pad", 0)

    # The user replaces image 3 by another picture (same name).
    Image.fromarray(np.full((50, 70, 3), (10, 200, 30), np.uint8)).save(paths[3], quality=95)
    key_after = content_key(paths, 32, "pad", 0)
    assert key_after != key_before
    second, _ = cached_images(paths, 32, "pad", 0, tmp_path / "c")
    assert np.array_equal(second[3], load_image(paths[3], 32)) and not np.array_equal(second[3], old_row)
    for i in (0, 1, 2, 4, 5, 6, 7):
        assert np.array_equal(second[i], first[i])
    assert {p.stem for p in (tmp_path / "c" / "decoded").glob("*.npy")} == {key_before, key_after}


def test_replaced_file_with_same_size_and_mtime_rebuilds(tiny_data, tmp_path):
    """Swapping in another file (new inode) is caught even if size and mtime are made equal."""
    paths = _copy_images(tiny_data, tmp_path / "imgs", 4)
    key = content_key(paths, 32, "pad", 0)
    st = paths[1].stat()
    data = bytearray(paths[1].read_bytes())
    data[-3] ^= 0xFF  # same length, other bytes
    tmp = paths[1].with_suffix(".new")
    tmp.write_bytes(bytes(data))
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, paths[1])
    assert paths[1].stat().st_size == st.st_size and paths[1].stat().st_mtime_ns == st.st_mtime_ns
    assert content_key(paths, 32, "pad", 0) != key


def test_unchanged_files_are_not_read_again_in_process(tiny_data, tmp_path, monkeypatch):
    paths = _copy_images(tiny_data, tmp_path / "imgs", 6)
    hashed: list[str] = []
    real = cache._file_digest
    monkeypatch.setattr(cache, "_file_digest", lambda p: hashed.append(p.name) or real(p))

    k1 = content_key(paths, 32, "pad", 0)
    assert sorted(hashed) == sorted(p.name for p in paths)
    hashed.clear()
    assert content_key(paths, 64, "stretch", 0) != k1 and hashed == []  # other size: digests reused
    assert content_key(paths, 32, "pad", 0) == k1 and hashed == []

    paths[2].write_bytes(paths[2].read_bytes() + b"\0")  # rewritten in place
    assert content_key(paths, 32, "pad", 0) != k1
    assert hashed == [paths[2].name]


@pytest.mark.parametrize("damage", ["truncate", "garbage_header", "missing_meta"])
def test_damaged_cache_file_is_detected_and_rebuilt(tiny_data, tmp_path, caplog, damage):
    paths = _paths(tiny_data, 20)
    arr, _ = cached_images(paths, 32, "pad", 0, tmp_path)
    expected = np.array(arr)
    del arr
    data_file = _data_file(tmp_path, paths, 32)
    full_size = data_file.stat().st_size
    if damage == "truncate":  # e.g. a disk that filled up, or a copy cut short
        os.truncate(data_file, full_size // 2)
    elif damage == "garbage_header":
        data_file.write_bytes(b"not a numpy file" * 10)
    else:
        data_file.with_suffix(".json").unlink()

    cache._OPEN.clear()  # a new process
    with caplog.at_level(logging.INFO, logger="docclassify.data.cache"):
        rebuilt, bad = cached_images(paths, 32, "pad", 0, tmp_path)
    assert "rebuilding" in caplog.text and "building" in caplog.text
    assert bad == [] and np.array_equal(np.asarray(rebuilt), expected)
    assert data_file.stat().st_size == full_size
    assert json.loads(data_file.with_suffix(".json").read_text())["n"] == len(paths)


def test_bad_image_listed_and_padded(tiny_data, tmp_path):
    paths = _copy_images(tiny_data, tmp_path / "imgs", 5)
    paths[2].write_bytes(b"\xff\xd8\xff truncated jpeg")
    arr, bad = cached_images(paths, 32, "pad", 7, tmp_path / "c")
    assert bad == [2] and (arr[2] == 7).all()
    cache._OPEN.clear()
    assert cached_images(paths, 32, "pad", 7, tmp_path / "c")[1] == [2]  # remembered in the meta file


_RACER = r"""
import hashlib, json, os, sys, time
from pathlib import Path
from docclassify.data import cache

builds = []
real_decode_all, real_load = cache.decode_all, cache.load_image
def counting_decode_all(*a, **k):
    builds.append(os.getpid())
    return real_decode_all(*a, **k)
def slow_load(*a, **k):  # widen the window in which the other process arrives
    time.sleep(0.01)
    return real_load(*a, **k)
cache.decode_all, cache.load_image = counting_decode_all, slow_load
paths, go, cache_dir = json.loads(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
while not go.exists():
    time.sleep(0.002)
arr, bad = cache.cached_images(paths, 32, "pad", 0, cache_dir)
print(json.dumps({"builds": len(builds), "sha": hashlib.sha256(arr.tobytes()).hexdigest(), "bad": bad}))
"""


def test_concurrent_builds_do_not_corrupt_and_build_once(tiny_data, tmp_path):
    paths = [str(p) for p in _paths(tiny_data, 60)]
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, json.dumps(paths), str(go), str(tmp_path / "c")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(3)]
    time.sleep(1.0)  # let all three start and wait at the line
    go.touch()
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr
        outs.append(json.loads(stdout.strip().splitlines()[-1]))

    expected = np.stack([load_image(p, 32) for p in paths])
    assert {o["sha"] for o in outs} == {hashlib.sha256(expected.tobytes()).hexdigest()}
    assert sum(o["builds"] for o in outs) == 1, outs  # the lock: one builds, the others map its file
    leftovers = [f.name for f in (tmp_path / "c" / "decoded").iterdir() if f.suffix not in (".npy", ".json", ".lock")]
    assert leftovers == []


def _loader_batches(cfg, images, n: int, epoch: int):
    from docclassify.data.augment import TrainTransform
    from docclassify.engine.loaders import build_loaders

    idx = np.arange(n)
    targets = np.arange(n) % 17
    transform = TrainTransform(cfg.augment, int(cfg.data.img_size), 3, 11, int(cfg.data.pad_value))
    train, val, sampler = build_loaders(images, idx[: n - 10], idx[n - 10:], targets, transform, cfg.trainer,
                                        cfg.data.num_workers, 5,
                                        torch.device("cpu"))
    sampler.set_epoch(epoch)
    transform.set_epoch(epoch)
    return [b for b in train] + [b for b in val]


def test_uncached_path_gives_identical_training_inputs(tiny_data, tmp_path):
    """data.cache=false decodes every sample every epoch; the model must see the same tensors."""
    cfg = compose_train(["data=competition", f"data.root={tiny_data}", *TINY, "augment.advanced_p_end=1.0",
                         "augment.advanced_p_start=0.5"], tmp_path)
    paths = _paths(tiny_data, 60)
    cached, _ = cached_images(paths, 32, cfg.data.resize, int(cfg.data.pad_value), tmp_path / "c")
    lazy = LazyImages(paths, 32, cfg.data.resize, int(cfg.data.pad_value))
    for epoch in (0, 2):
        a, b = _loader_batches(cfg, cached, len(paths), epoch), _loader_batches(cfg, lazy, len(paths), epoch)
        assert len(a) == len(b) > 0
        for (xa, ya), (xb, yb) in zip(a, b):
            assert xa.dtype == torch.uint8 and torch.equal(xa, xb) and torch.equal(ya, yb)
