"""Fast inference paths checked against onnxruntime float32 on generated scenes: the OpenVINO
engine, the float16 copy for GPUs, IO binding, the prefetch/writer threads (same output, clean
cancel and errors, no thread left), the session cache, and the fallbacks when openvino or
CUDA is missing (real subprocesses with openvino hidden)."""

import os
import subprocess
import sys
import threading

import numpy as np
import onnx
import pytest
from lcz_testing import (
    RecordingFeedback,
    channel_names,
    conv_probe_model,
    files_in,
    identity_card,
    read,
    write_stack,
)
from onnx import TensorProto

from lcz_qgis_plugin.core.errors import Cancelled, EngineError, InputError
from lcz_qgis_plugin.core.inference import engine as engine_module
from lcz_qgis_plugin.core.inference.classify import classify
from lcz_qgis_plugin.core.inference.engine import (
    CPU,
    OPENVINO_BF16,
    OPENVINO_F32,
    Engine,
    IoBoundRun,
    cached_sessions,
    clear_engine_cache,
    import_openvino,
    physical_cores,
    to_probabilities,
)
from lcz_qgis_plugin.core.inference.fp16 import to_float16
from lcz_qgis_plugin.core.inference.threads import Background, Prefetch
from lcz_qgis_plugin.core.model.card import ModelCard

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_openvino = pytest.mark.skipif(import_openvino() is None,
                                    reason="openvino is not installed in this Python")


def lcz_threads():
    return [t for t in threading.enumerate() if t.name.startswith("lcz-") and t.is_alive()]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 3-band scene with fields of different values (so the map has many classes and close
    calls) and a small CNN with logits of a few units, like a trained model's."""
    folder = tmp_path_factory.mktemp("fast")
    names = channel_names(3)
    card = identity_card("cnn", names, 8, cell_size=40.0)
    model = conv_probe_model(folder / "cnn.onnx", card, seed=2)
    rng = np.random.default_rng(7)
    fields = rng.normal(size=(3, 8, 8)).repeat(12, axis=1).repeat(12, axis=2)
    data = (fields + 0.7 * rng.normal(size=fields.shape)).astype(np.float32)
    stacks = [write_stack(folder / f"date{i}.tif", data + 0.2 * i, names) for i in range(2)]
    return folder, card, model, stacks


def run(scene, tmp_path, tag, **options):
    folder, card, model, stacks = scene
    out = tmp_path / tag
    options.setdefault("probabilities_output", str(out / "p.tif"))
    result = classify(stacks[:1], model, str(out / "lcz.tif"), **options)
    return result, read(result.output), read(result.probabilities)


@needs_openvino
def test_openvino_f32_gives_the_onnxruntime_map(scene, tmp_path):
    ref, ref_map, ref_p = run(scene, tmp_path, "ort", device="cpu")
    got, got_map, got_p = run(scene, tmp_path, "ov", device="openvino")
    assert (ref.provider, got.provider) == (CPU, OPENVINO_F32)
    assert len(np.unique(ref_map)) >= 8  # a real map, not one class everywhere
    assert np.mean(got_map == ref_map) >= 0.99
    np.testing.assert_allclose(got_p, ref_p, atol=1e-4)


@needs_openvino
def test_auto_picks_a_float32_engine_and_the_outputs_say_so(scene, tmp_path):
    from osgeo import gdal
    ref, ref_map, _ = run(scene, tmp_path, "ort", device="cpu")
    got, got_map, _ = run(scene, tmp_path, "auto", device="auto")
    assert got.provider in (CPU, OPENVINO_F32)  # the faster one here; no reduced precision
    assert gdal.Open(got.output).GetMetadataItem("LCZ_EXECUTION_PROVIDER") == got.provider
    assert np.mean(got_map == ref_map) >= 0.99


