"""SIGTERM or Ctrl-C during `python -m docclassify.infer`: no partial submission.csv / test_probs.csv
(the outputs appear together or not at all, temp files removed), one line on stderr, exit 143 / 130;
the same command again completes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, TINY, run_cli

pytestmark = pytest.mark.slow  # a tiny run is trained once for the module

HERE = Path(__file__).resolve().parent
OUT_FILES = ("submission.csv", "test_probs.csv", "summary.json")


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory, cache_dir):
    run_dir = tmp_path_factory.mktemp("interrupt") / "run"
    run_cli("docclassify.train", ["data=competition", f"data.root={tiny_data}", f"paths.cache_dir={cache_dir}", *TINY,
                                  "folds.n=2", f"hydra.run.dir={run_dir}"])
    return run_dir


def infer(run_dir: Path, out_dir: Path, interrupt: str | None, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("DOCCLASSIFY_TEST_INTERRUPT", None)
    if interrupt:
        env["DOCCLASSIFY_TEST_INTERRUPT"] = interrupt
    return subprocess.run([sys.executable, "-m", "faulty_infer", f"runs=[{run_dir}]", "batch_size=16", *extra,
                           f"hydra.run.dir={out_dir}"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600, check=False)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name in OUT_FILES)


@pytest.mark.parametrize("interrupt,code", [("SIGTERM:write", 143), ("SIGINT:write", 130), ("SIGTERM:predict", 143)])
def test_interrupt_leaves_no_output_and_rerun_completes(trained, tmp_path, interrupt, code):
    out_dir, copy = tmp_path / "infer", tmp_path / "elsewhere" / "submission.csv"
    proc = infer(trained, out_dir, interrupt, f"output={copy}")
    name = interrupt.split(":")[0]
    assert proc.returncode == code, proc.stderr[-4000:]
    line = f"docclassify.infer: interrupted by {name}: no submission.csv, test_probs.csv or summary.json was written"
    assert proc.stderr.count(line) == 1 and "Traceback" not in proc.stderr, proc.stderr[-4000:]
    assert _leftovers(out_dir) == [] and not copy.exists()
    assert not copy.parent.exists() or _leftovers(copy.parent) == []
    assert line in (out_dir / "infer.log").read_text()

    again = infer(trained, out_dir, None, f"output={copy}")  # the same command, uninterrupted
    assert again.returncode == 0, again.stderr[-4000:]
    assert _leftovers(out_dir) == sorted(OUT_FILES) and copy.is_file()


def test_interrupted_rerun_keeps_the_previous_outputs_whole(trained, tmp_path):
    out_dir = tmp_path / "infer"
    assert infer(trained, out_dir, None).returncode == 0
    before = {f: (out_dir / f).read_bytes() for f in OUT_FILES}
    proc = infer(trained, out_dir, "SIGTERM:write", "tta=flip")  # would change every output
    assert proc.returncode == 143
    assert {f: (out_dir / f).read_bytes() for f in OUT_FILES} == before
    assert _leftovers(out_dir) == sorted(OUT_FILES)
