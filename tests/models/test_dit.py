"""DiT weights into timm: both published layouts (unilm .pth, Hugging Face microsoft/dit-base),
written here from random tensors (nothing can be downloaded), convert with strict key matching
and give the same features as the model the tensors came from.

The fast tests use a narrow DiT (2 blocks, width 64: the converter is shape-agnostic); the slow
one the real ``dit_base`` option."""

from __future__ import annotations

import re

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed

from docclassify.models import convert_dit
from docclassify.models.convert_dit import (
    DIT_ARCH,
    FRESH_KEYS,
    DitLayoutError,
    convert_dit_state_dict,
)
from docclassify.models.factory import ModelConfigError, create_model

SMALL = dict(depth=2, embed_dim=64, num_heads=2)
X = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def reference(**kwargs) -> torch.nn.Module:
    torch.manual_seed(1)
    return timm.create_model(DIT_ARCH, num_classes=0, **{**SMALL, **kwargs}).eval()


def to_unilm(model: torch.nn.Module) -> dict:
    """A state dict as unilm's DiT pre-training saves it: BEiT keys, MIM head, wrapped in "model"."""
    sd = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fc_norm")}
    dim = sd["cls_token"].shape[-1]
    sd.update({"mask_token": torch.randn(1, 1, dim), "norm.weight": torch.randn(dim), "norm.bias": torch.randn(dim),
               "lm_head.weight": torch.randn(8192, dim), "lm_head.bias": torch.randn(8192)})
    return {"model": sd}


def to_hf(model: torch.nn.Module) -> dict:
    """The same tensors as transformers' BeitForMaskedImageModeling names them (microsoft/dit-base)."""
    sd, out = model.state_dict(), {}
    dim = sd["cls_token"].shape[-1]
    names = {"gamma_1": "lambda_1", "gamma_2": "lambda_2", "norm1.": "layernorm_before.",
             "norm2.": "layernorm_after.", "attn.proj.": "attention.output.dense.",
             "mlp.fc1.": "intermediate.dense.", "mlp.fc2.": "output.dense."}
    for k, v in sd.items():
        m = re.match(r"blocks\.(\d+)\.(.*)", k)
        if not m:
            continue
        layer, rest = f"beit.encoder.layer.{m.group(1)}.", m.group(2)
        att = layer + "attention.attention."
        if rest == "attn.qkv.weight":
            q, k_, v_ = v.split(dim)
            out.update({att + "query.weight": q, att + "key.weight": k_, att + "value.weight": v_})
        elif rest == "attn.q_bias":
            out[att + "query.bias"] = v
        elif rest == "attn.v_bias":
            out[att + "value.bias"] = v
        else:
            old = next(o for o in names if rest.startswith(o))
            out[layer + names[old] + rest[len(old):]] = v
    out.update({
        "beit.embeddings.cls_token": sd["cls_token"], "beit.embeddings.mask_token": torch.randn(1, 1, dim),
        "beit.embeddings.position_embeddings": sd["pos_embed"],
        "beit.embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
        "beit.embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
        "layernorm.weight": torch.randn(dim), "layernorm.bias": torch.randn(dim),
        "lm_head.weight": torch.randn(8192, dim), "lm_head.bias": torch.randn(8192),
    })
    return out


def features(model, x=X):
    with torch.no_grad():
        return model.forward_head(model.forward_features(x), pre_logits=True)


@pytest.mark.parametrize("layout", [to_unilm, to_hf])
def test_converted_weights_match_strictly_and_reproduce_the_features(layout):
    ref = reference()
    target = timm.create_model(DIT_ARCH, num_classes=17, **SMALL).eval()
    converted = convert_dit_state_dict(layout(ref), target)
    result = target.load_state_dict(converted, strict=False)
    assert result.unexpected_keys == [] and sorted(result.missing_keys) == sorted(FRESH_KEYS)
    # fc_norm starts fresh in both (LayerNorm init), so the pooled features are identical.
    torch.testing.assert_close(features(target), features(ref), rtol=0, atol=0)


@pytest.mark.parametrize("layout", [to_unilm, to_hf])
def test_timm_loads_a_dit_file_through_the_converter_at_another_size(layout, tmp_path):
    """pretrained_cfg_overlay=dict(file=...) (what model.weights does): converted, then the position
    embeddings resampled to 64 px by timm's BEiT filter."""
    ref = reference()
    path = tmp_path / "dit.pth"
    torch.save(layout(ref), path)
    same = timm.create_model(DIT_ARCH, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                             num_classes=17, **SMALL).eval()
    torch.testing.assert_close(features(same), features(ref), rtol=0, atol=0)
    small = timm.create_model(DIT_ARCH, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                              num_classes=17, img_size=64, **SMALL).eval()
    expected = resample_abs_pos_embed(ref.pos_embed.detach(), new_size=(4, 4), num_prefix_tokens=1)
    torch.testing.assert_close(small.pos_embed.detach(), expected)
    torch.testing.assert_close(small.blocks[1].attn.qkv.weight, ref.blocks[1].attn.qkv.weight, rtol=0, atol=0)
    assert small(torch.zeros(1, 3, 64, 64)).shape == (1, 17)


