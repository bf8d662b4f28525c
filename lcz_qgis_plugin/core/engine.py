"""Running an LCZ model: an onnxruntime session, the execution provider, probabilities.

onnxruntime is imported here and only when a model is opened, so that QGIS starts, and
``qgis_process list`` answers, without paying for it, and so that a missing onnxruntime turns
into a message that says how to install it instead of a broken plugin.

Execution providers: ``cpu`` uses onnxruntime's CPU provider; ``cuda`` insists on the CUDA
provider of onnxruntime-gpu and fails with an explanation when it cannot start; ``auto`` tries
CUDA when the installed onnxruntime has it and otherwise, or when it cannot start, runs on the
CPU and says so. onnxruntime itself falls back to the CPU silently when CUDA libraries are
missing, so the provider actually used is read back from the session, never assumed.
"""

from __future__ import annotations

import os

import numpy as np

from .contract import ModelCard
from .errors import EngineError, ModelError
from .feedback import Feedback

DEVICES = ("auto", "cuda", "cpu")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

ONNXRUNTIME_MISSING = (
    "onnxruntime is not installed in the Python that runs QGIS, so LCZ models cannot run. "
    "Install it into that Python and restart QGIS: "
    "Linux: 'python3 -m pip install --user onnxruntime' (or onnxruntime-gpu for an NVIDIA GPU); "
    "Windows: in the OSGeo4W Shell, 'python -m pip install onnxruntime'; "
    "macOS: '/Applications/QGIS.app/Contents/MacOS/bin/python3 -m pip install onnxruntime'. "
    "The plugin's README, section 'Installing onnxruntime', has the details.")


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise EngineError(f"{ONNXRUNTIME_MISSING} (Python said: {exc})") from None
    return onnxruntime


def available_providers() -> list[str]:
    return list(import_onnxruntime().get_available_providers())


class Engine:
    """One model, loaded once, turning batches of normalised patches into probabilities."""

    def __init__(self, model_path: str, device: str = "auto", threads: int = 0,
                 feedback: Feedback | None = None):
        feedback = feedback or Feedback()
        if device not in DEVICES:
            raise EngineError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
        model_path = os.fspath(model_path)
        if not os.path.isfile(model_path):
            raise ModelError(f"the model file {model_path} does not exist. Choose an .onnx "
                             f"model exported by 'python -m training export' or "
                             f"'python -m training convert-keras'.")
        ort = import_onnxruntime()
        self.model_path = model_path
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if threads and threads > 0:
            options.intra_op_num_threads = int(threads)
        available = list(ort.get_available_providers())
        if device == "cuda" and CUDA not in available:
            raise EngineError(
                f"DEVICE is CUDA, but the installed onnxruntime has no CUDA provider (it offers "
                f"{', '.join(available)}). Install onnxruntime-gpu (with CUDA and cuDNN) in "
                f"QGIS's Python, or set DEVICE to Automatic or CPU.")
        wanted = [CUDA, CPU] if device in ("auto", "cuda") and CUDA in available else [CPU]
        quiet = device == "auto" and CUDA in wanted
        if quiet:  # a failed CUDA probe is explained below; keep onnxruntime's error quiet
            ort.set_default_logger_severity(4)
        try:
            self.session = ort.InferenceSession(model_path, sess_options=options,
                                                providers=wanted)
        except Exception as exc:  # onnxruntime raises its own pybind classes
            raise ModelError(
                f"cannot load the model {model_path}: it is not a valid ONNX model or uses "
                f"operators this onnxruntime ({ort.__version__}) lacks. onnxruntime said: "
                f"{str(exc).strip()[:400]}. Export it again, or download it again if it was "
                f"copied.") from None
        finally:
            if quiet:
                ort.set_default_logger_severity(2)
        self.provider = self.session.get_providers()[0]
        if device == "cuda" and self.provider != CUDA:
            raise EngineError(
                "DEVICE is CUDA, but onnxruntime's CUDA provider could not start (no NVIDIA GPU "
                "visible, or the CUDA/cuDNN libraries onnxruntime-gpu needs are missing; its "
                "own message is in the console). Set DEVICE to Automatic or CPU.")
        if device == "auto" and self.provider != CUDA:
            if CUDA in available:
                feedback.warning("CUDA provider is installed but could not start (no GPU or "
                                 "missing CUDA/cuDNN libraries): running on the CPU "
                                 f"({self.provider}).")
            else:
                feedback.info(f"No CUDA provider in this onnxruntime: running on the CPU "
                              f"({self.provider}).")
        meta = self.session.get_modelmeta().custom_metadata_map
        self.card = ModelCard.from_metadata_props(meta, source=f"the model {model_path}")
        self._check_io()

    def _check_io(self) -> None:
        card, source = self.card, f"the model {self.model_path}"
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise ModelError(f"{source} has {len(inputs)} inputs; an LCZ model takes one "
                             f"N x C x H x W tensor.")
        shape = inputs[0].shape
        expected = (card.n_channels, card.patch_size, card.patch_size)
        if len(shape) != 4 or any(isinstance(d, int) and d != e
                                  for d, e in zip(shape[1:], expected)):
            raise ModelError(f"{source} takes input of shape {shape}, but its metadata says "
                             f"(N, {card.n_channels}, {card.patch_size}, {card.patch_size}).")
        if inputs[0].type != "tensor(float)":
            raise ModelError(f"{source} takes {inputs[0].type}; the contract needs float32 input.")
        out_shape = outputs[0].shape
        if len(out_shape) != 2 or (isinstance(out_shape[1], int)
                                   and out_shape[1] != card.n_classes):
            raise ModelError(f"{source} outputs shape {out_shape}, but its metadata lists "
                             f"{card.n_classes} classes.")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Raw model output for a float32 ``N x C x P x P`` batch."""
        return self.session.run([self.output_name], {self.input_name: batch})[0]

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities ``N x K`` for a batch of normalised patches."""
        return to_probabilities(self.run(batch), self.card)


def to_probabilities(output: np.ndarray, card: ModelCard) -> np.ndarray:
    """Apply the contract: softmax(z / T), z = logits or log(probabilities)."""
    output = np.asarray(output, dtype=np.float32)
    if output.ndim != 2 or output.shape[1] != card.n_classes:
        raise ModelError(f"the model returned shape {output.shape}, expected (N, {card.n_classes})")
    if not np.isfinite(output).all():
        raise EngineError("the model returned NaN or infinite values; the model file or its "
                          "normalisation statistics are broken.")
    if card.output_kind == "probabilities":
        if card.temperature == 1.0:
            return output / output.sum(axis=1, keepdims=True)
        output = np.log(np.clip(output, 1e-12, None))
    z = output / np.float32(card.temperature)
    z = z - z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z
