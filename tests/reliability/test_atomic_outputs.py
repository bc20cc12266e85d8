"""A crash in the middle of writing an output (disk full, killed process) leaves the previous
good file: results.json, oof.csv and the last-state checkpoint are written to a temp file and
renamed into place."""

from __future__ import annotations

import errno
import json
import os
import tempfile

import pytest
import torch
from conftest import TINY, compose_train

import docclassify.utils.io as io_mod
from docclassify.engine.kfold import run_kfold

pytestmark = pytest.mark.slow  # every test trains


class _HalfWriter:
    """A file object whose first write stores half its bytes, then fails like a full disk."""

    def __init__(self, fh):
        self._fh = fh

    def write(self, data):
        self._fh.write(data[: len(data) // 2])
        self._fh.flush()
        raise OSError(errno.ENOSPC, "No space left on device (simulated)")

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._fh.__exit__(*exc)


@pytest.fixture
def disk_full(monkeypatch):
    """disk_full(name, after=0): the (after+1)-th atomic write of a file called ``name`` dies half-way."""

    def arm(name: str, after: int = 0) -> None:
        temp_names: dict[int, str] = {}
        seen = {"n": 0}

        def mkstemp(*args, **kwargs):
            fd, tmp = tempfile.mkstemp(*args, **kwargs)
            temp_names[fd] = os.path.basename(tmp)
            return fd, tmp

        def fdopen(fd, *args, **kwargs):
            fh = os.fdopen(fd, *args, **kwargs)
            if temp_names.pop(fd, "").startswith(f".{name}."):
                seen["n"] += 1
                if seen["n"] == after + 1:
                    return _HalfWriter(fh)
            return fh

        monkeypatch.setattr(io_mod, "tempfile", type("T", (), {"mkstemp": staticmethod(mkstemp)}))
        monkeypatch.setattr(io_mod, "os", type("O", (), {
            "fdopen": staticmethod(fdopen), "fsync": os.fsync, "replace": os.replace, "unlink": os.unlink,
            "fchmod": os.fchmod, "close": os.close, "umask": os.umask}))

    return arm


def _overrides(tiny_data, epochs: int) -> list[str]:
    return ["data=competition", f"data.root={tiny_data}", *TINY, "folds.n=2", "folds.run=[0]", "shift.report=true",
            f"trainer.epochs={epochs}", "trainer.deterministic=true"]


def _temp_files(run_dir):
    return sorted(p.name for p in run_dir.rglob("*.tmp"))


def test_crash_while_writing_results_and_oof_keeps_the_old_files(tiny_data, tmp_path, disk_full):
    run_kfold(compose_train(_overrides(tiny_data, 1), tmp_path))
    # Mark the old files, so "intact" cannot be confused with "rewritten with equal content".
    results = json.loads((tmp_path / "results.json").read_text())
    (tmp_path / "results.json").write_text(json.dumps({**results, "marker": "old"}))
    (tmp_path / "oof.csv").write_text((tmp_path / "oof.csv").read_text() + "# old\n")
    old_results, old_oof = (tmp_path / "results.json").read_bytes(), (tmp_path / "oof.csv").read_bytes()

    # Same command again: fold 0 is finished, so only oof.csv and results.json are rewritten.
    disk_full("oof.csv")
    with pytest.raises(OSError, match="No space left"):
        run_kfold(compose_train(_overrides(tiny_data, 1), tmp_path))
    assert (tmp_path / "oof.csv").read_bytes() == old_oof
    assert (tmp_path / "results.json").read_bytes() == old_results
    assert _temp_files(tmp_path) == []

    disk_full("results.json")
    with pytest.raises(OSError, match="No space left"):
        run_kfold(compose_train(_overrides(tiny_data, 1), tmp_path))
    assert (tmp_path / "results.json").read_bytes() == old_results
    assert json.loads(old_results)["marker"] == "old"
    # oof.csv was complete in its temp file, but the set appears together: the old one stays.
    assert (tmp_path / "oof.csv").read_bytes() == old_oof
    assert _temp_files(tmp_path) == []


def test_crash_while_writing_a_checkpoint_keeps_the_previous_epoch(tiny_data, tmp_path, disk_full):
    last = tmp_path / "checkpoints" / "fold0_last.pt"
    disk_full("fold0_last.pt", after=1)  # epoch 0's state is written, epoch 1's dies half-way
    with pytest.raises(Exception, match="No space left"):
        run_kfold(compose_train(_overrides(tiny_data, 3), tmp_path))
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["state"]["epoch"] == 1 and len(ckpt["state"]["history"]) == 1
    assert _temp_files(tmp_path) == []

    # The disk has room again: the same command continues from that state and finishes.
    run_kfold(compose_train(_overrides(tiny_data, 3), tmp_path))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["folds"][0]["epochs_run"] == 3
    assert [h["epoch"] for h in results["folds"][0]["history"]] == [0, 1, 2]
