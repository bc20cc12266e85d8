"""Label issues: training images whose given label their out-of-fold prediction disputes, ranked
with cleanlab (``cleanlab.rank.get_label_quality_scores`` for the score of every image,
``cleanlab.filter.find_label_issues`` for the ones it flags as likely wrong).

cleanlab is Apache-2.0 from version 2.8 (earlier versions are AGPL-3.0); docclassify requires
``cleanlab>=2.8``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from docclassify.audit.rundir import AuditError

METHODS = ("self_confidence", "normalized_margin")
ISSUES_CSV, ISSUES_PNG = "label_issues.csv", "label_issues.png"
GRID_SIZE = 16


def rank_label_issues(ids: np.ndarray, labels: np.ndarray, probs: np.ndarray, classes: list[str],
                      method: str = "self_confidence") -> pd.DataFrame:
    """Every OOF row, most suspect first: rank, ID, given, suggested (indices and names), score
    (cleanlab's label quality, 0..1, low = suspect), p_given, p_suggested, flagged (cleanlab's
    find_label_issues)."""
    if method not in METHODS:
        raise AuditError(f"--method {method}: expected one of {', '.join(METHODS)}")
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    try:
        scores = get_label_quality_scores(labels, probs, method=method)
        flagged_rows = find_label_issues(labels, probs, return_indices_ranked_by=method, n_jobs=1)
    except (ValueError, AssertionError) as exc:  # cleanlab's checks of labels vs probabilities
        raise AuditError(f"cleanlab cannot rank these OOF rows ({len(labels)} rows, {probs.shape[1]} classes): "
                         f"{exc}") from exc
    suggested = probs.argmax(1)
    rows = np.arange(len(labels))
    table = pd.DataFrame({
        "ID": ids, "given": labels, "given_name": [classes[t] for t in labels],
        "suggested": suggested, "suggested_name": [classes[t] for t in suggested],
        "score": scores, "p_given": probs[rows, labels], "p_suggested": probs[rows, suggested],
        "flagged": np.isin(rows, flagged_rows),
    })
    table = table.sort_values(["score", "ID"], kind="stable").reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table


def suspects_grid(table: pd.DataFrame, paths: Mapping[str, Path], k: int = GRID_SIZE, size: int = 192):
    """Picture grid (tracking.reports.plot_image_grid) of the ``k`` most suspect images with
    their given and suggested class names and score."""
    from docclassify.data.images import load_image
    from docclassify.tracking.reports import _short, plot_image_grid

    top = table.head(k)
    images = [load_image(paths[i], size, "pad", 255) for i in top["ID"]]
    captions = [f"#{r.rank} {_short(r.ID, 22)}  score {r.score:.3f}\ngiven: {_short(r.given_name)} ({r.p_given:.2f})\n"
                f"suggested: {_short(r.suggested_name)} ({r.p_suggested:.2f})" for r in top.itertuples()]
    return plot_image_grid(images, captions, f"Label audit: the {len(top)} most suspect training labels "
                                             f"(of {len(table)}; low score = suspect)")
