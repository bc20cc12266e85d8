"""A repeated infer of the same runs and views (issue 30 item 3, ``reuse_logits``): seconds of the first
infer (every fold prediction made and stored) and of the second (every one read from the logit store).

Trains ``--runs`` runs of ``--folds`` folds of a timm test model on a small synthetic data set (once, in
the work dir), then per TTA option: an infer with reuse_logits=false (builds the decode caches: not timed
against the others), the first infer with an empty logit store, the same infer again. The outputs of the
three are compared byte for byte.

    python benchmarks/infer_reuse_benchmark.py                         # 2 runs x 2 folds, tta=orient and auto
    python benchmarks/infer_reuse_benchmark.py --runs 5 --folds 5 --model convnext_atto --img-size 128
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import DEFAULT_WORK, REPO, machine_line

OUT_FILES = ("submission.csv", "test_probs.csv")


def make_data(work: Path, n_train: int, n_test: int, long_side: int) -> Path:
    from docclassify.data.synthetic import SyntheticSpec, generate

    out = work / f"data-{n_train}x{n_test}x{long_side}"
    if not (out / "train.csv").is_file():
        generate(out, SyntheticSpec(n_train_per_class=n_train, n_test_per_class=n_test, long_side=long_side, seed=1,
                                    imbalance=False), progress=False)
    return out


def train(run_dir: Path, data: Path, cache: Path, args, seed: int) -> Path:
    if (run_dir / "results.json").is_file():
        return run_dir
    model = ["model=tiny", "model.pretrained=false"] if args.model == "tiny" else [f"model={args.model}",
                                                                                   "model.pretrained=false"]
    cmd = [sys.executable, "-m", "docclassify.train", "data=competition", f"data.root={data}", *model,
           f"data.img_size={args.img_size}", f"trainer.epochs={args.epochs}", "trainer.batch_size=32",
           f"folds.n={args.folds}", f"seed={seed}", "logger=none", "submit=false", f"paths.cache_dir={cache}",
           f"hydra.run.dir={run_dir}"]
    t0 = time.time()
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True)
    print(f"trained {run_dir.name} in {time.time() - t0:.0f}s", flush=True)
    return run_dir


def infer(runs: list[Path], out_dir: Path, cache: Path, tta: str, *extra: str) -> tuple[float, dict, dict]:
    from hydra import compose, initialize_config_dir

    from docclassify.config import CONF_DIR
    from docclassify.predict.pipeline import run_inference

    t0 = time.time()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("infer", overrides=[f"runs=[{','.join(map(str, runs))}]", f"tta={tta}",
                                          f"paths.cache_dir={cache}", *extra])
    summary = run_inference(cfg, out_dir)
    seconds = time.time() - t0
    return seconds, summary["logits_reused"], {f: (out_dir / f).read_bytes() for f in OUT_FILES}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--train-per-class", type=int, default=12)
    ap.add_argument("--test-per-class", type=int, default=6)
    ap.add_argument("--tta", nargs="+", default=["orient", "auto"])
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK / "infer_reuse")
    args = ap.parse_args()

    import logging

    logging.basicConfig(level=logging.WARNING)
    work = args.work.expanduser()
    cache = work / "cache"
    data = make_data(work, args.train_per_class, args.test_per_class, 160)
    runs = [train(work / f"run-{args.model}-{args.img_size}-{args.folds}f-{i}", data, cache, args, seed=i)
            for i in range(args.runs)]
    print(machine_line())
    print(f"{args.runs} runs x {args.folds} folds, {args.model} at {args.img_size} px, "
          f"{17 * args.test_per_class} test images, {17 * args.train_per_class} training images")
    print(f"{'tta':<8}{'off s':>8}{'first s':>9}{'second s':>10}{'first/second':>14}{'computed':>10}{'read':>6}"
          f"  same bytes")
    for tta in args.tta:
        shutil.rmtree(cache / "logits", ignore_errors=True)
        off, _, off_files = infer(runs, work / f"infer-{tta}-off", cache, tta, "reuse_logits=false")
        first, c1, first_files = infer(runs, work / f"infer-{tta}-1", cache, tta)
        second, c2, second_files = infer(runs, work / f"infer-{tta}-2", cache, tta)
        same = off_files == first_files == second_files
        print(f"{tta:<8}{off:>8.1f}{first:>9.1f}{second:>10.1f}{first / second:>13.1f}x{c1['computed']:>10}"
              f"{c2['read']:>6}  {same}")


if __name__ == "__main__":
    main()
