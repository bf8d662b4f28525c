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

A dense model (U-Net) is checked in bfloat16 on a tile file with label masks, by the same
rule, counted per 100 m cell: each side's per-pixel probabilities are aggregated to the
labelled cells exactly as ``evaluate`` aggregates them (:mod:`training.dense_evaluation`),
and the check records the share of cells whose class is the same (``unit``: ``cells``; the
count stays under ``patches``, the key every plugin version reads, and under ``cells``),
with the share of labelled pixels beside it. int8 is not checked for dense models
(:data:`DENSE_PRECISION_NOTE`).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform

import numpy as np

from lcz_qgis_plugin.core.commit import Commit, describe_os_error
from lcz_qgis_plugin.core.errors import OutputError
from lcz_qgis_plugin.core.model.card import PATCHES_REQUIRED, SAME_CLASS_REQUIRED, ModelCard

from .evaluate import EvaluationError, Predictor, predict, softmax

DEFAULT_LIMIT = 4096
CALIBRATION_PATCHES = 256
PRECISIONS = ("bfloat16", "int8")
DENSE_PRECISION_NOTE = (
    "int8 is checked on patch models only so far: a dense model gets no int8 variant, so "
    "lcz:classify runs it in float32 or (where its bfloat16 check passed) bfloat16.")
DENSE_UNIT = "cells"
"""What a dense model's check counts: the 100 m output cells of the tile file (each scored
by the mean of its labelled pixels' probabilities, as ``evaluate`` scores them), the unit a
patch model's patch stands for; recorded as ``unit`` beside the count."""


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
    """onnxruntime float32's probabilities on the check's samples, computed once for all
    checks: per patch, or for a dense model per labelled 100 m cell of the tiles."""

    def __init__(self, model: str, data: str, limit: int, batch_size: int):
        self.model, self.data, self.limit, self.batch_size = model, data, limit, batch_size
        self._p = None

    @property
    def p(self):
        if self._p is None:
            predictor = Predictor(self.model, device="cpu")
            self.card = predictor.card
            self._p = self.probabilities(predictor)
        return self._p

    def probabilities(self, predictor: Predictor):
        """(probabilities per sample, per pixel or None) of ``predictor``'s model."""
        if self.card.is_dense:
            return _cell_probabilities(predictor, self.data, self.batch_size, self.limit)
        _, z = predict(predictor, self.data, self.batch_size, self.limit)
        return softmax(z, self.card.temperature), None


def _cell_probabilities(predictor: Predictor, data: str, batch_size: int, limit: int):
    """(probabilities per labelled 100 m cell, per labelled pixel) of a dense model on the
    tiles of ``data``, aggregated as ``evaluate`` aggregates them
    (:mod:`training.dense_evaluation`); ``limit``: the first tiles only."""
    from .dense_evaluation import cell_probabilities, pixel_probabilities, predict_tiles
    scores = predict_tiles(predictor, data, batch_size, limit)
    pixels, codes, p = pixel_probabilities(scores, predictor.card.temperature)
    _, cells = cell_probabilities(pixels, codes, p, scores.frame_width, scores.cell)
    if not len(cells):
        raise EvaluationError(f"{data}: no {scores.cell} x {scores.cell} px cell has at least "
                              f"half of its pixels labelled, so no cell can be compared; "
                              f"check on tiles of larger areas.")
    return cells, p


def _compare(reference: _Reference, predictor: Predictor, engine: str) -> dict:
    import onnxruntime
    p32, pixels32 = reference.p
    p, pixels = reference.probabilities(predictor)
    check = {
        "same_class": round(float(np.mean(p32.argmax(1) == p.argmax(1))), 6),
        "patches": int(len(p32)),
        "max_probability_difference": round(float(np.abs(p32 - p).max()), 6),
        "reference": f"onnxruntime {onnxruntime.__version__} CPU float32",
        "engine": engine,
        "data": os.path.basename(reference.data.split("#")[0]),
        "cpu": cpu_name(),
        "date": _dt.date.today().isoformat(),
    }
    if pixels32 is not None:  # dense: "patches" counts cells, the rule's unit for both kinds
        check.update(unit=DENSE_UNIT, cells=int(len(p32)), pixels=int(len(pixels32)),
                     pixel_same_class=round(float(np.mean(
                         pixels32.argmax(1) == pixels.argmax(1))), 6))
    return check


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


