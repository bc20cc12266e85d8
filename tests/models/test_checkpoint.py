"""Safe checkpoints: best weights in safetensors (timm loads them as they are) with the meta in the
header; resume state loadable with weights_only=True; older pickles refused with the command that
converts them, and converted only when asked."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import timm
import torch
from conftest import TINY, run_cli
from safetensors.torch import load_file

from docclassify.models import convert_checkpoint
from docclassify.models.checkpoint import (
    PICKLE_FORMAT,
    CheckpointError,
    load_checkpoint,
    load_resume_state,
    model_meta,
    read_checkpoint,
    save_best,
    save_resume_state,
)
from docclassify.models.factory import ModelConfigError, create_model
from docclassify.predict.run_dirs import RunError, discover_runs

CLASSES = [f"class_{i}" for i in range(17)]


def _trained_vit(size: int = 48) -> torch.nn.Module:
    """timm's test_vit (a fixed-size model) built for ``size`` px after one SGD step."""
    torch.manual_seed(0)
    model = create_model("test_vit", 17, img_size=size)
    loss = model(torch.randn(4, 3, size, size)).logsumexp(1).mean()
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.5).step()
    return model.eval()


def _meta(size: int = 48) -> dict:
    return model_meta("test_vit", "custom_vit", 17, size, "pad", 0, [0.5] * 3, [0.5] * 3, CLASSES)


def test_best_checkpoint_is_safetensors_that_plain_timm_loads(tmp_path):
    model = _trained_vit()
    path = tmp_path / "fold0_best.safetensors"
    save_best(path, model.state_dict(), _meta(), fold=0, epoch=3, macro_f1=0.75, weights="ema")
    # timm alone (no docclassify) rebuilds it: the meta says architecture, size and classes.
    plain = timm.create_model("test_vit", pretrained=True, num_classes=17, img_size=48,
                              pretrained_cfg_overlay=dict(file=str(path), num_classes=17))
    for k, v in model.state_dict().items():
        assert torch.equal(plain.state_dict()[k], v), k
    info = read_checkpoint(path)
    assert info["meta"]["img_size"] == 48 and info["meta"]["fixed_input_size"] is True
    assert info["meta"]["classifier"] == "head" and info["meta"]["classes"] == CLASSES
    assert (info["fold"], info["epoch"], info["macro_f1"], info["weights"]) == (0, 3, 0.75, "ema")


def test_load_checkpoint_rebuilds_a_fixed_size_model_at_its_size(tmp_path):
    model = _trained_vit(48)
    path = tmp_path / "fold0_best.safetensors"
    save_best(path, model.state_dict(), _meta(48), fold=0)
    rebuilt, ckpt = load_checkpoint(path)
    assert rebuilt.patch_embed.img_size == (48, 48) and ckpt["fold"] == 0
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


def test_local_weights_of_another_size_are_resampled(tmp_path):
    """model.weights: a test_vit saved at 64 px loads into one built for 96 px (timm's ViT filter
    resamples the position embeddings; everything but the classifier is kept)."""
    torch.manual_seed(3)
    src = timm.create_model("test_vit", num_classes=5, img_size=64)
    path = tmp_path / "vit64.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    model = create_model("test_vit", 17, weights=str(path), img_size=96)
    expected = timm.layers.resample_abs_pos_embed(src.pos_embed.detach(), new_size=(6, 6), num_prefix_tokens=1)
    torch.testing.assert_close(model.pos_embed.detach(), expected)
    for k, v in src.state_dict().items():
        if k != "pos_embed" and not k.startswith("head."):
            assert torch.equal(model.state_dict()[k], v), k
    assert model.head.weight.shape == (17, src.head.weight.shape[1])
    assert model(torch.zeros(1, 3, 96, 96)).shape == (1, 17)


def test_local_swin_weights_of_another_size_resize_window_tables(tmp_path):
    """A Swin saved at 224 px (windows 7) built for 64 px (the last stages' windows shrink to 4 and 2):
    timm's Swin filter resizes the relative position tables, through the same file overlay."""
    arch = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), num_classes=3)
    src = timm.create_model("swin_tiny_patch4_window7_224", **arch)
    path = tmp_path / "swin224.pth"
    torch.save(src.state_dict(), path)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=True, img_size=64,
                              pretrained_cfg_overlay=dict(file=str(path)), **arch)
    name = "layers.3.blocks.0.attn.relative_position_bias_table"
    assert src.state_dict()[name].shape == (13 * 13, 1) and model.state_dict()[name].shape == (3 * 3, 1)
    assert torch.equal(model.state_dict()["layers.0.blocks.0.attn.relative_position_bias_table"],
                       src.state_dict()["layers.0.blocks.0.attn.relative_position_bias_table"])
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 3)


class _Payload:
    """Unpickling this runs code: the marker file proves whether a loader unpickled the file."""

    marker = None

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _old_pickle_checkpoint(path, model, meta, payload_marker=None, fold=0):
    ckpt = {"format": PICKLE_FORMAT, "meta": meta, "state_dict": model.state_dict(), "fold": fold, "epoch": 1,
            "macro_f1": 0.5, "weights": "live"}
    if payload_marker is not None:
        _Payload.marker = payload_marker
        ckpt["extra"] = _Payload()
    torch.save(ckpt, path)


def test_a_pickle_checkpoint_is_refused_unopened_with_the_convert_command(tmp_path):
    ckpt_dir = tmp_path / "run" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    path, marker = ckpt_dir / "fold0_best.pt", tmp_path / "code_ran"
    _old_pickle_checkpoint(path, _trained_vit(), _meta(), payload_marker=marker)
    for load in (read_checkpoint, load_checkpoint):
        with pytest.raises(CheckpointError, match=rf"{PICKLE_FORMAT}.*python -m docclassify.models"
                                                  rf".convert_checkpoint {tmp_path / 'run'}$"):
            load(path)
    assert not marker.exists()


