"""Which distortion costs a trained run the most? Robust OOF macro F1 with each step of the
validation profile switched off in turn (and each step alone), on the run's own fold models.

For a run trained with a robust view (validation=both|robust), every variant of its profile
(`<step>_p=0`: without that step; `only <step>`: that step alone) is applied to the same copies
(each step draws from its own generator, so switching one off leaves the others' draws alone:
docclassify/distortion/draw.py), every training row is predicted by the fold that did not train on it, and the
pooled macro F1 over the copies is printed next to the clean cv and the full profile's figure.

    python benchmarks/robust_profile_ablation.py RUN_DIR
    python benchmarks/robust_profile_ablation.py RUN_DIR --only      # also each step alone
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import _common  # noqa: F401  (puts the repository on sys.path)

STEP_KEYS = {"occlusion": "occlusion_p", "flip": "flip_p", "rot90": "rot90_p", "angle": "angle_p",
             "perspective": "perspective_p", "crop": "crop_p", "color": "color_p", "blur": "blur_p",
             "noise": "noise_p", "jpeg": "jpeg_p"}


def robust_f1(run, ds, profile: dict, batch_size: int) -> float:
    import numpy as np
    import torch

    from docclassify.data.validation import robust_copies
    from docclassify.distortion.copies import RobustSpec, copy_rows
    from docclassify.metrics import macro_f1
    from docclassify.models.checkpoint import load_checkpoint
    from docclassify.predict.run_dirs import fold_of_ids
    from docclassify.predict.tta import View
    from docclassify.predict.views import predict_rows

    validation = run.results["validation"]
    spec = RobustSpec(profile, int(validation["copies"]), int(validation["seed"]))
    train = ds.source.train
    folds = fold_of_ids(run, train["ID"].to_numpy(dtype=str))
    preds, targets = [], []
    arrays = {}
    for fm in run.folds:
        model, ckpt = load_checkpoint(fm.checkpoint)
        meta = ckpt["meta"]
        key = (meta["img_size"], meta["resize"], meta["pad_value"])
        if key not in arrays:
            arrays[key] = robust_copies(list(train["path"]), list(train["ID"]), spec, *key, None)
        rows = copy_rows(np.flatnonzero(folds == fm.fold), spec.copies)
        _, logits = predict_rows(model, arrays[key], rows, meta, [View("identity")], "prob", batch_size,
                                 torch.device("cpu"))
        preds.append(logits.argmax(1))
        targets.append(np.repeat(train["target"].to_numpy()[folds == fm.fold], spec.copies))
    return macro_f1(np.concatenate(targets), np.concatenate(preds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--only", action="store_true", help="also score each step alone")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from docclassify.predict.run_dirs import load_run
    from docclassify.predict.testdata import load_data

    run = load_run(args.run_dir)
    if not run.has_robust:
        raise SystemExit(f"{args.run_dir}: trained without a robust view (validation=clean)")
    (ds,) = load_data([run], {}, os.environ.get("DOCCLASSIFY_CACHE", str(Path.home() / ".cache" / "docclassify")))
    profile = dict(run.results["validation"]["profile"])
    rows = [("clean (no distortion)", run.cv_macro_f1), ("full profile", robust_f1(run, ds, profile, args.batch_size))]
    print(json.dumps({"run": str(args.run_dir), "cv_macro_f1": run.cv_macro_f1,
                      "cv_macro_f1_robust": run.cv_macro_f1_robust, "recomputed_full": rows[1][1]}), flush=True)
    off = {k: 0.0 for k in STEP_KEYS.values()}
    for step, key in STEP_KEYS.items():
        if profile[key] > 0:
            rows.append((f"without {step}", robust_f1(run, ds, {**profile, key: 0.0}, args.batch_size)))
            if args.only:
                rows.append((f"only {step}", robust_f1(run, ds, {**profile, **off, key: profile[key]},
                                                       args.batch_size)))
            print(rows[-1], flush=True)
    full = rows[1][1]
    print(f"\n{args.run_dir}: robust OOF macro F1 per profile variant")
    print("| variant | robust OOF macro F1 | vs full profile |")
    print("|---|---|---|")
    for name, f1 in rows:
        print(f"| {name} | {f1:.3f} | {f1 - full:+.3f} |")


if __name__ == "__main__":
    main()
