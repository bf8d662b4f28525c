"""``evaluate``, ``compare`` and ``calibrate``: LCZ metrics of a model on held-out patches.

All figures come from :mod:`lcz_qgis_plugin.core.assessment.metrics` (the same code the
plugin's accuracy assessment uses). A model is either an exported ``.onnx`` file, run through
the plugin's own engine exactly as ``lcz:classify`` runs it (including its calibration
temperature), or a training checkpoint ``.pt``.

Temperature scaling (Guo et al. 2017) fits one scalar T > 0 on the validation set by
minimising the cross-entropy of softmax(z / T); z are the logits, or for a model that outputs
averaged probabilities (Sen2LCZ-Net) the log of those probabilities. T is searched on log T
(bounded 1-D minimisation), then stored in the ONNX model card, where the plugin applies it.

A dense model (``lcz.model_kind`` dense) is evaluated on a tile file, per labelled pixel and
per output cell, the cell figures being the headline (:mod:`training.dense_evaluation`), and
calibrated on the logits of labelled pixels. Until the plugin's engine runs dense models, an
exported dense model runs in onnxruntime on the CPU here.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os

import numpy as np

from lcz_qgis_plugin.core.assessment.metrics import (
    accuracy_scores,
    calibration,
    confusion_matrix,
    format_percent,
)
from lcz_qgis_plugin.core.commit import Commit
from lcz_qgis_plugin.core.interrupt import stop_if_requested
from lcz_qgis_plugin.core.lcz_classes import LCZ_CLASSES
from lcz_qgis_plugin.core.model.card import TEMPERATURE_RANGE, ModelCard, softmax

from . import datasets as ds
from .progress import progress_bar


class EvaluationError(RuntimeError):
    pass


class Predictor:
    """Raw outputs (logits or probabilities, per the card) for normalised patches."""

    def __init__(self, path: str, device: str = "cpu"):
        self.path = path
        if path.endswith(".onnx"):
            from lcz_qgis_plugin.core.errors import LczError
            from lcz_qgis_plugin.core.inference.engine import Engine
            from lcz_qgis_plugin.core.model.card_file import check_model_file
            try:
                card = check_model_file(path)
                if card.is_dense and device == "cpu":
                    self.engine = _DenseSession(path)
                elif card.is_dense:  # another engine (precision checks): the plugin's own
                    self.engine = _DenseEngine(Engine(path, device=device))
                else:
                    self.engine = Engine(path, device=device)
            except LczError as exc:
                raise EvaluationError(str(exc)) from None
            self.card: ModelCard = card if card.is_dense else self.engine.card
            self.model = None
        else:
            from .export import card_from_checkpoint
            from .train import load_checkpoint, model_from_checkpoint
            payload = load_checkpoint(path)
            self.model = model_from_checkpoint(payload)
            self.card = card_from_checkpoint(payload)
            self.engine = None

    def raw(self, x: np.ndarray) -> np.ndarray:
        if self.engine is not None:
            return self.engine.run(np.ascontiguousarray(x, dtype=np.float32))
        import torch
        with torch.no_grad():
            t = torch.from_numpy(x)
            if self.card.output_kind == "probabilities":
                return self.model.probabilities(t).numpy()
            return self.model(t).numpy()


class _DenseSession:
    """A dense model in onnxruntime on the CPU: raw output ``N x K x H x W`` for a batch of
    normalised tiles of any size (evaluate, calibrate, and the float32 reference of the
    precision checks)."""

    def __init__(self, path: str):
        import onnxruntime as ort
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]


class _DenseEngine:
    """A dense model in the plugin's engine for another DEVICE than onnxruntime's CPU (e.g.
    OpenVINO bfloat16 for ``check-precision``), run on tiles of the size it is given: OpenVINO
    compiles the model for each tile shape once."""

    def __init__(self, engine):
        self.engine = engine

    def run(self, x: np.ndarray) -> np.ndarray:
        self.engine.use_tile_size(x.shape[2])
        return self.engine.run(x)


def scores_of(raw: np.ndarray, card: ModelCard) -> np.ndarray:
    """z in float64: logits, or log-probabilities for a probability model; the card's rule
    (:meth:`ModelCard.scores`), whose :func:`softmax` gives the calibrated probabilities."""
    return card.scores(raw, np.float64)


def predict(predictor: Predictor, data: str, batch_size: int = 256, limit: int = 0):
    """(reference codes, z scores) for every patch of ``data`` (path or path#split)."""
    card = predictor.card
    try:
        source, rows = ds.open_source(data, card.channels)
    except ds.DataError as exc:
        raise EvaluationError(str(exc)) from None
    if source.sample_kind == "tiles":
        raise EvaluationError(f"{data.partition('#')[0]} is a tile file (for dense models); "
                              f"{card.name} is a patch model: evaluate it on patches "
                              f"(lcz:extractpatches with SAMPLES patches).")
    if source.patch_size != card.patch_size:
        raise EvaluationError(f"{data} holds {source.patch_size}px patches, the model takes "
                              f"{card.patch_size}px.")
    rows = np.arange(len(source)) if rows is None else np.sort(rows)
    if limit:
        rows = rows[:limit]
    z = np.empty((len(rows), card.n_classes))
    starts = range(0, len(rows), batch_size)
    for start in progress_bar(starts, len(starts), f"{os.path.basename(predictor.path)} on "
                              f"{len(rows)} patches"):
        stop_if_requested()  # Ctrl+C / SIGTERM (training CLI), once per batch
        x = card.standardise(source.read(rows[start:start + batch_size]))
        z[start:start + len(x)] = scores_of(predictor.raw(x), card)
    return source.codes[rows], z


def _patch_report(predictor: Predictor, data: str, bins: int, batch_size: int,
                  limit: int) -> tuple[dict, np.ndarray, dict]:
    """(figures, confusion matrix, calibration) of a patch model, one sample per patch."""
    card = predictor.card
    reference, z = predict(predictor, data, batch_size, limit)
    probs = softmax(z, card.temperature)
    codes = np.asarray(card.class_codes)
    predicted = codes[probs.argmax(axis=1)]
    cm = confusion_matrix(reference, predicted)
    scores = accuracy_scores(cm)
    cal = calibration(probs.max(axis=1), predicted == reference, bins)
    return ({**scores, "ece": cal["ece"], "mce": cal["mce"], "calibration": cal,
             "confusion_matrix": cm.tolist()}, cm, cal)


def evaluate(model: str, data: str, out: str, name: str | None = None, bins: int = 15,
             batch_size: int = 256, limit: int = 0) -> dict:
    """The LCZ figures of ``model`` on ``data``, written to ``out``: report.json, report.md,
    confusion_matrix.csv/.png, reliability.png (a dense model: per cell, with the per-pixel
    figures in the report and confusion_matrix_pixels.csv)."""
    predictor = Predictor(model)
    card = predictor.card
    if card.is_dense:
        from .dense_evaluation import dense_report
        figures, cm, cal = dense_report(predictor, data, bins, batch_size, limit)
    else:
        figures, cm, cal = _patch_report(predictor, data, bins, batch_size, limit)
    report = {"name": name or os.path.splitext(os.path.basename(model))[0], "model": model,
              "data": data, "temperature": card.temperature, **figures}
    with Commit(inputs=[model, data.split("#")[0]]) as files:  # all the files, or none
        files.write_text(os.path.join(out, "confusion_matrix.csv"), confusion_csv(cm),
                         "confusion matrix")
        if card.is_dense:
            files.write_text(os.path.join(out, "confusion_matrix_pixels.csv"),
                             confusion_csv(np.asarray(figures["pixels"]["confusion_matrix"])),
                             "confusion matrix per pixel")
        _save_figure(files, os.path.join(out, "confusion_matrix.png"),
                     confusion_figure(cm, report["name"]))
        _save_figure(files, os.path.join(out, "reliability.png"),
                     reliability_figure(cal, report["name"]))
        files.write_text(os.path.join(out, "report.json"),
                         json.dumps(_json_safe(report), indent=2), "evaluation report")
        files.write_text(os.path.join(out, "report.md"), comparison_table([report]),
                         "evaluation table")
    return report


def _save_figure(files: Commit, path: str, fig) -> None:
    try:
        files.save_with(path, lambda temp: fig.savefig(temp, format="png"), "figure")
    finally:
        _pyplot().close(fig)


def _json_safe(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def confusion_csv(cm: np.ndarray) -> str:
    """The confusion matrix as CSV text (rows: reference, columns: predicted, totals)."""
    labels = [c.label for c in LCZ_CLASSES]
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(["reference \\ predicted"] + labels + ["total"])
    for label, row in zip(labels, cm):
        writer.writerow([label] + [int(v) for v in row] + [int(row.sum())])
    writer.writerow(["total"] + [int(v) for v in cm.sum(axis=0)] + [int(cm.sum())])
    return buffer.getvalue()


def write_confusion_csv(cm: np.ndarray, path: str) -> None:
    with Commit() as files:
        files.write_text(os.fspath(path), confusion_csv(cm), "confusion matrix")


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def confusion_figure(cm: np.ndarray, title: str):
    """The confusion matrix figure (row shares as colours, counts written)."""
    plt = _pyplot()
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    fig, ax = plt.subplots(figsize=(7.5, 6.5), dpi=100)
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    labels = [c.label for c in LCZ_CLASSES]
    short = [label.split()[1] for label in labels]  # "1" ... "10", "A" ... "G"
    ax.set_xticks(range(len(labels)), short, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("predicted LCZ")
    ax.set_ylabel("reference LCZ")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=5,
                        color="white" if share[i, j] > 0.5 else "black")
    ax.set_title(f"{title}: confusion matrix (row shares, counts)", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def reliability_figure(cal: dict, title: str):
    """The reliability diagram: accuracy per confidence bin against the diagonal."""
    plt = _pyplot()
    table = cal["table"]
    centres = [(b["lower"] + b["upper"]) / 2 for b in table]
    width = 1.0 / cal["bins"]
    accuracy = [0 if math.isnan(b["accuracy"]) else b["accuracy"] for b in table]
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.bar(centres, accuracy, width=width * 0.95, color="#4477aa", label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("top-1 confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}: ECE {100 * cal['ece']:.1f} %, MCE {100 * cal['mce']:.1f} % "
                 f"({cal['bins']} bins)", fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


COLUMNS = [("OA", "oa"), ("WA", "wa"), ("OA_BU", "oa_bu"), ("OA_N", "oa_n"),
           ("built/natural", "oa_built_vs_natural"), ("kappa", "kappa"),
           ("F1 macro", "f1_macro"), ("F1 weighted", "f1_weighted"), ("ECE", "ece"),
           ("MCE", "mce")]


def comparison_table(reports: list[dict]) -> str:
    """A markdown table of several runs side by side (one row per run)."""
    head = "| run | samples | " + " | ".join(c for c, _ in COLUMNS) + " |\n"
    rule = "|---|---:|" + "---:|" * len(COLUMNS) + "\n"
    lines = []
    for r in reports:
        cells = []
        for _, key in COLUMNS:
            value = r.get(key)
            value = float("nan") if value is None else value
            cells.append(f"{value:.3f}" if key == "kappa" and not math.isnan(value)
                         else format_percent(value))
        lines.append(f"| {r['name']} | {r['samples']} | " + " | ".join(cells) + " |\n")
    return head + rule + "".join(lines)


def compare(report_paths: list[str]) -> str:
    reports = []
    for path in report_paths:
        if os.path.isdir(path):
            path = os.path.join(path, "report.json")
        try:
            with open(path, encoding="utf-8") as f:
                reports.append(json.load(f))
        except (OSError, ValueError) as exc:
            raise EvaluationError(f"cannot read the report {path}: {exc}") from None
    return comparison_table(reports)


# -- temperature scaling -------------------------------------------------------------------------
def nll(z: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    s = z / temperature
    s = s - s.max(axis=1, keepdims=True)
    log_p = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), labels].mean())


def fit_temperature(z: np.ndarray, labels: np.ndarray) -> float:
    """T minimising the validation cross-entropy; 1-D bounded search on log T within the
    model contract's temperature range (0.05-20: a card outside it is refused)."""
    from scipy.optimize import minimize_scalar

    low, high = TEMPERATURE_RANGE
    result = minimize_scalar(lambda log_t: nll(z, labels, math.exp(log_t)),
                             bounds=(math.log(low), math.log(high)), method="bounded",
                             options={"xatol": 1e-5})
    return float(min(max(math.exp(result.x), low), high))


def temperature_bound_note(temperature: float) -> str | None:
    """What to say when the fitted temperature sits at the contract's bound (the best one lies
    beyond it), else None."""
    low, high = TEMPERATURE_RANGE
    if low * 1.001 < temperature < high / 1.001:
        return None
    if temperature <= low * 1.001:
        bound, why = low, "the model is far less confident than it is right on these patches"
    else:
        bound, why = high, "the model is far more confident than it is right on these patches"
    return (f"the fitted temperature is the model contract's bound {bound:g} (allowed "
            f"{low:g}-{high:g}): {why}, or there are too few of them to calibrate on; "
            f"{bound:g} is stored. Calibrate on more, and more varied, validation patches.")


def calibrate(model: str, data: str, out: str, bins: int = 15, batch_size: int = 256) -> dict:
    """Fit T on ``data`` (validation patches) and write ``out``: the model with T in its card."""
    if not model.endswith(".onnx"):
        raise EvaluationError("calibrate works on an exported .onnx model (python -m training "
                              "export first); the temperature goes into its model card.")
    predictor = Predictor(model)
    card = predictor.card
    if card.is_dense:  # the logits of labelled pixels
        from .dense_evaluation import calibration_pixels
        reference, z = calibration_pixels(predictor, data, batch_size)
    else:
        reference, z = predict(predictor, data, batch_size)
    lookup = {c: i for i, c in enumerate(card.class_codes)}
    keep = np.array([c in lookup for c in reference])
    if not keep.any():
        raise EvaluationError(f"{data} holds no sample of the model's classes.")
    labels = np.array([lookup[c] for c in reference[keep]])
    z = z[keep]
    temperature = fit_temperature(z, labels)

    def ece(t):
        p = softmax(z, t)
        return calibration(p.max(axis=1), p.argmax(axis=1) == labels, bins)

    before, after = ece(card.temperature), ece(temperature)
    summary = {"temperature": temperature, "fitted_on": data, "samples": int(keep.sum()),
               **({"unit": "pixels"} if card.is_dense else {}), "bins": bins,
               "ece_before": before["ece"], "ece_after": after["ece"],
               "mce_before": before["mce"], "mce_after": after["mce"],
               "nll_before": nll(z, labels, card.temperature),
               "nll_after": nll(z, labels, temperature)}
    note = temperature_bound_note(temperature)
    if note:
        summary["note"] = note
    from lcz_qgis_plugin.core.model.card_writer import copy_with_card
    card.temperature = temperature
    card.provenance = dict(card.provenance, calibration=summary)
    copy_with_card(model, card, out)
    return summary