def quantize_int8(model: str, patches: np.ndarray, out: str, batch: int = 16, *,
                  files: Commit | None = None, model_name: str | None = None) -> str:
    """Static int8 quantization of ``model`` (QDQ: int8 weights per output channel, uint8
    activations with ranges from ``patches``), written to ``out`` with the model's card (its
    precision checks left out: they describe the float model). ``out`` goes through
    ``files`` (:class:`Commit`; by default one of its own, committed here), so a failure
    leaves the previous variant as it was; ``model_name``: the model's final file name, for
    the variant's provenance, where ``model`` is still a temporary file.

    Only the convolutions are quantized (their inputs and weights: almost all the work); the
    attention blocks' small dense layers, sigmoids, products and sums stay in float32. And
    activation ranges are the 99.999th percentiles of the calibration activations, not their
    extremes, so that one outlying patch does not coarsen a layer's steps for all the others.
    Measured on the benchmark's models (share of 3,000 scene cells with float32's class, run
    by OpenVINO): MSMLA-50 98.9 % with every operator quantized and extreme ranges, 99.0 %
    with percentiles, 99.4 % with percentiles and convolutions only; MSMLA-18 98.8 % and
    99.5 % for the last two; the speed stays (1.8x OpenVINO float32 on the AMD EPYC)."""
    if files is None:
        with Commit(inputs=[model]) as own:
            return quantize_int8(model, patches, out, batch, files=own, model_name=model_name)
    from lcz_qgis_plugin.core.model.card_file import read_model_card
    from lcz_qgis_plugin.core.model.card_writer import write_model_card

    card = read_model_card(model)
    card.precision_checks = {}
    card.provenance = dict(card.provenance, int8_of=model_name or os.path.basename(model),
                           int8_calibration=f"{len(patches)} patches")
    folder = files.scratch(out)
    prepared, quantized = (os.path.join(folder, n) for n in ("pre.onnx", "int8.onnx"))
    _quantize_static(model, patches, batch, prepared, quantized)
    files.save_with(out, lambda temp: write_model_card(quantized, card, temp), "int8 variant")
    return out


def calibration_batch(count: int, batch: int) -> int:
    """The largest batch of at most ``batch`` patches that divides ``count``: onnxruntime's
    percentile calibrator stacks the activations of all batches into one array, which fails
    ("inhomogeneous shape") when the last batch is smaller. The percentiles are taken over
    all values of all patches, so the batch size does not change the ranges."""
    return next(size for size in range(max(1, min(batch, count)), 0, -1) if count % size == 0)


