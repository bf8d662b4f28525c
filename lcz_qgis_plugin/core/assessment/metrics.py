"""LCZ accuracy and calibration metrics, the one implementation used everywhere.

The training package (``python -m training evaluate``) and the plugin's accuracy assessment
both call these functions, so a number in a training report and the same number in a QGIS
report always mean the same thing. numpy only.

Conventions: the confusion matrix has the reference in rows and the prediction in columns,
ordered by LCZ code 1-17 (1-10, then A-G). Cells whose reference or prediction is no-data (0,
or any value outside 1-17) are not counted.

- OA: trace / total.
- WA (Bechtel et al. 2017): sum(W * CM) / sum(CM) with the symmetric similarity matrix
  :data:`WA_WEIGHTS`, which gives partial credit to confusions between similar classes.
- OA_BU: OA inside the built block of the matrix (reference and prediction both in 1-10);
  OA_N: the same for the natural block (A-G). Samples that cross blocks count in
  OA_built_vs_natural, the accuracy of the binary built / natural decision.
- kappa: Cohen's kappa of the full matrix.
- F1 per class (undefined, NaN, for a class absent from both reference and prediction);
  macro F1 over the classes that occur in reference or prediction; weighted F1 by reference
  support.
- ECE / MCE: expected and maximum calibration error over equal-width bins of top-1 confidence.
"""

from __future__ import annotations

import math

import numpy as np

from ..lcz_classes import BUILT_CODES, LCZ_CLASSES, LCZ_CODES, NATURAL_CODES

N_CLASSES = len(LCZ_CODES)

_WA_ROWS = """
1 .92 .83 .67 .58 .50 .58 .75 .42 .75 .33 .25 .08 0 .25 0 0
.92 1 .92 .58 .67 .58 .67 .83 .42 .83 .42 .33 .25 .08 .33 .08 .08
.83 .92 1 .50 .58 .67 .75 .92 .58 .92 .50 .42 .33 .17 .42 .17 .17
.67 .58 .50 1 .92 .83 .75 .50 .75 .58 .50 .58 .50 .33 .08 .33 .33
.58 .67 .58 .92 1 .92 .83 .67 .83 .67 .58 .67 .50 .42 .17 .42 .42
.50 .58 .67 .83 .92 1 .92 .75 .92 .75 .67 .75 .67 .58 .25 .50 .50
.58 .67 .75 .75 .83 .92 1 .67 .83 .67 .75 .67 .58 .42 .17 .42 .42
.75 .83 .92 .50 .67 .75 .67 1 .75 .92 .42 .50 .42 .25 .50 .33 .33
.42 .42 .58 .75 .83 .92 .83 .75 1 .67 .58 .67 .75 .58 .33 .58 .58
.75 .83 .92 .58 .67 .75 .67 .92 .67 1 .42 .50 .42 .25 .50 .33 .33
.33 .42 .50 .50 .58 .67 .75 .42 .58 .42 1 .92 .83 .67 .42 .67 .67
.25 .33 .42 .58 .67 .75 .67 .50 .67 .50 .92 1 .92 .75 .50 .75 .75
.08 .25 .33 .50 .50 .67 .58 .42 .75 .42 .83 .92 1 .83 .58 .83 .83
0 .08 .17 .33 .42 .58 .42 .25 .58 .25 .67 .75 .83 1 .75 .92 .92
.25 .33 .42 .08 .17 .25 .17 .50 .33 .50 .42 .50 .58 .75 1 .75 .75
0 .08 .17 .33 .42 .50 .42 .33 .58 .33 .67 .75 .83 .92 .75 1 .92
0 .08 .17 .33 .42 .50 .42 .33 .58 .33 .67 .75 .83 .92 .75 .92 1
"""

WA_WEIGHTS = np.array([[float(v) for v in row.split()] for row in _WA_ROWS.strip().splitlines()])
"""Bechtel et al. (2017) similarity weights between LCZ classes, rows/columns in code order 1-17."""

_BUILT = np.array([c in BUILT_CODES for c in LCZ_CODES])
_NATURAL = np.array([c in NATURAL_CODES for c in LCZ_CODES])


def confusion_matrix(reference, predicted) -> np.ndarray:
    """17 x 17 counts (int64), reference codes in rows, predicted codes in columns.

    ``reference`` and ``predicted`` are arrays of LCZ codes of the same shape; pairs where
    either is not a code 1-17 (no-data) are skipped.
    """
    ref = np.asarray(reference).ravel().astype(np.int64)
    pred = np.asarray(predicted).ravel().astype(np.int64)
    if ref.shape != pred.shape:
        raise ValueError(f"reference has {ref.size} values but prediction has {pred.size}")
    keep = (ref >= 1) & (ref <= N_CLASSES) & (pred >= 1) & (pred <= N_CLASSES)
    index = (ref[keep] - 1) * N_CLASSES + (pred[keep] - 1)
    return np.bincount(index, minlength=N_CLASSES * N_CLASSES).reshape(N_CLASSES, N_CLASSES)


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else float("nan")


