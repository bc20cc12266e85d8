"""SIGTERM or Ctrl-C during `python -m docclassify.infer` (to the process or its whole process group):
no partial submission.csv / test_probs.csv (the outputs appear together or not at all, temp files
removed), one line on stderr, exit 143 / 130; the same command again completes, with the outputs of
an uninterrupted run."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, TINY, run_cli, signal_group_when_paused, start_cli

pytestmark = pytest.mark.slow  # a tiny run is trained once for the module

HERE = Path(__file__).resolve().parent
OUT_FILES = ("submission.csv", "test_probs.csv", "summary.json")


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory, cache_dir):
    run_dir = tmp_path_factory.mktemp("interrupt") / "run"
    run_cli("docclassify.train", ["data=competition", f"data.root={tiny_data}", f"paths.cache_dir={cache_dir}", *TINY,
                                  "folds.n=2", f"hydra.run.dir={run_dir}"])
    return run_dir


def start_infer(run_dir: Path, out_dir: Path, interrupt: str | None, *extra: str, paused: Path | None = None):
    """`python -m docclassify.infer` (through faulty_infer) in its own process group (forked from this
    process: conftest.start_cli)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("DOCCLASSIFY_TEST_INTERRUPT", None)
    if interrupt:
        env["DOCCLASSIFY_TEST_INTERRUPT"] = interrupt
    if paused:
        env["DOCCLASSIFY_TEST_PAUSED"] = str(paused)
    return start_cli("faulty_infer", [f"runs=[{run_dir}]", "batch_size=16", *extra, f"hydra.run.dir={out_dir}"],
                     env=env, new_session=True)


def infer(run_dir: Path, out_dir: Path, interrupt: str | None, *extra: str) -> subprocess.CompletedProcess:
    proc = start_infer(run_dir, out_dir, interrupt, *extra)
    out, err = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def uninterrupted(trained, tmp_path_factory) -> Path:
    """The outputs of `infer` run once without a signal."""
    out_dir = tmp_path_factory.mktemp("uninterrupted") / "infer"
    proc = infer(trained, out_dir, None)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out_dir


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name in OUT_FILES)


def _line(name: str) -> str:
    return f"docclassify.infer: interrupted by {name}: no submission.csv, test_probs.csv or summary.json was written"


def test_group_sigterm_while_predicting_writes_nothing_and_the_rerun_equals_an_uninterrupted_one(
        trained, uninterrupted, tmp_path):
    """SIGTERM to the command's whole process group (timeout, SLURM, docker stop) while the fold
    models predict the test set."""
    out_dir, paused = tmp_path / "infer", tmp_path / "paused"
    proc = start_infer(trained, out_dir, "pause:predict", paused=paused)
    signal_group_when_paused(proc, paused)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-4000:]
    assert err.count(_line("SIGTERM")) == 1 and "Traceback" not in err, err[-4000:]
    assert _leftovers(out_dir) == []
    assert infer(trained, out_dir, None).returncode == 0
    for name in ("submission.csv", "test_probs.csv"):
        assert (out_dir / name).read_bytes() == (uninterrupted / name).read_bytes(), name


@pytest.mark.parametrize("interrupt,code", [("SIGTERM:write", 143), ("SIGINT:write", 130)])
def test_interrupt_leaves_no_output_and_rerun_completes(trained, tmp_path, interrupt, code):
    out_dir, copy = tmp_path / "infer", tmp_path / "elsewhere" / "submission.csv"
    proc = infer(trained, out_dir, interrupt, f"output={copy}")
    name = interrupt.split(":")[0]
    assert proc.returncode == code, proc.stderr[-4000:]
    line = _line(name)
    assert proc.stderr.count(line) == 1 and "Traceback" not in proc.stderr, proc.stderr[-4000:]
    assert _leftovers(out_dir) == [] and not copy.exists()
    assert not copy.parent.exists() or _leftovers(copy.parent) == []
    assert line in (out_dir / "infer.log").read_text()

    again = infer(trained, out_dir, None, f"output={copy}")  # the same command, uninterrupted
    assert again.returncode == 0, again.stderr[-4000:]
    assert _leftovers(out_dir) == sorted(OUT_FILES) and copy.is_file()


def test_interrupted_rerun_keeps_the_previous_outputs_whole(trained, uninterrupted, tmp_path):
    out_dir = shutil.copytree(uninterrupted, tmp_path / "infer")
    before = {f: (out_dir / f).read_bytes() for f in OUT_FILES}
    proc = infer(trained, out_dir, "SIGTERM:write", "tta=flip")  # would change every output
    assert proc.returncode == 143
    assert {f: (out_dir / f).read_bytes() for f in OUT_FILES} == before
    assert _leftovers(out_dir) == sorted(OUT_FILES)
