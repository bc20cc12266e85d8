"""Local reports a person can open without W&B: confusion matrix, curves, per-class table, report.md.

Everything is drawn on matplotlib ``Figure`` objects (the Agg canvas, no pyplot), so no global
backend state changes and nothing needs a display. Every file is written atomically.

Files a training run dir gets (``LocalReports``: at the end, and after every fold that took a minute or more):

- ``confusion_matrix.png``: pooled out-of-fold predictions of the folds run so far
- ``curves.png``: train/val loss and val macro F1 per epoch, one line per fold
- ``per_class.csv``: precision/recall/F1/support per class for every fold and for the pooled OOF rows
- ``misclassified_fold{k}.png``: the most confidently wrong validation images of fold k
- ``report.md``: a short summary linking them

``write_classification_report(out_dir, y_true, y_pred, classes, title)`` writes the same kind of
report (confusion matrix, per-class CSV, report.md) for any labelled predictions, e.g. inference.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from docclassify import metrics
from docclassify.tracking.callbacks import Callback
from docclassify.utils.io import atomic_write, atomic_write_csv, atomic_write_text
from docclassify.utils.prog import prog

log = logging.getLogger(__name__)

CONFUSION_PNG, CURVES_PNG, PER_CLASS_CSV, REPORT_MD = "confusion_matrix.png", "curves.png", "per_class.csv", "report.md"
MISCLASSIFIED_PNG = "misclassified.png"  # of labelled predictions (a training run has one per fold)
MACRO_ROW = "macro avg"
GRID_SIZE = 16  # images in a misclassified grid (4 x 4)
DPI = 90
# A report between folds costs ~1 s of plotting: written only after folds that took longer than this.
INTERIM_REPORT_MIN_S = 60.0


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------

def per_class_table(y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[str]) -> pd.DataFrame:
    """One row per class: precision, recall, F1, support (true count), predicted (count).

    A class with neither true nor predicted samples gets empty P/R/F1: sklearn's macro average
    (:func:`docclassify.metrics.macro_f1`, what the engine reports) leaves such classes out, so
    the mean of the ``f1`` column equals ``f1_score(y_true, y_pred, average="macro")`` exactly.
    """
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    n = len(classes)
    labels = list(range(n))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    predicted = np.bincount(y_pred, minlength=n)[:n] if len(y_pred) else np.zeros(n, dtype=np.int64)
    df = pd.DataFrame({"class_index": labels, "class": list(classes), "precision": p, "recall": r, "f1": f,
                       "support": s.astype(np.int64), "predicted": predicted.astype(np.int64)})
    absent = (df["support"] == 0) & (df["predicted"] == 0)
    df.loc[absent, ["precision", "recall", "f1"]] = np.nan
    return df


def with_macro_row(df: pd.DataFrame) -> pd.DataFrame:
    """Append the macro-average row (mean over the classes that have a value, counts summed)."""
    row = {"class_index": pd.NA, "class": MACRO_ROW, "precision": df["precision"].mean(),
           "recall": df["recall"].mean(), "f1": df["f1"].mean(), "support": int(df["support"].sum()),
           "predicted": int(df["predicted"].sum())}
    out = pd.concat([df, pd.DataFrame([row])], ignore_index=True)
    out["class_index"] = out["class_index"].astype("Int64")
    return out


def top_confusions(y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[str], k: int = 10) -> list[tuple]:
    """The k most frequent (true, predicted, count) pairs with true != predicted."""
    cm = confusion_matrix(y_true, y_pred, labels=list(range(len(classes))))
    np.fill_diagonal(cm, 0)
    pairs = sorted(zip(*np.nonzero(cm)), key=lambda tp: (-cm[tp], tp))[:k]  # ties: by class index
    return [(classes[t], classes[p], int(cm[t, p])) for t, p in pairs]


def worst_misclassified(probs: np.ndarray, y_true: Sequence[int], k: int = GRID_SIZE) -> np.ndarray:
    """Positions of the wrong predictions with the lowest probability on the true class, worst first."""
    y_true = np.asarray(y_true, dtype=np.int64)
    wrong = np.flatnonzero(probs.argmax(1) != y_true)
    p_true = probs[wrong, y_true[wrong]]
    return wrong[np.argsort(p_true, kind="stable")][:k]


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------

def _short(name: str, n: int = 24) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


def plot_confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[str],
                          title: str = "Confusion matrix") -> Figure:
    """Rows = true class, columns = predicted; colour = share of the row, text = count."""
    n = len(classes)
    cm = confusion_matrix(y_true, y_pred, labels=list(range(n)))
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    side = min(max(6.0, 0.45 * n + 3), 30.0)
    fig = Figure(figsize=(side + 1.5, side))
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    if n <= 60:  # beyond that, labels and counts are unreadable anyway
        labels = [f"{i} {_short(c)}" for i, c in enumerate(classes)]
        ax.set_xticks(range(n), labels=[str(i) for i in range(n)], fontsize=8)
        ax.set_yticks(range(n), labels=labels, fontsize=8)
        for i, j in zip(*np.nonzero(cm)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class (index)")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def _series(hist: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(epochs, values) of ``key`` where it was measured (a view not validated is None)."""
    pairs = [(h["epoch"] + 1, h[key]) for h in hist if h.get(key) is not None]
    return [e for e, _ in pairs], [v for _, v in pairs]


