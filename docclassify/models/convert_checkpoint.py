"""Convert the pickle checkpoints of older docclassify runs (and pickled weight files) to safe ones.

    python -m docclassify.models.convert_checkpoint RUN_DIR [RUN_DIR ...]
    python -m docclassify.models.convert_checkpoint --weights FILE.pth [--out FILE.safetensors]

A run dir (or a multirun folder of run dirs): every ``checkpoints/fold{k}_best.pt`` (format
``docclassify.checkpoint/1``) becomes ``fold{k}_best.safetensors`` with the same weights and meta,
``results.json`` and ``folds/fold{k}.json`` then point at it; every ``fold{k}_last.pt`` (resume
state) is rewritten so that it loads with ``weights_only=True``. ``--weights``: the tensors of a
pickled weights file (``{"model": ...}``, ``{"state_dict": ...}`` or a plain state dict) to
safetensors, for ``model.weights=``.

Running this command is the explicit consent to unpickle those files (``weights_only=False``),
which can run code stored in them: convert only files you trust. The old files are left in
place (delete them once the converted run works).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from docclassify.models.checkpoint import (
    BEST_SUFFIX,
    PICKLE_FORMAT,
    CheckpointError,
    model_meta,
    save_best,
    save_resume_state,
    unshared_tensors,
)
from docclassify.utils.io import atomic_write_json
from docclassify.utils.prog import prog

log = logging.getLogger("docclassify.convert_checkpoint")


def _unpickle(path: Path):
    return torch.load(path, map_location="cpu", weights_only=False)  # the user asked for it (module doc)


def convert_best(path: Path) -> Path:
    """``fold{k}_best.pt`` -> ``fold{k}_best.safetensors`` beside it; returns the new path."""
    ckpt = _unpickle(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != PICKLE_FORMAT:
        raise CheckpointError(f"{path}: not a docclassify best checkpoint of format {PICKLE_FORMAT}")
    old = ckpt["meta"]
    meta = model_meta(old["timm_name"], old.get("model_option"), old["num_classes"], old["img_size"],
                      old["resize"], old["pad_value"], old["mean"], old["std"], old["classes"])
    extra = {k: v for k, v in ckpt.items() if k not in ("format", "meta", "state_dict")}
    out = path.with_suffix(BEST_SUFFIX)  # fold{k}_best.pt -> fold{k}_best.safetensors
    save_best(out, ckpt["state_dict"], meta, **extra)
    return out


def convert_last(path: Path) -> bool:
    """Rewrite a resume state so it loads with weights_only=True; False when it already does."""
    try:
        torch.load(path, map_location="cpu", weights_only=True)
        return False
    except Exception:  # noqa: BLE001 - any refusal: convert it
        pass
    state = _unpickle(path)
    save_resume_state(path, {k: v for k, v in state.items() if k != "format"})
    return True


def _point_at(json_path: Path, old_name: str, new_name: str) -> None:
    """Replace checkpoint paths naming ``old_name`` in results.json / fold{k}.json."""
    data = json.loads(json_path.read_text())
    entries = data.get("folds", []) if json_path.name == "results.json" else [data]
    changed = False
    for entry in entries:
        ckpt = entry.get("checkpoint")
        if isinstance(ckpt, str) and Path(ckpt).name == old_name:
            entry["checkpoint"] = str(Path(ckpt).with_name(new_name))
            changed = True
    if changed:
        atomic_write_json(json_path, data)


def convert_run(run_dir: Path) -> list[str]:
    """Convert one run dir's checkpoints; returns what was done (one line per file)."""
    done = []
    for best in sorted((run_dir / "checkpoints").glob("fold*_best.pt")):
        out = convert_best(best)
        for json_path in [run_dir / "results.json", *sorted((run_dir / "folds").glob("fold*.json"))]:
            if json_path.is_file():
                _point_at(json_path, best.name, out.name)
        done.append(f"{best} -> {out.name}")
    for last in sorted((run_dir / "checkpoints").glob("fold*_last.pt")):
        if convert_last(last):
            done.append(f"{last}: rewritten (loads with weights_only=True)")
    return done


def run_dirs(path: Path) -> list[Path]:
    """``path`` when it holds checkpoints/, else its sub-dirs that do (a multirun folder)."""
    if (path / "checkpoints").is_dir():
        return [path]
    return sorted(p for p in path.iterdir() if (p / "checkpoints").is_dir()) if path.is_dir() else []


def convert_weights(src: Path, dst: Path | None) -> Path:
    """The tensors of a pickled weights file -> safetensors (for model.weights=)."""
    import safetensors.torch

    from docclassify.models.convert_dit import unwrap

    obj = _unpickle(src)
    state_dict = unwrap(obj) if isinstance(obj, dict) else None
    tensors = {k: v for k, v in (state_dict or {}).items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{src}: holds no state dict of tensors")
    dst = dst or src.with_suffix(".safetensors")
    safetensors.torch.save_file(unshared_tensors(tensors), str(dst))
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog("docclassify.models.convert_checkpoint"),
                                     description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="*", type=Path, help="run dirs (or multirun folders) to convert")
    parser.add_argument("--weights", type=Path, help="a pickled weights file to write as safetensors")
    parser.add_argument("--out", type=Path, default=None, help="output of --weights (default: FILE.safetensors)")
    args = parser.parse_args(argv)
    if not args.run_dirs and args.weights is None:
        parser.error("give RUN_DIR(s) or --weights FILE")
    try:
        if args.weights is not None:
            print(f"{args.weights} -> {convert_weights(args.weights, args.out)}")
        for spec in args.run_dirs:
            dirs = run_dirs(spec)
            if not dirs:
                raise CheckpointError(f"{spec}: no checkpoints/ here or in a sub-directory (not a run dir)")
            for d in dirs:
                lines = convert_run(d)
                print("\n".join(lines) if lines else f"{d}: nothing to convert")
    except (CheckpointError, OSError) as exc:
        print(f"convert_checkpoint: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
