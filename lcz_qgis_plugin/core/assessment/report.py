"""The accuracy report: one self-contained HTML page of the scores :mod:`.accuracy` computed.

The page holds the headline scores, the per-class table, the confusion matrix as a table and
as a figure, and the notes of the comparison. The figure is drawn with matplotlib when it is
available (QGIS ships it) and left out, with a note, when not.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import math
from typing import TYPE_CHECKING

import numpy as np

from ..about import software_tag
from ..commit import Commit
from ..feedback import Feedback
from ..lcz_classes import lcz_class
from .metrics import format_percent

if TYPE_CHECKING:
    from .accuracy import AssessResult

_STYLE = "\n".join((
    "body { font-family: sans-serif; margin: 2em; color: #222; }",
    "table { border-collapse: collapse; margin: 1em 0; }",
    "th, td { border: 1px solid #bbb; padding: 3px 8px; text-align: right; }",
    "th { background: #f0f0f0; } td.d { background: #d8ecd8; font-weight: bold; }",
    "td.t { color: #666; } .sw { display: inline-block; width: 1em; height: 1em; "
    "border: 1px solid #444; vertical-align: middle; }",
    ".note { color: #a33; }"))
"""The report's style sheet (inside ``<style>``)."""


def confusion_figure_png(matrix: np.ndarray, codes: list[int]) -> bytes | None:
    """The confusion matrix (row-normalised colours, counts written) as PNG bytes, or None
    when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure
    except ImportError:
        return None
    index = [c - 1 for c in codes]
    sub = matrix[np.ix_(index, index)].astype(np.float64)
    totals = sub.sum(axis=1, keepdims=True)
    share = np.divide(sub, totals, out=np.zeros_like(sub), where=totals > 0)
    size = 1.2 + 0.45 * len(codes)
    figure = Figure(figsize=(size + 1.2, size))
    axes = figure.add_subplot(1, 1, 1)
    image = axes.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    labels = [lcz_class(c).letter for c in codes]
    axes.set_xticks(range(len(codes)), labels)
    axes.set_yticks(range(len(codes)), labels)
    axes.set_xlabel("predicted LCZ")
    axes.set_ylabel("reference LCZ")
    for i in range(len(codes)):
        for j in range(len(codes)):
            if sub[i, j]:
                axes.text(j, i, f"{int(sub[i, j])}", ha="center", va="center", fontsize=7,
                          color="white" if share[i, j] > 0.5 else "black")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of reference row")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def _pct(value: float) -> str:
    return html.escape(format_percent(value))


def render_html(result: AssessResult, map_path: str, reference: str, title: str) -> str:
    """The report page: scores, per-class table, confusion matrix (table and figure), notes."""
    scores, matrix = result.scores, result.matrix
    present = [c.code for c in result.classes if c.reference or c.predicted]
    png = confusion_figure_png(matrix, present)
    headline = [("Overall accuracy (OA)", _pct(scores["oa"])),
                ("Weighted accuracy (WA, Bechtel et al. 2017)", _pct(scores["wa"])),
                ("OA of the built classes 1-10 (OA_BU)", _pct(scores["oa_bu"])),
                ("OA of the natural classes A-G (OA_N)", _pct(scores["oa_n"])),
                ("Built vs natural accuracy", _pct(scores["oa_built_vs_natural"])),
                ("Cohen's kappa", "n/a" if math.isnan(scores["kappa"])
                 else f"{scores['kappa']:.3f}"),
                ("Macro F1", _pct(scores["f1_macro"])),
                ("Weighted F1", _pct(scores["f1_weighted"])),
                ("Cells assessed", f"{result.samples:,}")]
    head_rows = "\n".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in headline)
    class_rows_html = "\n".join(
        f"<tr><td><span class='sw' style='background:{lcz_class(c.code).colour}'></span> "
        f"{html.escape(c.letter)}</td><td>{html.escape(c.name)}</td><td>{c.reference}</td>"
        f"<td>{c.predicted}</td><td>{_pct(c.producers_accuracy)}</td>"
        f"<td>{_pct(c.users_accuracy)}</td><td>{_pct(c.f1)}</td></tr>"
        for c in result.classes if c.reference or c.predicted)
    index = [c - 1 for c in present]
    letters = [lcz_class(c).letter for c in present]
    matrix_head = "".join(f"<th>{html.escape(x)}</th>" for x in letters)
    matrix_rows = "\n".join(
        f"<tr><th>{html.escape(letters[a])}</th>" + "".join(
            f"<td{' class=d' if a == b else ''}>{matrix[i, j] or ''}</td>"
            for b, j in enumerate(index)) + f"<td class='t'>{matrix[i].sum()}</td></tr>"
        for a, i in enumerate(index))
    col_totals = "".join(f"<td class='t'>{matrix[:, j].sum()}</td>" for j in index)
    figure = (f"<img alt='Confusion matrix' src='data:image/png;base64,"
              f"{base64.b64encode(png).decode('ascii')}'>" if png else
              "<p class='note'>The confusion-matrix figure needs matplotlib, which is not "
              "installed in this Python; the table above holds the same numbers.</p>")
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in result.notes)
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
{_STYLE}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Map: <code>{html.escape(map_path)}</code><br>Reference: <code>{html.escape(reference)}</code><br>
Written {stamp} by {html.escape(software_tag())}.</p>
<h2>Scores</h2>
<table>{head_rows}</table>
<h2>Per class</h2>
<p>Producer's accuracy: share of the reference cells of a class mapped as that class;
user's accuracy: share of the cells mapped as a class that are that class in the reference.</p>
<table><tr><th>LCZ</th><th>Class</th><th>Reference cells</th><th>Mapped cells</th>
<th>Producer's acc.</th><th>User's acc.</th><th>F1</th></tr>
{class_rows_html}</table>
<h2>Confusion matrix</h2>
<p>Rows: reference class; columns: mapped class (cells). Classes absent from both are left out.</p>
<table><tr><th>ref \\ map</th>{matrix_head}<th>total</th></tr>
{matrix_rows}
<tr><th>total</th>{col_totals}<td class='t'>{result.samples}</td></tr></table>
{figure}
{f'<h2>Notes</h2><ul>{notes}</ul>' if notes else ''}
</body></html>
"""


def write_report(path: str, result: AssessResult, map_path: str, reference: str, title: str,
                 feedback: Feedback, files: Commit) -> str:
    """Write the HTML report under its temporary name in ``files`` (put in place at commit)."""
    text = render_html(result, map_path, reference, title)
    files.write_text(path, text, "accuracy report")
    if "data:image/png" not in text:
        feedback.warning("matplotlib is not installed: the report has the confusion matrix "
                         "as a table only.")
    feedback.info(f"Report: {path}")
    return path
