"""reuse_logits (predict/logit_store.py, issue 30 item 3): a second infer of the same run and views reads
every fold prediction from the store, loads no model and writes the same bytes as the first and as
reuse_logits=false; other views or other checkpoint bytes are predicted again."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import TINY, run_cli
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from docclassify.models import checkpoint
from docclassify.predict.pipeline import run_inference

pytestmark = pytest.mark.slow  # a tiny run is trained once for the module

OUT_FILES = ("submission.csv", "test_probs.csv")


@pytest.fixture(scope="module")
def run(tiny_data, tmp_path_factory, cache_dir):
    run_dir = tmp_path_factory.mktemp("store_run") / "run"
    run_cli("docclassify.train", ["data=competition", f"data.root={tiny_data}", f"paths.cache_dir={cache_dir}",
                                  *TINY, "folds.n=2", "seed=2", f"hydra.run.dir={run_dir}"])
    return run_dir


def infer(run_dir, out_dir, cache, *overrides):
    from hydra import compose, initialize_config_dir

    from docclassify.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("infer", overrides=[f"runs=[{run_dir}]", "batch_size=16", f"paths.cache_dir={cache}",
                                          *overrides])
    summary = run_inference(cfg, out_dir)
    return summary, {f: (out_dir / f).read_bytes() for f in OUT_FILES}


def _no_model(*args, **kwargs):
    raise AssertionError("a model was loaded: a stored prediction was predicted again")


@pytest.mark.parametrize("tta", ["orient", "auto"])
def test_second_infer_reads_every_fold_prediction_and_writes_the_same_bytes(run, tmp_path, monkeypatch, tta):
    cache = tmp_path / "cache"
    first, first_files = infer(run, tmp_path / "first", cache, f"tta={tta}")
    computed = first["logits_reused"]["computed"]
    # orient: per fold its test rows and its robust OOF rows (estimate=true); auto: every candidate view too
    assert first["logits_reused"] == {"read": 0, "computed": computed} and computed >= 4
    with monkeypatch.context() as m:
        m.setattr(checkpoint, "load_checkpoint", _no_model)
        second, second_files = infer(run, tmp_path / "second", cache, f"tta={tta}")
    assert second["logits_reused"] == {"read": computed, "computed": 0}
    off, off_files = infer(run, tmp_path / "off", cache, f"tta={tta}", "reuse_logits=false")
    assert off["logits_reused"] == {"read": 0, "computed": computed, "off": "reuse_logits=false"}
    assert first_files == second_files == off_files
    for key in ("orientation", "tta", "oof", "prediction_counts"):  # orient: the estimates put back as made
        assert first[key] == second[key] == off[key], key
    if tta == "orient":
        assert second["orientation"]["estimator"] == "classifier" and second["orientation"]["turned_back"]


def _perturb(ckpt_path):
    with safe_open(str(ckpt_path), framework="pt") as fh:
        header = fh.metadata()
    weights = load_file(ckpt_path)
    name = next(k for k, v in weights.items() if v.is_floating_point() and v.ndim > 1)
    weights[name] = weights[name] + 0.05 * torch.randn_like(weights[name])
    save_file(weights, ckpt_path, metadata=header)


def test_other_views_or_other_weights_are_predicted_again(run, tmp_path):
    cache = tmp_path / "cache"
    first, _ = infer(run, tmp_path / "first", cache, "tta=dihedral")
    n = first["logits_reused"]["computed"]
    assert n == 4  # 2 folds x (test rows, robust OOF rows)
    flip, _ = infer(run, tmp_path / "flip", cache, "tta=flip")
    assert flip["logits_reused"] == {"read": 0, "computed": n}  # another view set: another key
    # a copy of the run: fold 0's checkpoint the same bytes elsewhere (read), fold 1's weights changed
    copy = shutil.copytree(run, tmp_path / "copy")
    _perturb(copy / "checkpoints" / "fold1_best.safetensors")
    changed, changed_files = infer(copy, tmp_path / "changed", cache, "tta=dihedral")
    assert changed["logits_reused"] == {"read": n // 2, "computed": n // 2}
    _, fresh_files = infer(copy, tmp_path / "fresh", cache, "tta=dihedral", "reuse_logits=false")
    assert changed_files == fresh_files
    # a second-stage option changes the models: the store is not used
    adapted, _ = infer(run, tmp_path / "adapt", cache, "tta=dihedral", "second_pass.enabled=true")
    assert adapted["logits_reused"]["read"] == 0 and adapted["logits_reused"]["off"]
    assert json.loads((tmp_path / "first" / "summary.json").read_text())["logits_reused"] == first["logits_reused"]
