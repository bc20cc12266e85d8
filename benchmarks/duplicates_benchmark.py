"""Near-duplicate search (docclassify.data.duplicates): recall on planted copies, false pairs, time.

Copies a competition-layout data set (default: a synthetic one, 17 classes of look-alike document
templates) into ``--work``, plants ``--per-kind`` copies of each kind of docclassify.audit.planted
(resized, re-encoded, cropped, turned, combined) into train/ and into test/, then searches pairs
for a grid of pHash distances and aligned-thumbnail similarities and prints, per setting, the
share of planted copies found (per kind) and the pairs found that were not planted.

    python benchmarks/duplicates_benchmark.py                       # synthetic 30/class, 256 px
    python benchmarks/duplicates_benchmark.py --data DIR --per-kind 20
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _common import DEFAULT_WORK, machine_line


def make_data(args) -> Path:
    from docclassify.audit.planted import plant_copies
    from docclassify.data.synthetic import SyntheticSpec, generate

    out = Path(tempfile.mkdtemp(prefix="dups-", dir=args.work))
    if args.data:
        shutil.copytree(args.data, out, dirs_exist_ok=True)
    else:
        generate(out, SyntheticSpec(n_train_per_class=args.n_per_class, n_test_per_class=args.n_per_class // 2,
                                    long_side=args.long_side, seed=args.seed), progress=False)
    planted = pd.concat([plant_copies(out, args.per_kind, split="train", seed=1),
                         plant_copies(out, args.per_kind, split="test", seed=2)], ignore_index=True)
    return out, planted


def search(root: Path, cache: Path, max_distance: int) -> tuple[pd.DataFrame, dict]:
    """Every hash candidate up to ``max_distance`` with its similarity, as (ID_a, ID_b, split, ...)."""
    from docclassify.data.duplicates import find_duplicates, fingerprints
    from docclassify.data.sources import load_competition

    source = load_competition(root)
    t0 = time.time()
    train_fp = fingerprints(list(source.train["path"]), cache)
    test_fp = fingerprints(list(source.test["path"]), cache)
    t_hash = time.time() - t0
    t0 = time.time()
    frames = []
    for split, other, ids_b in (("train/train", None, source.train["ID"]), ("train/test", test_fp, source.test["ID"])):
        pairs = find_duplicates(train_fp, other, max_distance, min_similarity=-1.0)
        frames.append(pd.DataFrame({"ID_a": source.train["ID"].to_numpy()[pairs["a"]],
                                    "ID_b": ids_b.to_numpy()[pairs["b"]], "split": split,
                                    "distance": pairs["distance"], "similarity": pairs["similarity"]}))
    times = {"images": len(source.train) + len(source.test), "hash_s": t_hash, "search_s": time.time() - t0}
    return pd.concat(frames, ignore_index=True), times


def score(pairs: pd.DataFrame, planted: pd.DataFrame, max_distance: int, min_similarity: float) -> dict:
    found = pairs[(pairs["distance"] <= max_distance) & (pairs["similarity"] >= min_similarity)]
    keys = set(found["key"])
    row = {"max_distance": max_distance, "min_similarity": min_similarity}
    for (split, kind), group in planted.groupby(["split", "kind"], sort=False):
        row[f"{split}:{kind}"] = f"{int(group['key'].isin(keys).sum())}/{len(group)}"
    for split in ("train/train", "train/test"):
        row[f"false {split}"] = int((~found["planted"] & (found["split"] == split)).sum())
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=None, help="a competition-layout folder (copied, never changed)")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK)
    p.add_argument("--n-per-class", type=int, default=30)
    p.add_argument("--long-side", type=int, default=256)
    p.add_argument("--seed", type=int, default=11, help="of the synthetic data set")
    p.add_argument("--per-kind", type=int, default=10)
    p.add_argument("--distances", type=int, nargs="+", default=[8, 12, 16])
    p.add_argument("--similarities", type=float, nargs="+", default=[-1.0, 0.87, 0.89, 0.91, 0.93])
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print(machine_line(), flush=True)
    root, planted = make_data(args)
    try:
        pairs, times = search(root, root / ".cache", max(args.distances))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{times['images']} images ({len(planted)} planted copies): fingerprints {times['hash_s']:.1f}s, "
          f"search {times['search_s']:.1f}s ({len(pairs)} candidate pairs at distance <= {max(args.distances)})")
    planted["key"] = [frozenset(p) for p in zip(planted["ID"], planted["source"])]
    pairs["key"] = [frozenset(p) for p in zip(pairs["ID_a"], pairs["ID_b"])]
    # A pair is true when both images come from one original (two copies of one image match too;
    # a test copy may be a copy of a train copy).
    source = dict(zip(planted["ID"], planted["source"]))

    def origin(i: str) -> str:
        while i in source:
            i = source[i]
        return i

    pairs["planted"] = [origin(a) == origin(b) for a, b in zip(pairs["ID_a"], pairs["ID_b"])]
    rows = [score(pairs, planted, d, s) for d in args.distances for s in args.similarities]
    print(pd.DataFrame(rows).to_markdown(index=False) if _has_tabulate() else pd.DataFrame(rows).to_string())
    distinct = pairs.loc[~pairs["planted"], "similarity"]
    found = pairs[pairs["key"].isin(set(planted["key"]))].set_index("key")
    copies = planted.assign(distance=planted["key"].map(found["distance"]),
                            similarity=planted["key"].map(found["similarity"]))
    print("planted copies by kind: largest pHash distance, smallest similarity (NaN: not a candidate)")
    print(copies.groupby(["split", "kind"])[["distance", "similarity"]].agg({"distance": "max", "similarity": "min"})
          .to_string())
    print(f"similarity of the unplanted candidate pairs: max {distinct.max():.3f}, 99th percentile "
          f"{np.percentile(distinct, 99):.3f}" if len(distinct) else "no unplanted candidate pairs")


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