@needs_openvino
def test_openvino_bf16_is_approximate_but_close(scene, tmp_path):
    from lcz_qgis_plugin.core.inference.engine import openvino_core
    ref, ref_map, ref_p = run(scene, tmp_path, "ort", device="cpu")
    got, got_map, got_p = run(scene, tmp_path, "bf16", device="openvino-bf16")
    has_bf16 = "BF16" in openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert got.provider == (OPENVINO_BF16 if has_bf16 else OPENVINO_F32)
    # bfloat16 keeps 8 bits of mantissa: probabilities move by about 1e-2, close calls flip
    assert np.abs(got_p - ref_p).max() < 0.05
    assert np.mean(got_map == ref_map) >= 0.9


@needs_openvino
@pytest.mark.parametrize("device", ["cpu", "openvino", "openvino-bf16"])
def test_batches_cut_into_pieces_keep_patch_order_for_any_length(scene, device):
    """onnxruntime and OpenVINO run a batch in pieces of a few patches (OpenVINO: parallel
    requests, the last piece padded); outputs must come back in the patches' order, equal to
    one onnxruntime run of the whole batch, for batches shorter than, equal to and longer
    than a piece."""
    folder, card, model, _ = scene
    whole = Engine(model, device="cpu").session
    engine = Engine(model, device=device)
    tolerance = 0.05 if engine.provider == OPENVINO_BF16 else 1e-4
    rng = np.random.default_rng(3)
    for n in (1, 3, 4, 67):
        batch = rng.normal(size=(n, card.n_channels, card.patch_size, card.patch_size))
        batch = batch.astype(np.float32)
        expected = whole.run(None, {whole.get_inputs()[0].name: batch})[0]
        np.testing.assert_allclose(engine.run(batch), expected, atol=tolerance)
        np.testing.assert_allclose(engine.run(batch[::-1])[::-1], expected, atol=tolerance)


@needs_openvino
@pytest.mark.parametrize("check,why", [
    (None, "bf16: the model card records no bfloat16 check"),
    ({"same_class": 0.97, "patches": 900}, "bf16: its check kept only 97.00 % of 900 patches"),
    ({"same_class": 0.999, "patches": 150}, "bf16: its check covered only 150 patches"),
    ({"same_class": 0.999, "patches": 900}, None),
])
def test_auto_considers_bfloat16_only_for_a_model_whose_check_passed(scene, tmp_path,
                                                                     monkeypatch, check, why):
    """The model card's recorded bfloat16 check decides whether bfloat16 is a candidate of
    the Automatic device; among the candidates, AMX or a measurement decides."""
    from lcz_qgis_plugin.core.inference.engine import cpu_runs_bfloat16
    from lcz_qgis_plugin.core.inference.engine_choice import cpu_has_amx
    from lcz_qgis_plugin.core.model.card_writer import write_model_card
    monkeypatch.setenv("LCZ_CACHE_DIR", str(tmp_path / "cache"))
    folder, card, model, _ = scene
    checked = str(tmp_path / "checked.onnx")
    card = ModelCard.from_metadata_props({p.key: p.value for p in onnx.load(model).metadata_props})
    card.precision_checks = {"bfloat16": dict(check, data="val.h5")} if check else {}
    write_model_card(model, card, checked)
    said = RecordingFeedback()
    engine = Engine(checked, device="auto", feedback=said)
    line = said.lines[-1]
    if not cpu_runs_bfloat16():  # nothing to decide: float32, and no talk of bfloat16
        assert engine.provider in (CPU, OPENVINO_F32) and "bf16" not in line
    elif why:
        assert engine.provider in (CPU, OPENVINO_F32) and why in line
    elif cpu_has_amx():  # settled by the CPU: AMX runs bfloat16 faster than float32
        assert engine.provider == OPENVINO_BF16 and "float32 not measured" in line
    else:  # measured: chosen only when faster (tests/test_engine_choice.py checks the rates)
        assert "measured on this CPU" in line and "OpenVINO bf16" in line


