"""Training img/s of docclassify's loop vs the bare limit of the same model, batch and size.

ours: docclassify.engine.epoch.train_one_epoch with the real loaders (engine.loaders.build_loaders,
      warm decode cache, the real augmentation, uint8 -> normalised on the device, scheduler).
bare: forward + backward + AdamW step on pre-made tensors in a plain loop (no data at all).
Both run in the same fresh process per (workers, threads) setting; the first steps of each
are warm-up and not timed, bare runs before and after ours and its two rates are averaged
(other load on a shared machine drifts).

    python benchmarks/train_loop_benchmark.py                      # the defaults docclassify picks
    python benchmarks/train_loop_benchmark.py --workers 0 1 2 --threads 1 2   # the grid
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _common import (
    DEFAULT_WORK,
    bare_rate,
    compose,
    data_overrides,
    ensure_data,
    machine_line,
    run_child,
    set_threads,
    step_rates,
)


def one(args) -> dict:
    threads = set_threads(args.threads)
    import numpy as np
    import torch

    from docclassify.data.augment import TrainTransform
    from docclassify.data.cache import LazyImages, cached_images
    from docclassify.data.sources import load_source
    from docclassify.engine.epoch import FoldParts, StepContext, train_one_epoch
    from docclassify.engine.loaders import build_loaders, default_num_workers
    from docclassify.engine.optim import build_optimizer, build_scheduler
    from docclassify.engine.parts import build_train_loss
    from docclassify.engine.sampling import class_counts
    from docclassify.engine.setup import amp_settings, resolve_device
    from docclassify.models.factory import create_model, normalization_of

    overrides = [*data_overrides(args.data, args.cache_dir, args.img_size), f"model={args.model}",
                 "model.pretrained=false", f"trainer.batch_size={args.batch}", "trainer.epochs=1",
                 f"trainer.channels_last={str(args.channels_last).lower()}"]
    if args.workers is not None:
        overrides.append(f"data.num_workers={args.workers}")
    cfg = compose(overrides)
    source = load_source(cfg.data, cfg.paths.cache_dir)
    if args.no_cache:  # data.cache=false: decode + resize per sample, in the loader
        images = LazyImages(list(source.train["path"]), args.img_size, cfg.data.resize, int(cfg.data.pad_value))
    else:
        images, _ = cached_images(list(source.train["path"]), args.img_size, cfg.data.resize,
                                  int(cfg.data.pad_value), cfg.paths.cache_dir)
    n = min(args.images, len(source.train))
    rng = np.random.default_rng(0)
    train_idx = np.sort(rng.choice(len(source.train), n, replace=False))
    targets = source.train["target"].to_numpy()
    device = resolve_device(cfg.trainer.device)
    model_name = cfg.model.timm_name

    steps = n // args.batch
    bare_before = bare_rate(model_name, source.num_classes, args.img_size, args.batch, steps - args.warmup,
                            args.warmup, args.channels_last, per_step=True)

    torch.manual_seed(0)
    model = create_model(model_name, source.num_classes, pretrained=False).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    transform = TrainTransform(cfg.augment, args.img_size, 1, 0, int(cfg.data.pad_value))
    train_loader, _, _ = build_loaders(images, train_idx, train_idx[:1], targets, transform, cfg.trainer,
                                       cfg.data.num_workers, 0, device)
    optimizer = build_optimizer(model, cfg.trainer.optimizer, cfg.trainer.lr, cfg.regularization.weight_decay)
    scheduler = build_scheduler(optimizer, cfg.schedule, 1, len(train_loader))
    loss_fn = build_train_loss(cfg.loss, class_counts(targets[train_idx], source.num_classes), str(cfg.data.sampler),
                               float(cfg.regularization.label_smoothing))
    mean, std = normalization_of(model)
    ctx = StepContext(device=device, amp=amp_settings(cfg.trainer.amp, device),
                      mean=torch.tensor(mean, device=device).view(1, 3, 1, 1),
                      std=torch.tensor(std, device=device).view(1, 3, 1, 1), channels_last=args.channels_last)
    stamps: list[float] = []
    ctx.on_step = lambda i, m: stamps.append(time.perf_counter())
    stats = train_one_epoch(FoldParts(model, model, optimizer, scheduler, loss_fn), train_loader, ctx, epoch=0)
    ours = step_rates(stamps[args.warmup - 1:], args.batch)
    bare_after = bare_rate(model_name, source.num_classes, args.img_size, args.batch, steps - args.warmup,
                           args.warmup, args.channels_last, per_step=True)
    out = {"workers": default_num_workers(cfg.data.num_workers), "threads": threads, "ours_epoch": stats["img_per_s"],
           "steps": len(stamps), "bare_before": bare_before["mean"], "bare_after": bare_after["mean"]}
    for kind in ("mean", "median"):
        bare = (bare_before[kind] + bare_after[kind]) / 2
        out[kind] = {"ours": ours[kind], "bare": bare, "ratio": ours[kind] / bare}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="competition-layout data set (default: synthetic)")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help="where data sets and caches go")
    ap.add_argument("--model", default="convnext_atto", help="docclassify model option (conf/model)")
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--images", type=int, default=640, help="training images per measured epoch")
    ap.add_argument("--warmup", type=int, default=3, help="untimed first steps")
    ap.add_argument("--workers", type=int, nargs="*", default=None, help="DataLoader workers (default: docclassify's)")
    ap.add_argument("--threads", type=int, nargs="*", default=None, help="torch threads (default: torch's)")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--no-cache", action="store_true", help="ours decodes every sample (data.cache=false)")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.data = ensure_data(args.data, work=args.work)
    args.cache_dir = args.work / "cache"
    if args.one:
        args.workers = args.workers[0] if args.workers else None
        args.threads = args.threads[0] if args.threads else None
        print(json.dumps(one(args)))
        return

    # Warm the cache once, outside the timed runs.
    from docclassify.data.cache import cached_images
    from docclassify.data.sources import load_source

    cfg = compose(data_overrides(args.data, args.cache_dir, args.img_size))
    cached_images(list(load_source(cfg.data, args.cache_dir).train["path"]), args.img_size, cfg.data.resize,
                  int(cfg.data.pad_value), args.cache_dir)
    print(machine_line())
    print(f"model {args.model} at {args.img_size} px, batch {args.batch}, {args.images} images per epoch, "
          f"channels_last={args.channels_last}, cache={not args.no_cache}, data {args.data}")
    print("img/s from the whole timed span (mean) and from the median step time (median: robust to other load)")
    print(f"{'workers':>7} {'threads':>7} {'ours':>7} {'bare':>7} {'ratio':>6} | {'ours':>7} {'bare':>7} {'ratio':>6}"
          "  (mean | median; epoch img/s incl. start-up; bare mean before/after)")
    for w in args.workers if args.workers is not None else [None]:
        for t in args.threads if args.threads is not None else [None]:
            child = ["--one", "--data", str(args.data), "--work", str(args.work), "--model", args.model,
                     "--img-size", str(args.img_size), "--batch", str(args.batch), "--images", str(args.images),
                     "--warmup", str(args.warmup)]
            child += ["--workers", str(w)] if w is not None else []
            child += ["--threads", str(t)] if t is not None else []
            child += ["--channels-last"] if args.channels_last else []
            child += ["--no-cache"] if args.no_cache else []
            r = run_child(Path(__file__), child, env={"OMP_NUM_THREADS": str(t)} if t else None)
            m, d = r["mean"], r["median"]
            print(f"{r['workers']:>7} {r['threads']:>7} {m['ours']:>7.1f} {m['bare']:>7.1f} {m['ratio']:>6.2f} | "
                  f"{d['ours']:>7.1f} {d['bare']:>7.1f} {d['ratio']:>6.2f}  "
                  f"({r['ours_epoch']:.1f}; {r['bare_before']:.1f}/{r['bare_after']:.1f})", flush=True)
    print(f"load avg at the end: {machine_line().split('load avg ')[1].split(' |')[0]}")


if __name__ == "__main__":
    sys.exit(main())