def plot_curves(histories: dict[int, list[dict]], title: str = "Training curves") -> Figure:
    """Left: train loss (solid), val loss on the clean rows (dashed) and on their robust copies
    (dotted); right: val macro F1, clean (circles) and robust (squares, dotted), the best epoch
    (on the monitored value) starred."""
    fig = Figure(figsize=(12, 4.5))
    ax_loss, ax_f1 = fig.subplots(1, 2)
    colors = [f"C{i}" for i in range(10)]
    for i, (fold, hist) in enumerate(sorted(histories.items())):
        if not hist:
            continue
        c = colors[i % len(colors)]
        ax_loss.plot(*_series(hist, "train_loss"), "-", color=c, label=f"fold {fold} train")
        for key, style, name in (("val_loss", "--", "val"), ("val_loss_robust", ":", "val robust")):
            if _series(hist, key)[0]:
                ax_loss.plot(*_series(hist, key), style, color=c, label=f"fold {fold} {name}")
        for key, style, name in (("val_macro_f1", "-o", ""), ("val_macro_f1_robust", ":s", " robust")):
            if _series(hist, key)[0]:
                ax_f1.plot(*_series(hist, key), style, color=c, markersize=3, label=f"fold {fold}{name}")
        ep, monitored = _series(hist, "val_monitored" if "val_monitored" in hist[0] else "val_macro_f1")
        if monitored:
            best = int(np.argmax(monitored))
            ax_f1.plot([ep[best]], [monitored[best]], "*", color=c, markersize=12)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss (train solid, val dashed, val robust dotted)")
    ax_loss.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_f1.xaxis.set_major_locator(MaxNLocator(integer=True))
    monitor = next((h.get("monitor") for hist in histories.values() for h in hist), None) or "clean"
    ax_f1.set(xlabel="epoch", ylabel="macro F1", ylim=(0, 1.02),
              title=f"val macro F1, clean and robust (star = best epoch on {monitor})")
    for ax in (ax_loss, ax_f1):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


CELL_W, CELL_H, CAPTION_H, TITLE_H = 3.2, 3.0, 0.6, 0.45  # inches of an image grid's cell, caption, title