def _quantize_static(model: str, patches: np.ndarray, batch: int, prepared: str,
                     quantized: str) -> None:
    """onnxruntime's pre-processing and static QDQ quantization (see :func:`quantize_int8`)
    of ``model`` into ``quantized``, calibrated on ``patches``."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    input_name = onnx.load(model, load_external_data=False).graph.input[0].name
    size = calibration_batch(len(patches), batch)

    class Patches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{input_name: patches[i:i + size]}
                                 for i in range(0, len(patches), size)])

        def get_next(self):
            return next(self.batches, None)

    try:
        quant_pre_process(model, prepared)
        quantize_static(prepared, quantized, Patches(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        per_channel=True, calibrate_method=CalibrationMethod.Percentile,
                        op_types_to_quantize=["Conv"])
    except OSError as exc:  # a full disk under the scratch folder: not the model's fault
        raise OutputError(f"quantizing {model} to int8 failed: {describe_os_error(exc)}. "
                          f"Nothing was replaced.") from None
    except Exception as exc:  # onnxruntime's quantizer raises many kinds
        raise EvaluationError(f"onnxruntime could not quantize {model} to int8: "
                              f"{str(exc).strip()[:300]}") from None


def measure_int8(model: str, data: str, calibration: str, out: str,
                 limit: int = DEFAULT_LIMIT, batch_size: int = 256,
                 reference: _Reference | None = None, *, files: Commit | None = None,
                 model_name: str | None = None) -> dict:
    """Write the int8 variant of ``model`` to ``out`` (calibrated on patches of
    ``calibration``) and compare it, run by OpenVINO as DEVICE OpenVINO int8 runs it, with
    onnxruntime float32 on the patches of ``data``. The result names the file and its SHA-256,
    which the Automatic device checks before using it. The variant is checked as its
    temporary file and goes through ``files`` (by default committed here once checked): a
    failed check leaves the previous variant at ``out`` as it was."""
    from lcz_qgis_plugin.core.inference.engine import import_openvino
    from lcz_qgis_plugin.core.model.card_file import read_model_card
    if import_openvino() is None:
        raise PrecisionCheckSkipped("openvino is not installed")
    if files is None:
        with Commit(inputs=[model, data.split("#")[0]]) as own:
            return measure_int8(model, data, calibration, out, limit, batch_size, reference,
                                files=own, model_name=model_name)
    patches = calibration_patches(read_model_card(model), calibration)
    try:
        quantize_int8(model, patches, out, files=files, model_name=model_name)
        variant = files.temp_of(out)
        reference = reference or _Reference(model, data, limit, batch_size)
        # the variant's own card is the model's, so the engine opens it directly; OpenVINO
        # sees a quantized model and runs it as DEVICE OpenVINO int8 does
        check = _compare(reference, Predictor(variant, device="openvino"),
                         f"OpenVINO {_openvino_version()} CPU int8 (QDQ)")
    except BaseException:
        files.drop(out)  # the rest of the run's outputs may still be committed
        raise
    check.update(calibration=f"{os.path.basename(calibration.split('#')[0])} "
                             f"({len(patches)} patches)",
                 file=os.path.basename(out), sha256=_sha256(variant))
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


def record_checks(model: str, checks: dict, out: str | None = None, *,
                  files: Commit | None = None) -> ModelCard:
    """Write ``checks`` (by precision) into the model card of ``model`` (in place, or to
    ``out``); the other checks of the card are kept. The file goes through ``files`` (by
    default committed here); with ``out`` reserved in ``files`` already, ``model`` may be
    its temporary file."""
    from lcz_qgis_plugin.core.model.card_file import read_model_card
    from lcz_qgis_plugin.core.model.card_writer import write_model_card
    card = read_model_card(model)  # the card only: no engine session to load
    card.precision_checks = dict(card.precision_checks, **checks)
    if files is None:
        with Commit() as own:  # the model may be its own output: replaced atomically
            return record_checks(model, checks, out, files=own)
    files.save_with(out or model, lambda temp: write_model_card(model, card, temp), "model")
    return card


def passes(check: dict) -> bool:
    return check["same_class"] >= SAME_CLASS_REQUIRED and check["patches"] >= PATCHES_REQUIRED


def _unit(check: dict) -> str:
    """What the check's count counts: patches, or for a dense model 100 m cells."""
    return DENSE_UNIT if check.get("unit") == DENSE_UNIT else "patches"


