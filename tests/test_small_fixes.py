"""Issue 27's smaller items: --cfg job --resolve, a run refused by the pre-flight image check leaves
no run dir, console scripts name themselves in --help, docclassify-shift describes itself, the step
bar's img/s and infer's progress lines."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, run_cli, run_in


@pytest.mark.parametrize("module", ["docclassify.train", "docclassify.infer"])
def test_cfg_job_resolve_prints_the_resolved_config(module, tmp_path):
    proc = run_in(tmp_path, module, ["--cfg", "job", "--resolve"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "output_dir: null" in proc.stdout and "${" not in proc.stdout


def test_a_run_refused_by_the_image_check_leaves_no_run_dir(data, tmp_path):
    (data / "train" / sorted(p.name for p in (data / "train").iterdir())[4]).write_bytes(b"")
    run_dir = tmp_path / "run"
    proc = run_cli("docclassify.train", ["data=competition", f"data.root={data}", *TINY, "shift.report=true",
                                         f"hydra.run.dir={run_dir}"], check=False)
    assert proc.returncode == 2 and "cannot be decoded" in proc.stderr
    assert not run_dir.exists()  # its shift.json / shift.png (written before the check) went with it


def test_console_scripts_name_themselves():
    from docclassify.utils.prog import SCRIPTS, prog

    assert prog("docclassify.audit", "/venv/bin/docclassify-audit") == "docclassify-audit"
    assert prog("docclassify.audit", "/repo/docclassify/audit/__main__.py") == "python -m docclassify.audit"
    import tomllib

    scripts = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(SCRIPTS.values()) == set(scripts)  # one entry per console script
    exe = shutil.which("docclassify-aggregate") or str(Path(sys.executable).parent / "docclassify-aggregate")
    if not Path(exe).is_file():
        pytest.skip("console scripts not installed in this environment")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120).stdout
    assert out.startswith("usage: docclassify-aggregate")


def test_shift_help_describes_the_command(tmp_path):
    out = run_in(tmp_path, "docclassify.shift", ["--help"]).stdout
    assert out.startswith("python -m docclassify.shift: how the test images differ from the training images")


def test_step_bar_rate_counts_the_steps_after_the_first(monkeypatch):
    from docclassify.tracking import progress

    clock = iter([100.0, 101.0, 102.0])  # the end of steps 1, 2, 3
    monkeypatch.setattr(progress, "_clock", lambda: next(clock))
    bar = progress.Progress(epochs=1, batch_size=16, interactive=True)
    bar.on_fold_start(0, {"steps_per_epoch": 10})
    try:
        for step in (1, 2, 3):
            bar.on_step_end(0, step, {"train/loss": 1.0, "train/lr": 1e-3})
            if step == 1:
                assert "img/s" not in (bar._step_bar.postfix or "")  # no rate from one step
        assert "img/s=16" in bar._step_bar.postfix  # 2 steps x 16 images in 2 s
    finally:
        bar.close()


def test_long_predictions_log_their_progress(monkeypatch, caplog):
    import torch

    from docclassify.tracking import progress

    clock = iter([0.0, 4.0, 11.0, 15.0, 23.0])  # the start, then after each batch
    monkeypatch.setattr(progress, "_clock", lambda: next(clock))
    with caplog.at_level(logging.INFO, logger="docclassify.progress"):
        batches = list(progress.logged_batches((torch.zeros(8, 3) for _ in range(4)), 32, "fold 0"))
    assert len(batches) == 4
    assert [r.getMessage() for r in caplog.records] == ["fold 0: 16/32 images (1 img/s, 11 s left)"]
