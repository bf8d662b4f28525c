"""`make demo` at reduced size: three small simulated cities, one training epoch (MSMLA-18
and the dense U-Net, with and without the ancillary channels).

Runs the real pipeline (qgis_process.bin for every plugin step, the shipped .model3, the
training package in child processes) and checks that every promised output is there and
readable. Whether the ancillary channels help is measured by the full demo (printed OA) and
by tests/test_synthcity.py; one epoch is too short to assert it here.
"""

import json
import os
import re
import subprocess
import sys

import pytest
from osgeo import gdal

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.qgis_process
def test_demo_end_to_end_at_reduced_size(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "demo.py"), "--out", str(out),
         "--work", str(work), "--size-km", "1.5", "--epochs", "1", "--dense-epochs", "1"],
        capture_output=True, text=True, cwd=ROOT, timeout=1200,
        env=dict(os.environ, QT_QPA_PLATFORM="offscreen"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Sentinel-2 + OSM + DSM" in done.stdout and "Sentinel-2 only" in done.stdout
    assert_progress_is_shown(done.stdout)
    summary = json.loads((out / "demo_summary.json").read_text())
    names = ("ancillary", "s2_only", "unet_ancillary", "unet_s2_only")
    for name in names:
        lcz_map = out / f"demo_lcz_map_{name}.tif"
        model = out / (f"demo_{name}.onnx" if name.startswith("unet") else
                       f"demo_msmla18_{name}.onnx")
        for path in (lcz_map, out / f"demo_lcz_map_{name}.qml", out / f"demo_lcz_map_{name}.png",
                     out / f"demo_accuracy_{name}.html", model):
            assert path.stat().st_size > 0, path
        ds = gdal.Open(str(lcz_map))
        assert (ds.RasterXSize, ds.RasterYSize) == (15, 15)  # 1.5 km at 100 m
        assert ds.GetRasterBand(1).GetColorTable() is not None
        assert 0 <= summary["scores"][name]["OA"] <= 1
        assert summary["seconds"][name]["train"] > 0 and summary["seconds"][name]["map"] > 0
    assert set(summary["engines"]) == set(names)
    assert re.search(r"^  U-Net \(dense\), Sentinel-2 only +\d+\.\d %", done.stdout, re.M)
    assert all(e and e in done.stdout for e in summary["engines"].values())
    assert (out / "demo_truth.png").stat().st_size > 0
    assert "simulated" in summary["note"]
    assert_automatic_device_keeps_the_float32_map(out, work, tmp_path)


def assert_progress_is_shown(stdout):
    """Training shows a line per epoch as it goes (losses, validation accuracy, time left),
    every step its duration, and a table of the steps' times comes before the accuracy."""
    epochs = re.findall(r"^ +epoch 1/1: train loss [\d.]+ OA [\d.]+ \| val loss [\d.]+ OA "
                        r"[\d.]+.* \| \d+ s, \d+ s elapsed, about 0 s left$", stdout, re.M)
    assert len(epochs) == 4, stdout  # one per model
    assert re.findall(r"^ +step (\d) took ", stdout, re.M) == list("123456789"), stdout
    assert re.search(r"^ +train: lcz:stacksentinel2 \.\.\. \d+ s$", stdout, re.M), stdout
    table = stdout.index("Time per step:")
    assert re.search(r"^ +total +(\d+ min )?\d+ s$", stdout[table:], re.M), stdout
    assert table < stdout.index("Accuracy on the mapped city")


def assert_automatic_device_keeps_the_float32_map(out, work, tmp_path):
    """The demo's maps come from lcz:classify's Automatic device, which may run bfloat16 when
    the exported model's card vouches for it: whatever it chose must give onnxruntime
    float32's map on at least 99 % of cells (here on the validation city)."""
    from lcz_qgis_plugin.core.inference.classify import classify
    stack = str(work / "validation_layers" / "stack.vrt")
    for name in ("ancillary", "s2_only"):
        model = str(out / f"demo_msmla18_{name}.onnx")
        maps = {}
        for device in ("cpu", "auto"):
            result = classify([stack], model, str(tmp_path / f"{name}_{device}.tif"),
                              device=device)
            maps[device] = gdal.Open(result.output).ReadAsArray()
        valid = maps["cpu"] > 0
        same = (maps["auto"] == maps["cpu"])[valid].mean()
        assert valid.sum() > 100 and same >= 0.99, (name, result.provider, same)
