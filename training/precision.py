"""``check-precision``: do a model's reduced-precision engines give the same classes as float32?

Two reduced-precision engines can run an LCZ model on the CPU, both through OpenVINO:

- **bfloat16** (8 bits of mantissa): 2.3-2.7x float32 on CPUs with AMX; on CPUs with only
  AVX512-BF16 dot products (AMD Zen 4/5, Xeon without AMX) it was measured *slower* than
  float32, which :mod:`lcz_qgis_plugin.core.inference.engine_choice` measures per CPU.
- **int8**: a calibrated, statically quantized copy of the model (QDQ format: the
  convolutions' weights in int8 per output channel, their inputs in uint8 with ranges from
  real patches), written beside the model as ``<model>.int8.onnx``; OpenVINO runs its
  quantized layers as int8 (VNNI where the CPU has it: 1.9x onnxruntime float32 on the 2-core
  Xeon without AMX).

Whether either keeps the map depends on the model, not on the engine: a trained network whose
winning class leads by a clear margin keeps its classes (measured: 99.8-100 % of cells for the
demo's MSMLA-18 and MSMLA-50 in bfloat16, 99.3-99.4 % of the benchmark scene's cells in
int8), a network with random weights or near-ties does not (65 %). So each check is made per
model, on real patches, and its result goes into the model card (``lcz.precision_checks``),
where ``lcz:classify``'s Automatic device reads it: an engine whose check did not pass the
same rule (:data:`lcz_qgis_plugin.core.model.card.SAME_CLASS_REQUIRED`) is never chosen.

Both sides run through the plugin's own engine (onnxruntime float32 as the reference, OpenVINO
for the reduced precision), exactly as ``lcz:classify`` runs them; the int8 file is compiled
with the settings of DEVICE OpenVINO int8. The bfloat16 check must run on a CPU that executes
bfloat16; elsewhere OpenVINO would silently compute in float32 and the check would prove
nothing, so it is not recorded. The int8 check runs on any CPU with openvino (the integer
arithmetic is the same everywhere).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shutil
import tempfile

import numpy as np

from lcz_qgis_plugin.core.model.card import PATCHES_REQUIRED, SAME_CLASS_REQUIRED, ModelCard

from .evaluate import EvaluationError, Predictor, predict, softmax

DEFAULT_LIMIT = 4096
CALIBRATION_PATCHES = 256
PRECISIONS = ("bfloat16", "int8")
DENSE_PRECISION_NOTE = (
    "bfloat16 and int8 are checked on patch models only so far; a dense model's card records "
    "no check, so lcz:classify's Automatic device runs it in float32.")


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


def int8_variant_path(model: str) -> str:
    """Where the int8 variant of ``model`` is written: ``<stem>.int8.onnx`` beside it."""
    stem = model[:-len(".onnx")] if model.endswith(".onnx") else model
    return stem + ".int8.onnx"


# --- measuring ------------------------------------------------------------------------------

class _Reference:
    """onnxruntime float32's scores on the check's patches, computed once for all checks."""

    def __init__(self, model: str, data: str, limit: int, batch_size: int):
        self.model, self.data, self.limit, self.batch_size = model, data, limit, batch_size
        self._z = None

    @property
    def z(self):
        if self._z is None:
            predictor = Predictor(self.model, device="cpu")
            self.card = predictor.card
            _, self._z = predict(predictor, self.data, self.batch_size, self.limit)
        return self._z


def _compare(reference: _Reference, predictor: Predictor, engine: str) -> dict:
    import onnxruntime
    z32 = reference.z
    _, z = predict(predictor, reference.data, reference.batch_size, reference.limit)
    temperature = reference.card.temperature
    p32, p = softmax(z32, temperature), softmax(z, temperature)
    return {
        "same_class": round(float(np.mean(p32.argmax(1) == p.argmax(1))), 6),
        "patches": int(len(z32)),
        "max_probability_difference": round(float(np.abs(p32 - p).max()), 6),
        "reference": f"onnxruntime {onnxruntime.__version__} CPU float32",
        "engine": engine,
        "data": os.path.basename(reference.data.split("#")[0]),
        "cpu": cpu_name(),
        "date": _dt.date.today().isoformat(),
    }


def _openvino_version() -> str:
    import openvino
    return openvino.__version__.split("-")[0]


def measure_bfloat16(model: str, data: str, limit: int = DEFAULT_LIMIT,
                     batch_size: int = 256, reference: _Reference | None = None) -> dict:
    """Compare OpenVINO bfloat16 with onnxruntime float32 on the patches of ``data``."""
    why_not = bfloat16_runs_here()
    if why_not:
        raise PrecisionCheckSkipped(why_not)
    reference = reference or _Reference(model, data, limit, batch_size)
    return _compare(reference, Predictor(model, device="openvino-bf16"),
                    f"OpenVINO {_openvino_version()} CPU bfloat16")


def calibration_patches(card: ModelCard, data: str, count: int = CALIBRATION_PATCHES,
                        seed: int = 0) -> np.ndarray:
    """``count`` normalised patches drawn at random from ``data`` (as the engine gets them)."""
    from . import datasets as ds
    try:
        source, rows = ds.open_source(data, card.channels)
    except ds.DataError as exc:
        raise EvaluationError(str(exc)) from None
    if source.patch_size != card.patch_size:
        raise EvaluationError(f"{data} holds {source.patch_size}px patches, the model takes "
                              f"{card.patch_size}px.")
    rows = np.arange(len(source)) if rows is None else np.asarray(rows)
    if len(rows) > count:
        rows = np.random.default_rng(seed).choice(rows, size=count, replace=False)
    mean = np.asarray(card.mean, np.float32)[:, None, None]
    std = np.asarray(card.std, np.float32)[:, None, None]
    return ((source.read(np.sort(rows)) - mean) / std).astype(np.float32)


def quantize_int8(model: str, patches: np.ndarray, out: str, batch: int = 16) -> str:
    """Static int8 quantization of ``model`` (QDQ: int8 weights per output channel, uint8
    activations with ranges from ``patches``), written to ``out`` with the model's card (its
    precision checks left out: they describe the float model).

    Only the convolutions are quantized (their inputs and weights: almost all the work); the
    attention blocks' small dense layers, sigmoids, products and sums stay in float32. And
    activation ranges are the 99.999th percentiles of the calibration activations, not their
    extremes, so that one outlying patch does not coarsen a layer's steps for all the others.
    Measured on the benchmark's models (share of 3,000 scene cells with float32's class, run
    by OpenVINO): MSMLA-50 98.9 % with every operator quantized and extreme ranges, 99.0 %
    with percentiles, 99.4 % with percentiles and convolutions only; MSMLA-18 98.8 % and
    99.5 % for the last two; the speed stays (1.8x OpenVINO float32 on the AMD EPYC)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from lcz_qgis_plugin.core.model.card_file import read_model_card
    from lcz_qgis_plugin.core.model.card_writer import write_model_card

    card = read_model_card(model)
    input_name = onnx.load(model, load_external_data=False).graph.input[0].name

    class Patches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{input_name: patches[i:i + batch]}
                                 for i in range(0, len(patches), batch)])

        def get_next(self):
            return next(self.batches, None)

    folder = tempfile.mkdtemp(prefix="lcz-int8-")
    try:
        prepared, quantized = (os.path.join(folder, n) for n in ("pre.onnx", "int8.onnx"))
        try:
            quant_pre_process(model, prepared)
            quantize_static(prepared, quantized, Patches(), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            per_channel=True, calibrate_method=CalibrationMethod.Percentile,
                            op_types_to_quantize=["Conv"])
        except Exception as exc:  # onnxruntime's quantizer raises many kinds
            raise EvaluationError(f"onnxruntime could not quantize {model} to int8: "
                                  f"{str(exc).strip()[:300]}") from None
        card.precision_checks = {}
        card.provenance = dict(card.provenance, int8_of=os.path.basename(model),
                               int8_calibration=f"{len(patches)} patches")
        write_model_card(quantized, card, quantized)
        partial = out + ".partial"
        shutil.copyfile(quantized, partial)
        os.replace(partial, out)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return out


