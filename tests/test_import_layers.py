"""The import-layer contract (.importlinter, docs/architecture.md#layers): it holds for the package,
and it breaks on a deliberate upward import and on a new import circle."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter")

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / ".importlinter"
# lint-imports as CI calls it (.ci/run), in this interpreter: the package found on PYTHONPATH first.
LINT = ("import sys; from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(config_filename=sys.argv[1], no_cache=True))")


def _lint(config: Path, cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run([sys.executable, "-c", LINT, str(config)], check=False, cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_package_keeps_its_import_contracts(tmp_path):
    out = _lint(CONFIG, tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout and "BROKEN" not in out.stdout


def test_an_upward_import_and_a_new_circle_break_the_contracts(tmp_path):
    """A copy of the package with two planted imports, linted with the repo's own .importlinter."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "docclassify", src / "docclassify",
                    ignore=shutil.ignore_patterns("__pycache__", "conf", "*.yaml"))
    # utils (the bottom layer) importing an entrypoint: a layer climbed.
    io = src / "docclassify" / "utils" / "io.py"
    io.write_text(io.read_text() + "\nimport docclassify.train  # noqa: E402\n")
    # engine.setup importing engine.epoch, which imports engine.setup: a circle between siblings.
    setup = src / "docclassify" / "engine" / "setup.py"
    setup.write_text(setup.read_text() + "\nfrom docclassify.engine import epoch  # noqa: E402\n")
    out = _lint(CONFIG, tmp_path, pythonpath=src)
    assert out.returncode != 0, out.stdout
    assert "2 broken" in out.stdout, out.stdout
    assert "docclassify.utils is not allowed to import docclassify.train" in out.stdout, out.stdout
    assert ".setup -> .epoch" in out.stdout or ".epoch -> .setup" in out.stdout, out.stdout


def test_the_layer_order_is_what_is_checked(tmp_path):
    """The same package, a config with two layers swapped (engine above predict): predict's real imports of
    engine now climb, and lint-imports says so."""
    text = CONFIG.read_text()
    swapped = text.replace("\n    predict\n", "\n    ENGINE\n").replace("\n    engine\n", "\n    predict\n")
    swapped = swapped.replace("\n    ENGINE\n", "\n    engine\n")
    assert swapped != text
    config = tmp_path / "swapped.ini"
    config.write_text(swapped)
    out = _lint(config, tmp_path)
    assert out.returncode != 0, out.stdout
    assert "docclassify.predict is not allowed to import docclassify.engine" in out.stdout, out.stdout
