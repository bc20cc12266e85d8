"""Soak: does a long-lived training process keep its memory, file descriptors and threads flat?

Part 1, back-to-back runs: ``--runs`` (20) complete K-fold runs in this one process, the way a
sweep's trials run (engine.kfold.run_kfold with the run's own callbacks: the csv tracker), each
with another seed and learning rate. After every run: RSS, open file descriptors, threads of
this process and child processes.

Part 2, a stream of epochs: one fold trained for ``--epochs`` (120) short epochs with DataLoader
worker processes: the epoch count of a 2-hour run at a minute per epoch, compressed (what a long
run repeats per epoch: loaders and their workers, validation of both views, checkpoint writes,
tracker rows, is what could leak). The same figures after every epoch (every ``--every``-th
printed).

Flat means: after the first run / epoch (warm-up: imports, the decode cache, allocator arenas)
RSS stays within a few MiB and descriptors and threads return to the same counts.

    python benchmarks/soak_benchmark.py [--runs 20] [--epochs 120] [--workers 2] [--data DIR]
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import (
    DEFAULT_WORK,
    children_pids,
    compose,
    data_overrides,
    ensure_data,
    machine_line,
    rss_mb,
)


def os_threads() -> int:
    """Threads of this process as the kernel counts them (torch's pools, loader pin threads, ...)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return threading.active_count()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def reading() -> dict:
    gc.collect()
    return {"rss": rss_mb(), "fds": open_fds(), "threads": os_threads(), "py_threads": threading.active_count(),
            "children": len(children_pids())}


def print_row(label: str, r: dict, seconds: float | None = None) -> None:
    took = f" {seconds:>7.1f}" if seconds is not None else ""
    print(f"{label:>8} {r['rss']:>8.1f} {r['fds']:>5} {r['threads']:>7} {r['py_threads']:>10} {r['children']:>8}{took}",
          flush=True)


HEADER = f"{'step':>8} {'RSS MiB':>8} {'fds':>5} {'threads':>7} {'py threads':>10} {'children':>8}"


def summary(name: str, rows: list[dict]) -> None:
    """Growth after the warm-up (first reading) to the end, and the spread in between."""
    warm, last = rows[1] if len(rows) > 1 else rows[0], rows[-1]
    rss = [r["rss"] for r in rows[1:]] or [rows[0]["rss"]]
    print(f"{name}: after warm-up RSS {warm['rss']:.1f} -> {last['rss']:.1f} MiB ({last['rss'] - warm['rss']:+.1f}; "
          f"range {min(rss):.1f}-{max(rss):.1f}), fds {warm['fds']} -> {last['fds']}, threads {warm['threads']} -> "
          f"{last['threads']}, children {warm['children']} -> {last['children']}")


def back_to_back(args, base: list[str], work: Path) -> list[dict]:
    from docclassify.engine.kfold import run_kfold
    from docclassify.train import build_callbacks

    print(f"\n{args.runs} back-to-back runs in this process ({args.folds} folds x {args.run_epochs} epoch(s) each, "
          "logger=csv), after each run:")
    print(HEADER + " seconds")
    rows = [reading()]
    print_row("start", rows[0])
    for i in range(args.runs):
        run_dir = work / f"run{i}"
        cfg = compose([*base, f"folds.n={args.folds}", f"trainer.epochs={args.run_epochs}", f"seed={i}",
                       f"trainer.lr={1e-3 * (1 + i % 5)}", "logger=csv", f"paths.output_dir={run_dir}"])
        t0 = time.time()
        run_kfold(cfg, build_callbacks(cfg))
        rows.append(reading())
        print_row(f"run {i + 1}", rows[-1], time.time() - t0)
        shutil.rmtree(run_dir, ignore_errors=True)
    return rows


def epoch_stream(args, base: list[str], work: Path) -> list[dict]:
    from docclassify.engine.kfold import run_kfold
    from docclassify.tracking.callbacks import Callback
    from docclassify.train import build_callbacks

    rows: list[dict] = []
    t0 = [time.time()]

    class EveryEpoch(Callback):
        def on_epoch_end(self, fold, epoch, metrics):
            rows.append(reading())
            if epoch % args.every == 0 or epoch == args.epochs - 1:
                print_row(f"ep {epoch + 1}", rows[-1], time.time() - t0[0])

    print(f"\n{args.epochs} epochs of one fold, {args.workers} loader worker(s), logger=csv; after each epoch "
          f"(every {args.every}th printed; seconds since the start):")
    print(HEADER + " seconds")
    cfg = compose([*base, "folds.n=2", "folds.run=[0]", f"trainer.epochs={args.epochs}", "logger=csv",
                   f"data.num_workers={args.workers}", f"paths.output_dir={work / 'stream'}"])
    run_kfold(cfg, [*build_callbacks(cfg), EveryEpoch()])
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="competition-layout data set (default: synthetic)")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--n-per-class", type=int, default=10, help="size of the generated data set (without --data)")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--img-size", type=int, default=32)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--run-epochs", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=120)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    data = ensure_data(args.data, n_per_class=args.n_per_class, long_side=256, work=args.work)
    print(machine_line())
    base = [*data_overrides(data, args.work / "cache", args.img_size), f"model={args.model}", "model.pretrained=false",
            "trainer.batch_size=16", "data.num_workers=0", "shift.report=false"]
    work = Path(tempfile.mkdtemp(prefix="soak-", dir=args.work))
    try:
        runs = back_to_back(args, base, work) if args.runs else []
        stream = epoch_stream(args, base, work) if args.epochs else []
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    if runs:
        summary(f"{args.runs} runs", runs)
    if stream:
        summary(f"{args.epochs} epochs", stream)
    print(f"load avg at the end: {machine_line().split('load avg ')[1].split(' |')[0]}")


if __name__ == "__main__":
    sys.exit(main())
