"""The environment report (core/environment.py, lcz:checkenvironment) on this machine: versions
as the modules report them, DEVICE choices that agree with what the engine does, and fix
commands that work on each platform."""

import os
import subprocess
import sys

import numpy as np
import pytest
from lcz_testing import channel_names, identity_card, linear_probe_model, write_stack

from lcz_qgis_plugin.core import environment
from lcz_qgis_plugin.core.environment import (
    check_environment,
    pip_install_command,
    report_text,
    write_report,
)
from lcz_qgis_plugin.core.errors import EngineError, ModelError
from lcz_qgis_plugin.core.inference import engine
from lcz_qgis_plugin.core.inference.engine import DEVICES, Engine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def report():
    return check_environment("test")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    card = identity_card("probe", channel_names(2), 4)
    path, *_ = linear_probe_model(tmp_path_factory.mktemp("m") / "probe.onnx", card)
    return path


def test_report_names_the_versions_this_python_runs(report):
    from osgeo import gdal
    components = report.components
    assert components["numpy"].version == np.__version__
    assert components["GDAL"].version == gdal.__version__
    onnxruntime = pytest.importorskip(
        "onnxruntime", reason="onnxruntime is not installed here (make setup installs it)")
    assert components["onnxruntime"].version == onnxruntime.__version__
    assert all(p in components["onnxruntime"].detail
               for p in onnxruntime.get_available_providers())
    assert [d.device for d in report.devices] == list(DEVICES)
    text = report_text(report)
    assert f"numpy {np.__version__}" in text and "DEVICE choices of lcz:classify" in text
    for device in DEVICES:
        assert f"\n  {device} " in text


@pytest.mark.parametrize("device", DEVICES)
def test_device_choices_agree_with_the_engine(report, model, device):
    """What the report says of each DEVICE is what the engine then does with a model."""
    choice = {d.device: d for d in report.devices}[device]
    engine.clear_engine_cache()
    if not choice.works:
        with pytest.raises(EngineError):
            Engine(model, device=device)
        return
    if device == "openvino-int8":  # works, for models with an int8 variant; this one has none
        with pytest.raises(ModelError, match="int8 variant"):
            Engine(model, device=device)
        return
    loaded = Engine(model, device=device)
    expected = {"cpu": engine.CPU, "openvino": engine.OPENVINO_F32,
                "openvino-bf16": engine.OPENVINO_BF16 if engine.cpu_runs_bfloat16()
                else engine.OPENVINO_F32}
    if device in expected:
        assert loaded.provider == expected[device]
    if device in ("cuda", "cuda-fp16"):
        assert loaded.provider in engine.GPU_PROVIDERS


MISSING_CHILD = """
import sys
sys.path[:0] = [{root!r}]
for name in ("onnxruntime", "h5py", "openvino"):
    sys.modules[name] = None  # as in a Python without them
from lcz_qgis_plugin.core.environment import check_environment, report_text
report = check_environment("test")
print(report_text(report))
print("MISSING=" + ",".join(report.missing))
"""


