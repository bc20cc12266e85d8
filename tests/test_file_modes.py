"""Outputs get the umask's permissions (0644/0755 under umask 022, 0640/0750 under 027), not the
0600/0700 of the temp files they are written through; atomic writes stay atomic."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY, run_cli

from docclassify.utils import io


@pytest.fixture(params=[0o022, 0o027], ids=["umask022", "umask027"])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def assert_modes(root: Path, umask: int) -> int:
    """Every file below root has 0o666 & ~umask, every dir 0o777 & ~umask. Returns the file count.
    (root itself may be pytest's 0700 tmp_path.)"""
    files = 0
    for p in root.rglob("*"):
        want = (0o777 if p.is_dir() else 0o666) & ~umask
        assert mode(p) == want, f"{p}: mode {oct(mode(p))}, expected {oct(want)} under umask {oct(umask)}"
        files += p.is_file()
    return files


def test_current_umask_reads_without_changing_it(umask):
    assert io.current_umask() == umask
    assert os.umask(umask) == umask  # still set


def test_atomic_writes_get_the_umask_mode(tmp_path, umask):
    import torch

    io.atomic_write_text(tmp_path / "a.txt", "x")
    io.atomic_write_json(tmp_path / "results.json", {"a": 1})
    io.atomic_write_csv(pd.DataFrame({"ID": ["a"], "target": [1]}), tmp_path / "oof.csv")
    io.atomic_save_torch({"w": torch.zeros(2)}, tmp_path / "checkpoints" / "fold0_last.pt")
    with io.atomic_write(tmp_path / "logits.npy", "wb") as fh:
        np.save(fh, np.zeros(3))
    assert assert_modes(tmp_path, umask) == 5
    # Still atomic: a failed write leaves the old file and no temp file.
    with pytest.raises(RuntimeError):
        with io.atomic_write(tmp_path / "a.txt") as fh:
            fh.write("half")
            raise RuntimeError("crash")
    assert (tmp_path / "a.txt").read_text() == "x"
    assert sorted(p.name for p in tmp_path.rglob("*.tmp")) == []


def test_temp_dir_gets_the_umask_mode(tmp_path, umask):
    tmp = Path(io.mkdtemp_shared(tmp_path, ".x.tmp-"))
    assert mode(tmp) == 0o777 & ~umask


def test_decode_cache_and_synthetic_data_get_the_umask_mode(tmp_path, umask, monkeypatch):
    from docclassify.data import cache
    from docclassify.data.synthetic import SyntheticSpec, ensure_synthetic

    monkeypatch.setattr(cache, "_OPEN", {})  # the same images in another umask's run: build again
    root = ensure_synthetic(tmp_path / "cache", SyntheticSpec(n_train_per_class=2, n_test_per_class=1,
                                                              long_side=32, seed=1, imbalance=False))
    paths = sorted((root / "train").glob("*"))
    images, bad = cache.cached_images(paths, 16, "pad", 0, tmp_path / "cache")
    assert images.shape == (len(paths), 16, 16, 3) and bad == []
    assert sorted(p.suffix for p in (tmp_path / "cache" / "decoded").iterdir()) == [".json", ".lock", ".npy"]
    assert assert_modes(tmp_path, umask) > len(paths)


@pytest.mark.slow
def test_run_dir_cache_and_submission_respect_the_umask(tiny_data, tmp_path, umask):
    """A real run under the umask: every file Hydra, training and inference write is shared alike."""
    env = {"DOCCLASSIFY_CACHE": str(tmp_path / "cache")}
    run_dir = tmp_path / "run"
    run_cli("docclassify.train", ["data=competition", f"data.root={tiny_data}", *TINY, "folds.n=2", "shift.report=true",
                                  "folds.run=[0]", f"hydra.run.dir={run_dir}", "submit=true",
                                  f"infer.output={tmp_path / 'copy.csv'}"], env=env)
    infer_dir = run_dir / "infer"
    for name in ("results.json", "oof.csv", "checkpoints/fold0_best.safetensors", "checkpoints/fold0_last.pt",
                 "folds/fold0.json", "report.md", "confusion_matrix.png"):
        assert (run_dir / name).is_file(), name
    assert (infer_dir / "submission.csv").is_file() and (tmp_path / "copy.csv").is_file()
    assert list((tmp_path / "cache" / "decoded").glob("*.npy"))
    assert assert_modes(tmp_path, umask) > 20
