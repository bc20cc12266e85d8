"""Every training (and, with submit=true, test) image is fully decoded before the first epoch,
whatever data.cache says; a cache folder that cannot be written falls back to memory."""

from __future__ import annotations

import errno
import io
import json
import logging

import numpy as np
import pandas as pd
import pytest
from conftest import TINY, compose_train
from PIL import Image

from docclassify.data import cache
from docclassify.data.cache import cached_images, load_images
from docclassify.data.images import load_image
from docclassify.data.sources import DataError
from docclassify.engine.kfold import run_kfold


@pytest.fixture(autouse=True)
def _fresh_process_state(monkeypatch):
    monkeypatch.setattr(cache, "_OPEN", {})
    monkeypatch.setattr(cache, "_DIGESTS", {})
    monkeypatch.setattr(cache, "_UNWRITABLE", set())


def truncated_photo(path, keep: float = 0.6) -> int:
    """A ~430 kB 800x600 JPEG photo cut after ``keep`` of its bytes: its header and first scans
    survive, so PIL's verify() passes and only a full decode fails. Returns the full size."""
    rng = np.random.default_rng(0)
    pixels = (rng.random((600, 800, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    path.write_bytes(data[: int(len(data) * keep)])
    with Image.open(path) as img:
        img.verify()  # what the old pre-flight check ran: it passes
    return len(data)


def _overrides(root, *extra) -> list[str]:
    return ["data=competition", f"data.root={root}", *TINY, "folds.n=2", "folds.run=[0]", *extra]


def _first_train_id(root) -> str:
    return pd.read_csv(root / "train.csv", dtype=str)["ID"].iloc[0]


def test_truncated_photo_found_before_training_without_the_cache(data, tmp_path):
    bad_id = _first_train_id(data)
    assert truncated_photo(data / "train" / bad_id) > 400_000
    cfg = compose_train(_overrides(data, "data.cache=false", f"paths.cache_dir={tmp_path / 'cache'}"),
                        tmp_path / "run")
    with pytest.raises(DataError, match=r"1 training image\(s\) cannot be decoded") as err:
        run_kfold(cfg)
    assert bad_id in str(err.value) and "data.on_bad_image=skip" in str(err.value)
    assert not list((tmp_path / "run").rglob("fold0*"))  # no fold started: no checkpoint, no fold0.json
    assert not (tmp_path / "cache" / "decoded").exists()  # data.cache=false wrote no cache


@pytest.mark.parametrize("use_cache", [False, True])
def test_load_images_finds_the_same_bad_rows_with_and_without_the_cache(data, tmp_path, use_cache):
    paths = sorted((data / "train").glob("*.jpg"))[:6]
    truncated_photo(paths[2])
    paths[4].write_bytes(b"")
    cfg = compose_train(["data=competition", f"data.root={data}", f"data.cache={str(use_cache).lower()}"], tmp_path)
    images, bad = load_images(paths, 32, cfg.data, tmp_path / "cache")
    assert bad == [2, 4]
    np.testing.assert_array_equal(np.asarray(images[1]), load_image(paths[1], 32))


@pytest.mark.slow
def test_truncated_photo_skipped_without_the_cache(data, tmp_path):
    bad_id = _first_train_id(data)
    truncated_photo(data / "train" / bad_id)
    results = run_kfold(compose_train(_overrides(data, "data.cache=false", "data.on_bad_image=skip"), tmp_path))
    assert results["skipped_images"] == [bad_id]
    folds = pd.read_csv(tmp_path / "folds.csv").set_index("ID")
    assert folds.loc[bad_id, "fold"] == -1 and bad_id not in set(pd.read_csv(tmp_path / "oof.csv")["ID"])


@pytest.mark.parametrize("use_cache", ["false", "true"])
def test_submit_checks_the_test_images_before_training(data, tmp_path, use_cache):
    test_id = pd.read_csv(data / "sample_submission.csv", dtype=str)["ID"].iloc[0]
    truncated_photo(data / "test" / test_id)
    cfg = compose_train(_overrides(data, "submit=true", f"data.cache={use_cache}"), tmp_path / "run")
    with pytest.raises(DataError, match=r"submit=true: 1 test image\(s\) cannot be decoded") as err:
        run_kfold(cfg)
    assert test_id in str(err.value) and "submit=false" in str(err.value)
    assert not list((tmp_path / "run").rglob("fold0*"))


@pytest.mark.parametrize("failure", [errno.EACCES, errno.EROFS])
def test_unwritable_cache_folder_decodes_in_memory_with_one_warning(tiny_data, tmp_path, monkeypatch, caplog,
                                                                   failure):
    def refuse(path):
        raise OSError(failure, "simulated", str(path))

    monkeypatch.setattr(cache, "_file_lock", refuse)
    paths = sorted((tiny_data / "train").glob("*.jpg"))[:5]
    caplog.set_level(logging.WARNING, logger="docclassify.data.cache")
    first, bad = cached_images(paths, 32, "pad", 0, tmp_path / "ro")
    second, _ = cached_images(paths, 40, "pad", 0, tmp_path / "ro")  # another array, same folder
    assert bad == [] and not first.flags.writeable
    for i, p in enumerate(paths):
        np.testing.assert_array_equal(first[i], load_image(p, 32))
    assert second.shape == (5, 40, 40, 3)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "computing in memory" in warnings[0] and "paths.cache_dir" in warnings[0]


def test_complete_cache_in_a_read_only_folder_is_still_used(tiny_data, tmp_path, monkeypatch, caplog):
    paths = sorted((tiny_data / "train").glob("*.jpg"))[:5]
    built, _ = cached_images(paths, 32, "pad", 0, tmp_path)
    cache._OPEN.clear()
    monkeypatch.setattr(cache, "_file_lock", lambda path: (_ for _ in ()).throw(PermissionError(errno.EACCES, "ro")))
    monkeypatch.setattr(cache, "decode_all", lambda *a, **k: pytest.fail("decoded again"))
    caplog.set_level(logging.WARNING, logger="docclassify.data.cache")
    again, _ = cached_images(paths, 32, "pad", 0, tmp_path)
    assert isinstance(again, np.memmap) and np.array_equal(np.asarray(again), np.asarray(built))
    assert caplog.records == []


def test_full_disk_while_building_the_cache_falls_back_and_leaves_no_temp_file(tiny_data, tmp_path, monkeypatch,
                                                                               caplog):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache.os, "posix_fallocate", full)
    paths = sorted((tiny_data / "train").glob("*.jpg"))[:5]
    caplog.set_level(logging.WARNING, logger="docclassify.data.cache")
    arr, _ = cached_images(paths, 32, "pad", 0, tmp_path)
    np.testing.assert_array_equal(arr[0], load_image(paths[0], 32))
    assert [p.name for p in (tmp_path / "decoded").iterdir() if not p.name.endswith(".lock")] == []
    assert "No space left" in caplog.records[0].getMessage()


@pytest.mark.slow
def test_training_with_a_read_only_cache_equals_training_with_it(tiny_data, tmp_path, monkeypatch, caplog):
    """Decode cache, robust copies and shift statistics all fall back; one warning; same results."""
    import docclassify.utils.io as io_mod

    args = _overrides(tiny_data, "trainer.deterministic=true")
    run_kfold(compose_train([*args, f"paths.cache_dir={tmp_path / 'rw'}"], tmp_path / "cached"))
    cache._OPEN.clear()
    read_only = tmp_path / "ro"
    real_mkstemp = io_mod.mkstemp_shared

    def mkstemp(folder, *a, **k):
        if str(folder).startswith(str(read_only)):
            raise OSError(errno.EROFS, "Read-only file system", str(folder))
        return real_mkstemp(folder, *a, **k)

    monkeypatch.setattr(io_mod, "mkstemp_shared", mkstemp)
    monkeypatch.setattr(cache, "_file_lock", lambda path: (_ for _ in ()).throw(OSError(errno.EROFS, "ro")))
    caplog.set_level(logging.WARNING)
    run_kfold(compose_train([*args, f"paths.cache_dir={read_only}"], tmp_path / "memory"))
    warnings = [r.getMessage() for r in caplog.records if "cache folder" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert not [p for p in read_only.rglob("*") if p.is_file()]
    assert (tmp_path / "cached" / "oof.csv").read_text() == (tmp_path / "memory" / "oof.csv").read_text()
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("cached", "memory"))
    assert a["cv_macro_f1"] == b["cv_macro_f1"] and a["cv_macro_f1_robust"] == b["cv_macro_f1_robust"]
