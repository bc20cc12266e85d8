"""DiT (Document Image Transformer, Li et al. 2022): a BEiT-B/16 pre-trained on 42M document
pages, and its weights' way into timm.

DiT is timm's BEiT with absolute position embeddings and no relative position bias; this module
registers it with timm as ``dit_base_patch16_224`` (the ``dit_base`` model option) and converts
the two published checkpoint layouts to timm's keys:

- the unilm repository's ``dit-base-224-p16-500k-*.pth``: ``{"model": state_dict}`` with BEiT's
  own keys (``blocks.N.attn.qkv.weight``, ``blocks.N.attn.q_bias``, ``blocks.N.gamma_1``, ...)
  plus the masked-image-modelling parts (``mask_token``, ``norm``, ``lm_head``), which are dropped;
- Hugging Face's ``microsoft/dit-base`` (transformers' ``BeitForMaskedImageModeling``):
  ``beit.embeddings.*``, ``beit.encoder.layer.N.attention.attention.{query,key,value}`` (fused
  into ``qkv``), ``lambda_1/2`` (``gamma_1/2``), ``layernorm_before/after`` (``norm1/2``), ...

The conversion runs inside timm's checkpoint filter of the registered model, so every way
weights reach it goes through it: ``model=dit_base`` with ``model.pretrained=true`` (the hub's
``microsoft/dit-base``), or ``model.weights=/path/dit-base-224-p16-500k.pth``. Keys are matched
strictly: anything left over or missing (except the fresh classifier and its pooling norm)
is refused by name. timm's BEiT filter then resamples the position embeddings to ``img_size``.

``python -m docclassify.models.convert_dit IN OUT.safetensors`` writes the converted weights.
"""

from __future__ import annotations

import argparse
import re
import sys

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.beit import Beit
from timm.models.beit import checkpoint_filter_fn as beit_filter_fn

from docclassify.utils.prog import prog

DIT_ARCH = "dit_base_patch16_224"
# Parts of the DiT checkpoints that a classifier does not use (masked-image-modelling head).
MIM_ONLY = ("mask_token", "lm_head.weight", "lm_head.bias")
# Keys the converted weights may lack: a new classifier and the norm after pooling start fresh.
FRESH_KEYS = ("head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias")

HF_BLOCK = [  # Hugging Face BEiT layer key -> timm BEiT block key
    ("lambda_1", "gamma_1"), ("lambda_2", "gamma_2"),
    ("layernorm_before.", "norm1."), ("layernorm_after.", "norm2."),
    ("attention.output.dense.", "attn.proj."),
    ("intermediate.dense.", "mlp.fc1."), ("output.dense.", "mlp.fc2."),
]
HF_TOP = {
    "beit.embeddings.cls_token": "cls_token",
    "beit.embeddings.position_embeddings": "pos_embed",
    "beit.embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "beit.embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "beit.embeddings.mask_token": "mask_token",
    "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias",
    "beit.pooler.layernorm.weight": "fc_norm.weight", "beit.pooler.layernorm.bias": "fc_norm.bias",
    "classifier.weight": "head.weight", "classifier.bias": "head.bias",
}


class DitLayoutError(ValueError):
    """Weights that do not convert to the DiT architecture (the message names the keys)."""


def unwrap(checkpoint: dict) -> dict:
    """The state dict inside a training checkpoint (``{"model": ...}`` in unilm's files)."""
    for key in ("model", "module", "state_dict"):
        if isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    return checkpoint


def is_hf_layout(state_dict: dict) -> bool:
    return any(k.startswith("beit.") for k in state_dict)


def _hf_layer_to_timm(state_dict: dict, out: dict) -> None:
    """Hugging Face ``beit.encoder.layer.N.*`` keys -> timm ``blocks.N.*`` (query/key/value fused)."""
    layers = sorted({int(m.group(1)) for k in state_dict if (m := re.match(r"beit\.encoder\.layer\.(\d+)\.", k))})
    for i in layers:
        src, dst = f"beit.encoder.layer.{i}.", f"blocks.{i}."
        att = src + "attention.attention."
        out[dst + "attn.qkv.weight"] = torch.cat([state_dict[att + f"{p}.weight"] for p in ("query", "key", "value")])
        out[dst + "attn.q_bias"] = state_dict[att + "query.bias"]
        out[dst + "attn.v_bias"] = state_dict[att + "value.bias"]
        for k, v in state_dict.items():
            if k.startswith(src) and not k.startswith(att):
                rest = k[len(src):]
                for old, new in HF_BLOCK:
                    if rest.startswith(old):
                        rest = new + rest[len(old):]
                        break
                out[dst + rest] = v


