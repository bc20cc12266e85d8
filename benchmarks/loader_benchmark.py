"""Loader img/s: no cache vs cold cache vs warm cache, for 0/1/2 DataLoader workers.

One epoch of the real training loader (data.cache.load_images + engine.loaders.build_loaders, the real
augmentation, shuffled, batched uint8 tensors), nothing else running in the process:
  no cache   data.cache=false: the pre-flight check of every file, then decode+resize per sample
  cold       the decode cache is built first (into an empty cache dir), then the epoch
  warm       the cache file exists (a new process maps it), then the epoch
img/s counts set-up (check / build / open) plus the epoch. The last column compares the warm
loader with the model's own consumption rate: the bare forward+backward+step img/s of the
model at the same size and batch (see train_loop_benchmark.py).

    python benchmarks/loader_benchmark.py [--data DIR] [--workers 0 1 2] [--img-size 128]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from _common import (
    DEFAULT_WORK,
    Timer,
    bare_rate,
    compose,
    data_overrides,
    ensure_data,
    machine_line,
    run_child,
)


def _epoch(cfg, images, n_rows: int, targets, img_size: int) -> tuple[float, int]:
    import numpy as np
    import torch

    from docclassify.data.augment import TrainTransform
    from docclassify.engine.loaders import build_loaders

    idx = np.arange(n_rows)
    transform = TrainTransform(cfg.augment, img_size, 1, 0, int(cfg.data.pad_value))
    with Timer() as t:
        loader, _, _ = build_loaders(images, idx, idx[:1], targets, transform, cfg.trainer, cfg.data.num_workers, 0,
                                     torch.device("cpu"))
        seen = sum(len(x) for x, _ in loader)
    return t.seconds, seen


def one(args) -> dict:
    from docclassify.data import cache
    from docclassify.data.cache import load_images
    from docclassify.data.sources import load_source

    cache_dir = Path(tempfile.mkdtemp(prefix="loader-bench-", dir=args.work))
    try:
        base = [*data_overrides(args.data, cache_dir, args.img_size), f"trainer.batch_size={args.batch}",
                f"data.num_workers={args.workers}"]
        out = {"workers": args.workers}
        for mode in ("nocache", "cold", "warm"):
            cfg = compose([*base, f"data.cache={str(mode != 'nocache').lower()}"])
            source = load_source(cfg.data, cache_dir)
            cache._OPEN.clear()  # as in a new process
            cache._DIGESTS.clear()
            with Timer() as setup:
                images, _ = load_images(list(source.train["path"]), args.img_size, cfg.data, cache_dir)
            epoch_s, seen = _epoch(cfg, images, len(source.train), source.train["target"].to_numpy(), args.img_size)
            out[mode] = {"setup_s": setup.seconds, "epoch_s": epoch_s, "images": seen,
                         "img_per_s": seen / (setup.seconds + epoch_s), "epoch_img_per_s": seen / epoch_s}
        return out
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="competition-layout data set (default: synthetic)")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help="where data sets and caches go")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--model", default="convnext_atto", help="model whose consumption rate is the yardstick")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    args.data = ensure_data(args.data, work=args.work)
    if args.one:
        args.workers = args.workers[0]
        print(json.dumps(one(args)))
        return

    print(machine_line())
    cfg = compose([*data_overrides(args.data, args.work / "cache", args.img_size), f"model={args.model}"])
    from docclassify.data.sources import load_source

    n_classes = load_source(cfg.data, args.work / "cache").num_classes
    model_rate = bare_rate(cfg.model.timm_name, n_classes, args.img_size, args.batch, steps=10)
    print(f"data {args.data}, {args.img_size} px, batch {args.batch}; {args.model} consumes {model_rate:.1f} img/s "
          "(bare forward+backward+step)")
    print(f"{'workers':>7} {'no cache':>9} {'cold':>9} {'warm':>9}  img/s incl. set-up | warm epoch only | "
          "warm / model")
    for w in args.workers:
        r = run_child(Path(__file__), ["--one", "--data", str(args.data), "--work", str(args.work), "--workers", str(w),
                                       "--img-size", str(args.img_size), "--batch", str(args.batch)])
        print(f"{w:>7} {r['nocache']['img_per_s']:>9.0f} {r['cold']['img_per_s']:>9.0f} {r['warm']['img_per_s']:>9.0f}"
              f"  | {r['warm']['epoch_img_per_s']:>6.0f} | {r['warm']['img_per_s'] / model_rate:>5.1f}x"
              f"   (set-up s: check {r['nocache']['setup_s']:.2f}, build {r['cold']['setup_s']:.2f}, "
              f"open {r['warm']['setup_s']:.3f})", flush=True)
    print(f"load avg at the end: {machine_line().split('load avg ')[1].split(' |')[0]}")


if __name__ == "__main__":
    sys.exit(main())
