"""The built wheel works outside a checkout: configs, the sweeper plugin, console scripts, completion.

The wheel is built from a copy of the package sources into a temp dir and installed with
``pip install --no-deps --target SITE``; every command then runs with ``PYTHONPATH=SITE`` from a
folder outside the checkout, so the checkout's ``conf/`` and ``hydra_plugins/`` cannot be what
makes it work (the dependencies come from the test's own environment: no multi-GB venv).
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import REPO

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SCRIPTS = PYPROJECT["project"]["scripts"]


def _requirement(name: str) -> str:
    (req,) = [d for d in PYPROJECT["project"]["dependencies"] if d.split(">")[0].split("<")[0].strip() == name]
    return req


def _importable(target: str, root: Path = REPO) -> bool:
    """A console script's module is a file of the package under ``root`` (docclassify.shift /
    .audit arrive with other branches). Looked up on disk: the test environment may also hold
    another checkout's editable install."""
    path = root.joinpath(*target.split(":")[0].split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


# ---------------------------------------------------------------------------------------------
# Quick: metadata only
# ---------------------------------------------------------------------------------------------

def test_console_scripts_point_at_callables():
    assert {"docclassify-train", "docclassify-infer", "docclassify-aggregate", "docclassify-shift",
            "docclassify-audit"} <= set(SCRIPTS)
    for name, target in SCRIPTS.items():
        if not _importable(target):
            continue  # its module is not merged yet
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), name


def test_dependency_floors_match_what_the_code_calls():
    import cv2
    import scipy
    import wandb
    from packaging.requirements import Requirement
    from packaging.version import Version

    # wandb.init(reinit="create_new") needs 0.19.10; cv2 and scipy are imported directly.
    assert Version("0.19.10") in Requirement(_requirement("wandb")).specifier
    assert Version("0.19.9") not in Requirement(_requirement("wandb")).specifier
    for name, module in (("wandb", wandb), ("scipy", scipy)):
        assert Version(module.__version__) in Requirement(_requirement(name)).specifier, name
    # One OpenCV: the headless build albumentations depends on, never opencv-python beside it.
    assert cv2.__file__ and Requirement(_requirement("opencv-python-headless"))
    assert not [d for d in PYPROJECT["project"]["dependencies"] if d.startswith("opencv-python ")
                or d.startswith("opencv-python>") or d == "opencv-python"]


def _lock(path: Path) -> dict[str, str]:
    """name (normalised) -> the version a lock file pins."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in path.read_text().splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[canonicalize_name(req.name)] = spec.version
    return pins


def test_the_lock_pins_every_dependency_within_pyprojects_ranges():
    """requirements/lock.txt stays in step with pyproject.toml: a dependency added or a range moved
    without `bash requirements/refresh-lock.sh` fails here, not in a user's install."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    lock = REPO / "requirements" / "lock.txt"
    header = lock.read_text().split("\n", 6)[:6]
    assert any("x86_64" in h and "3.11" in h for h in header) and any("refresh-lock.sh" in h for h in header)
    pins = _lock(lock)
    wanted = [*PYPROJECT["project"]["dependencies"], *PYPROJECT["project"]["optional-dependencies"]["dev"]]
    for text in wanted:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in {lock.name}: run bash requirements/refresh-lock.sh"
        assert Version(pins[name]) in req.specifier, f"{lock.name} pins {req.name}=={pins[name]}, pyproject: {text}"


# ---------------------------------------------------------------------------------------------
# Slow: build, install, run
# ---------------------------------------------------------------------------------------------

def _setuptools_major() -> int:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return int(version("setuptools").split(".")[0])
    except (PackageNotFoundError, ValueError):
        return 0


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """Wheel built from a copy of the sources, installed with --target; a cwd outside the checkout."""
    base = tmp_path_factory.mktemp("packaging")
    src = base / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in ("docclassify", "hydra_plugins"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    # Offline and fast with this environment's setuptools when it is new enough for pyproject's
    # build-system (an SPDX license string needs 77); else pip's isolated build fetches one.
    isolation = ["--no-build-isolation"] if _setuptools_major() >= 77 else []
    subprocess.run([*pip, "wheel", "--no-deps", *isolation, "-w", str(base / "dist"), str(src)],
                   check=True, capture_output=True, text=True)
    (wheel,) = (base / "dist").glob("docclassify-*.whl")
    site = base / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True,
                   capture_output=True, text=True)
    elsewhere = base / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "PATH": f"{site / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "HYDRA_FULL_ERROR": "1"}
    return {"wheel": wheel, "site": site, "cwd": elsewhere, "env": env}


IMPORT_ALL = """
import importlib, pkgutil, sys, docclassify
root = docclassify.__path__[0]
for m in pkgutil.walk_packages(docclassify.__path__, "docclassify."):
    if not m.name.endswith("__main__"):
        importlib.import_module(m.name)
print(*[n for n, mod in sys.modules.items() if n.startswith("docclassify") and
        not (getattr(mod, "__file__", None) or "").startswith(root)])
"""