def hf_to_timm(state_dict: dict) -> dict:
    """Hugging Face's BEiT keys (microsoft/dit-base) -> timm's BEiT keys."""
    out: dict = {}
    _hf_layer_to_timm(state_dict, out)
    for k, v in state_dict.items():
        if k.startswith("beit.encoder.layer."):
            continue
        out[HF_TOP.get(k, k)] = v
    return out


def convert_dit_state_dict(checkpoint: dict, model: torch.nn.Module) -> dict:
    """A DiT checkpoint (unilm or Hugging Face layout; timm's own passes unchanged) -> the state dict
    of ``model`` (a timm BEiT with absolute position embeddings), keys checked strictly."""
    state_dict = unwrap(checkpoint)
    if is_hf_layout(state_dict):
        state_dict = hf_to_timm(state_dict)
    expected = set(model.state_dict())
    drop = set(MIM_ONLY)
    if "norm.weight" not in expected:  # mean pooling: the pre-training's final norm is replaced by fc_norm
        drop |= {"norm.weight", "norm.bias"}
    out = {k: v for k, v in state_dict.items() if k not in drop and "relative_position_index" not in k}
    unexpected = sorted(set(out) - expected)
    missing = sorted(expected - set(out) - set(FRESH_KEYS))
    if unexpected or missing:
        raise DitLayoutError(
            f"not DiT/BEiT-B weights in a known layout: {len(missing)} key(s) of {DIT_ARCH} missing "
            f"{missing[:6]}, {len(unexpected)} unexpected {unexpected[:6]} (expected the unilm "
            "dit-base-224-p16-500k .pth or Hugging Face's microsoft/dit-base)"
        )
    return out


def dit_filter_fn(state_dict: dict, model: torch.nn.Module) -> dict:
    """timm checkpoint filter of the DiT architecture: convert, then BEiT's own filter (position
    embeddings resampled to the model's image size)."""
    return beit_filter_fn(convert_dit_state_dict(state_dict, model), model)


def _cfg(**kwargs) -> dict:
    return {
        "num_classes": 0, "input_size": (3, 224, 224), "pool_size": None, "fixed_input_size": True,
        "crop_pct": 1.0, "interpolation": "bilinear", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
        "first_conv": "patch_embed.proj", "classifier": "head", "license": "mit", **kwargs,
    }


# Read by timm's register_model (this module's pretrained configs).
default_cfgs = generate_default_cfgs({
    # DiT-B pre-trained (masked image modelling) on IIT-CDIP; weights on the Hugging Face hub.
    f"{DIT_ARCH}.mim_iit_cdip": _cfg(hf_hub_id="microsoft/dit-base", hf_hub_filename="pytorch_model.bin",
                                     paper_ids="arXiv:2203.02378"),
})


@register_model
def dit_base_patch16_224(pretrained: bool = False, **kwargs) -> Beit:
    """DiT-B/16: BEiT-B with absolute position embeddings, no relative position bias, layer scale 0.1."""
    args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4, use_abs_pos_emb=True,
                use_rel_pos_bias=False, use_shared_rel_pos_bias=False, init_values=0.1)
    return build_model_with_cfg(Beit, DIT_ARCH, pretrained, pretrained_filter_fn=dit_filter_fn,
                                feature_cfg=dict(out_indices=kwargs.pop("out_indices", 3), feature_cls="getter"),
                                **dict(args, **kwargs))


def main(argv: list[str] | None = None) -> int:
    """Convert a DiT checkpoint file to timm-layout safetensors (at 224 px, classifier not included)."""
    import safetensors.torch
    import timm
    from timm.models import load_state_dict

    parser = argparse.ArgumentParser(prog=prog("docclassify.models.convert_dit"), description=main.__doc__)
    parser.add_argument("src", help="unilm dit-base-224-p16-500k .pth, or microsoft/dit-base's weights file")
    parser.add_argument("dst", help="output .safetensors (timm dit_base_patch16_224 keys)")
    args = parser.parse_args(argv)
    with torch.device("meta"):
        model = timm.create_model(DIT_ARCH, pretrained=False, num_classes=0)
    try:
        converted = convert_dit_state_dict(load_state_dict(args.src), model)
    except DitLayoutError as exc:
        print(f"convert_dit: {args.src}: {exc}", file=sys.stderr)
        return 2
    safetensors.torch.save_file({k: v.contiguous() for k, v in converted.items()}, args.dst)
    print(f"{len(converted)} tensors -> {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
