"""Every key of the technique config groups is read by the code (no dead keys).

The leaf keys of every YAML file in conf/{augment,regularization,schedule,pipeline,experiment,validation}
are collected (pipeline/ and experiment/ files are `@package _global_`: their keys are full
paths such as `trainer.grad_clip`, plus the preset's own name `pipeline` / `experiment`).
A tiny highperf training run then goes through the real engine with every DictConfig read
recorded (OmegaConf's `_get_impl`, behind attribute access, item access and `.get`), and each
collected key must have been read. A key added to one of these files that nothing reads fails
here; so does a key whose reader was removed.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import TINY, compose_train
from omegaconf import DictConfig, OmegaConf

from docclassify.config import CONF_DIR

GROUPS = ("augment", "regularization", "schedule", "pipeline", "experiment", "validation")

# The runs whose reads together must cover every key. highperf switches on every technique
# whose keys are read only when it is on (mixup, EMA, clipping, hard augmentation).
RUNS = [["pipeline=highperf", "trainer.epochs=2", "trainer.batch_size=16", "folds.n=2", "folds.run=[0]"]]


def _leaves(node, prefix: str) -> set[str]:
    if isinstance(node, dict):
        out: set[str] = set()
        for k, v in node.items():
            out |= _leaves(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    return {prefix}


def _is_global(path: Path) -> bool:
    return any(line.strip().replace(" ", "") == "#@package_global_" for line in path.read_text().splitlines()[:5])


def yaml_keys() -> dict[str, set[str]]:
    """file (group/option.yaml) -> the full config paths of its leaf keys."""
    out = {}
    for group in GROUPS:
        for path in sorted((CONF_DIR / group).glob("*.yaml")):
            raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
            raw.pop("defaults", None)
            out[f"{group}/{path.name}"] = _leaves(raw, "" if _is_global(path) else group)
    return out


@contextmanager
def recorded_reads():
    """Record the full path of every DictConfig value read while the block runs."""
    seen: set[str] = set()
    real = DictConfig._get_impl

    def spy(self, key, default_value, validate_key=True):
        seen.add(self._get_full_key(key))
        return real(self, key, default_value, validate_key)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DictConfig, "_get_impl", spy)
        yield seen


def test_yaml_files_have_the_expected_keys():
    keys = yaml_keys()
    assert "augment.mixup_alpha" in keys["augment/basic.yaml"]
    assert "regularization.ema_decay" in keys["regularization/strong.yaml"]
    assert keys["pipeline/highperf.yaml"] == {"pipeline"}  # a preset selects options, it sets no values
    assert {"augment.advanced_p_end", "augment.mixup_alpha"} <= keys["augment/highperf.yaml"]
    assert "experiment" in keys["experiment/convnext_base_384_best.yaml"]
    assert {"validation.copies", "validation.distort.jpeg_quality"} <= keys["validation/both.yaml"]
    assert not any("defaults" in k for ks in keys.values() for k in ks)


@pytest.mark.slow
def test_every_technique_key_is_read_by_a_training_run(tiny_data, tmp_path):
    from docclassify.engine.kfold import run_kfold

    seen: set[str] = set()
    for i, overrides in enumerate(RUNS):
        cfg = compose_train(["data=competition", f"data.root={tiny_data}", *TINY, *overrides], tmp_path / f"r{i}")
        with recorded_reads() as reads:
            results = run_kfold(cfg)
        assert results["pipeline"] == "highperf" and results["folds"][0]["epochs_run"] == 2
        assert "augment.name" in reads and "hydra.run.dir" not in reads  # the recorder sees reads, not all keys
        seen |= reads
    unread = {f"{file}: {key}" for file, keys in yaml_keys().items() for key in keys if key not in seen}
    assert not unread, ("config keys that no code reads (wire them or remove them): "
                        + ", ".join(sorted(unread)))
