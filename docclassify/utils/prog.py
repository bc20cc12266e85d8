"""The name a command was started by, for its ``--help`` and usage lines: the console script
(``docclassify-audit``) when it was started as one, else ``python -m docclassify.audit``."""

from __future__ import annotations

import sys
from pathlib import Path

# module -> console script (pyproject.toml [project.scripts])
SCRIPTS = {
    "docclassify.train": "docclassify-train",
    "docclassify.infer": "docclassify-infer",
    "docclassify.aggregate": "docclassify-aggregate",
    "docclassify.tracking.reports": "docclassify-report",
    "docclassify.data.synthetic": "docclassify-synthetic",
    "docclassify.shift": "docclassify-shift",
    "docclassify.audit": "docclassify-audit",
    "docclassify.models.convert_checkpoint": "docclassify-convert-checkpoint",
    "docclassify.models.convert_dit": "docclassify-convert-dit",
    "docclassify.export": "docclassify-export",
    "docclassify.distill": "docclassify-distill",
    "docclassify.deploy.cli": "docclassify-predict",
    "docclassify.deploy.serve": "docclassify-serve",
}


def prog(module: str, argv0: str | None = None) -> str:
    """``docclassify-<name>`` when ``argv0`` (default ``sys.argv[0]``) is that console script."""
    script = SCRIPTS.get(module)
    name = Path(argv0 if argv0 is not None else (sys.argv[0] if sys.argv else "")).name
    return script if script is not None and name == script else f"python -m {module}"