def _block_accuracy(cm: np.ndarray, mask: np.ndarray) -> float:
    block = cm[np.ix_(mask, mask)]
    return _ratio(np.trace(block), block.sum())


def f1_scores(cm: np.ndarray) -> np.ndarray:
    """Per-class F1 in code order; NaN where the class occurs in neither reference nor
    prediction."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    den = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, 2 * tp / np.where(den > 0, den, 1), np.nan)


def accuracy_scores(cm: np.ndarray) -> dict:
    """All LCZ accuracy figures of a confusion matrix (see the module docstring).

    Returns plain Python floats and lists (JSON-ready). Figures that are undefined for this
    matrix (e.g. OA_N when no natural sample exists) are NaN.
    """
    cm = np.asarray(cm, dtype=np.int64)
    if cm.shape != (N_CLASSES, N_CLASSES):
        raise ValueError(f"expected a {N_CLASSES}x{N_CLASSES} confusion matrix, got {cm.shape}")
    total = int(cm.sum())
    diag = np.trace(cm)
    rows = cm.sum(axis=1).astype(np.float64)
    cols = cm.sum(axis=0).astype(np.float64)
    expected = float((rows * cols).sum()) / total**2 if total else float("nan")
    oa = _ratio(diag, total)
    kappa = (oa - expected) / (1 - expected) if total and expected != 1 else float("nan")
    built_ref = cm[_BUILT].sum(axis=0)  # reference built, by predicted column
    natural_ref = cm[_NATURAL].sum(axis=0)
    binary_correct = built_ref[_BUILT].sum() + natural_ref[_NATURAL].sum()
    f1 = f1_scores(cm)
    present = (rows + cols) > 0
    support = rows
    macro = float(np.nanmean(f1[present])) if present.any() else float("nan")
    weighted = _ratio(np.nansum(f1 * support), support.sum())
    return {
        "samples": total,
        "oa": oa,
        "wa": _ratio((WA_WEIGHTS * cm).sum(), total),
        "oa_bu": _block_accuracy(cm, _BUILT),
        "oa_n": _block_accuracy(cm, _NATURAL),
        "oa_built_vs_natural": _ratio(binary_correct, total),
        "kappa": float(kappa),
        "f1_macro": macro,
        "f1_weighted": weighted,
        "f1": {str(c.code): float(f) for c, f in zip(LCZ_CLASSES, f1)},
        "support": {str(c.code): int(s) for c, s in zip(LCZ_CLASSES, rows)},
    }


def calibration(confidence, correct, bins: int = 15) -> dict:
    """ECE and MCE over ``bins`` equal-width bins of top-1 confidence in [0, 1].

    ``confidence``: the top-1 probability of each sample; ``correct``: whether its top-1
    class was right. Returns ece, mce, the bin count and the per-bin table (lower edge,
    upper edge, samples, mean confidence, accuracy) that a reliability diagram plots. Empty
    bins have NaN confidence and accuracy and do not count towards MCE.
    """
    conf = np.asarray(confidence, dtype=np.float64).ravel()
    hit = np.asarray(correct, dtype=bool).ravel()
    if conf.shape != hit.shape:
        raise ValueError("confidence and correct must have the same length")
    if bins < 1:
        raise ValueError("bins must be at least 1")
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bin i holds (edges[i], edges[i+1]]; confidence 0 goes to the first bin.
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    conf_sum = np.bincount(which, weights=conf, minlength=bins)
    hit_sum = np.bincount(which, weights=hit.astype(np.float64), minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / np.maximum(count, 1), np.nan)
        accuracy = np.where(count > 0, hit_sum / np.maximum(count, 1), np.nan)
    gap = np.abs(accuracy - mean_conf)
    n = conf.size
    ece = float(np.nansum(gap * count) / n) if n else float("nan")
    mce = float(np.nanmax(gap)) if (count > 0).any() else float("nan")
    table = [
        {"lower": float(edges[i]), "upper": float(edges[i + 1]), "samples": int(count[i]),
         "confidence": float(mean_conf[i]), "accuracy": float(accuracy[i])}
        for i in range(bins)]
    return {"ece": ece, "mce": mce, "bins": bins, "table": table}


def format_percent(value: float) -> str:
    """'87.1 %' or 'n/a' for an undefined figure (reports and console tables)."""
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f} %"
