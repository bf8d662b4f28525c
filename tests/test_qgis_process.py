"""Headless use: qgis_process.bin subprocesses with the plugin installed from its ZIP."""

import csv
import os

import numpy as np
import pytest
from lcz_testing import channel_names, identity_card, linear_probe_model, read, write_stack

from lcz_qgis_plugin.core.inference.engine import CPU, OPENVINO_F32, import_openvino

pytestmark = pytest.mark.qgis_process
MODEL3 = os.path.join(os.path.dirname(__file__), "data", "classify_and_count.model3")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    names = channel_names(3)
    card = identity_card("probe", names, 8, cell_size=40.0)
    model, *_ = linear_probe_model(folder / "probe.onnx", card, seed=21)
    rng = np.random.default_rng(21)
    dates = [write_stack(folder / f"date{i}.tif", rng.normal(size=(3, 48, 52)).astype(np.float32),
                         names) for i in range(2)]
    return dates, model


def test_zip_installed_plugin_is_listed(qgis_process):
    done = qgis_process.call("list")
    assert done.returncode == 0, done.stderr
    assert "Local Climate Zones" in done.stdout
    assert "lcz:classify" in done.stdout


def test_help_shows_parameters(qgis_process):
    done = qgis_process.call("help", "lcz:classify")
    for name in ("INPUT", "MODEL", "CELL_SIZE", "EXTENT", "DEVICE", "BATCH_SIZE",
                 "MAJORITY_RADIUS", "OUTPUT", "OUTPUT_PROBABILITIES", "OUTPUT_CONFIDENCE"):
        assert f"{name}:" in done.stdout, name


def test_run_classify_json(qgis_process, inputs, tmp_path):
    from lcz_qgis_plugin.core.inference.classify import classify
    dates, model = inputs
    done, answer = qgis_process.run_json("lcz:classify", {
        "INPUT": dates, "MODEL": model, "DEVICE": 0, "MAJORITY_RADIUS": 1,
        "OUTPUT": str(tmp_path / "lcz.tif"), "OUTPUT_CONFIDENCE": str(tmp_path / "conf.tif")})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = answer["results"]
    # DEVICE Automatic without GPU: the faster float32 engine here (QGIS runs this venv)
    assert results["EXECUTION_PROVIDER"] in ((CPU, OPENVINO_F32) if import_openvino() else (CPU,))
    assert results["OUTPUT"] == str(tmp_path / "lcz.tif")
    expected = classify(dates, model, str(tmp_path / "core.tif"), majority_radius=1)
    np.testing.assert_array_equal(read(results["OUTPUT"]), read(expected.output))
    assert results["CLASSIFIED_CELLS"] == expected.classified_cells
    assert read(results["OUTPUT_CONFIDENCE"]).shape == (2, 12, 13)
    assert (tmp_path / "lcz.qml").exists()


def test_failure_exits_non_zero_with_the_reason(qgis_process, inputs, tmp_path):
    dates, model = inputs
    done, _ = qgis_process.run_json("lcz:classify", {
        "INPUT": dates[0], "MODEL": model, "CELL_SIZE": 35, "OUTPUT": str(tmp_path / "x.tif")})
    assert done.returncode != 0
    assert "not a whole multiple of the input pixel size" in done.stdout + done.stderr
    assert not (tmp_path / "x.tif").exists()


def test_a_failed_json_run_is_read_from_the_exit_status_and_the_last_line(qgis_process,
                                                                           inputs, tmp_path):
    """What docs/classify.md tells scripts: qgis_process 3.22 prints no JSON for a failed run
    (it writes its answer only on success), exits with 1, and the last line of stderr is the
    reason. Each copy QGIS prints is the plugin's one message, never a variant of it."""
    dates, model = inputs
    done, answer = qgis_process.run_json("lcz:classify", {
        "INPUT": dates[0], "MODEL": model, "CELL_SIZE": 35, "OUTPUT": str(tmp_path / "x.tif")})
    assert done.returncode == 1 and answer is None
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    reason = lines[-1]
    assert reason.startswith("the cell size 35 m is not a whole multiple")
    assert {line.replace("ERROR:\t", "") for line in lines if "35 m" in line} == {reason}


def test_graphical_model_chains_classify_with_a_native_algorithm(qgis_process, inputs, tmp_path):
    dates, model = inputs
    done, answer = qgis_process.run_json(MODEL3, {
        "stacks": dates[0], "model": model, "classify:lcz_map": str(tmp_path / "map.tif"),
        "count:class_counts": str(tmp_path / "counts.csv")})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    classes = read(tmp_path / "map.tif")
    with open(tmp_path / "counts.csv") as f:
        counts = {int(float(row["value"])): int(row["count"]) for row in csv.DictReader(f)}
    values, numbers = np.unique(classes, return_counts=True)
    assert counts == dict(zip(values.tolist(), numbers.tolist()))
    assert sum(counts.values()) == 12 * 13


def test_without_onnxruntime_the_plugin_says_how_to_install_it(qgis_process, inputs, tmp_path):
    """QGIS's own Python (no venv on PATH) has no onnxruntime: a real missing install."""
    dates, model = inputs
    env = dict(qgis_process.env)
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep)
                                  if not os.path.exists(os.path.join(p, "pyvenv.cfg"))
                                  and not os.path.exists(os.path.join(p, "..", "pyvenv.cfg")))
    probe = qgis_process.call("run", "lcz:classify", "--", f"INPUT={dates[0]}",
                              f"MODEL={model}", f"OUTPUT={tmp_path / 'x.tif'}", env=env)
    if "onnxruntime" not in probe.stdout + probe.stderr and probe.returncode == 0:
        pytest.skip("QGIS's system Python has onnxruntime installed; nothing to check")
    assert probe.returncode != 0
    assert "onnxruntime is not installed in the Python that runs QGIS" in \
        probe.stdout + probe.stderr
    assert not (tmp_path / "x.tif").exists()
