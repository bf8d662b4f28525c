"""Export a PyTorch LCZ model to the plugin's ONNX model contract, and prove it runs the same.

The exported file has a dynamic batch dimension, opset 17, and the contract's metadata
(:class:`lcz_qgis_plugin.core.model.card.ModelCard`). After writing, the file is run with
onnxruntime on random normalised patches and compared with PyTorch; an export that does not
reproduce the model is refused. Every file is written under a temporary name and checked
there, and moved into place only when the whole export succeeded
(:mod:`lcz_qgis_plugin.core.commit`): a failed check or a full disk leaves the model (and the
int8 variant) already at the destination as they were.

A dense model (``model_kind`` dense, e.g. the U-Net) is exported with dynamic height and
width too: input ``N x C x H x W``, output logits ``N x K x H x W`` (output stride 1), H and W
any multiples of the card's ``tile_multiple``; its parity is checked on a square tile and on
a non-square one of other sizes, so the axes are proved dynamic. Its card carries the model
kind, output stride, receptive field and tile multiple of the architecture (schema 2).
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch

from lcz_qgis_plugin.core.commit import Commit
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
                parity_tolerance: float = 1e-4, parity_batch: int = 4, seed: int = 0,
                files: Commit | None = None) -> str:
    """Write ``model`` (returning logits) with ``card`` to ``path`` and check parity.

    The file is written and checked under its temporary name in ``files`` (:class:`Commit`;
    by default one of its own, committed here): a failed check or a full disk leaves the
    model already at ``path`` as it was. With ``files`` given, the file is at
    ``files.temp_of(path)`` until the caller commits."""
    path = os.fspath(path)
    if files is None:
        with Commit() as own:
            return export_onnx(model, card, path, parity_tolerance=parity_tolerance,
                               parity_batch=parity_batch, seed=seed, files=own)
    model = model.eval()
    probabilities = card.output_kind == "probabilities"
    if probabilities and not hasattr(model, "probabilities"):
        raise ExportError(f"the card of {card.name} says output_kind=probabilities, but the "
                          "model has no probabilities() method; export its logits instead.")
    graph_model = (_Probabilities(model) if probabilities else model).eval()
    output_name = PROBABILITIES_NAME if probabilities else OUTPUT_NAME
    example = torch.zeros(1, card.n_channels, card.patch_size, card.patch_size)
    free = {0: "N", 2: "H", 3: "W"} if card.is_dense else {0: "N"}

    def write(temp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(graph_model, example, temp, input_names=[INPUT_NAME],
                              output_names=[output_name], opset_version=OPSET, dynamo=False,
                              dynamic_axes={INPUT_NAME: free, output_name: free})
        write_model_card(temp, card, temp)

    # torch's and onnx's writers report a failed write as RuntimeError or ValueError too
    files.save_with(path, write, "model", errors=(RuntimeError, ValueError))
    for size in parity_sizes(card):  # on the temporary file, before it replaces anything
        check_parity(model, files.temp_of(path), card, parity_batch, parity_tolerance, seed,
                     size)
    return path


def parity_sizes(card: ModelCard) -> list[tuple[int, int]]:
    """(height, width) of the random input that parity is checked on: the patch; for a dense
    model a square tile of about 64 px and a non-square one of other sizes (48 x 80 for a
    tile multiple of 8), all multiples of the tile multiple."""
    if not card.is_dense:
        return [(card.patch_size, card.patch_size)]
    m = card.tile_multiple
    square = max(1, round(64 / m)) * m
    return [(square, square), (max(1, round(48 / m)) * m, max(2, round(80 / m)) * m)]


def check_parity(model, path: str, card: ModelCard, batch: int, tolerance: float,
                 seed: int, size: tuple[int, int] | None = None) -> float:
    """Max difference of onnxruntime's and PyTorch's probabilities on random patches (tiles
    of ``size`` for a dense model) before any calibration temperature, which the plugin
    applies on top."""
    import onnxruntime as ort

    height, width = size or (card.patch_size, card.patch_size)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, card.n_channels, height, width))
    x = x.astype(np.float32)
    with torch.no_grad():
        expected = _torch_probabilities(model, torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    output = session.run(None, {INPUT_NAME: x})[0]
    if output.shape != expected.shape:
        raise ExportError(f"the ONNX export of {card.name} gives shape {output.shape} for "
                          f"input {x.shape}, PyTorch {expected.shape}; not written.")
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

    model = model_from_checkpoint(payload)
    probabilities = outputs_probabilities(model)
    provenance = dict(payload.get("provenance", {}))
    provenance.update(extra_provenance or {})
    dense = {}
    if getattr(model, "kind", "patch") == "dense":
        dense = dict(model_kind="dense", output_stride=int(model.output_stride),
                     receptive_field=int(model.receptive_field),
                     tile_multiple=int(model.tile_multiple))
    return ModelCard(
        name=payload["model"], channels=list(payload["channels"]),
        patch_size=int(payload["patch_size"]), scale=list(payload["card_scale"]),
        offset=list(payload["card_offset"]), mean=list(payload["mean"]),
        std=list(payload["std"]), pixel_size=float(payload["pixel_size"]),
        cell_size=float(payload["cell_size"]), class_codes=list(payload["class_codes"]),
        output_kind="probabilities" if probabilities else "logits",
        temperature=float(temperature),
        version=version or str(payload.get("config", {}).get("version", "0")),
        provenance=provenance, **dense)


def export_checkpoint(checkpoint: str, path: str, temperature: float = 1.0,
                      version: str | None = None, precision_data: str | None = "auto",
                      report=print, precisions=("bfloat16", "int8"),
                      calibration_data: str | None = "auto") -> str:
    """``python -m training export``: a training checkpoint → plugin-ready ONNX.

    ``precision_data``: patches on which the reduced-precision engines (``precisions``:
    bfloat16, and the int8 variant written beside ``path``) are compared with float32 and the
    results recorded in the card (:mod:`training.precision`); ``auto`` takes the run's
    validation data (else its training data), ``None`` skips the checks. A dense model is
    checked in bfloat16 only, on the tiles of its validation data, per 100 m cell.
    ``calibration_data``: patches that set the int8 variant's activation ranges; ``auto``
    takes the run's training data. The model and its int8 variant are moved into place
    together once everything is written and checked (:mod:`lcz_qgis_plugin.core.commit`)."""
    from .train import load_checkpoint, model_from_checkpoint

    payload = load_checkpoint(checkpoint)
    model = model_from_checkpoint(payload)
    card = card_from_checkpoint(payload, temperature, version,
                                {"checkpoint": os.path.basename(checkpoint)})
    config = payload.get("config", {})
    if precision_data == "auto":
        precision_data = config.get("val") or config.get("train")
    if calibration_data == "auto":
        calibration_data = config.get("train") or precision_data
    with Commit(inputs=[checkpoint]) as files:
        export_onnx(model, card, path, files=files)
        if precision_data and precisions:  # a dense model: bfloat16 only, per 100 m cell
            _record_precision_checks(path, precision_data, list(precisions),
                                     None if card.is_dense else calibration_data, report,
                                     files)
    return path


def _record_precision_checks(path: str, data: str, precisions: list[str],
                             calibration: str | None, report, files: Commit) -> None:
    """Measure and record the checks on the model's temporary file in ``files``; a check
    that cannot run here only says why (the model stays valid, the Automatic device then does
    not use that precision)."""
    from .precision import record_checks, run_checks
    missing = [p for p in (data, calibration) if p and not os.path.exists(p.split("#")[0])]
    if missing:
        report(f"precision checks not recorded: the patches {missing[0]} are gone; run "
               f"'python -m training check-precision --model {path} --data PATCHES' to add "
               f"them.")
        return
    temp = files.temp_of(path)
    checks = run_checks(temp, data, precisions, calibration, variant_beside=path,
                        report=report, files=files)
    if checks:
        record_checks(temp, checks, path, files=files)
