"""The inference engine: execution providers, missing onnxruntime, broken model files."""

import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from lcz_testing import RecordingFeedback, channel_names, identity_card, linear_probe_model
from onnx import TensorProto, helper

from lcz_qgis_plugin.core.errors import EngineError, ModelError
from lcz_qgis_plugin.core.inference.engine import (
    CPU,
    CUDA,
    OPENVINO_F32,
    Engine,
    available_providers,
    clear_engine_cache,
    import_openvino,
    nvidia_driver_present,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def gpu_present() -> bool:
    smi = shutil.which("nvidia-smi")
    return bool(smi) and subprocess.run([smi], capture_output=True).returncode == 0


@pytest.fixture
def model(tmp_path):
    path, *_ = linear_probe_model(tmp_path / "m.onnx", identity_card("m", channel_names(2), 6))
    return path


def test_cpu_device(model):
    engine = Engine(model, device="cpu", threads=1)
    assert engine.provider == CPU
    probs = engine.probabilities(np.zeros((3, 2, 6, 6), np.float32))
    assert probs.shape == (3, 17)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)


def test_auto_names_the_provider_it_runs_on(model):
    log = RecordingFeedback()
    engine = Engine(model, device="auto", feedback=log)
    if engine.provider == CUDA:
        assert gpu_present()
    else:
        # a float32 engine for a model without passed reduced-precision checks: the faster
        # of onnxruntime and OpenVINO on this CPU where openvino is installed
        assert engine.provider in ((CPU, OPENVINO_F32) if import_openvino() else (CPU,))
        assert any(f"running on the CPU ({engine.provider}). Automatic: " in line
                   for line in log.lines)


def test_without_an_nvidia_driver_auto_does_not_try_cuda_and_says_so_once(model, tmp_path,
                                                                          monkeypatch):
    """onnxruntime-gpu on a machine without an NVIDIA GPU (issue 11, 8b): one info line, no
    warning about a CUDA provider that could not start."""
    if CUDA not in available_providers():
        pytest.skip("this onnxruntime has no CUDA provider: nothing to try")
    if nvidia_driver_present():
        pytest.skip("an NVIDIA driver is present: CUDA is tried for real here")
    monkeypatch.setenv("LCZ_CACHE_DIR", str(tmp_path / "cache"))
    clear_engine_cache()
    said = RecordingFeedback()
    engine = Engine(model, device="auto", feedback=said)
    assert engine.provider != CUDA
    assert said.warnings == []
    (line,) = said.infos
    assert line.startswith("No NVIDIA GPU driver on this machine, so CUDA was not tried: "
                           f"running on the CPU ({engine.provider}).")


def test_cuda_device_runs_on_cuda_or_says_why_not(model):
    if gpu_present() and CUDA in available_providers():
        assert Engine(model, device="cuda").provider == CUDA
    else:
        with pytest.raises(EngineError, match="DEVICE is CUDA.*Set DEVICE to Automatic or CPU"):
            Engine(model, device="cuda")


def test_missing_model_file(tmp_path):
    with pytest.raises(ModelError, match="does not exist.*training export"):
        Engine(str(tmp_path / "nope.onnx"))


def test_corrupt_model_file(tmp_path, model):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(open(model, "rb").read()[:200])
    with pytest.raises(ModelError, match="not a valid ONNX model.*Export it again"):
        Engine(str(broken), device="cpu")


def test_model_without_contract_metadata(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 17, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 17])])
    plain = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    plain.ir_version = 9
    onnx.save(plain, tmp_path / "plain.onnx")
    with pytest.raises(ModelError, match="carries no LCZ model metadata"):
        Engine(str(tmp_path / "plain.onnx"), device="cpu")


def test_metadata_contradicting_the_graph(tmp_path, model):
    card = identity_card("m", channel_names(3), 6)  # the graph takes 2 channels
    model_proto = onnx.load(model)
    for entry in model_proto.metadata_props:
        if entry.key in card.to_metadata_props():
            entry.value = card.to_metadata_props()[entry.key]
    onnx.save(model_proto, tmp_path / "lying.onnx")
    with pytest.raises(ModelError, match=r"input of shape .* metadata says \(N, 3, 6, 6\)"):
        Engine(str(tmp_path / "lying.onnx"), device="cpu")


def test_missing_onnxruntime_says_how_to_install_it(model):
    """A Python without onnxruntime (simulated by blocking the import) gets install steps."""
    code = ("import sys; sys.modules['onnxruntime'] = None\n"
            "from lcz_qgis_plugin.core.inference.engine import Engine\n"
            "from lcz_qgis_plugin.core.errors import EngineError\n"
            "try:\n    Engine(sys.argv[1])\nexcept EngineError as e:\n    print(e)\n")
    done = subprocess.run([sys.executable, "-c", code, model], capture_output=True, text=True,
                          cwd=ROOT)
    assert "onnxruntime is not installed in the Python that runs QGIS" in done.stdout
    assert "OSGeo4W Shell" in done.stdout and "pip install" in done.stdout


OPENVINO_SIGNAL_CHILD = """
import gc, os, signal, sys, time
sys.path[:0] = [{root!r}, {tests!r}]
from lcz_testing import channel_names, identity_card, linear_probe_model
from lcz_qgis_plugin.core.inference.engine import Engine, clear_engine_cache
from lcz_qgis_plugin.core.interrupt import cancel_on_signals
for n in (2, 3):  # two models: two OpenVINO engines, destroyed in the order they were made
    card = identity_card("probe", channel_names(n), 8)
    path, _, _ = linear_probe_model(os.path.join({work!r}, f"m{{n}}.onnx"), card)
    Engine(path, device="openvino")
clear_engine_cache()
gc.collect()
seen = []
with cancel_on_signals(lambda: seen.append("cancel")):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.1)
print("survived", seen)
"""


def test_a_signal_after_openvino_engines_are_dropped_cancels_instead_of_crashing(tmp_path):
    """OpenVINO's CPU plugin restores the alternate signal stack of the Core that loaded it;
    Cores destroyed in creation order left a freed stack registered, and Ctrl+C or SIGTERM then
    crashed the process (segmentation fault) instead of cancelling. One Core per process."""
    if import_openvino() is None:
        pytest.skip("openvino is not installed")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = OPENVINO_SIGNAL_CHILD.format(root=root, tests=os.path.join(root, "tests"),
                                        work=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stderr[-2000:]}"
    assert "survived ['cancel']" in done.stdout