def test_float16_copy_gives_the_same_map(scene):
    """The GPU's float16 model, run here by onnxruntime's CPU provider."""
    folder, card, model, _ = scene
    half = to_float16(onnx.load(model))
    onnx.checker.check_model(half)
    assert all(t.data_type == TensorProto.FLOAT16 for t in half.graph.initializer)
    assert half.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # contract kept
    backend = engine_module._OnnxRuntimeBackend(model, [CPU], 1, fp16=True, quiet=False)
    x = np.random.default_rng(0).normal(size=(2000, 3, 8, 8)).astype(np.float32)
    ref = Engine(model, "cpu").probabilities(x)
    got = to_probabilities(backend.runner()(x), card)
    assert np.mean(got.argmax(1) == ref.argmax(1)) >= 0.99
    assert np.abs(got - ref).max() < 0.01


def test_io_binding_runs_like_session_run(scene):
    """The CUDA path's IO binding, exercised on the CPU device."""
    engine = Engine(scene[2], "cpu")
    x = np.random.default_rng(1).normal(size=(7, 3, 8, 8)).astype(np.float32)
    bound = IoBoundRun(engine.session, engine.input_name, engine.output_name, "cpu")
    np.testing.assert_array_equal(bound(x), engine.run(x))


@pytest.mark.parametrize("device", ["cuda", "cuda-fp16"])
def test_explicit_cuda_without_a_gpu_is_refused(scene, device):
    if engine_module.CUDA in engine_module.available_providers() and \
            subprocess.run(["sh", "-c", "nvidia-smi"], capture_output=True).returncode == 0:
        pytest.skip("a GPU is present: the CUDA path runs for real here")
    with pytest.raises(EngineError, match="DEVICE is CUDA.*Set DEVICE to Automatic or CPU"):
        Engine(scene[2], device)


HIDE_OPENVINO = """
import sys
class HideOpenVINO:
    def find_spec(self, name, path=None, target=None):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError("openvino hidden for this test")
sys.meta_path.insert(0, HideOpenVINO())
from lcz_qgis_plugin.core.inference.engine import Engine
from lcz_qgis_plugin.core.errors import EngineError
from lcz_qgis_plugin.core.feedback import ConsoleFeedback
engine = Engine(sys.argv[1], "auto", feedback=ConsoleFeedback(sys.stdout))
print("PROVIDER", engine.provider, engine.probabilities(
    __import__("numpy").zeros((2, 3, 8, 8), "float32")).shape)
try:
    Engine(sys.argv[1], "openvino")
except EngineError as exc:
    print("REFUSED", exc)
print("IMPORTED", "openvino" in sys.modules)
"""