def _run(installed: dict, *args: str, env: dict | None = None) -> str:
    proc = subprocess.run(list(args), cwd=installed["cwd"], env={**installed["env"], **(env or {})},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.slow
def test_wheel_carries_the_config_tree_and_the_sweeper(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    conf = REPO / "docclassify" / "conf"
    yamls = {f"docclassify/conf/{p.relative_to(conf)}" for p in conf.rglob("*.yaml")}
    assert len(yamls) > 40 and yamls <= names
    profiles = {f"docclassify/distortion/profiles/{p.name}" for p in (REPO / "docclassify" / "distortion" /
                                                                       "profiles").glob("*.yaml")}
    assert len(profiles) >= 2 and profiles <= names  # validation.distort=<name> works when installed
    assert {f"hydra_plugins/docclassify_sweeper/{n}" for n in ("__init__.py", "sweeper.py", "_impl.py",
                                                               "config.py")} <= names
    assert not any(n.startswith("hydra_plugins/__init__") for n in names)  # a namespace package
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(installed["wheel"]).read(entry_points).decode()
    assert all(f"{name} = {target}" in text for name, target in SCRIPTS.items())


@pytest.mark.slow
def test_installed_wheel_runs_outside_the_checkout(installed):
    site, python = installed["site"], sys.executable
    where = _run(installed, python, "-c", "import docclassify, hydra_plugins.docclassify_sweeper as s; "
                                          "print(docclassify.__file__); print(s.__file__)").split()
    assert all(Path(p).is_relative_to(site) for p in where), where
    # Every module of the installed package imports, and from the installed files only.
    outside = _run(installed, python, "-c", IMPORT_ALL).split()
    assert outside == [], outside

    help_text = _run(installed, python, "-m", "docclassify.train", "--help")
    assert "model: " in help_text and "resnet18" in help_text and "convnext_base_384" in help_text
    job = yaml.safe_load(_run(installed, python, "-m", "docclassify.train", "--cfg", "job"))
    assert job["model"]["name"] == "resnet18" and job["pipeline"] == "quick"

    # The console scripts, with the sweeper plugin found in the installed package.
    job = yaml.safe_load(_run(installed, str(site / "bin" / "docclassify-train"), "--cfg", "job", "model=tiny"))
    assert job["model"]["name"] == "tiny"
    hydra_cfg = yaml.safe_load(_run(installed, str(site / "bin" / "docclassify-train"), "--cfg", "hydra",
                                    "hparams_search=optuna"))
    assert hydra_cfg["hydra"]["sweeper"]["_target_"].startswith("hydra_plugins.docclassify_sweeper")
    helps = {}
    for name, target in SCRIPTS.items():  # every command answers --help (Hydra's or argparse's)
        if _importable(target, site):
            helps[name] = text = _run(installed, str(site / "bin" / name), "--help")
            assert "usage" in text.lower() or "powered by Hydra" in text, name
    assert "runs" in helps["docclassify-infer"]
    assert not (installed["cwd"] / "outputs").exists()  # --help / --cfg create no run dir


def _options(group: str, prefix: str) -> list[str]:
    """``group=option`` for every option file of the package's config tree starting with prefix."""
    files = (REPO / "docclassify" / "conf" / group).glob(f"{prefix}*.yaml")
    return sorted(f"{group}={p.stem}" for p in files)


@pytest.mark.slow
def test_shell_completion_of_the_console_script_lists_model_options(installed):
    script = _run(installed, "docclassify-train", "-sc", "install=bash")
    assert "hydra_bash_completion" in script and script.rstrip().endswith("docclassify-train")
    # Hydra's own query form: the command line so far in COMP_LINE.
    words = _run(installed, "docclassify-train", "-sc", "query=bash",
                 env={"COMP_LINE": "docclassify-train model=re"}).split()
    assert sorted(words) == _options("model", "re") and "model=resnet18" in words
    # What bash does on <TAB> after installing the completion (the documented eval line).
    line = "docclassify-train data=competition model=con"
    out = _run(installed, "bash", "-c", 'eval "$(docclassify-train -sc install=bash)"\n'
               f'COMP_LINE="{line}"; COMP_POINT=${{#COMP_LINE}}; COMP_CWORD=2\n'
               'hydra_bash_completion; printf "%s\\n" "${COMPREPLY[@]}"')
    assert sorted(out.split()) == _options("model", "con") and "model=convnext_atto" in out.split()
    keys = _run(installed, "docclassify-train", "-sc", "query=bash",
                env={"COMP_LINE": "docclassify-train trainer.ep"}).split()
    assert "trainer.epochs=" in keys
