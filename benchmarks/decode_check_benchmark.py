"""What decoding every training image before the first epoch costs (data/cache.py load_images).

    verify only      PIL's verify() of every file: the old pre-flight check of data.cache=false
                     (headers only: a JPEG cut part-way passes it)
    decode check     data.cache=false now: every image decoded and resized once, in threads, dropped
    cache, cold      data.cache=true, empty cache: every image decoded into the memory-mapped cache
    cache, warm      data.cache=true, cache built: the file is mapped (the images' bytes are hashed)

Each is run ``--repeat`` times (the median printed) on the synthetic reference-shaped data set
(1,700 JPEGs, ~600 px long side) unless ``--data`` is given, at each ``--img-size``; next to it the
time one epoch spends decoding the same images without the cache (in one process; loader workers
divide it).

    python benchmarks/decode_check_benchmark.py [--img-size 224 384] [--repeat 3] [--data DIR]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import DEFAULT_WORK, compose, ensure_data, machine_line, timed


def verify_only(paths: list[Path]) -> list[int]:
    from PIL import Image

    bad = []
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as img:
                img.verify()
        except Exception:  # noqa: BLE001 - what the old check did
            bad.append(i)
    return bad


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--img-size", type=int, nargs="+", default=[224, 384])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    data = ensure_data(args.data, work=args.work)

    from docclassify.data import cache
    from docclassify.data.cache import decode_threads, load_images
    from docclassify.data.images import load_image
    from docclassify.data.sources import load_source

    print(machine_line())
    cfg = compose(["data=competition", f"data.root={data}"])
    paths = list(load_source(cfg.data, args.work / "cache").train["path"])
    print(f"data {data}: {len(paths)} training images, {decode_threads()} decode threads, median of {args.repeat}")
    print(f"{'img px':>6} {'what':<16} {'seconds':>8} {'img/s':>8}")
    verify_s = timed(lambda: verify_only(paths), args.repeat)
    print(f"{'-':>6} {'verify only':<16} {verify_s:>8.2f} {len(paths) / verify_s:>8.0f}")
    for size in args.img_size:
        nocache = compose(["data=competition", f"data.root={data}", "data.cache=false"]).data
        withcache = compose(["data=competition", f"data.root={data}", "data.cache=true"]).data
        rows = {"decode check": timed(lambda: load_images(paths, size, nocache, None), args.repeat)}
        cold = []
        for _ in range(args.repeat):
            where = Path(tempfile.mkdtemp(dir=args.work))
            cache._OPEN.clear()
            t0 = time.perf_counter()
            load_images(paths, size, withcache, where)
            cold.append(time.perf_counter() - t0)
            cache._OPEN.clear()
            t0 = time.perf_counter()
            load_images(paths, size, withcache, where)
            rows.setdefault("_warm", []).append(time.perf_counter() - t0)
            shutil.rmtree(where, ignore_errors=True)
        rows["cache, cold"] = statistics.median(cold)
        rows["cache, warm"] = statistics.median(rows.pop("_warm"))
        # What data.cache=false then spends per epoch (one loader process; workers divide it).
        rows["epoch, 1 thread"] = timed(lambda: [load_image(p, size) for p in paths], 1)
        for what, seconds in rows.items():
            print(f"{size:>6} {what:<16} {seconds:>8.2f} {len(paths) / seconds:>8.0f}")
    print(f"load avg at the end: {machine_line().split('load avg ')[1].split(' |')[0]}")


if __name__ == "__main__":
    sys.exit(main())
