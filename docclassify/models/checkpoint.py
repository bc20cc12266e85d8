"""Checkpoint files: safe to open, and self-describing.

- Best checkpoints (``checkpoints/fold{k}_best.safetensors``): the weights in safetensors (timm
  loads them directly, nothing in them can run code) and, in the safetensors header, the meta
  that rebuilds the model without the config (architecture, image size, resize, normalisation,
  classes, classifier, orientation head and the orientations training saw) plus the fold, epoch,
  macro F1 and which weights they are (EMA or live). A model with an orientation head
  (models/heads.py) is stored under the timm model's own key names plus ``orientation_head.*``.
  :func:`read_checkpoint` reads the header alone; :func:`load_checkpoint` rebuilds the model.
- Resume state (``checkpoints/fold{k}_last.pt``): a torch file loaded with ``weights_only=True``;
  numpy values (validation logits, numpy's RNG state) are stored as tensors and given back as
  numpy arrays.
- Best checkpoints of older versions (pickles, format ``docclassify.checkpoint/1``) are refused
  with the command that converts them: ``python -m docclassify.models.convert_checkpoint RUN_DIR``.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch

from docclassify.models.factory import create_model, is_fixed_size
from docclassify.models.heads import from_file_layout, to_file_layout, with_orientation_head
from docclassify.utils.io import atomic_save_torch, atomic_write

CHECKPOINT_FORMAT = "docclassify.checkpoint/2"
PICKLE_FORMAT = "docclassify.checkpoint/1"  # best checkpoints before safetensors (torch pickles)
RESUME_FORMAT = "docclassify.resume/2"
BEST_SUFFIX = ".safetensors"
CONVERT_COMMAND = "python -m docclassify.models.convert_checkpoint"
_NDARRAY = "__ndarray__"  # marks a numpy array stored as a tensor in the resume state


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (the message names the file and what to do)."""


def best_checkpoint_name(fold: int) -> str:
    return f"fold{fold}_best{BEST_SUFFIX}"


def unfinished_path(best: str | Path) -> Path:
    """Where a fold still training keeps its best weights so far (``fold<k>_best.partial.safetensors``):
    nothing named like a finished fold's weights exists before the fold has finished."""
    best = Path(best)
    return best.with_name(best.name[: -len(BEST_SUFFIX)] + ".partial" + BEST_SUFFIX)


def current_best(best: str | Path) -> Path:
    """The fold's best weights so far: the unfinished file while training, else the finished one
    (a fold of an older run resumed with its weights under the finished name)."""
    partial = unfinished_path(best)
    return partial if partial.is_file() else Path(best)


def finish_best(best: str | Path) -> None:
    """The fold finished: its unfinished weights take the finished name (atomic rename)."""
    import os

    partial = unfinished_path(best)
    if partial.is_file():
        os.replace(partial, best)


def preprocessing(meta: dict) -> dict[str, Any]:
    """The exact input transform of a checkpoint (docs/inference.md#preprocessing), for its header."""
    from docclassify.data.images import REDUCING_GAP, RESAMPLE

    size = int(meta["img_size"])
    return {
        "decode": "PIL.Image.open; a JPEG gets img.draft('RGB', (S, S)) before loading (DCT scaling by 1/2, 1/4 "
                  "or 1/8 while both sides stay >= S); ImageOps.exif_transpose; converted to RGB (alpha "
                  "composited on white, 16-bit grey scaled to 8 bits)",
        "size": size, "resize": meta["resize"], "resample": RESAMPLE, "reducing_gap": REDUCING_GAP,
        "pad": ("long side to S: (h, w) -> (max(1, round(h * S / max(h, w))), max(1, round(w * S / max(h, w)))), "
                "PIL resize(..., BILINEAR, reducing_gap); centred on an S x S canvas of pad_value: "
                "top = (S - h') // 2, left = (S - w') // 2") if meta["resize"] == "pad"
               else "both sides to S: PIL resize((S, S), BILINEAR, reducing_gap)",
        "pad_value": int(meta["pad_value"]),
        "normalize": "x = uint8 RGB / 255, then (x - mean) / std per channel, NCHW float32",
        "mean": list(meta["mean"]), "std": list(meta["std"]),
    }


