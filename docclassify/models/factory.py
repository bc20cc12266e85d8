"""Build timm models from a `model` config option, with real pretrained loading, at any image size.

Pretrained weights come from timm's hub (the model's hub name) or from a local file
(``model.weights=PATH``). Offline with nothing cached we stop at once with a message
that names the model and both ways out, instead of letting the hub client retry for a
minute.

Fixed-size architectures (Swin, ViT/SigLIP, EVA, BEiT/DiT: timm's ``fixed_input_size``) are
built for the fold's image size (timm's ``img_size`` at creation); their pretrained weights
go through timm's checkpoint filters, which resample position embeddings and relative
position tables to that size. :func:`check_input_size` refuses, before any work, a size an
architecture cannot run at, naming the sizes it accepts.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
import socket
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch

from docclassify.errors import UserError
from docclassify.models import convert_dit  # noqa: F401  (registers dit_base_patch16_224 with timm)

log = logging.getLogger(__name__)

# Sizes tried (smallest first, the first few that work are named) when a size fails.
PROBE_SIZES = (32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 384, 448, 512)
N_SIZES_NAMED = 4


class ModelConfigError(UserError):
    pass


def check_model_name(timm_name: str) -> None:
    base = timm_name.split(".")[0]
    if not timm.is_model(base):
        close = timm.list_models(f"*{base.split('_')[0]}*")[:10]
        raise ModelConfigError(
            f"model.timm_name={timm_name!r}: timm has no such architecture. Similar: {close}"
        )


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = urlparse(endpoint).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _weights_cached(timm_name: str) -> bool:
    cfg = timm.models.get_pretrained_cfg(timm_name)
    hub_id = cfg.hf_hub_id if cfg is not None else None
    if not hub_id:
        return False
    try:
        from huggingface_hub import try_to_load_from_cache

        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else []
        for fname in (*names, "model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
            hit = try_to_load_from_cache(hub_id, fname)
            if isinstance(hit, str):
                return True
    except Exception:  # noqa: BLE001 - the cache lookup is a best effort
        return False
    return False


@functools.lru_cache(maxsize=256)
def is_fixed_size(timm_name: str) -> bool:
    """Whether the architecture is built for one input size (timm's ``fixed_input_size``: position
    embeddings, attention windows), so it must be created with ``img_size``."""
    cfg = timm.models.get_pretrained_cfg(timm_name)
    if cfg is None:  # an architecture without a pretrained cfg: ask a model built on the meta device
        with torch.device("meta"):
            cfg_dict = timm.create_model(timm_name, pretrained=False).pretrained_cfg
        return bool(cfg_dict.get("fixed_input_size", False))
    return bool(cfg.fixed_input_size)


def size_kwargs(timm_name: str, img_size: int | None) -> dict:
    """``{"img_size": S}`` for fixed-size architectures (timm passes it to the constructor)."""
    return {"img_size": int(img_size)} if img_size and is_fixed_size(timm_name) else {}


def native_size(timm_name: str) -> int | None:
    cfg = timm.models.get_pretrained_cfg(timm_name)
    return int(cfg.input_size[-1]) if cfg is not None and cfg.input_size else None


def create_model(timm_name: str, num_classes: int, pretrained: bool = False, weights: str | None = None,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, img_size: int | None = None) -> torch.nn.Module:
    """timm.create_model with clear errors for unknown names, missing files and no network.

    ``img_size``: the size the model will see; fixed-size architectures are built for it."""
    check_model_name(timm_name)
    kwargs = dict(num_classes=num_classes, drop_rate=drop_rate, **size_kwargs(timm_name, img_size))
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    if weights:
        return _create_from_file(timm_name, weights, kwargs)
    if pretrained:
        return _create_from_hub(timm_name, kwargs)
    return timm.create_model(timm_name, pretrained=False, **kwargs)


def _create_from_file(timm_name: str, weights: str, kwargs: dict) -> torch.nn.Module:
    """Local weights, loaded like hub weights: timm's checkpoint filter of the architecture runs
    (position embeddings resampled to ``img_size``, a DiT layout converted for dit_base), the
    classifier is re-initialised for num_classes. Pickle files load with weights_only=True."""
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ModelConfigError(f"model.weights={weights}: file not found")
    try:
        return timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
    except convert_dit.DitLayoutError as exc:
        raise ModelConfigError(f"model.weights={weights}: {exc}") from exc
    except (pickle.UnpicklingError, RuntimeError) as exc:
        # timm loads pickles with weights_only=True and reports a refusal as a RuntimeError.
        if isinstance(exc, pickle.UnpicklingError) or isinstance(exc.__cause__, pickle.UnpicklingError):
            raise ModelConfigError(
                f"model.weights={weights}: torch refuses to load this pickle file with weights_only=True (it "
                "stores Python objects besides tensors, and loading it could run code). If you trust the file, "
                f"convert it once: python -m docclassify.models.convert_checkpoint --weights {path} "
                f"(writes {path.with_suffix('.safetensors')}), then point model.weights at that file."
            ) from exc
        # Otherwise size mismatches: weights of another architecture.
        raise ModelConfigError(f"model.weights={weights}: does not fit {timm_name!r} ({exc})") from exc


def _create_from_hub(timm_name: str, kwargs: dict) -> torch.nn.Module:
    if not _weights_cached(timm_name) and not _hub_reachable():
        raise ModelConfigError(
            f"model.pretrained=true: cannot download pretrained weights for {timm_name!r} "
            "(no network / HF_HUB_OFFLINE, and not in the local hub cache). Either train from "
            "scratch with model.pretrained=false, or point model.weights=/path/to/weights"
            ".safetensors|.pth at a local copy."
        )
    try:
        return timm.create_model(timm_name, pretrained=True, **kwargs)
    except Exception as exc:
        raise ModelConfigError(
            f"model.pretrained=true: loading pretrained weights for {timm_name!r} failed ({exc}). "
            "Use model.pretrained=false or model.weights=PATH."
        ) from exc


def _probe(timm_name: str, img_size: int, device: str) -> str | None:
    """Build the architecture for ``img_size`` on ``device`` and run one image through it; returns
    the error (None when it runs)."""
    try:
        with torch.device(device), torch.no_grad():
            model = timm.create_model(timm_name, pretrained=False, num_classes=2, **size_kwargs(timm_name, img_size))
            model.eval()(torch.zeros(1, 3, img_size, img_size))
    except Exception as exc:  # noqa: BLE001 - any failure means the size does not work
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


@functools.lru_cache(maxsize=256)
def size_problem(timm_name: str, img_size: int) -> str | None:
    """Why ``timm_name`` cannot run at ``img_size`` px (None when it can), asked of the architecture
    built on the meta device (no memory, no weights: a fraction of a second for a base model)."""
    return _probe(timm_name, img_size, "meta")


def check_input_size(timm_name: str, img_size: int, where: str) -> None:
    """Refuse an image size the architecture cannot run at, naming the sizes it accepts.

    ``where`` names the config that chose the model (e.g. ``model=swin_base_384``)."""
    check_model_name(timm_name)
    problem = size_problem(timm_name, int(img_size))
    if problem is None:
        return
    native = native_size(timm_name) or 224
    if size_problem(timm_name, native) is not None:
        return  # the meta-device probe does not work for this architecture at all: training will tell
    if _probe(timm_name, int(img_size), "cpu") is None:
        return  # only the meta device lacks something; the real model runs
    accepted = []
    for s in PROBE_SIZES:
        if size_problem(timm_name, s) is None:
            accepted.append(s)
        if len(accepted) == N_SIZES_NAMED:
            break
    raise ModelConfigError(
        f"{where} ({timm_name}) cannot run at {img_size} px ({problem}). It runs at e.g. "
        f"{', '.join(map(str, accepted))} px (native {native}); set data.img_size (or the fold's "
        "img_size in ensemble.fold_models) to one of them."
    )


def normalization_of(model: torch.nn.Module) -> tuple[list[float], list[float]]:
    """The mean/std the model's pretrained weights expect (timm's pretrained_cfg; e.g. 0.5/0.5 for SigLIP)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return list(cfg.get("mean", (0.485, 0.456, 0.406))), list(cfg.get("std", (0.229, 0.224, 0.225)))