def test_a_python_without_the_packages_gets_the_fix(tmp_path):
    done = subprocess.run([sys.executable, "-c", MISSING_CHILD.format(root=ROOT)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "MISSING=onnxruntime,openvino,h5py" in text
    assert "[MISSING] onnxruntime" in text and "[MISSING] h5py" in text
    assert "lcz:installdependencies" in text
    for device in DEVICES:
        assert f"  {device:14} no   onnxruntime is not installed" in text
    if environment.platform_kind() == "debian":
        assert "--break-system-packages" in text and "sudo apt install python3-h5py" in text


def test_fix_commands_work_on_each_platform():
    """Debian 12/13 refuse 'pip install --user' (externally-managed-environment): the command
    there always carries --break-system-packages; a venv needs nothing; Windows and macOS use
    QGIS's own Python."""
    debian = pip_install_command(["onnxruntime"], "debian", "/usr/bin/python3", True, False)
    assert debian == "python3 -m pip install --user --break-system-packages onnxruntime"
    venv = pip_install_command(["h5py"], "debian", "/opt/v/bin/python", False, True)
    assert venv == "/opt/v/bin/python -m pip install h5py"
    windows = pip_install_command(["onnxruntime"], "windows")
    assert windows.startswith("python -m pip install onnxruntime") and "OSGeo4W Shell" in windows
    mac = pip_install_command(["onnxruntime-gpu[cuda]"], "macos", None, False, False)
    assert mac.startswith("'/Applications/QGIS.app/Contents/MacOS/bin/python3' -m pip")
    assert '"onnxruntime-gpu[cuda]"' in mac


def test_missing_package_messages_point_to_the_installer():
    from lcz_qgis_plugin.core.training_data.patch_file import H5PY_MISSING
    for message in (engine.ONNXRUNTIME_MISSING, engine.OPENVINO_MISSING, H5PY_MISSING):
        assert "lcz:installdependencies" in message, message
        assert "--user " not in message or "--break-system-packages" in message, message


@pytest.mark.parametrize("name", ["env.html", "env.txt"])
def test_report_file(report, tmp_path, name):
    path = write_report(report, str(tmp_path / "out" / name))
    with open(path, encoding="utf-8") as f:
        text = f.read()
    assert "DEVICE choices of lcz:classify" in text
    assert text.startswith("<!DOCTYPE html>") == name.endswith(".html")
    assert os.listdir(tmp_path / "out") == [name]


@pytest.mark.qgis
def test_check_environment_algorithm(processing, tmp_path):
    from qgis.core import Qgis
    results = processing.run("lcz:checkenvironment", {"OUTPUT": str(tmp_path / "env.html")})
    assert f"QGIS:        {Qgis.version()}" in results["REPORT"]
    assert results["ONNXRUNTIME"] == (environment.try_import("onnxruntime")[0] is not None)
    assert results["H5PY"] is True and results["MISSING"] == ""
    report = check_environment("test")
    assert results["DEVICES"] == ",".join(d.device for d in report.devices if d.works)
    assert os.path.exists(tmp_path / "env.html")


@pytest.mark.qgis_process
def test_check_environment_headless(qgis_process):
    done, answer = qgis_process.run_json("lcz:checkenvironment", {})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "DEVICE choices of lcz:classify" in answer["results"]["REPORT"]
    assert answer["results"]["ONNXRUNTIME"] is True


def test_command_line_declares_gdal_mode_without_changing_it(tmp_path):
    """GDAL 3.9+ warns (FutureWarning) when the application chose no exception mode; the
    core's command line declares the mode it finds. Run with that warning as an error: on
    Debian 13's GDAL 3.10 (make test-qgis340) this failed before."""
    names = channel_names(2)
    card = identity_card("probe", names, 4, cell_size=40.0)
    model, *_ = linear_probe_model(tmp_path / "probe.onnx", card)
    scene = np.random.default_rng(3).normal(size=(2, 16, 16)).astype(np.float32)
    stack = write_stack(tmp_path / "stack.tif", scene, names)
    done = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-m",
                           "lcz_qgis_plugin.core", "classify", "--input", stack, "--model", model,
                           "--output", str(tmp_path / "lcz.tif"), "--device", "cpu"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    code = ("from osgeo import gdal\n"
            "from lcz_qgis_plugin.core.environment import keep_gdal_exception_mode\n"
            "for mode in (0, 1, 0):\n"
            "    gdal.UseExceptions() if mode else gdal.DontUseExceptions()\n"
            "    keep_gdal_exception_mode()\n"
            "    assert gdal.GetUseExceptions() == mode\n"
            "print('kept')\n")
    kept = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert "kept" in kept.stdout, kept.stderr


def test_openvino_telemetry_state_follows_the_consent_file(tmp_path, monkeypatch):
    pytest.importorskip("openvino_telemetry", reason="openvino-telemetry is not installed")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path))
    assert environment.openvino_telemetry() == "on"  # no consent file counts as consent
    folder = tmp_path / ("Intel Corporation" if sys.platform == "win32" else "intel")
    folder.mkdir()
    (folder / "openvino_telemetry").write_text("0")
    assert environment.openvino_telemetry() == "off"