def timm_pretrained_cfg(meta: dict) -> dict[str, Any]:
    """A timm ``pretrained_cfg`` (timm.models.PretrainedCfg's fields only) for these weights:
    ``timm.create_model(cfg["architecture"], pretrained=True, pretrained_cfg={**cfg, "file": PATH})``
    builds the model with them, and ``timm.data.resolve_data_config(model=model)`` the nearest timm
    eval transform (crop_pct 1.0; border = keep the ratio and pad, squash = stretch). timm pads with
    the mean colour and resizes without JPEG draft decoding and PIL's reducing_gap: the exact
    transform is the header's ``preprocessing``."""
    size = int(meta["img_size"])
    return {
        "architecture": meta["timm_name"], "input_size": [3, size, size],
        "fixed_input_size": bool(meta.get("fixed_input_size", False)), "interpolation": "bilinear",
        "crop_pct": 1.0, "crop_mode": "border" if meta["resize"] == "pad" else "squash",
        "mean": list(meta["mean"]), "std": list(meta["std"]), "num_classes": int(meta["num_classes"]),
        "label_names": list(meta["classes"]), "classifier": meta.get("classifier"),
        "notes": ["docclassify weights; the exact input transform is the safetensors header's 'preprocessing' "
                  "(docs/inference.md#preprocessing)"],
    }


def model_meta(timm_name: str, model_option: str, num_classes: int, img_size: int, resize: str,
               pad_value: int, mean, std, classes: list[str], orientation_head: str = "none",
               trained_orientations: dict | None = None) -> dict[str, Any]:
    """``trained_orientations``: what the training augmentation turned and mirrored
    (:func:`trained_orientations`), read by test-time orientation."""
    cfg = timm.models.get_pretrained_cfg(timm_name)
    return {
        "timm_name": timm_name, "model_option": model_option, "num_classes": num_classes,
        # fixed_input_size: the model was built for img_size (and is rebuilt for it).
        "img_size": int(img_size), "fixed_input_size": is_fixed_size(timm_name), "resize": resize,
        "pad_value": int(pad_value), "mean": [float(m) for m in mean], "std": [float(s) for s in std],
        "classes": list(classes), "classifier": cfg.classifier if cfg is not None else None,
        "orientation_head": str(orientation_head), "trained_orientations": trained_orientations,
    }


def trained_orientations(augment_cfg) -> dict[str, Any]:
    """The orientations a run's augmentation showed the model: the orientation group and share, and
    whether it saw mirror images (hflip / vflip, or orientation=dihedral)."""
    group = str(augment_cfg.get("orientation", "none"))
    mirrors = bool(augment_cfg.get("hflip")) or bool(augment_cfg.get("vflip")) or group == "dihedral"
    return {"group": group, "p": float(augment_cfg.get("orientation_p", 0.0)), "mirrors": mirrors}