def _shortfall(check: dict) -> str:
    """Why a check does not pass, in words: the share of same classes is too low, the
    patches (cells) too few to trust it, or both."""
    reasons = []
    if check["same_class"] < SAME_CLASS_REQUIRED:
        reasons.append(f"below the required {100 * SAME_CLASS_REQUIRED:g} % of same classes")
    if check["patches"] < PATCHES_REQUIRED:
        reasons.append(f"only {check['patches']} {_unit(check)}: too few to trust (at least "
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
    pixels = (f", {100 * check['pixel_same_class']:.2f} % of its {check['pixels']} labelled "
              f"pixels" if "pixel_same_class" in check and "pixels" in check else "")
    return (f"{precision} check: same class as float32 on {100 * check['same_class']:.2f} % "
            f"of {check['patches']} {_unit(check)} of {check['data']}{pixels} (largest "
            f"probability difference {check['max_probability_difference']:.3f}); {verdict}")


def run_checks(model: str, data: str, precisions=PRECISIONS, calibration: str | None = None,
               limit: int = DEFAULT_LIMIT, variant_beside: str | None = None,
               report=print, files: Commit | None = None,
               failures: dict | None = None) -> dict:
    """Measure each of ``precisions`` that can run here against float32 on ``data``; returns
    the checks by precision (a check that cannot run is reported and left out; why, by
    precision, goes into ``failures`` when given). The int8
    variant is calibrated on ``calibration`` (default: ``data``) and written beside
    ``variant_beside`` (default: ``model``; ``model`` may be a temporary file of ``files``
    whose final name is ``variant_beside``) through ``files``. A dense model is compared per
    100 m cell of the tile file ``data``, and gets no int8 check
    (:data:`DENSE_PRECISION_NOTE`)."""
    from lcz_qgis_plugin.core.model.card_file import read_model_card
    reference = _Reference(model, data, limit, 256)
    dense = read_model_card(model).is_dense
    checks = {}
    for precision in precisions:
        if dense and precision == "int8":
            report(f"int8 check not made: {DENSE_PRECISION_NOTE}")
            continue
        report(f"{precision} check: comparing with onnxruntime float32 on "
               f"{os.path.basename(data.split('#')[0])} ...")
        try:
            if precision == "bfloat16":
                checks[precision] = measure_bfloat16(model, data, limit, reference=reference)
            else:
                out = int8_variant_path(variant_beside or model)
                checks[precision] = measure_int8(
                    model, data, calibration or data, out, limit, reference=reference,
                    files=files, model_name=os.path.basename(variant_beside or model))
        except (PrecisionCheckSkipped, EvaluationError) as exc:
            if failures is not None:
                failures[precision] = exc
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
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise EvaluationError(f"unknown precision {', '.join(unknown)}; use "
                              f"{', '.join(PRECISIONS)}.")
    if read_model_card(model).is_dense:
        precisions = _dense_precisions(model, precisions, report)
    if "int8" in precisions and calibration is None:
        train = str(read_model_card(model).provenance.get("train") or "")
        calibration = train if train and os.path.isfile(train.split("#")[0]) else data
        report(f"int8 calibration patches: {calibration}")
    target = out or model
    with Commit() as files:  # the variant and the card together, or neither
        _check_and_record(model, data, out, limit, precisions, calibration, report, files)
    return f"recorded in {target}"


def _dense_precisions(model: str, precisions, report) -> list[str]:
    """The checks a dense model gets: bfloat16; int8 only said to be unsupported (refused
    when it is the only one asked for)."""
    if list(precisions) == ["int8"]:
        raise EvaluationError(f"{model} is a dense model: {DENSE_PRECISION_NOTE} Check "
                              f"--precisions bfloat16 instead.")
    if "int8" in precisions:
        report(f"int8 check not made: {DENSE_PRECISION_NOTE}")
    return [p for p in precisions if p != "int8"]


def _check_and_record(model: str, data: str, out: str | None, limit: int, precisions,
                      calibration: str | None, report, files: Commit) -> None:
    failures = {}
    checks = run_checks(model, data, precisions, calibration, limit,
                        variant_beside=out or model, report=report, files=files,
                        failures=failures)
    refused = [str(exc) for exc in failures.values() if isinstance(exc, EvaluationError)]
    if not checks and refused:  # the model or the data, not this machine: say what
        raise EvaluationError(refused[0])
    if not checks:
        if list(precisions) == ["bfloat16"]:
            raise EvaluationError(
                f"cannot check bfloat16 here: {bfloat16_runs_here()}. Run the check on a CPU "
                f"with AMX or AVX512-BF16 (e.g. Xeon Sapphire Rapids or later, AMD Zen 4) with "
                f"openvino installed.")
        raise EvaluationError(f"no precision check could run here ({', '.join(precisions)}); "
                              f"install openvino, and for bfloat16 use a CPU with AMX or "
                              f"AVX512-BF16.")
    record_checks(model, checks, out, files=files)
