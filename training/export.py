"""Export a PyTorch LCZ model to the plugin's ONNX model contract, and prove it runs the same.

The exported file has a dynamic batch dimension, opset 17, and the contract's metadata
(:class:`lcz_qgis_plugin.core.contract.ModelCard`). After writing, the file is run with
onnxruntime on random normalised patches and compared with PyTorch; an export that does not
reproduce the model is deleted and refused.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch

from lcz_qgis_plugin.core.contract import ModelCard
from lcz_qgis_plugin.core.contract_writer import write_model_card

OPSET = 17
INPUT_NAME, OUTPUT_NAME = "patches", "logits"


class ExportError(RuntimeError):
    pass


def export_onnx(model: torch.nn.Module, card: ModelCard, path: str | os.PathLike, *,
                parity_tolerance: float = 1e-4, parity_batch: int = 4, seed: int = 0) -> str:
    """Write ``model`` (returning logits) with ``card`` to ``path`` and check parity."""
    path = os.fspath(path)
    model = model.eval()
    example = torch.zeros(1, card.n_channels, card.patch_size, card.patch_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, example, path, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], opset_version=OPSET, dynamo=False,
                          dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}})
    write_model_card(path, card, path)
    try:
        check_parity(model, path, card, parity_batch, parity_tolerance, seed)
    except ExportError:
        os.remove(path)
        raise
    return path


def check_parity(model, path: str, card: ModelCard, batch: int, tolerance: float,
                 seed: int) -> float:
    """Max difference of onnxruntime's and PyTorch's probabilities on random patches."""
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, card.n_channels, card.patch_size, card.patch_size))
    x = x.astype(np.float32)
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(x)), dim=1).numpy()
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    logits = session.run(None, {INPUT_NAME: x})[0]
    got = np.exp(logits - logits.max(axis=1, keepdims=True))
    got /= got.sum(axis=1, keepdims=True)
    difference = float(np.abs(got - expected).max())
    if not difference <= tolerance:
        raise ExportError(f"the ONNX export of {card.name} differs from PyTorch by "
                          f"{difference:.2e} (> {tolerance:g}) on random input; not written.")
    return difference
