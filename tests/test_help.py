"""``--help`` of each entrypoint lists its own config groups (not the internal schema groups, not
the other entrypoint's) and its own config (conf/hydra/default.yaml: hydra.help)."""

from __future__ import annotations

import re

from conftest import run_in
from omegaconf import OmegaConf

from docclassify.config import help_groups, primary_groups


def _groups(help_text: str) -> dict[str, str]:
    """{group: its line} of the help's group section."""
    section = help_text.split("== Config groups", 1)[1].split("== Config:", 1)[0]
    return {m.group(1): m.group(0) for m in re.finditer(r"^([\w/]+): .*$", section, flags=re.M)}


def test_train_help_lists_train_groups_without_schemas(tmp_path):
    out = run_in(tmp_path, "docclassify.train", ["--help"]).stdout
    groups = _groups(out)
    assert set(groups) == set(primary_groups("train"))
    assert {"model", "augment", "trainer", "data", "hparams_search"} <= set(groups)
    assert "schema" not in out and "tta" not in groups
    assert "[resnet18]" in groups["model"] and "tiny_convnext" in groups["model"]  # the selected option marked
    assert "(none selected)" in groups["experiment"]
    assert out.startswith("python -m docclassify.train: train one experiment")
    assert "\ntrainer:\n" in out and "HYDRA_FULL_ERROR=1" in out  # the config, the footer
    assert not (tmp_path / "outputs").exists()


def test_infer_help_lists_only_infer_groups_and_keys(tmp_path):
    out = run_in(tmp_path, "docclassify.infer", ["--help"]).stdout
    assert set(_groups(out)) == {"adapt", "logger", "paths", "tta"}
    assert "[orient]" in _groups(out)["tta"] and "dihedral" in _groups(out)["tta"]
    config = OmegaConf.create(out.split("== Config: override any key with KEY=VALUE ==", 1)[1].split("\n\n")[0])
    assert {"runs", "top_k", "calibrate", "tta", "data"} <= set(config)
    assert not {"model", "augment", "trainer", "regularization", "folds"} & set(config)
    assert "schema" not in out


def test_help_follows_the_command_line(tmp_path):
    out = run_in(tmp_path, "docclassify.train", ["--help", "model=tiny", "pipeline=highperf"]).stdout
    assert "[tiny]" in _groups(out)["model"] and "[highperf]" in _groups(out)["pipeline"]


def test_help_groups_marks_the_selection_and_skips_hydra_and_schemas():
    text = help_groups(OmegaConf.create({"tta": "dihedral", "hydra": "default", "hydra/help": "default",
                                         "schema/trainer": "default", "experiment": None}))
    assert text.splitlines() == ["experiment: convnext_base_384_best, robust_recipe_synthetic  (none selected)",
                                 "tta: auto, comprehensive, [dihedral], essential, flip, none, orient, orient_soft, "
                                 "rot90"]