def test_without_openvino_auto_falls_back_to_onnxruntime_and_says_so(scene):
    done = subprocess.run([sys.executable, "-c", HIDE_OPENVINO, scene[2]], capture_output=True,
                          text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "PROVIDER CPUExecutionProvider (2, 17)" in done.stdout
    assert "openvino is not installed" in done.stdout
    assert "running on the CPU (CPUExecutionProvider)" in done.stdout
    assert "REFUSED DEVICE is OpenVINO, but the openvino package is not installed" in done.stdout
    assert "IMPORTED False" in done.stdout


# --- the pipeline --------------------------------------------------------------------------------

def test_prefetch_gives_exactly_the_output_of_the_plain_loop(scene, tmp_path):
    folder, card, model, stacks = scene
    results = {}
    for prefetch in (True, False):
        out = tmp_path / str(prefetch)
        result = classify(stacks, model, str(out / "lcz.tif"), device="cpu", batch_size=7,
                          probabilities_output=str(out / "p.tif"), majority_radius=1,
                          confidence_output=str(out / "c.tif"), strip_memory_mb=0.05,
                          prefetch=prefetch)
        results[prefetch] = result, [read(p) for p in (result.output, result.probabilities,
                                                       result.confidence)]
    (fast, fast_arrays), (plain, plain_arrays) = results[True], results[False]
    assert fast.rows > 3 and fast.patches == plain.patches
    assert fast.class_counts == plain.class_counts
    for a, b in zip(fast_arrays, plain_arrays):
        np.testing.assert_array_equal(a, b)
    assert lcz_threads() == []


@pytest.mark.parametrize("after", [1, 4, 9])
def test_cancel_with_prefetch_leaves_no_output_and_no_thread(scene, tmp_path, after):
    folder, card, model, stacks = scene
    out = tmp_path / "out"
    with pytest.raises(Cancelled):
        classify(stacks, model, str(out / "lcz.tif"), device="cpu", batch_size=5,
                 probabilities_output=str(out / "p.tif"), strip_memory_mb=0.05,
                 feedback=RecordingFeedback(cancel_after_progress=after))
    assert files_in(out) == []
    assert lcz_threads() == []


def test_read_error_on_the_prefetch_thread_surfaces_and_cleans_up(scene, tmp_path):
    """A stack whose last tiles are cut off: the first strips classify, then GDAL fails on
    the prefetch thread; the caller gets the reader's InputError, and nothing stays."""
    from osgeo import gdal
    folder, card, model, stacks = scene
    data = read(stacks[0]).astype(np.float32)
    whole = write_stack(tmp_path / "whole.tif", data, channel_names(3))
    tiled = str(tmp_path / "tiled.tif")
    gdal.Translate(tiled, whole, creationOptions=["TILED=YES", "BLOCKXSIZE=16",
                                                  "BLOCKYSIZE=16", "INTERLEAVE=PIXEL"])
    size = os.path.getsize(tiled)
    with open(tiled, "r+b") as handle:
        handle.truncate(int(size * 0.6))
    out = tmp_path / "out"
    with pytest.raises(InputError, match="could not read rows .*gdalinfo -checksum"):
        classify([tiled], model, str(out / "lcz.tif"), device="cpu", batch_size=5,
                 strip_memory_mb=0.05)
    assert files_in(out) == []
    assert lcz_threads() == []


def test_prefetch_hands_over_errors_and_stops_early():
    def items():
        yield from range(3)
        raise ValueError("broken strip")

    with Prefetch(items(), depth=1) as prefetch:
        got = []
        with pytest.raises(ValueError, match="broken strip"):
            for item in prefetch:
                got.append(item)
    assert got == [0, 1, 2] and not prefetch.alive

    closed = threading.Event()

    def endless():
        try:
            n = 0
            while True:
                yield n
                n += 1
        finally:
            closed.set()

    with Prefetch(endless(), depth=2) as prefetch:
        for item in prefetch:
            if item == 5:
                break
    assert not prefetch.alive and closed.is_set()  # the generator's cleanup ran


def test_writer_raises_its_error_in_the_caller():
    done = []
    writer = Background(depth=1)

    def write(i):
        if i == 2:
            raise OSError("disk full")
        done.append(i)

    with pytest.raises(OSError, match="disk full"):
        for i in range(50):
            writer.submit(write, i)
        writer.finish()
    writer.close()
    assert done == [0, 1] and not writer.alive


# --- sessions --------------------------------------------------------------------------------

def test_sessions_are_cached_per_file_version_and_can_be_dropped(scene, tmp_path):
    clear_engine_cache()
    model = str(tmp_path / "m.onnx")
    with open(scene[2], "rb") as src, open(model, "wb") as dst:
        dst.write(src.read())
    first = Engine(model, "cpu", threads=1)
    assert Engine(model, "cpu", threads=1).backend is first.backend
    assert Engine(model, "cpu", threads=2).backend is not first.backend  # other options
    assert cached_sessions() == 2
    stat = os.stat(model)
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the file changed
    assert Engine(model, "cpu", threads=1).backend is not first.backend
    clear_engine_cache()
    assert cached_sessions() == 0
    assert Engine(scene[2], "cpu", threads=1).backend is not first.backend


def test_default_threads_are_the_physical_cores(scene):
    assert 1 <= physical_cores() <= os.cpu_count()
    assert Engine(scene[2], "cpu").threads == physical_cores()
