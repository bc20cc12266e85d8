"""docs/configuration.md is what docs/gen_config_reference.py makes from the YAML comments now (a YAML or
comment changed without regenerating it fails here: run `python docs/gen_config_reference.py >
docs/configuration.md`)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_reference_is_current():
    spec = importlib.util.spec_from_file_location("gen_config_reference", ROOT / "docs" / "gen_config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        module.main()
    assert out.getvalue() == (ROOT / "docs" / "configuration.md").read_text(), \
        "docs/configuration.md is stale: python docs/gen_config_reference.py > docs/configuration.md"
