"""Build timm models from a `model` config option, with real pretrained loading.

Pretrained weights come from timm's hub (the model's hub name) or from a local file
(``model.weights=PATH``). Offline with nothing cached we stop at once with a message
that names the model and both ways out, instead of letting the hub client retry for a
minute.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch

from docclassify.errors import UserError

log = logging.getLogger(__name__)


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


def _weights_cached(model: torch.nn.Module) -> bool:
    hub_id = (getattr(model, "pretrained_cfg", None) or {}).get("hf_hub_id")
    if not hub_id:
        return False
    try:
        from huggingface_hub import try_to_load_from_cache

        for fname in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
            hit = try_to_load_from_cache(hub_id, fname)
            if isinstance(hit, str):
                return True
    except Exception:  # noqa: BLE001 - the cache lookup is a best effort
        return False
    return False


def create_model(timm_name: str, num_classes: int, pretrained: bool = False, weights: str | None = None,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> torch.nn.Module:
    """timm.create_model with clear errors for unknown names, missing files and no network."""
    check_model_name(timm_name)
    kwargs = dict(num_classes=num_classes, drop_rate=drop_rate)
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ModelConfigError(f"model.weights={weights}: file not found")
        # timm loads the file like hub weights (classifier re-initialised for num_classes).
        return timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
    if pretrained:
        probe = timm.create_model(timm_name, pretrained=False, num_classes=num_classes)
        if not _weights_cached(probe) and not _hub_reachable():
            raise ModelConfigError(
                f"model.pretrained=true: cannot download pretrained weights for {timm_name!r} "
                "(no network / HF_HUB_OFFLINE, and not in the local hub cache). Either train from "
                "scratch with model.pretrained=false, or point model.weights=/path/to/weights"
                ".safetensors|.pth at a local copy."
            )
        del probe
        try:
            return timm.create_model(timm_name, pretrained=True, **kwargs)
        except Exception as exc:
            raise ModelConfigError(
                f"model.pretrained=true: loading pretrained weights for {timm_name!r} failed ({exc}). "
                "Use model.pretrained=false or model.weights=PATH."
            ) from exc
    return timm.create_model(timm_name, pretrained=False, **kwargs)


def normalization_of(model: torch.nn.Module) -> tuple[list[float], list[float]]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return list(cfg.get("mean", (0.485, 0.456, 0.406))), list(cfg.get("std", (0.229, 0.224, 0.225)))
