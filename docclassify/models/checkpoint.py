"""Checkpoint files: safe to open, and self-describing.

- Best checkpoints (``checkpoints/fold{k}_best.safetensors``): the weights in safetensors (timm
  loads them directly, nothing in them can run code) and, in the safetensors header, the meta
  that rebuilds the model without the config (architecture, image size, resize, normalisation,
  classes, classifier) plus the fold, epoch, macro F1 and which weights they are (EMA or live).
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


def model_meta(timm_name: str, model_option: str, num_classes: int, img_size: int, resize: str,
               pad_value: int, mean, std, classes: list[str]) -> dict[str, Any]:
    cfg = timm.models.get_pretrained_cfg(timm_name)
    return {
        "timm_name": timm_name, "model_option": model_option, "num_classes": num_classes,
        # fixed_input_size: the model was built for img_size (and is rebuilt for it).
        "img_size": int(img_size), "fixed_input_size": is_fixed_size(timm_name), "resize": resize,
        "pad_value": int(pad_value), "mean": [float(m) for m in mean], "std": [float(s) for s in std],
        "classes": list(classes), "classifier": cfg.classifier if cfg is not None else None,
    }


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


def save_best(path: str | Path, state_dict: dict, meta: dict, **extra: Any) -> None:
    """Write the best weights of a fold (safetensors) with their meta in the header (atomically)."""
    import safetensors.torch

    header = {"format": CHECKPOINT_FORMAT, "meta": json.dumps(meta)}
    header.update({k: json.dumps(v) for k, v in extra.items()})
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


def load_best_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a best checkpoint (checked to be one)."""
    import safetensors.torch

    read_checkpoint(path)
    return safetensors.torch.load_file(str(path))


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the model a best checkpoint describes (at its image size); returns (model in eval
    mode, the header with ``state_dict`` added)."""
    info = read_checkpoint(path)
    meta = info["meta"]
    state_dict = load_best_weights(path)
    model = create_model(meta["timm_name"], meta["num_classes"], pretrained=False, img_size=meta["img_size"])
    model.load_state_dict(state_dict)
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