def _mosaic(pics: list[np.ndarray], rows: int, cols: int) -> tuple[np.ndarray, int, int, int]:
    """One white RGB canvas of ``rows x cols`` cells shaped like the figure's (a caption band above
    each image), each image centred in its cell at its own pixel size. Returns (canvas, cell width,
    caption band height, cell height) in pixels."""
    pics = [np.repeat(p[..., None], 3, -1) if p.ndim == 2 else p[..., :3] for p in pics]
    img_h = max(p.shape[0] for p in pics)
    img_w = max(p.shape[1] for p in pics)
    px_per_in = max(img_h / (CELL_H * 0.92), img_w / (CELL_W * 0.96))  # a small margin around each image
    cell_w, cell_h, cap_h = (round(x * px_per_in) for x in (CELL_W, CELL_H, CAPTION_H))
    canvas = np.full((rows * (cap_h + cell_h), cols * cell_w, 3), 255, np.uint8)
    for i, p in enumerate(pics):
        top = (i // cols) * (cap_h + cell_h) + cap_h + (cell_h - p.shape[0]) // 2
        left = (i % cols) * cell_w + (cell_w - p.shape[1]) // 2
        canvas[top:top + p.shape[0], left:left + p.shape[1]] = p
    return canvas, cell_w, cap_h, cell_h


def plot_image_grid(images: Sequence[np.ndarray], captions: Sequence[str], title: str, cols: int = 4) -> Figure:
    """HWC uint8 images with a caption each (e.g. true / predicted label).

    The images are pasted into one canvas drawn on one axes, each caption placed in the band above
    its image: one axes per image made this figure several times slower to render (~0.35 s a fold,
    most of a small run's report time) for the same picture."""
    n = max(len(images), 1)
    cols = min(cols, n)
    rows = int(np.ceil(n / cols))
    height = rows * (CELL_H + CAPTION_H) + TITLE_H
    fig = Figure(figsize=(CELL_W * cols, height))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1 - TITLE_H / height))
    ax.axis("off")
    pics = [np.asarray(img).astype(np.uint8, copy=False) for img in images]
    if pics:
        canvas, cell_w, cap_h, cell_h = _mosaic(pics, rows, cols)
        ax.imshow(canvas, aspect="auto", interpolation="nearest")
        for i, cap in enumerate(captions[: len(pics)]):
            ax.text((i % cols + 0.5) * cell_w, (i // cols) * (cap_h + cell_h) + cap_h * 0.97, cap, fontsize=8,
                    ha="center", va="bottom")
    else:
        ax.text(0.5, 0.5, "no misclassified images", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(title, y=1 - 0.15 / height, va="top")
    return fig


def misclassified_grid(images, rows: Sequence[int], ids: Sequence[str], probs: np.ndarray, y_true: Sequence[int],
                       classes: Sequence[str], title: str, k: int = GRID_SIZE) -> Figure:
    """Grid of the worst-misclassified validation images. ``images[rows[i]]`` is validation sample i."""
    y_true = np.asarray(y_true, dtype=np.int64)
    worst = worst_misclassified(probs, y_true, k)
    pics, caps = [], []
    for i in worst:
        pred = int(probs[i].argmax())
        pics.append(np.asarray(images[int(rows[i])]))
        caps.append(f"{_short(str(ids[i]), 28)}\ntrue: {_short(classes[y_true[i]])} ({probs[i, y_true[i]]:.2f})\n"
                    f"pred: {_short(classes[pred])} ({probs[i, pred]:.2f})")
    return plot_image_grid(pics, caps, title)


def save_figure(fig: Figure, path: str | Path, dpi: int = DPI) -> Path:
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=dpi)
    return Path(path)


def figure_to_pil(fig: Figure, dpi: int = DPI):
    """PNG-rendered PIL image of a figure (what W&B gets)."""
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------

def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return ""
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def _md_table(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _class_sections(y_true, y_pred, classes, table: pd.DataFrame) -> list[str]:
    worst = table.dropna(subset=["f1"]).nsmallest(min(5, len(table)), "f1")
    out = ["## Lowest-F1 classes", "", _md_table(worst[["class_index", "class", "precision", "recall", "f1",
                                                           "support", "predicted"]]), ""]
    conf = top_confusions(y_true, y_pred, classes)
    out += ["## Most frequent confusions (true -> predicted)", ""]
    out += [f"- {t} -> {p}: {c}" for t, p, c in conf] or ["- none"]
    return out + [""]


@dataclass
class Misclassified:
    """What a misclassified-image grid of labelled predictions needs: probabilities (N, C), the
    decoded images (``images[i]`` is sample i, HWC uint8) and the sample IDs."""

    probs: np.ndarray
    images: Any
    ids: Sequence[str]


def write_classification_report(out_dir: str | Path, y_true: Sequence[int], y_pred: Sequence[int],
                                classes: Sequence[str], title: str = "Classification report",
                                grid: Misclassified | None = None,
                                sections: list[str] | None = None) -> dict[str, Path]:
    """Write confusion_matrix.png, per_class.csv and report.md for labelled predictions into out_dir,
    and misclassified.png (the most confidently wrong images) when ``grid`` is given; ``sections``:
    more markdown lines for report.md (e.g. accuracy by orientation).

    y_true / y_pred: class indices into ``classes``. Returns the written paths by kind. The F1 in
    report.md and the mean of per_class.csv's ``f1`` column equal sklearn's macro F1
    (:func:`docclassify.metrics.macro_f1`).
    """
    out_dir = Path(out_dir)
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if len(y_true) != len(y_pred):
        raise ValueError(f"write_classification_report: {len(y_true)} labels but {len(y_pred)} predictions")
    macro, acc = metrics.macro_f1(y_true, y_pred), metrics.accuracy(y_true, y_pred)
    table = per_class_table(y_true, y_pred, classes)
    paths = {"per_class": out_dir / PER_CLASS_CSV, "confusion_matrix": out_dir / CONFUSION_PNG,
             "report": out_dir / REPORT_MD}
    atomic_write_csv(with_macro_row(table), paths["per_class"], float_format="%.6f")
    save_figure(plot_confusion_matrix(y_true, y_pred, classes, f"{title}: macro F1 {macro:.4f}"),
                paths["confusion_matrix"])
    md = [f"# {title}", "", f"- samples: {len(y_true)}", f"- macro F1: {macro:.4f}", f"- accuracy: {acc:.4f}", "",
          f"![confusion matrix]({CONFUSION_PNG})", "",
          f"Per-class precision/recall/F1: [{PER_CLASS_CSV}]({PER_CLASS_CSV})", ""]
    if grid is not None:
        paths["misclassified"] = save_figure(
            misclassified_grid(grid.images, np.arange(len(y_true)), grid.ids, grid.probs, y_true, classes,
                               f"{title}: most confidently wrong"), out_dir / MISCLASSIFIED_PNG)
        md += ["## Most confidently wrong", "", f"![misclassified]({MISCLASSIFIED_PNG})", ""]
    md += list(sections or []) + _class_sections(y_true, y_pred, classes, table)
    atomic_write_text(paths["report"], "\n".join(md))
    return paths


@dataclass
class FoldResult:
    """Validation predictions of one finished fold (at its best epoch) and its epoch history."""

    fold: int
    y_true: np.ndarray
    y_pred: np.ndarray
    history: list[dict] = field(default_factory=list)
    model: str = ""
    best_epoch: int | None = None


def _best_epoch_value(fr: FoldResult, key: str) -> float | None:
    """``key`` of the fold's best epoch in its history (e.g. the robust copies' macro F1), else None."""
    row = next((h for h in fr.history if h.get("epoch") == fr.best_epoch), None)
    value = None if row is None else row.get(key)
    return None if value is None else float(value)


def fold_result_from_outcome(fold: int, outcome: dict[str, Any]) -> FoldResult:
    """From the engine's on_fold_end payload."""
    logits = np.asarray(outcome["val_logits"])
    return FoldResult(fold, np.asarray(outcome["val_targets"], dtype=np.int64), logits.argmax(1).astype(np.int64),
                      list(outcome.get("history", [])), str(outcome.get("model", "")), outcome.get("best_epoch"))


def fold_results_from_run_dir(run_dir: str | Path, results: dict) -> list[FoldResult]:
    """From a finished run dir: oof.csv (ID, target, pred) + folds.csv (ID -> fold) + results.json's folds."""
    run_dir = Path(run_dir)
    oof = pd.read_csv(run_dir / results.get("oof", "oof.csv"), usecols=["ID", "target", "pred"])
    folds = pd.read_csv(run_dir / "folds.csv", usecols=["ID", "fold"])
    oof = oof.merge(folds, on="ID", how="left", validate="one_to_one")
    out = []
    for f in results["folds"]:
        rows = oof[oof["fold"] == f["fold"]]
        out.append(FoldResult(int(f["fold"]), rows["target"].to_numpy(np.int64), rows["pred"].to_numpy(np.int64),
                              list(f.get("history", [])), str(f.get("model", "")), f.get("best_epoch")))
    return out


def run_tables(folds: list[FoldResult], classes: Sequence[str]) -> pd.DataFrame:
    """per_class.csv of a run: the per-class rows (+ macro row) of each fold and of the pooled OOF rows."""
    parts = []
    for fr in folds:
        parts.append(with_macro_row(per_class_table(fr.y_true, fr.y_pred, classes)).assign(scope=f"fold{fr.fold}"))
    y_true = np.concatenate([fr.y_true for fr in folds]) if folds else np.zeros(0, np.int64)
    y_pred = np.concatenate([fr.y_pred for fr in folds]) if folds else np.zeros(0, np.int64)
    parts.append(with_macro_row(per_class_table(y_true, y_pred, classes)).assign(scope="oof"))
    df = pd.concat(parts, ignore_index=True)
    return df[["scope", *[c for c in df.columns if c != "scope"]]]


def pseudo_lines(pseudo: dict | None) -> list[str]:
    """report.md's pseudo-label line (pseudo.source): how many test images trained, per class."""
    if not pseudo:
        return []
    counts = ", ".join(f"{c} {n}" for c, n in pseudo["per_class"].items() if n) or "none"
    return [f"- pseudo-labels: {pseudo['n_added']} of {pseudo['n_pool']} test images from {pseudo['source']} "
            f"({'soft' if pseudo.get('soft') else 'hard'}, weight {pseudo.get('weight')}) trained every fold, "
            f"never validated; per predicted class: {counts}"]


def write_run_report(run_dir: str | Path, folds: list[FoldResult], classes: Sequence[str],
                     results: dict | None = None) -> dict[str, Path]:
    """confusion_matrix.png (pooled OOF), curves.png, per_class.csv and report.md of a training run."""
    run_dir = Path(run_dir)
    folds = sorted(folds, key=lambda fr: fr.fold)
    y_true = np.concatenate([fr.y_true for fr in folds]) if folds else np.zeros(0, np.int64)
    y_pred = np.concatenate([fr.y_pred for fr in folds]) if folds else np.zeros(0, np.int64)
    macro = metrics.macro_f1(y_true, y_pred)
    paths = {"per_class": run_dir / PER_CLASS_CSV, "confusion_matrix": run_dir / CONFUSION_PNG,
             "curves": run_dir / CURVES_PNG, "report": run_dir / REPORT_MD}
    atomic_write_csv(run_tables(folds, classes), paths["per_class"], float_format="%.6f")
    fold_names = ", ".join(str(fr.fold) for fr in folds)
    save_figure(plot_confusion_matrix(y_true, y_pred, classes,
                                      f"OOF confusion matrix (folds {fold_names}): macro F1 {macro:.4f}"),
                paths["confusion_matrix"])
    save_figure(plot_curves({fr.fold: fr.history for fr in folds}, f"Training curves ({run_dir.name})"),
                paths["curves"])

    state = "finished" if results is not None else "in progress"
    md = [f"# Training report: {run_dir.name} ({state})", ""]
    if results is not None:
        md += [f"- cv macro F1 (pooled OOF rows): {results['cv_macro_f1']:.4f}"]
        if results.get("cv_macro_f1_robust") is not None:
            md += [f"- robust cv macro F1 (pooled over {results['n_oof_robust_rows']} distorted copies of the OOF "
                   f"rows): {results['cv_macro_f1_robust']:.4f}"]
        md += [f"- objective ({results.get('monitor', 'clean')}, what picked the best epochs): "
               f"{results.get('objective', results['cv_macro_f1']):.4f}",
               f"- cv accuracy: {results['cv_accuracy']:.4f}",
               f"- mean of fold macro F1: {results['mean_fold_macro_f1']:.4f}",
               f"- OOF rows: {results['n_oof_rows']}, folds run: {results['folds_run']} of {results['n_folds']}",
               f"- pipeline: {results.get('pipeline')}, experiment: {results.get('experiment')}"]
        md += [*pseudo_lines(results.get("pseudo")), ""]
    else:
        md += [f"- OOF macro F1 so far (folds {fold_names}): {macro:.4f}", ""]
    fold_rows = pd.DataFrame([{
        "fold": fr.fold, "model": fr.model, "best epoch": None if fr.best_epoch is None else fr.best_epoch + 1,
        "epochs": len(fr.history), "val macro F1": metrics.macro_f1(fr.y_true, fr.y_pred),
        "val accuracy": metrics.accuracy(fr.y_true, fr.y_pred),
        "robust macro F1": _best_epoch_value(fr, "val_macro_f1_robust"), "val images": len(fr.y_true),
        "misclassified": f"[grid](misclassified_fold{fr.fold}.png)"
        if (run_dir / f"misclassified_fold{fr.fold}.png").is_file() else "",
    } for fr in folds])
    if len(fold_rows) and fold_rows["robust macro F1"].isna().all():  # validation=clean
        fold_rows = fold_rows.drop(columns="robust macro F1")
    if len(fold_rows):
        md += ["## Folds", "", _md_table(fold_rows), ""]
    md += orientation_section(results)
    md += ["## Charts", "", f"![training curves]({CURVES_PNG})", "",
           ("Loss per epoch (train solid, validation dashed, its distorted copies dotted) and validation macro "
            "F1 on the clean rows and on their robust copies (star: the best epoch on the monitored value, "
            "whose weights are the fold's checkpoint)."), "",
           f"![confusion matrix]({CONFUSION_PNG})", "",
           ("Pooled out-of-fold predictions: rows are true classes, columns predicted classes; the colour is "
            "the share of the row, the number the count."), "",
           (f"Per-class precision/recall/F1 per fold and pooled (`scope` = fold*k* or `oof`): "
            f"[{PER_CLASS_CSV}]({PER_CLASS_CSV})"), ""]
    md += _class_sections(y_true, y_pred, classes, per_class_table(y_true, y_pred, classes))
    atomic_write_text(paths["report"], "\n".join(md))
    return paths


def orientation_section(results: dict | None) -> list[str]:
    """report.md's accuracy by orientation: each validation image also seen turned by a known element
    (engine/orientation_head.py), and the robust copies by the turn/mirror they were drawn with, pooled over
    the folds' best epochs; and the orientation head's accuracy on them."""
    orientation = (results or {}).get("orientation")
    if not orientation:
        return []
    views = {"turned copies": orientation, "robust copies": orientation.get("robust")}
    views = {name: v for name, v in views.items() if v}
    rows = pd.DataFrame([{"orientation": c, **{f"accuracy, {name}": v["accuracy_by_orientation"].get(c)
                                               for name, v in views.items()},
                          **{f"images, {name}": v["counts"].get(c, [0, 0])[1] for name, v in views.items()}}
                         for c in ("upright", "turned", "mirrored")
                         if any(c in v["counts"] for v in views.values())])
    md = ["## Accuracy by orientation", "",
          ("Each validation image also seen turned by a known element of the orientation group (the same "
           "copies every epoch; `turned`: a quarter turn, `mirrored`: any mirror image) and, with robust "
           "validation, its distorted copies by the turn/mirror they were drawn with; at each fold's best "
           "epoch, pooled:"), "", _md_table(rows), ""]
    for name, v in views.items():
        if v.get("head_accuracy") is not None:
            md += [f"The orientation head ({orientation['head']}) names the element of {v['head_accuracy']:.1%} "
                   f"of the {name} (chance {v['head_chance']:.1%}).", ""]
    return md


def infer_orientation_section(orientation: dict | None) -> list[str]:
    """The infer test report's accuracy by orientation (predict/upright.py's summary)."""
    if not orientation or not orientation.get("accuracy"):
        return []
    rows = pd.DataFrame([{"orientation": c, "accuracy": v["accuracy"], "images": v["n"]}
                         for c, v in orientation["accuracy"].items()])
    md = ["## Accuracy by orientation", "", f"By the test images' orientation ({orientation['by']}):", "",
          _md_table(rows), ""]
    if orientation.get("turned_back"):
        shares = ", ".join(f"{k} {v:.1%}" for k, v in orientation["turned_back"].items() if v)
        md += [f"Turned back ({orientation.get('estimator')} estimate): {shares}.", ""]
    return md


class LocalReports(Callback):
    """Writes the run dir's report at the end (all folds) and, in long runs, after each fold (folds so far)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.classes: list[str] = []
        self.folds: dict[int, FoldResult] = {}
        self.last_fold: int | None = None

    def on_run_start(self, info):
        self.classes = list(info["classes"])
        self.folds = {}
        self.last_fold = list(info["folds"])[-1] if info.get("folds") else None

    def on_fold_end(self, fold, outcome):
        try:
            self.folds[fold] = fold_result_from_outcome(fold, outcome)
            if outcome.get("images") is not None:
                probs = metrics.softmax(outcome["val_logits"])
                fig = misclassified_grid(outcome["images"], outcome["val_index"], outcome["val_ids"], probs,
                                         outcome["val_targets"], self.classes,
                                         f"fold {fold}: most confidently wrong validation images")
                save_figure(fig, self.run_dir / f"misclassified_fold{fold}.png")
            # After the last fold on_run_end writes the final report; quick folds need no interim one.
            if fold != self.last_fold and float(outcome.get("seconds") or 0) >= INTERIM_REPORT_MIN_S:
                write_run_report(self.run_dir, list(self.folds.values()), self.classes)
        except Exception:  # a report must never cost the training run; the error is logged in full
            log.exception("fold %d: writing the local report failed", fold)

    def on_run_end(self, results):
        try:
            folds = fold_results_from_run_dir(self.run_dir, results)
            paths = write_run_report(self.run_dir, folds, results.get("classes") or self.classes, results)
            log.info("report: %s", paths["report"])
        except Exception:
            log.exception("writing the run report failed (results.json and oof.csv are complete)")


def main(argv: list[str] | None = None) -> None:
    """`python -m docclassify.tracking.reports RUN_DIR`: (re)write the report of a finished run."""
    import argparse
    import json

    ap = argparse.ArgumentParser(prog=prog("docclassify.tracking.reports"), description=main.__doc__)
    ap.add_argument("run_dir", type=Path)
    args = ap.parse_args(argv)
    results = json.loads((args.run_dir / "results.json").read_text())
    paths = write_run_report(args.run_dir, fold_results_from_run_dir(args.run_dir, results), results["classes"],
                             results)
    print(paths["report"])


if __name__ == "__main__":
    main()
