"""``check-precision``: does a model give the same classes in bfloat16 as in float32?

bfloat16 keeps 8 bits of mantissa. On CPUs with AMX or AVX512-BF16 the OpenVINO engine runs
it at 2-3x float32's speed; whether the map stays the same depends on the model, not on the
engine: a trained network whose winning class leads by a clear margin keeps its classes
(measured: 99.9-100 % of cells for the demo's MSMLA-18 and MSMLA-50), a network with random
weights or near-ties does not (65 %). So the check is made per model, on real patches, and
its result goes into the model card (``lcz.precision_checks``), where ``lcz:classify``'s
automatic device reads it: bfloat16 only for a model whose check passed
(:data:`lcz_qgis_plugin.core.model.card.SAME_CLASS_REQUIRED`).

Both sides run through the plugin's own engine (onnxruntime float32 as the reference,
OpenVINO bfloat16), exactly as ``lcz:classify`` runs them. The check must run on a CPU that
executes bfloat16; elsewhere OpenVINO would silently compute in float32 and the check would
prove nothing, so it is not recorded.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform

import numpy as np

from lcz_qgis_plugin.core.model.card import PATCHES_REQUIRED, SAME_CLASS_REQUIRED, ModelCard

from .evaluate import EvaluationError, Predictor, predict, softmax

DEFAULT_LIMIT = 4096


class PrecisionCheckSkipped(RuntimeError):
    """The check cannot be made here (no openvino, no bfloat16 on this CPU)."""


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bfloat16_runs_here() -> str | None:
    """None when OpenVINO executes bfloat16 on this CPU, else why not."""
    from lcz_qgis_plugin.core.inference.engine import cpu_runs_bfloat16, import_openvino
    if import_openvino() is None:
        return "openvino is not installed"
    if not cpu_runs_bfloat16():
        return "this CPU has no bfloat16 instructions (AMX or AVX512-BF16)"
    return None


def measure_bfloat16(model: str, data: str, limit: int = DEFAULT_LIMIT,
                     batch_size: int = 256) -> dict:
    """Compare OpenVINO bfloat16 with onnxruntime float32 on the patches of ``data``."""
    why_not = bfloat16_runs_here()
    if why_not:
        raise PrecisionCheckSkipped(why_not)
    reference = Predictor(model, device="cpu")
    reduced = Predictor(model, device="openvino-bf16")
    import onnxruntime
    import openvino
    card = reference.card
    _, z32 = predict(reference, data, batch_size, limit)
    _, z16 = predict(reduced, data, batch_size, limit)
    p32, p16 = softmax(z32, card.temperature), softmax(z16, card.temperature)
    return {
        "same_class": round(float(np.mean(p32.argmax(1) == p16.argmax(1))), 6),
        "patches": int(len(z32)),
        "max_probability_difference": round(float(np.abs(p32 - p16).max()), 6),
        "reference": f"onnxruntime {onnxruntime.__version__} CPU float32",
        "engine": f"OpenVINO {openvino.__version__.split('-')[0]} CPU bfloat16",
        "data": os.path.basename(data.split("#")[0]),
        "cpu": cpu_name(),
        "date": _dt.date.today().isoformat(),
    }


def record_check(model: str, precision: str, check: dict, out: str | None = None) -> ModelCard:
    """Write ``check`` into the model card of ``model`` (in place, or to ``out``)."""
    from lcz_qgis_plugin.core.model.card_file import read_model_card
    from lcz_qgis_plugin.core.model.card_writer import copy_with_card
    card = read_model_card(model)  # the card only: no engine session to load
    card.precision_checks = dict(card.precision_checks, **{precision: check})
    copy_with_card(model, card, out or model)
    return card


def describe(check: dict) -> str:
    verdict = ("passes: lcz:classify's Automatic device may run this model in bfloat16"
               if check["same_class"] >= SAME_CLASS_REQUIRED
               and check["patches"] >= PATCHES_REQUIRED else
               f"below the {100 * SAME_CLASS_REQUIRED:g} % of at least {PATCHES_REQUIRED} "
               f"patches required: the Automatic device keeps float32")
    return (f"bfloat16 check: same class as float32 on {100 * check['same_class']:.2f} % of "
            f"{check['patches']} patches of {check['data']} (largest probability difference "
            f"{check['max_probability_difference']:.3f}); {verdict}")


def check_precision(model: str, data: str, out: str | None = None,
                    limit: int = DEFAULT_LIMIT) -> str:
    """``python -m training check-precision``: measure and record; returns the summary line."""
    if not model.endswith(".onnx"):
        raise EvaluationError("check-precision works on an exported .onnx model.")
    try:
        check = measure_bfloat16(model, data, limit)
    except PrecisionCheckSkipped as exc:
        raise EvaluationError(f"cannot check bfloat16 here: {exc}. Run the check on a CPU "
                              f"with AMX or AVX512-BF16 (e.g. Xeon Sapphire Rapids or "
                              f"later) with openvino installed.") from None
    record_check(model, "bfloat16", check, out)
    return describe(check)