def test_weights_of_another_architecture_are_refused_by_name(tmp_path):
    vit = timm.create_model("test_vit", num_classes=0)
    target = timm.create_model(DIT_ARCH, num_classes=17, **SMALL)
    with pytest.raises(DitLayoutError, match=r"key\(s\) of dit_base_patch16_224 missing .*unexpected"):
        convert_dit_state_dict(vit.state_dict(), target)
    # Through model.weights: the factory names the key and the file.
    path = tmp_path / "vit.pth"
    torch.save(vit.state_dict(), path)
    with pytest.raises(ModelConfigError, match=r"model.weights=.*vit.pth: not DiT/BEiT-B weights"):
        create_model(DIT_ARCH, 17, weights=str(path), img_size=64)


def test_hub_weights_come_from_microsoft_dit_base_in_the_cache(tmp_path, monkeypatch):
    """model.pretrained=true: timm's hub loader reads microsoft/dit-base (HF layout) from the local hub
    cache (a cache built here, offline) and the converter maps it."""
    import huggingface_hub.constants as hf_constants

    ref = reference()
    snapshot = tmp_path / "hub" / "models--microsoft--dit-base" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    torch.save(to_hf(ref), snapshot / "pytorch_model.bin")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    model = timm.create_model(f"{DIT_ARCH}.mim_iit_cdip", pretrained=True, num_classes=17, **SMALL).eval()
    torch.testing.assert_close(features(model), features(ref), rtol=0, atol=0)
    from docclassify.models.factory import _weights_cached

    assert _weights_cached(f"{DIT_ARCH}.mim_iit_cdip")  # so model=dit_base would not be refused offline


def test_dit_option_offline_without_weights_names_the_ways_out(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty_hub"))
    with pytest.raises(ModelConfigError, match="model.pretrained=false, or point model.weights="):
        create_model(f"{DIT_ARCH}.mim_iit_cdip", 17, pretrained=True, img_size=64)


@pytest.mark.slow
def test_convert_dit_cli_writes_timm_layout_safetensors(tmp_path):
    """The standalone converter at full size (it builds dit_base on the meta device only)."""
    from safetensors.torch import load_file

    with torch.device("meta"):
        meta_model = timm.create_model(DIT_ARCH, num_classes=0)
    full = {"model": {k: torch.randn(v.shape) * 0.02 for k, v in meta_model.state_dict().items()
                      if not k.startswith("fc_norm")} | {"mask_token": torch.zeros(1, 1, 768)}}
    src, dst = tmp_path / "dit-base-224-p16-500k.pth", tmp_path / "dit.safetensors"
    torch.save(full, src)
    assert convert_dit.main([str(src), str(dst)]) == 0
    out = load_file(dst)
    assert "mask_token" not in out and set(out) == set(full["model"]) - {"mask_token"}
    torch.testing.assert_close(out["blocks.11.attn.qkv.weight"], full["model"]["blocks.11.attn.qkv.weight"])
    torch.save({"model": {"blocks.0.foo": torch.zeros(1)}}, src)
    assert convert_dit.main([str(src), str(dst)]) == 2


@pytest.mark.slow
def test_dit_base_option_loads_a_full_size_unilm_checkpoint_at_64px(tmp_path):
    """model=dit_base model.weights=dit-base-224-p16-500k.pth, the real architecture, at 64 px."""
    torch.manual_seed(2)
    ref = timm.create_model(DIT_ARCH, num_classes=0).eval()
    path = tmp_path / "dit-base-224-p16-500k.pth"
    torch.save(to_unilm(ref), path)
    model = create_model(f"{DIT_ARCH}.mim_iit_cdip", 17, weights=str(path), img_size=64).eval()
    expected = resample_abs_pos_embed(ref.pos_embed.detach(), new_size=(4, 4), num_prefix_tokens=1)
    torch.testing.assert_close(model.pos_embed.detach(), expected)
    for k, v in ref.state_dict().items():
        if k not in ("pos_embed", "fc_norm.weight", "fc_norm.bias"):
            assert torch.equal(model.state_dict()[k], v), k
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 17)
