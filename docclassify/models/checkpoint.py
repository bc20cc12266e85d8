"""Self-describing checkpoints: everything needed to rebuild the model without the config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from docclassify.models.factory import create_model
from docclassify.utils.io import atomic_save_torch

CHECKPOINT_FORMAT = "docclassify.checkpoint/1"


def model_meta(timm_name: str, model_option: str, num_classes: int, img_size: int, resize: str,
               pad_value: int, mean, std, classes: list[str]) -> dict[str, Any]:
    return {
        "timm_name": timm_name, "model_option": model_option, "num_classes": num_classes,
        "img_size": int(img_size), "resize": resize, "pad_value": int(pad_value),
        "mean": [float(m) for m in mean], "std": [float(s) for s in std], "classes": list(classes),
    }


def save_best(path: str | Path, state_dict: dict, meta: dict, **extra: Any) -> None:
    """Write the best weights of a fold with their meta (atomically)."""
    atomic_save_torch({"format": CHECKPOINT_FORMAT, "meta": meta, "state_dict": state_dict, **extra}, path)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the model a best checkpoint describes; returns (model in eval mode, checkpoint dict)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a docclassify checkpoint (format {ckpt.get('format') if isinstance(ckpt, dict) else type(ckpt)})")
    meta = ckpt["meta"]
    model = create_model(meta["timm_name"], meta["num_classes"], pretrained=False)
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval(), ckpt