def measure_int8(model: str, data: str, calibration: str, out: str,
                 limit: int = DEFAULT_LIMIT, batch_size: int = 256,
                 reference: _Reference | None = None) -> dict:
    """Write the int8 variant of ``model`` to ``out`` (calibrated on patches of
    ``calibration``) and compare it, run by OpenVINO as DEVICE OpenVINO int8 runs it, with
    onnxruntime float32 on the patches of ``data``. The result names the file and its SHA-256,
    which the Automatic device checks before using it."""
    from lcz_qgis_plugin.core.inference.engine import import_openvino
    from lcz_qgis_plugin.core.model.card_file import read_model_card
    if import_openvino() is None:
        raise PrecisionCheckSkipped("openvino is not installed")
    card = read_model_card(model)
    patches = calibration_patches(card, calibration)
    quantize_int8(model, patches, out)
    reference = reference or _Reference(model, data, limit, batch_size)
    try:
        # the variant's own card is the model's, so the engine opens it directly; OpenVINO
        # sees a quantized model and runs it as DEVICE OpenVINO int8 does
        check = _compare(reference, Predictor(out, device="openvino"),
                         f"OpenVINO {_openvino_version()} CPU int8 (QDQ)")
    except BaseException:
        os.remove(out)
        raise
    check.update(calibration=f"{os.path.basename(calibration.split('#')[0])} "
                             f"({len(patches)} patches)",
                 file=os.path.basename(out), sha256=_sha256(out))
    return check


def _sha256(path: str) -> str:
    import hashlib
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def record_check(model: str, precision: str, check: dict, out: str | None = None) -> ModelCard:
    """Write ``check`` into the model card of ``model`` (in place, or to ``out``)."""
    return record_checks(model, {precision: check}, out)


