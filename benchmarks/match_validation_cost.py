"""Per-sample cost of augment.match_validation next to the basic and advanced sets.

Milliseconds per training sample of ``TrainTransform`` (one process, one thread) on real
synthetic document images of the benchmark data set (~600 px, decoded and resized to the working
size as the decode cache holds them), for: the basic set, the advanced set, the match step alone
(every sample distorted: match_p 1) with the default profile and with every photo step on, and
basic + match at its default share (0.5).

    python benchmarks/match_validation_cost.py                 # 64 128 224 px, 200 samples each
    python benchmarks/match_validation_cost.py --sizes 96 --samples 500
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _common import DEFAULT_WORK, compose, ensure_data, machine_line


def per_sample_ms(transform, images: list[np.ndarray], samples: int) -> float:
    t0 = time.perf_counter()
    for i in range(samples):
        transform.set_epoch(i // len(images))
        transform(images[i % len(images)], i % len(images))
    return 1000 * (time.perf_counter() - t0) / samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 224])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import cv2

    cv2.setNumThreads(1)
    from docclassify.data.augment import TrainTransform
    from docclassify.data.images import image_size, load_image
    from docclassify.distortion import normalise_profile
    from docclassify.distortion.match import MatchValidation

    print(machine_line(), flush=True)
    root = ensure_data(None, work=args.work)
    ids = pd.read_csv(root / "train.csv")["ID"].tolist()[::40][:40]
    paths = [root / "train" / i for i in ids]
    sizes = [image_size(p) for p in paths]
    default = normalise_profile({})
    photo = {**default, **{f"{k}_p": 1.0 for k in ("background", "desk", "shadow", "glare", "channel")}}
    print("| size | basic | advanced | match (default profile) | match (photo steps all on) | basic + match 0.5 |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        images = [load_image(p, size) for p in paths]
        basic, advanced = (compose([f"augment={a}"]).augment for a in ("basic", "advanced"))

        def transform(cfg, profile=None, p=1.0):
            match = None if profile is None else MatchValidation(profile, size, 10, 0, p, p, "pad", 0, sizes)
            return TrainTransform(cfg, size, 10, 0, 0, match=match)

        class MatchOnly:  # the match step alone
            def __init__(self, profile):
                self.m, self.epoch = MatchValidation(profile, size, 10, 0, 1.0, 1.0, "pad", 0, sizes), 0

            def set_epoch(self, epoch):
                self.epoch = epoch

            def __call__(self, image, row):
                return self.m.draw(image, row, self.epoch)

        cells = [per_sample_ms(t, images, args.samples) for t in (
            transform(basic), transform(advanced), MatchOnly(default), MatchOnly(photo),
            transform(basic, default, 0.5))]
        print(f"| {size} px | " + " | ".join(f"{c:.2f} ms" for c in cells) + " |", flush=True)
    print(machine_line())


if __name__ == "__main__":
    main()
