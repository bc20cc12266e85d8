"""Every model option (conf/model/*.yaml) is built, takes a training step, and survives the trip
through a best checkpoint, at a small size; fixed-size models at any data.img_size."""

from __future__ import annotations

import pytest
import timm
import torch
from conftest import TINY, compose_train
from omegaconf import OmegaConf

from docclassify.config import CONF_DIR, available_options
from docclassify.engine.kfold import run_kfold
from docclassify.engine.parts import build_model
from docclassify.engine.kfold import run_settings
from docclassify.engine.plan import plan_folds
from docclassify.models.checkpoint import load_checkpoint, model_meta, save_best
from docclassify.models.factory import (
    ModelConfigError,
    is_fixed_size,
    native_size,
    normalization_of,
)

OPTIONS = available_options("model")
TEST_OPTIONS = {"tiny", "tiny_convnext", "tiny_efficientnet"}  # timm's test models: no native size of their own
FIXED_SIZE = {"swin_base_384", "siglip_base_512", "eva02_base_448", "dit_base"}


def _option(name: str):
    return OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml")


def test_new_backbones_are_options():
    assert {"siglip_base_512", "eva02_base_448", "convnextv2_base_384", "dit_base"} <= set(OPTIONS)


@pytest.mark.parametrize("name", sorted(set(OPTIONS) - TEST_OPTIONS))
def test_options_use_their_native_size_and_normalisation(name):
    opt = _option(name)
    cfg = timm.models.get_pretrained_cfg(opt.timm_name)
    assert cfg is not None, f"{opt.timm_name}: no pretrained weights of that name in timm"
    assert opt.img_size == native_size(opt.timm_name) == cfg.input_size[-1]
    assert is_fixed_size(opt.timm_name) == (name in FIXED_SIZE)


def test_siglip_and_dit_expect_half_mean_and_std():
    for name in ("siglip_base_512", "dit_base"):
        cfg = timm.models.get_pretrained_cfg(_option(name).timm_name)
        assert tuple(cfg.mean) == tuple(cfg.std) == (0.5, 0.5, 0.5)


def _plans(cfg, folds):
    """plan_folds on the run's typed model, data, folds and ensemble settings."""
    s = run_settings(cfg)
    return plan_folds(s["model"], s["data_settings"], s["folds"], s["ensemble"], folds)


def _plan(tmp_path, overrides):
    # without the quick preset's orientation head: the meta below describes the plain model
    cfg = compose_train(["data=competition", "data.root=/unused", "logger=none", "model.orientation_head=none",
                         "augment.orientation=none", *overrides], tmp_path)
    return _plans(cfg, list(range(int(cfg.folds.n)))), cfg


@pytest.mark.slow
@pytest.mark.parametrize("name", OPTIONS)
def test_every_model_option_trains_a_step_and_round_trips_a_checkpoint(name, tmp_path):
    """From scratch at 64 px: forward, backward, an optimiser step; then save_best -> load_checkpoint
    rebuilds the same model (at 64 px) with the same outputs."""
    size = 64
    plans, cfg = _plan(tmp_path, [f"model={name}", "model.pretrained=false", f"data.img_size={size}", "folds.n=2"])
    assert plans[0].img_size == size
    torch.manual_seed(0)
    model = build_model(plans[0].model_cfg, 17, cfg.regularization, size)
    mean, std = normalization_of(model)
    assert (mean, std) == (list(model.pretrained_cfg["mean"]), list(model.pretrained_cfg["std"]))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(2, 3, size, size), torch.tensor([3, 11])
    before = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    model.train()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items() if k in before)

    model.eval()
    meta = model_meta(plans[0].model_cfg.timm_name, name, 17, size, "pad", 0, mean, std, [f"c{i}" for i in range(17)])
    path = tmp_path / "fold0_best.safetensors"
    save_best(path, model.state_dict(), meta, fold=0, epoch=0, macro_f1=0.5, weights="live")
    rebuilt, ckpt = load_checkpoint(path)
    assert ckpt["meta"]["img_size"] == size and ckpt["meta"]["fixed_input_size"] == (name in FIXED_SIZE)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))


def test_fixed_size_model_plans_at_the_quick_preset_size(tmp_path):
    """swin_base_384 under the default quick preset (64 px) and at a size of the Optuna space."""
    for size in (64, 288):
        plans, _ = _plan(tmp_path, ["model=swin_base_384", "model.pretrained=false", f"data.img_size={size}"])
        assert {p.img_size for p in plans} == {size}


