"""The serving install's requirements file equals the `serve` extra; the export and distill primary
configs stay in step with infer's and train's; their --help and foreign-group refusals work."""

from __future__ import annotations

import tomllib
from conftest import REPO, run_cli
from omegaconf import OmegaConf

from docclassify.config import CONF_DIR, primary_groups


def _reqs(lines) -> set[str]:
    return {line.split("#")[0].strip().replace(" ", "") for line in lines if line.split("#")[0].strip()}


def test_requirements_serve_txt_is_the_serve_extra():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert _reqs((REPO / "requirements" / "serve.txt").read_text().splitlines()) == _reqs(extras["serve"])
    assert not any(r.startswith(("torch", "timm", "hydra", "albumentations")) for r in extras["serve"])
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"docclassify-export", "docclassify-predict", "docclassify-serve", "docclassify-distill"} <= set(scripts)


def test_export_has_infers_defaults_and_distill_has_trains_groups():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        infer, export = compose("infer"), compose("export")
    for key in infer:
        if key not in ("task_name", "hydra", "paths", "output"):
            assert OmegaConf.to_container(export[key]) == OmegaConf.to_container(infer[key]) \
                if OmegaConf.is_config(infer[key]) else export[key] == infer[key], key
    assert primary_groups("distill") == primary_groups("train")
    assert primary_groups("export") == primary_groups("infer")


def test_help_and_foreign_groups(tmp_path):
    out = run_cli("docclassify.export", ["--help"]).stdout
    assert "bundle" in out and "quantize: none" in out and "tta: " in out
    proc = run_cli("docclassify.distill", ["tta=orient"], check=False)
    assert proc.returncode == 2 and "tta is an option of python -m docclassify.infer" in proc.stderr
