"""Keep credentials out of what is saved or logged: ``scheme://user:PASSWORD@host`` -> ``user:***@host``.

A sweep's Optuna storage (``postgresql://user:password@db/optuna``) would otherwise be copied into
every trial's configs (``.hydra/``, run_config.yaml, run_overrides.yaml) and into W&B. Saved
configs and W&B get the redacted URL; a trial recovers the real one from its own sweeper config
in memory (``docclassify.sweep.trial``), so it still reports to its study.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MASK = "***"
# scheme://user:password@ (the password: anything up to the @ that ends the user info)
_CREDENTIALS = re.compile(r"(?P<head>\b[A-Za-z][\w+.-]*://[^:/@\s'\"]*:)(?P<password>[^@/\s'\"]*)@")


def redact(text: Any) -> str:
    """``text`` with the password of every ``scheme://user:password@`` replaced by ``***``."""
    return _CREDENTIALS.sub(lambda m: m.group("head") + MASK + "@", str(text))


def has_password(text: Any) -> bool:
    """True when ``text`` holds a URL with a password that is not already masked."""
    return any(m.group("password") != MASK for m in _CREDENTIALS.finditer(str(text)))


def is_redacted(text: Any) -> bool:
    """True when ``text`` holds a URL whose password was masked by :func:`redact`."""
    return any(m.group("password") == MASK for m in _CREDENTIALS.finditer(str(text)))


def redact_config(obj: Any) -> Any:
    """A plain config (dicts, lists, scalars) with every string redacted."""
    if isinstance(obj, dict):
        return {k: redact_config(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_config(v) for v in obj)
    return redact(obj) if isinstance(obj, str) and has_password(obj) else obj


def redact_file(path: Path) -> bool:
    """Rewrite a text file redacted (atomically) when it holds a password. True if it did."""
    from docclassify.utils.io import atomic_write_text

    text = path.read_text(encoding="utf-8")
    if not has_password(text):
        return False
    atomic_write_text(path, redact(text))
    return True


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover (hydra < 1.1)
    _HydraCallback = object


class RedactHydraFiles(_HydraCallback):
    """Hydra callback (conf/hydra/default.yaml): after Hydra saved a job's ``.hydra/*.yaml`` (before the
    job runs), mask passwords in them, e.g. a ``hydra.sweeper.storage`` typed on the command line."""

    def on_job_start(self, config, **kwargs) -> None:
        subdir = config.hydra.get("output_subdir")
        if subdir is None:
            return
        folder = Path(str(config.hydra.runtime.output_dir)) / str(subdir)
        for path in sorted(folder.glob("*.yaml")):
            if redact_file(path):
                log.info("masked a password in %s", path)
