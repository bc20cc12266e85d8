"""`python -m docclassify.audit RUN_DIR`: label issues and near-duplicates of a training run's data.

Writes into RUN_DIR (or ``--out``):

- ``label_issues.csv``: every out-of-fold row, most suspect label first (rank, ID, given,
  suggested, score, ...; cleanlab), and ``label_issues.png``, a picture grid of the top suspects;
- ``duplicates.csv``: near-duplicate pairs within the training images (label conflicts first)
  and between training and test images (leaks);
- ``audit.json``: the settings and counts.

Decisions go into versioned CSV files that training applies: ``data.relabel=FILE`` (ID,target)
and ``data.exclude=FILE`` (ID). The workflow is in docs/data-audit.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from importlib import metadata
from pathlib import Path

from docclassify.audit.duplicate_report import DUPLICATES_CSV, duplicate_report
from docclassify.audit.labels import (
    GRID_SIZE,
    ISSUES_CSV,
    ISSUES_PNG,
    METHODS,
    rank_label_issues,
    suspects_grid,
)
from docclassify.audit.rundir import OOF_VIEWS, AuditError, AuditRun, read_oof, read_run
from docclassify.data.duplicates import DEFAULT_MAX_DISTANCE, DEFAULT_MIN_SIMILARITY
from docclassify.data.sources import DataError, DataSource
from docclassify.utils.io import atomic_write_csv, atomic_write_json
from docclassify.utils.prog import prog

log = logging.getLogger("docclassify.audit")
AUDIT_JSON = "audit.json"


def audit_labels(run: AuditRun, source: DataSource, oof, out: Path, method: str, oof_views: str, top: int) -> dict:
    """label_issues.csv and label_issues.png of the OOF rows (IDs, labels, probabilities); returns their summary."""
    ids, labels, probs = oof
    if len(ids) < len(source.train):
        log.warning("the run's OOF rows cover %d of %d training images (folds.run, data.exclude or skipped "
                    "images): only those are ranked", len(ids), len(source.train))
    table = rank_label_issues(ids, labels, probs, run.classes, method)
    atomic_write_csv(table, out / ISSUES_CSV, float_format="%.6g")
    if top > 0:
        from docclassify.tracking.reports import save_figure

        save_figure(suspects_grid(table, dict(zip(source.train["ID"], source.train["path"])), top), out / ISSUES_PNG)
    n_flagged = int(table["flagged"].sum())
    log.info("label issues: %d of %d OOF rows flagged by cleanlab (%s) -> %s", n_flagged, len(table), method,
             out / ISSUES_CSV)
    return {"file": ISSUES_CSV, "grid": ISSUES_PNG if top > 0 else None, "method": method, "oof": oof_views,
            "n_rows": len(table), "n_flagged": n_flagged}


def audit_duplicates(run: AuditRun, source: DataSource, out: Path, max_distance: int, min_similarity: float,
                     with_test: bool) -> dict:
    """duplicates.csv; returns its summary."""
    report = duplicate_report(source, run.training_labels(), run.cache_dir, max_distance, min_similarity, with_test)
    atomic_write_csv(report, out / DUPLICATES_CSV, float_format="%.4f")
    within = report[report["split"] == "train/train"]
    summary = {"file": DUPLICATES_CSV, "max_distance": max_distance, "min_similarity": min_similarity,
               "train_pairs": len(within), "train_label_conflicts": int(within["label_conflict"].sum()),
               "train_images_in_groups": int(len(set(within["ID_a"]) | set(within["ID_b"]))),
               "train_test_pairs": int((report["split"] == "train/test").sum())}
    log.info("duplicates: %d train/train pair(s) (%d with different labels), %d train/test pair(s) -> %s",
             summary["train_pairs"], summary["train_label_conflicts"], summary["train_test_pairs"],
             out / DUPLICATES_CSV)
    return summary


def run_audit(run_dir: Path, out: Path | None = None, method: str = "self_confidence", oof_views: str = "clean",
              top: int = GRID_SIZE, duplicates: bool = True, with_test: bool = True,
              max_distance: int = DEFAULT_MAX_DISTANCE, min_similarity: float = DEFAULT_MIN_SIMILARITY) -> dict:
    """The whole audit of one run dir; returns what audit.json holds."""
    run = read_run(run_dir)
    oof = read_oof(run, oof_views)  # before the data source: a missing file is reported at once
    out = Path(out) if out else run.path
    out.mkdir(parents=True, exist_ok=True)
    source = run.source()
    summary = {"run_dir": str(run.path), "versions": {p: metadata.version(p) for p in ("cleanlab", "imagehash")},
               "labels": audit_labels(run, source, oof, out, method, oof_views, top)}
    if duplicates:
        summary["duplicates"] = audit_duplicates(run, source, out, max_distance, min_similarity, with_test)
    atomic_write_json(out / AUDIT_JSON, summary)
    return summary


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog("docclassify.audit"), description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run_dir", type=Path, help="a finished run dir of docclassify.train (all folds)")
    p.add_argument("--out", type=Path, default=None, help="where to write the audit files (default: RUN_DIR)")
    p.add_argument("--method", choices=METHODS, default="self_confidence", help="cleanlab's label quality score")
    p.add_argument("--oof", choices=OOF_VIEWS, default="clean",
                   help="clean: oof.csv; clean+robust: each image's clean row averaged with its oof_robust.csv copies")
    p.add_argument("--top", type=int, default=GRID_SIZE, help="images in label_issues.png (0: no picture)")
    p.add_argument("--no-duplicates", action="store_true", help="skip the near-duplicate search")
    p.add_argument("--no-test", action="store_true", help="search duplicates within the training images only")
    p.add_argument("--max-distance", type=int, default=DEFAULT_MAX_DISTANCE,
                   help="pHash bits (of 64) within which two images are candidates")
    p.add_argument("--min-similarity", type=float, default=DEFAULT_MIN_SIMILARITY,
                   help="aligned thumbnail correlation from which a candidate pair is a near-duplicate")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(levelname)s] %(message)s", datefmt="%H:%M:%S")
    problems = [msg for bad, msg in (
        (args.top < 0, f"--top {args.top}: expected 0 or more"),
        (not 0 <= args.max_distance <= 64, f"--max-distance {args.max_distance}: expected 0..64 bits"),
        (not -1.0 <= args.min_similarity <= 1.0, f"--min-similarity {args.min_similarity}: expected -1..1"),
    ) if bad]
    try:
        if problems:
            raise AuditError("; ".join(problems))
        summary = run_audit(args.run_dir, args.out, args.method, args.oof, args.top, not args.no_duplicates,
                            not args.no_test, args.max_distance, args.min_similarity)
    except DataError as exc:  # AuditError included
        print(f"docclassify.audit: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: summary[k] for k in ("labels", "duplicates") if k in summary}))
    return 0
