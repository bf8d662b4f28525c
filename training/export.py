"""Export a PyTorch LCZ model to the plugin's ONNX model contract, and prove it runs the same.

The exported file has a dynamic batch dimension, opset 17, and the contract's metadata
(:class:`lcz_qgis_plugin.core.model.card.ModelCard`). After writing, the file is run with
onnxruntime on random normalised patches and compared with PyTorch; an export that does not
reproduce the model is deleted and refused.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch

from lcz_qgis_plugin.core.model.card import ModelCard
from lcz_qgis_plugin.core.model.card_writer import write_model_card

OPSET = 17
INPUT_NAME, OUTPUT_NAME = "patches", "logits"
PROBABILITIES_NAME = "probabilities"


class _Probabilities(torch.nn.Module):
    """Exports a model that averages softmaxes (Sen2LCZ-Net) with its probability output."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.probabilities(x)


def _torch_probabilities(model, x: torch.Tensor) -> torch.Tensor:
    if hasattr(model, "probabilities"):
        return model.probabilities(x)
    return torch.softmax(model(x), dim=1)


class ExportError(RuntimeError):
    pass


def export_onnx(model: torch.nn.Module, card: ModelCard, path: str | os.PathLike, *,
                parity_tolerance: float = 1e-4, parity_batch: int = 4, seed: int = 0) -> str:
    """Write ``model`` (returning logits) with ``card`` to ``path`` and check parity."""
    path = os.fspath(path)
    model = model.eval()
    probabilities = card.output_kind == "probabilities"
    if probabilities and not hasattr(model, "probabilities"):
        raise ExportError(f"the card of {card.name} says output_kind=probabilities, but the "
                          "model has no probabilities() method; export its logits instead.")
    graph_model = (_Probabilities(model) if probabilities else model).eval()
    output_name = PROBABILITIES_NAME if probabilities else OUTPUT_NAME
    example = torch.zeros(1, card.n_channels, card.patch_size, card.patch_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(graph_model, example, path, input_names=[INPUT_NAME],
                          output_names=[output_name], opset_version=OPSET, dynamo=False,
                          dynamic_axes={INPUT_NAME: {0: "N"}, output_name: {0: "N"}})
    write_model_card(path, card, path)
    try:
        check_parity(model, path, card, parity_batch, parity_tolerance, seed)
    except ExportError:
        os.remove(path)
        raise
    return path


def check_parity(model, path: str, card: ModelCard, batch: int, tolerance: float,
                 seed: int) -> float:
    """Max difference of onnxruntime's and PyTorch's probabilities on random patches
    (before any calibration temperature, which the plugin applies on top)."""
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, card.n_channels, card.patch_size, card.patch_size))
    x = x.astype(np.float32)
    with torch.no_grad():
        expected = _torch_probabilities(model, torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    output = session.run(None, {INPUT_NAME: x})[0]
    if card.output_kind == "probabilities":
        got = output
    else:
        got = np.exp(output - output.max(axis=1, keepdims=True))
        got /= got.sum(axis=1, keepdims=True)
    difference = float(np.abs(got - expected).max())
    if not difference <= tolerance:
        raise ExportError(f"the ONNX export of {card.name} differs from PyTorch by "
                          f"{difference:.2e} (> {tolerance:g}) on random input; not written.")
    return difference


def card_from_checkpoint(payload: dict, temperature: float = 1.0, version: str | None = None,
                         extra_provenance: dict | None = None) -> ModelCard:
    """The model card of a training checkpoint (``training.train`` writes every field)."""
    from .models import outputs_probabilities
    from .train import model_from_checkpoint

    probabilities = outputs_probabilities(model_from_checkpoint(payload))
    provenance = dict(payload.get("provenance", {}))
    provenance.update(extra_provenance or {})
    return ModelCard(
        name=payload["model"], channels=list(payload["channels"]),
        patch_size=int(payload["patch_size"]), scale=list(payload["card_scale"]),
        offset=list(payload["card_offset"]), mean=list(payload["mean"]),
        std=list(payload["std"]), pixel_size=float(payload["pixel_size"]),
        cell_size=float(payload["cell_size"]), class_codes=list(payload["class_codes"]),
        output_kind="probabilities" if probabilities else "logits",
        temperature=float(temperature),
        version=version or str(payload.get("config", {}).get("version", "0")),
        provenance=provenance)


def export_checkpoint(checkpoint: str, path: str, temperature: float = 1.0,
                      version: str | None = None, precision_data: str | None = "auto",
                      report=print, precisions=("bfloat16", "int8"),
                      calibration_data: str | None = "auto") -> str:
    """``python -m training export``: a training checkpoint → plugin-ready ONNX.

    ``precision_data``: patches on which the reduced-precision engines (``precisions``:
    bfloat16, and the int8 variant written beside ``path``) are compared with float32 and the
    results recorded in the card (:mod:`training.precision`); ``auto`` takes the run's
    validation data (else its training data), ``None`` skips the checks.
    ``calibration_data``: patches that set the int8 variant's activation ranges; ``auto``
    takes the run's training data."""
    from .train import load_checkpoint, model_from_checkpoint

    payload = load_checkpoint(checkpoint)
    model = model_from_checkpoint(payload)
    card = card_from_checkpoint(payload, temperature, version,
                                {"checkpoint": os.path.basename(checkpoint)})
    export_onnx(model, card, path)
    config = payload.get("config", {})
    if precision_data == "auto":
        precision_data = config.get("val") or config.get("train")
    if calibration_data == "auto":
        calibration_data = config.get("train") or precision_data
    if precision_data and precisions:
        _record_precision_checks(path, precision_data, list(precisions), calibration_data,
                                 report)
    return path


def _record_precision_checks(path: str, data: str, precisions: list[str],
                             calibration: str | None, report) -> None:
    """Measure and record the checks; a check that cannot run here only says why (the model
    stays valid, the Automatic device then does not use that precision)."""
    from .precision import record_checks, run_checks
    missing = [p for p in (data, calibration) if p and not os.path.exists(p.split("#")[0])]
    if missing:
        report(f"precision checks not recorded: the patches {missing[0]} are gone; run "
               f"'python -m training check-precision --model {path} --data PATCHES' to add "
               f"them.")
        return
    checks = run_checks(path, data, precisions, calibration, report=report)
    if checks:
        record_checks(path, checks)