def record_checks(model: str, checks: dict, out: str | None = None) -> ModelCard:
    """Write ``checks`` (by precision) into the model card of ``model`` (in place, or to
    ``out``); the other checks of the card are kept."""
    from lcz_qgis_plugin.core.model.card_file import read_model_card
    from lcz_qgis_plugin.core.model.card_writer import copy_with_card
    card = read_model_card(model)  # the card only: no engine session to load
    card.precision_checks = dict(card.precision_checks, **checks)
    copy_with_card(model, card, out or model)
    return card


def passes(check: dict) -> bool:
    return check["same_class"] >= SAME_CLASS_REQUIRED and check["patches"] >= PATCHES_REQUIRED


def _shortfall(check: dict) -> str:
    """Why a check does not pass, in words: the share of same classes is too low, the
    patches too few to trust it, or both."""
    reasons = []
    if check["same_class"] < SAME_CLASS_REQUIRED:
        reasons.append(f"below the required {100 * SAME_CLASS_REQUIRED:g} % of same classes")
    if check["patches"] < PATCHES_REQUIRED:
        reasons.append(f"only {check['patches']} patches: too few to trust (at least "
                       f"{PATCHES_REQUIRED} needed)")
    return "; ".join(reasons)


def describe(check: dict, precision: str = "bfloat16") -> str:
    if precision == "int8":
        use = (f"lcz:classify may run the int8 variant {check['file']} (Automatic, where it "
               f"is the fastest engine, or DEVICE OpenVINO int8)")
    else:
        use = ("lcz:classify's Automatic device may run this model in bfloat16 where that is "
               "the fastest engine")
    verdict = f"passes: {use}" if passes(check) else (
        f"{_shortfall(check)}: the Automatic device will not use it")
    return (f"{precision} check: same class as float32 on {100 * check['same_class']:.2f} % "
            f"of {check['patches']} patches of {check['data']} (largest probability "
            f"difference {check['max_probability_difference']:.3f}); {verdict}")


def run_checks(model: str, data: str, precisions=PRECISIONS, calibration: str | None = None,
               limit: int = DEFAULT_LIMIT, variant_beside: str | None = None,
               report=print) -> dict:
    """Measure each of ``precisions`` that can run here against float32 on ``data``; returns
    the checks by precision (a check that cannot run is reported and left out). The int8
    variant is calibrated on ``calibration`` (default: ``data``) and written beside
    ``variant_beside`` (default: ``model``)."""
    reference = _Reference(model, data, limit, 256)
    checks = {}
    for precision in precisions:
        report(f"{precision} check: comparing with onnxruntime float32 on "
               f"{os.path.basename(data.split('#')[0])} ...")
        try:
            if precision == "bfloat16":
                checks[precision] = measure_bfloat16(model, data, limit, reference=reference)
            else:
                out = int8_variant_path(variant_beside or model)
                checks[precision] = measure_int8(model, data, calibration or data, out, limit,
                                                 reference=reference)
        except (PrecisionCheckSkipped, EvaluationError) as exc:
            report(f"{precision} check not recorded ({exc}); lcz:classify's Automatic device "
                   f"will not use {precision}.")
            continue
        report(describe(checks[precision], precision))
    return checks


def check_precision(model: str, data: str, out: str | None = None,
                    limit: int = DEFAULT_LIMIT, precisions=PRECISIONS,
                    calibration: str | None = None, report=print) -> str:
    """``python -m training check-precision``: measure and record; returns where the card
    went. The int8 variant is calibrated on ``calibration``, by default the training patches
    the card's provenance names (when they are still there), else ``data``."""
    if not model.endswith(".onnx"):
        raise EvaluationError("check-precision works on an exported .onnx model.")
    from lcz_qgis_plugin.core.model.card_file import read_model_card
    if read_model_card(model).is_dense:
        raise EvaluationError(f"{model} is a dense model: {DENSE_PRECISION_NOTE}")
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise EvaluationError(f"unknown precision {', '.join(unknown)}; use "
                              f"{', '.join(PRECISIONS)}.")
    if "int8" in precisions and calibration is None:
        train = str(read_model_card(model).provenance.get("train") or "")
        calibration = train if train and os.path.isfile(train.split("#")[0]) else data
        report(f"int8 calibration patches: {calibration}")
    target = out or model
    checks = run_checks(model, data, precisions, calibration, limit, variant_beside=target,
                        report=report)
    if not checks:
        if list(precisions) == ["bfloat16"]:
            raise EvaluationError(
                f"cannot check bfloat16 here: {bfloat16_runs_here()}. Run the check on a CPU "
                f"with AMX or AVX512-BF16 (e.g. Xeon Sapphire Rapids or later, AMD Zen 4) with "
                f"openvino installed.")
        raise EvaluationError(f"no precision check could run here ({', '.join(precisions)}); "
                              f"install openvino, and for bfloat16 use a CPU with AMX or "
                              f"AVX512-BF16.")
    record_checks(model, checks, out)
    return f"recorded in {target}"
