"""Print the resolved versions of the core packages, so that a red CI says which set it ran, and
every installed package whose version differs from requirements/lock.txt (the last tested set).

Usage: `python .ci/versions.py` (in the venv to describe)."""

from __future__ import annotations

import platform
import re
import sys
from importlib import metadata
from pathlib import Path

CORE = ["torch", "torchvision", "timm", "hydra-core", "omegaconf", "hydra-optuna-sweeper", "optuna", "sqlalchemy",
        "alembic", "albumentations", "albucore", "opencv-python-headless", "numpy", "scipy", "pillow", "pandas",
        "scikit-learn", "wandb", "safetensors", "cleanlab", "imagehash", "huggingface-hub", "pytest",
        "pytest-xdist", "pip"]
LOCK = Path(__file__).resolve().parents[1] / "requirements" / "lock.txt"


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked() -> dict[str, str]:
    """name -> version pinned in the lock ({} without one)."""
    if not LOCK.is_file():
        return {}
    pins = (re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line) for line in LOCK.read_text().splitlines())
    return {normalise(m[1]): m[2] for m in pins if m}


def main() -> None:
    pins = locked()
    installed: dict[str, str] = {}
    for dist in metadata.distributions():  # the first on sys.path wins, as for imports
        if dist.metadata["Name"]:
            installed.setdefault(normalise(dist.metadata["Name"]), dist.version)
    print(f"python {platform.python_version()} ({sys.implementation.name}, {platform.machine()}, "
          f"{platform.platform(terse=True)})")
    for name in CORE:
        version = installed.get(normalise(name), "not installed")
        pin = pins.get(normalise(name))
        print(f"{name} {version}" + (f" (lock: {pin})" if pin and pin != version else ""))
    if pins:
        moved = sorted(f"{n} {v} (lock: {pins[n]})" for n, v in installed.items() if n in pins and pins[n] != v)
        print(f"{len(moved)} installed package(s) differ from {LOCK.parent.name}/{LOCK.name}"
              + (": " + ", ".join(moved) if moved else ""))


if __name__ == "__main__":
    main()
