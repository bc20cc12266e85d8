"""Label audit (docclassify.audit) on labels flipped on purpose: how many it ranks on top.

Generates a synthetic training set (17 classes), flips ``--flip`` of its labels to another
class, trains a K-fold run with `python -m docclassify.train`, audits it with
`python -m docclassify.audit`, and prints for each cut of label_issues.csv (top 5%, 10%, 20%, the
rows cleanlab flags) how many of its rows are flipped ones (precision), the share of the
flipped labels it holds (recall), and how often the suggested class is the true one.

    python benchmarks/label_audit_benchmark.py                       # 20/class, 64 px, tiny, 6 epochs
    python benchmarks/label_audit_benchmark.py --n-per-class 60 --train-override model=resnet18 data.img_size=96
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _common import DEFAULT_WORK, REPO, machine_line

TRAIN = ["model=tiny", "model.pretrained=false", "data.img_size=48", "trainer.epochs=6", "trainer.batch_size=16",
         "data.num_workers=0", "logger=none", "folds.n=5"]


def flipped_data(out: Path, n_per_class: int, long_side: int, share: float, seed: int) -> pd.DataFrame:
    from docclassify.data.synthetic import SyntheticSpec, generate

    generate(out, SyntheticSpec(n_train_per_class=n_per_class, n_test_per_class=2, long_side=long_side, seed=seed,
                                imbalance=False), progress=False)
    train = pd.read_csv(out / "train.csv")
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(train), size=round(share * len(train)), replace=False)
    true = train["target"].copy()
    train.loc[rows, "target"] = (true[rows] + rng.integers(1, 17, size=len(rows))) % 17
    train.to_csv(out / "train.csv", index=False)
    return pd.DataFrame({"ID": train["ID"][rows], "true": true[rows]})


def cut_row(name: str, rows: pd.DataFrame, flipped: pd.DataFrame) -> dict:
    hits = rows.merge(flipped, on="ID")
    fixed = round(float((hits["suggested"] == hits["true"]).mean()), 3) if len(hits) else None
    return {"cut": name, "rows": len(rows), "flipped in it": len(hits),
            "precision": round(len(hits) / max(len(rows), 1), 3), "recall": round(len(hits) / len(flipped), 3),
            "suggestion = true label": fixed}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=DEFAULT_WORK)
    p.add_argument("--n-per-class", type=int, default=20)
    p.add_argument("--long-side", type=int, default=64)
    p.add_argument("--flip", type=float, default=0.05, help="share of the labels flipped")
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--method", default="self_confidence")
    p.add_argument("--train-override", nargs="*", default=[], help="extra overrides of the training run")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print(machine_line(), flush=True)
    work = Path(tempfile.mkdtemp(prefix="label-audit-", dir=args.work))
    flipped = flipped_data(work / "data", args.n_per_class, args.long_side, args.flip, args.seed)
    overrides = ["data=competition", f"data.root={work / 'data'}", *TRAIN, *args.train_override,
                 f"hydra.run.dir={work / 'run'}"]
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "docclassify.train", *overrides], check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL)
    t_train = time.time() - t0
    subprocess.run([sys.executable, "-m", "docclassify.audit", str(work / "run"), "--method", args.method,
                    "--no-duplicates"], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    results = json.loads((work / "run" / "results.json").read_text())
    table = pd.read_csv(work / "run" / "label_issues.csv")
    print(f"{len(table)} training images, {len(flipped)} labels flipped ({args.flip:.0%}); training "
          f"{' '.join(overrides[2:-1])}: cv macro F1 {results['cv_macro_f1']:.3f} (against the flipped labels), "
          f"{t_train:.0f}s; audit --method {args.method}; run dir {work / 'run'}")
    n = len(table)
    rows = [cut_row(f"top {q:.0%}", table.head(round(q * n)), flipped) for q in (0.05, 0.10, 0.20)]
    rows.append(cut_row("flagged by cleanlab", table[table["flagged"]], flipped))
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
