"""A write that fails (disk full, permission denied, read-only file system) leaves the previous
file intact and stops with a message naming the path; files written as a set appear together."""

from __future__ import annotations

import errno
import os

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY, compose_train

import docclassify.utils.io as io_mod
from docclassify.engine.kfold import run_kfold
from docclassify.models.checkpoint import load_resume_state, save_best, save_resume_state
from docclassify.predict.submission import write_probability_frame, write_submission
from docclassify.utils.io import WriteError, atomic_group, atomic_write_json, atomic_write_text

FAILURES = {"ENOSPC": errno.ENOSPC, "EACCES": errno.EACCES, "EROFS": errno.EROFS}


@pytest.fixture
def failing(monkeypatch):
    """failing(code, where): ENOSPC while the temp file is synced (its bytes were written), or
    EACCES/EROFS when the temp file is created (a folder that cannot be written)."""

    def arm(code: int) -> None:
        if code == errno.ENOSPC:
            def fsync(fd):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            monkeypatch.setattr(io_mod.os, "fsync", fsync)
        else:
            def mkstemp(folder, prefix, suffix):
                raise OSError(code, os.strerror(code), os.path.join(folder, prefix + "XXXX" + suffix))
            monkeypatch.setattr(io_mod, "mkstemp_shared", mkstemp)

    return arm


def _sample(n: int = 4) -> pd.DataFrame:
    return pd.DataFrame({"ID": [f"t{i}.jpg" for i in range(n)], "target": [0] * n})


# name -> (file name, write(path, version))
WRITERS = {
    "results": ("results.json", lambda p, v: atomic_write_json(p, {"version": v})),
    "checkpoint": ("fold0_last.pt", lambda p, v: save_resume_state(p, {"weights": torch.full((3,), float(v)),
                                                                        "rng": np.arange(v + 1)})),
    "best": ("fold0_best.safetensors", lambda p, v: save_best(p, {"w": torch.full((3,), float(v))},
                                                              {"classes": ["a"]}, epoch=v)),
    "oof": ("oof.csv", lambda p, v: io_mod.atomic_write_csv(pd.DataFrame({"ID": ["a"], "pred": [v]}), p)),
    "submission": ("submission.csv", lambda p, v: write_submission(p, _sample(), _sample().assign(target=v), 17)),
    "test_probs": ("test_probs.csv", lambda p, v: write_probability_frame(p, pd.DataFrame({"ID": ["a"], "p": [v]}))),
}


@pytest.mark.parametrize("failure", list(FAILURES))
@pytest.mark.parametrize("writer", list(WRITERS))
def test_failed_write_keeps_the_previous_file_and_names_the_path(tmp_path, failing, writer, failure):
    name, write = WRITERS[writer]
    path = tmp_path / "out" / name
    write(path, 1)
    before = path.read_bytes()
    failing(FAILURES[failure])
    with pytest.raises(WriteError) as err:
        write(path, 2)
    message = str(err.value)
    assert message.startswith(f"cannot write {path}: ") and "previous version is unchanged" in message
    assert err.value.errno == FAILURES[failure] and err.value.filename == str(path)
    assert "run the command again" in message
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == [name]  # no temp file left


def test_first_write_that_fails_says_nothing_was_written(tmp_path, failing):
    failing(errno.ENOSPC)
    with pytest.raises(WriteError, match=r"No space left on device; nothing was written \(free some disk space"):
        atomic_write_text(tmp_path / "a.txt", "x")
    assert list(tmp_path.iterdir()) == []


def test_resume_state_still_loads_after_a_failed_overwrite(tmp_path, failing):
    path = tmp_path / "fold0_last.pt"
    save_resume_state(path, {"epoch": 3, "rng": np.arange(5)})
    failing(errno.ENOSPC)
    with pytest.raises(WriteError):
        save_resume_state(path, {"epoch": 4, "rng": np.arange(6)})
    state = load_resume_state(path)
    assert state["epoch"] == 3 and np.array_equal(state["rng"], np.arange(5))


def test_a_group_appears_together_or_not_at_all(tmp_path, monkeypatch):
    a, b = tmp_path / "submission.csv", tmp_path / "test_probs.csv"
    with atomic_group():
        atomic_write_text(a, "old a")
        atomic_write_text(b, "old b")
    real_fsync, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 2:  # the second file of the set: disk full
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(io_mod.os, "fsync", fsync)
    with pytest.raises(WriteError, match="test_probs.csv"), atomic_group():
        atomic_write_text(a, "new a")  # complete, but waits for the group
        atomic_write_text(b, "new b")
    assert (a.read_text(), b.read_text()) == ("old a", "old b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["submission.csv", "test_probs.csv"]

    with pytest.raises(KeyboardInterrupt), atomic_group():  # Ctrl-C (or SIGTERM) between the two
        atomic_write_text(a, "new a")
        raise KeyboardInterrupt
    assert a.read_text() == "old a" and len(list(tmp_path.iterdir())) == 2


@pytest.mark.slow
@pytest.mark.parametrize("failure", ["ENOSPC", "EACCES"])
def test_training_stops_naming_the_checkpoint_it_cannot_write(tiny_data, tmp_path, monkeypatch, failure):
    """The checkpoints folder fails part-way (epoch 1 of 2): the run stops with the path; epoch 0's
    checkpoints are intact and the same command, with the disk fixed, finishes the run."""
    args = ["data=competition", f"data.root={tiny_data}", *TINY, "folds.n=2", "folds.run=[0]", "trainer.epochs=2",
            "trainer.deterministic=true"]
    real_mkstemp, seen = io_mod.mkstemp_shared, {"n": 0}

    def mkstemp(folder, prefix, suffix):
        if os.path.basename(folder) == "checkpoints" and prefix.startswith(".fold0_last.pt"):
            seen["n"] += 1
            if seen["n"] == 2:
                raise OSError(FAILURES[failure], os.strerror(FAILURES[failure]))
        return real_mkstemp(folder, prefix, suffix)

    monkeypatch.setattr(io_mod, "mkstemp_shared", mkstemp)
    with pytest.raises(WriteError) as err:
        run_kfold(compose_train(args, tmp_path))
    last = tmp_path / "checkpoints" / "fold0_last.pt"
    assert str(err.value).startswith(f"cannot write {last}: {os.strerror(FAILURES[failure])}")
    assert load_resume_state(last)["state"]["epoch"] == 1
    assert not (tmp_path / "results.json").exists()
    monkeypatch.setattr(io_mod, "mkstemp_shared", real_mkstemp)
    results = run_kfold(compose_train(args, tmp_path))
    assert results["folds"][0]["epochs_run"] == 2
