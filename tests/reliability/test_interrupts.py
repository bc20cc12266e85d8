"""SIGTERM outside the training loop (while the data is read and decoded): the run stops at once
with one line and exit code 143, writes no fold state, and the same command again trains."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, TINY

pytestmark = pytest.mark.slow  # the rerun trains


def _train(data: Path, run_dir: Path, fault: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "distributed"), str(REPO),
                                                        os.environ.get("PYTHONPATH", "")])}
    env.pop("DOCCLASSIFY_TEST_FAULT", None)
    if fault:
        env["DOCCLASSIFY_TEST_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "faulty_train", "data=competition", f"data.root={data}", *TINY,
                           "folds.n=2", "folds.run=[0]", f"hydra.run.dir={run_dir}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600, check=False)


def test_sigterm_while_loading_stops_at_once_with_one_line(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    proc = _train(tiny_data, run_dir, "setup_sigterm:0:0")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 143, out[-4000:]
    assert out.count("interrupted by SIGTERM outside the training loop; every finished fold is kept") == 1
    assert "Traceback" not in out and "injected failure" not in out  # the signal, not the later error
    assert not list(run_dir.rglob("fold0*")) and not list(run_dir.rglob("*.tmp"))
    assert _train(tiny_data, run_dir, None).returncode == 0
    assert (run_dir / "results.json").is_file()