def test_readme_ensemble_example_plans_a_fixed_size_model_at_a_non_native_size(tmp_path):
    plans, _ = _plan(tmp_path, ["pipeline=quick", "model.pretrained=false", "ensemble=multi_model",
                                "ensemble.fold_models={0:convnext_base_384,1:swin_base_384}"])
    by_fold = {p.fold: (p.model_cfg.name, p.img_size) for p in plans}
    assert by_fold[0] == ("convnext_base_384", 64) and by_fold[1] == ("swin_base_384", 64)
    # The multi_model preset too (Swin in folds 1 and 4), at its models' native sizes.
    plans, _ = _plan(tmp_path, ["model.pretrained=false", "ensemble=multi_model", "data.img_size=null"])
    assert {(p.model_cfg.name, p.img_size) for p in plans} >= {("swin_base_384", 384), ("efficientnetv2_b3", 240)}


def test_a_size_the_architecture_cannot_take_is_refused_before_any_fold(tiny_data, tmp_path):
    """A ViT with 32 px patches cannot see a 16 px image: refused naming the model and what it accepts."""
    cfg = compose_train(["data=competition", f"data.root={tiny_data}", *TINY, "model.timm_name=vit_base_patch32_224",
                         "data.img_size=16", "folds.n=2"], tmp_path)
    with pytest.raises(ModelConfigError) as err:
        run_kfold(cfg)
    msg = str(err.value)
    assert "model=tiny (vit_base_patch32_224) cannot run at 16 px" in msg
    assert "It runs at e.g. 32, 64, 96, 128 px" in msg and "native 224" in msg and "data.img_size" in msg
    assert not list((tmp_path / "checkpoints").glob("*")) and not (tmp_path / "folds.csv").exists()


def test_fold_override_size_is_checked_and_named(tmp_path, monkeypatch):
    """The refusal names the fold and option of ensemble.fold_models (a user's option with a
    32 px-patch ViT stands in: every shipped option runs at the schema's smallest size)."""
    from docclassify.engine import plan as plan_mod

    real = plan_mod.load_option
    monkeypatch.setattr(plan_mod, "load_option", lambda group, name: OmegaConf.merge(
        real(group, name), {"timm_name": "vit_base_patch32_224"} if name == "tiny_convnext" else {}))
    overrides = ["data=competition", "data.root=/unused", "logger=none", "folds.n=2", "model=tiny"]
    cfg = compose_train([*overrides, "ensemble.fold_models={1:{model:tiny_convnext,img_size:64}}"], tmp_path)
    assert [p.img_size for p in _plans(cfg, [0, 1])] == [64, 64]  # 64 px suits the ViT
    cfg = compose_train([*overrides, "ensemble.fold_models={1:{model:tiny_convnext,img_size:16}}"], tmp_path)
    with pytest.raises(ModelConfigError, match=r"ensemble.fold_models fold 1 \(tiny_convnext\) "
                                               r"\(vit_base_patch32_224\) cannot run at 16 px"):
        _plans(cfg, [0, 1])


@pytest.mark.slow
def test_a_fixed_size_model_trains_and_predicts_at_a_non_native_size(tiny_data, tmp_path):
    """timm's test_vit is fixed at 160 px; a run at 48 px trains both folds, and inference rebuilds
    each fold at 48 px from the checkpoint alone."""
    import json

    from conftest import run_cli

    from docclassify.models.checkpoint import read_checkpoint

    run = tmp_path / "run"
    run_cli("docclassify.train", ["data=competition", f"data.root={tiny_data}", *TINY, "model.timm_name=test_vit",
                                  "data.img_size=48", "folds.n=2", f"hydra.run.dir={run}"])
    results = json.loads((run / "results.json").read_text())
    assert [f["img_size"] for f in results["folds"]] == [48, 48]
    assert read_checkpoint(run / results["folds"][0]["checkpoint"])["meta"]["fixed_input_size"] is True
    run_cli("docclassify.infer", [f"runs=[{run}]", f"hydra.run.dir={tmp_path / 'infer'}", "tta=rot90"])
    summary = json.loads((tmp_path / "infer" / "summary.json").read_text())
    assert {f["img_size"] for r in summary["runs"] for f in r["folds"]} == {48}