def test_resume_state_loads_with_weights_only_and_gives_numpy_back(tmp_path):
    np.random.seed(5)
    random.seed(5)
    logits = np.random.randn(7, 17).astype(np.float32)
    rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    fold_state = {"best_logits": logits, "best_f1": np.float64(0.25), "history": [{"val_macro_f1": np.float64(.5)}],
                  "partial": None}
    state = {"model": torch.nn.Linear(3, 2).state_dict(), "rng": rng, "state": fold_state}
    path = tmp_path / "fold0_last.pt"
    save_resume_state(path, state)
    torch.load(path, map_location="cpu", weights_only=True)  # no pickled numpy objects inside
    back = load_resume_state(path)
    assert back["state"]["best_logits"].dtype == np.float32
    np.testing.assert_array_equal(back["state"]["best_logits"], logits)
    assert back["state"]["best_f1"] == 0.25 and type(back["state"]["best_f1"]) is float
    expected = np.random.random(3)
    np.random.set_state(back["rng"]["numpy"])
    random.setstate(back["rng"]["python"])
    np.testing.assert_array_equal(np.random.random(3), expected)  # the numpy RNG state is exact
    assert back["model"]._metadata == state["model"]._metadata  # a state_dict keeps its type and metadata


def test_an_old_pickle_resume_state_is_refused_then_converted(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    path = run / "checkpoints" / "fold0_last.pt"
    torch.save({"state": {"epoch": 2, "best_logits": np.ones((2, 3))}, "rng": {"numpy": np.random.get_state()}}, path)
    with pytest.raises(CheckpointError, match=rf"weights_only=True.*convert_checkpoint {run}$"):
        load_resume_state(path)
    assert convert_checkpoint.main([str(run)]) == 0
    state = load_resume_state(path)
    assert state["state"]["epoch"] == 2 and np.array_equal(state["state"]["best_logits"], np.ones((2, 3)))


def test_pickled_weights_file_is_refused_until_converted(tmp_path, capsys):
    """model.weights= a .pth with Python objects besides tensors (here numpy values, as training
    scripts often store their metrics)."""
    src = timm.create_model("test_vit", num_classes=3, img_size=64)
    path = tmp_path / "weights.pth"
    torch.save({"model": src.state_dict(), "val_curve": np.array([0.5, 0.7])}, path)
    with pytest.raises(ModelConfigError, match=r"weights_only=True.*convert_checkpoint --weights .*weights.pth"):
        create_model("test_vit", 17, weights=str(path), img_size=64)
    assert convert_checkpoint.main(["--weights", str(path)]) == 0
    assert "weights.safetensors" in capsys.readouterr().out
    model = create_model("test_vit", 17, weights=str(tmp_path / "weights.safetensors"), img_size=64)
    assert torch.equal(model.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)


@pytest.mark.slow
def test_an_old_run_is_refused_by_infer_then_converted_and_predicts_the_same(tiny_data, tmp_path):
    """A real run whose best checkpoints are turned back into the old pickle format: infer refuses
    it (before any prediction) naming the command; after the command, infer gives the predictions
    of the original run."""
    run = tmp_path / "run"
    run_cli("docclassify.train", ["data=competition", f"data.root={tiny_data}", *TINY, "folds.n=2",
                                  f"hydra.run.dir={run}"])
    for k in (0, 1):  # every resume state of a real run opens with weights_only=True
        torch.load(run / "checkpoints" / f"fold{k}_last.pt", map_location="cpu", weights_only=True)
    old = shutil.copytree(run, tmp_path / "old")
    results = json.loads((old / "results.json").read_text())
    for f in results["folds"]:
        new = old / f["checkpoint"]
        _, ckpt = load_checkpoint(new)
        model = create_model(ckpt["meta"]["timm_name"], 17)
        model.load_state_dict(ckpt["state_dict"])
        _old_pickle_checkpoint(new.with_name(f"fold{f['fold']}_best.pt"), model, ckpt["meta"], fold=f["fold"])
        new.unlink()
        f["checkpoint"] = f"checkpoints/fold{f['fold']}_best.pt"
        fold_json = old / "folds" / f"fold{f['fold']}.json"
        fold_json.write_text(json.dumps({**json.loads(fold_json.read_text()), "checkpoint": f["checkpoint"]}))
    (old / "results.json").write_text(json.dumps(results))

    with pytest.raises(RunError, match=rf"fold0_best.pt: a pickle checkpoint.*convert_checkpoint {old}"):
        discover_runs([old])
    proc = run_cli("docclassify.models.convert_checkpoint", [str(old)])
    assert "fold0_best.pt -> fold0_best.safetensors" in proc.stdout
    assert json.loads((old / "folds" / "fold1.json").read_text())["checkpoint"] == "checkpoints/fold1_best.safetensors"
    for k in (0, 1):
        a, b = (load_file(d / "checkpoints" / f"fold{k}_best.safetensors") for d in (run, old))
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
        assert read_checkpoint(old / "checkpoints" / f"fold{k}_best.safetensors")["fold"] == k
    subs = []
    for d in (run, old):
        run_cli("docclassify.infer", [f"runs=[{d}]", f"hydra.run.dir={tmp_path / ('infer_' + d.name)}", "tta=none"])
        subs.append((tmp_path / f"infer_{d.name}" / "submission.csv").read_text())
    assert subs[0] == subs[1]
