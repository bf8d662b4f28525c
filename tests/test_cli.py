"""The core's command line (python -m lcz_qgis_plugin.core), for use without QGIS."""

import json
import os
import subprocess
import sys

import numpy as np
from lcz_testing import channel_names, identity_card, linear_probe_model, read, write_stack

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args):
    return subprocess.run([sys.executable, "-m", "lcz_qgis_plugin.core", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT)


def test_classify_and_model_info(tmp_path):
    names = channel_names(2)
    model, *_ = linear_probe_model(tmp_path / "m.onnx",
                                   identity_card("probe", names, 6, cell_size=30.0))
    scene = np.random.default_rng(0).normal(size=(2, 31, 29)).astype(np.float32)
    stack = write_stack(tmp_path / "s.tif", scene, names)
    done = cli("classify", "--input", stack, "--model", model, "--output", tmp_path / "l.tif",
               "--device", "cpu", "--majority-radius", "1")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["provider"] == "CPUExecutionProvider" and answer["classified_cells"] == 100
    assert read(tmp_path / "l.tif").shape == (10, 10)
    assert "Output grid: 10 x 10 cells of 30 m" in done.stderr
    info = json.loads(cli("model-info", model).stdout)
    assert info["channels"] == names and info["patch_size"] == 6


def test_errors_are_one_line_and_exit_2(tmp_path):
    names = channel_names(2)
    model, *_ = linear_probe_model(tmp_path / "m.onnx", identity_card("probe", names, 6))
    stack = write_stack(tmp_path / "s.tif", np.zeros((2, 20, 20), np.float32), ["x", "y"])
    done = cli("classify", "--input", stack, "--model", model, "--output", tmp_path / "l.tif")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: the input raster")
    assert "Missing: T:c0, T:c1" in done.stderr
    assert not (tmp_path / "l.tif").exists()


def test_a_missing_input_is_refused_before_the_model_is_loaded(tmp_path):
    """The one error line, not three lines about the model and the engine first."""
    names = channel_names(2)
    model, *_ = linear_probe_model(tmp_path / "m.onnx", identity_card("probe", names, 6))
    missing = tmp_path / "nope.tif"
    done = cli("classify", "--input", missing, "--model", model, "--output", tmp_path / "l.tif")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: the input raster {missing} does not exist."]