def unshared_tensors(state_dict: dict) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors, none sharing memory with another (safetensors refuses shared ones)."""
    out, seen = {}, set()
    for name, tensor in state_dict.items():
        t = tensor.detach().cpu().contiguous()
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else None
        if ptr is not None and ptr in seen:
            t = t.clone()
        seen.add(ptr)
        out[name] = t
    return out


# The meta keys timm_pretrained_cfg and preprocessing read.
_DESCRIBES_A_MODEL = {"timm_name", "img_size", "resize", "pad_value", "mean", "std", "num_classes", "classes"}


def save_best(path: str | Path, state_dict: dict, meta: dict, **extra: Any) -> None:
    """Write the best weights of a fold (safetensors) with their meta in the header (atomically)."""
    import safetensors.torch

    header = {"format": CHECKPOINT_FORMAT, "meta": json.dumps(meta)}
    if _DESCRIBES_A_MODEL <= meta.keys():  # model_meta's (a hand-made meta of a test may be partial)
        header.update(pretrained_cfg=json.dumps(timm_pretrained_cfg(meta)), preprocessing=json.dumps(preprocessing(meta)))
    header.update({k: json.dumps(v) for k, v in extra.items()})
    if meta.get("orientation_head", "none") != "none":
        state_dict = to_file_layout(state_dict)
    data = safetensors.torch.save(unshared_tensors(state_dict), metadata=header)
    with atomic_write(path, "wb") as fh:
        fh.write(data)


def _run_dir_of(path: Path) -> Path:
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def _refuse_pickle(path: Path) -> None:
    raise CheckpointError(
        f"{path}: a pickle checkpoint (format {PICKLE_FORMAT}, written before docclassify stored weights in "
        "safetensors); opening it can run code stored in it, so it is not loaded. If you trust the run, "
        f"convert it once: {CONVERT_COMMAND} {_run_dir_of(path)}"
    )


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The header of a best checkpoint: ``format``, ``meta`` and the extras (fold, epoch, macro_f1,
    weights), without reading the weights."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix != BEST_SUFFIX:
        _refuse_pickle(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    if header.get("format") != CHECKPOINT_FORMAT or "meta" not in header:
        raise CheckpointError(f"{path}: not a docclassify best checkpoint (format {header.get('format')!r}, "
                              f"expected {CHECKPOINT_FORMAT})")
    return {k: (v if k == "format" else json.loads(v)) for k, v in header.items()}


def load_best_weights(path: str | Path, file_layout: bool = False) -> dict[str, torch.Tensor]:
    """The state dict of a best checkpoint (checked to be one), keyed like the module that trained it
    (an orientation head's wrapper: ``backbone.*``); ``file_layout``: the file's own keys (timm's)."""
    import safetensors.torch

    meta = read_checkpoint(path)["meta"]
    state_dict = safetensors.torch.load_file(str(path))
    if file_layout or (meta.get("orientation_head") or "none") == "none":
        return state_dict
    return from_file_layout(state_dict)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the model a best checkpoint describes (at its image size, with its orientation head);
    returns (model in eval mode, the header with ``state_dict`` added: the file's keys)."""
    info = read_checkpoint(path)
    meta = info["meta"]
    state_dict = load_best_weights(path, file_layout=True)
    model = create_model(meta["timm_name"], meta["num_classes"], pretrained=False, img_size=meta["img_size"])
    head = meta.get("orientation_head") or "none"  # checkpoints before the head have no such key
    model = with_orientation_head(model, head)
    model.load_state_dict(from_file_layout(state_dict) if head != "none" else state_dict)
    return model.to(device).eval(), {**info, "state_dict": state_dict}


# ------------------------------------------------------------------------------------------ resume state
def _encode(obj: Any) -> Any:
    """Numpy values -> what ``torch.load(weights_only=True)`` accepts (tensors, Python scalars)."""
    if isinstance(obj, np.ndarray):
        return {_NDARRAY: torch.from_numpy(np.ascontiguousarray(obj).copy())}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        items = {k: _encode(v) for k, v in obj.items()}
        # Unchanged dicts stay themselves (a state_dict keeps its OrderedDict type and _metadata).
        return obj if all(items[k] is v for k, v in obj.items()) else items
    if isinstance(obj, (list, tuple)):
        values = [_encode(v) for v in obj]
        return obj if all(a is b for a, b in zip(values, obj)) else type(obj)(values)
    return obj


def _decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_NDARRAY}:
            return obj[_NDARRAY].numpy()
        items = {k: _decode(v) for k, v in obj.items()}
        return obj if all(items[k] is v for k, v in obj.items()) else items
    if isinstance(obj, (list, tuple)):
        values = [_decode(v) for v in obj]
        return obj if all(a is b for a, b in zip(values, obj)) else type(obj)(values)
    return obj


def save_resume_state(path: str | Path, state: dict) -> None:
    """The last-state checkpoint (atomically), loadable with ``weights_only=True``."""
    atomic_save_torch({"format": RESUME_FORMAT, **_encode(state)}, path)


def load_resume_state(path: str | Path) -> dict:
    """A last-state checkpoint written by :func:`save_resume_state` (numpy arrays given back)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: resume state in the pickle format of an older docclassify (it cannot be opened with "
            f"weights_only=True). If you trust the run, convert it once: {CONVERT_COMMAND} {_run_dir_of(path)}"
        ) from exc
    return _decode(state)
