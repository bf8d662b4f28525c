"""What a QGIS user sees, on a real display (issue 15, item 6).

The QGIS desktop application runs under Xvfb (``QT_QPA_PLATFORM=xcb``) with the plugin
installed in a fresh profile and tests/gui_desktop.py as its startup code: the Processing
Toolbox at the "Local Climate Zones" provider, every algorithm's dialog, an LCZ map made by the
core (its .qml style and colour table) in the map canvas with its legend, and the shipped
graphical model in the Modeler. Screenshots go to build/screenshots/ (look at them after a
change to a dialog or a style); what the checks need comes back as JSON.

Skipped with the reason when Xvfb or the QGIS desktop is not installed (`make setup` installs
both). :func:`test_shipped_model_is_valid` needs no display.
"""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from lcz_testing import centre_value_model, identity_card, write_stack

from lcz_qgis_plugin.core.lcz_classes import LCZ_CLASSES, lcz_class
from tools.package_plugin import stage_plugin

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCREENSHOTS = os.path.join(ROOT, "build", "screenshots")
MODEL3 = os.path.join(ROOT, "lcz_qgis_plugin", "models", "lcz_map_from_downloads.model3")
QGIS_DESKTOP = shutil.which("qgis.bin") or "/usr/bin/qgis.bin"
BLOCK = 3
"""Cells a side of each class's block in the test map."""


@pytest.fixture(scope="module")
def display():
    """A virtual X display (Xvfb) for this module: its name, e.g. ``:1``."""
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        pytest.skip("Xvfb is not installed: the real-display checks need it (make setup "
                    "installs it; or apt-get install xvfb)")
    if not os.path.exists(QGIS_DESKTOP):
        pytest.skip("the QGIS desktop (qgis.bin) is not installed (make setup installs QGIS)")
    read, write = os.pipe()
    server = subprocess.Popen([xvfb, "-displayfd", str(write), "-screen", "0", "1600x1000x24",
                               "-nolisten", "tcp"], pass_fds=[write],
                              stderr=subprocess.DEVNULL)
    os.close(write)
    with os.fdopen(read) as numbers:
        number = numbers.readline().strip()
    if not number:
        server.kill()
        pytest.fail("Xvfb started but gave no display number")
    yield f":{number}"
    server.terminate()
    server.wait(timeout=30)


def lcz_test_map(folder) -> tuple[str, list]:
    """An LCZ map made by the core's lcz:classify from a stack whose cells hold their class
    code: a block of BLOCK x BLOCK cells per class (17 blocks and one of no data, 6 x 3), so
    the colour at each block's centre is known. Returns the map and [x, y, code] samples."""
    from lcz_qgis_plugin.core.inference.classify import classify
    codes = [c.code for c in LCZ_CLASSES] + [0]
    cells = np.zeros((3 * BLOCK, 6 * BLOCK), np.float32)
    for number, code in enumerate(codes):
        row, col = divmod(number, 6)
        cells[row * BLOCK:(row + 1) * BLOCK, col * BLOCK:(col + 1) * BLOCK] = code or np.nan
    pixels = np.kron(cells, np.ones((10, 10), np.float32))[None]  # 10 px of 10 m per cell
    stack = write_stack(os.path.join(folder, "stack.tif"), np.nan_to_num(pixels, nan=-9999),
                        ["T:c0"], nodata=-9999)
    card = identity_card("blocks", ["T:c0"], 8)
    model = centre_value_model(os.path.join(folder, "blocks.onnx"), card)
    lcz_map = classify([stack], model, os.path.join(folder, "lcz_map.tif"), device="cpu").output
    x0, y0 = 500000.0, 5000000.0  # lcz_testing.ORIGIN, 100 m cells
    samples = []
    for number, code in enumerate(codes):
        row, col = divmod(number, 6)
        samples.append([x0 + (col + 0.5) * BLOCK * 100, y0 - (row + 0.5) * BLOCK * 100, code])
    return lcz_map, samples


@pytest.fixture(scope="module")
def desktop(display, tmp_path_factory):
    """tests/gui_desktop.py run once in the QGIS desktop: its results (JSON)."""
    work = str(tmp_path_factory.mktemp("gui"))
    plugins = os.path.join(work, "plugins")
    stage_plugin(plugins)
    profile = os.path.join(work, "profiles", "profiles", "default", "QGIS")
    os.makedirs(profile)
    with open(os.path.join(profile, "QGIS3.ini"), "w", encoding="utf-8") as f:
        f.write("[PythonPlugins]\nlcz_qgis_plugin=true\nprocessing=true\n")
    lcz_map, samples = lcz_test_map(work)
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    os.makedirs(SCREENSHOTS)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(DISPLAY=display, QT_QPA_PLATFORM="xcb", QGIS_PLUGINPATH=plugins,
               LCZ_GUI_OUT=SCREENSHOTS, LCZ_GUI_MAP=lcz_map, LCZ_GUI_SAMPLES=json.dumps(samples),
               LCZ_GUI_MODEL3=os.path.join(plugins, "lcz_qgis_plugin", "models",
                                           os.path.basename(MODEL3)))
    done = subprocess.run([QGIS_DESKTOP, "--nologo", "--noversioncheck", "--profiles-path",
                           os.path.join(work, "profiles"), "--code",
                           os.path.join(ROOT, "tests", "gui_desktop.py")],
                          env=env, capture_output=True, text=True, timeout=600)
    results = os.path.join(SCREENSHOTS, "results.json")
    if not os.path.exists(results):
        pytest.fail(f"QGIS ended (status {done.returncode}) without results:\n"
                    f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    with open(results, encoding="utf-8") as f:
        return json.load(f)


def checked(results: dict, part: str) -> dict:
    """One part of the results, failing with QGIS's traceback when it raised."""
    assert "error" not in results[part], results[part].get("error")
    assert os.path.getsize(results[part]["screenshot"]) > 0
    return results[part]


@pytest.mark.slow
def test_toolbox_shows_the_provider_with_every_algorithm(desktop, qgis_app):
    from qgis.core import QgsApplication
    toolbox = checked(desktop, "toolbox")
    provider = QgsApplication.processingRegistry().providerById("lcz")
    assert "Local Climate Zones" in toolbox["providers"]
    assert toolbox["icon"]
    assert toolbox["groups"] == ["Classification", "Preprocessing", "Training"]
    assert sorted(toolbox["algorithms"]) == sorted(a.displayName() for a in provider.algorithms())


@pytest.mark.slow
def test_every_algorithm_dialog_shows_every_parameter(desktop, qgis_app):
    """A widget per parameter, the help beside them, and everything within the default
    dialog width: no horizontal scroll bar hiding the file buttons."""
    from qgis.core import QgsApplication
    dialogs = desktop["dialogs"]
    assert "error" not in dialogs, dialogs.get("error")
    provider = QgsApplication.processingRegistry().providerById("lcz")
    assert sorted(dialogs) == sorted(a.id() for a in provider.algorithms())
    for algorithm_id, dialog in dialogs.items():
        assert "error" not in dialog, (algorithm_id, dialog.get("error"))
        assert os.path.getsize(dialog["screenshot"]) > 0
        assert set(dialog["parameters"]) <= set(dialog["wrappers"]), algorithm_id
        assert not dialog["without_widget"], (algorithm_id, dialog["without_widget"])
        assert dialog["help"].startswith(dialog["title"]), (algorithm_id, dialog["help"])
        assert not dialog["horizontal_scroll_bar"], (
            f"{algorithm_id}: the parameters need a horizontal scroll bar at the default "
            f"size {dialog['size']}; widest (name, px): {dialog['widest']}")


@pytest.mark.slow
def test_map_canvas_shows_the_wudapt_colours_and_the_legend(desktop):
    shown = checked(desktop, "map")
    assert shown["renderer"] == "paletted"
    for code, colour in shown["colours"]:
        expected = list(lcz_class(code).rgb) if code else [255, 255, 255]  # no data: canvas
        assert colour == expected, (code, colour, expected)
    assert shown["legend"][1:] == [c.label for c in LCZ_CLASSES]


@pytest.mark.slow
def test_modeler_opens_the_shipped_model_without_invalid_steps(desktop):
    modeler = checked(desktop, "modeler")
    assert modeler["name"] == "LCZ map from downloads"
    assert sorted(modeler["inputs"]) == ["DSM", "DTM", "LCZ_MODEL", "OSM", "SENTINEL2"]
    assert len(modeler["children"]) == modeler["child_items"] == 5
    for child_id, child in modeler["children"].items():
        assert child["resolved"] and child["valid"], (child_id, child)
    assert modeler["valid"], modeler["issues"]


def test_shipped_model_is_valid(qgis_app):
    """Every step of the shipped .model3 has a value for each mandatory parameter: the
    Modeler shows a step without one as a red box and asks "Model is Invalid ... run it in
    this state?" on Run (qgis_process would still run it with the defaults)."""
    from qgis.core import QgsProcessingModelAlgorithm
    model = QgsProcessingModelAlgorithm()
    assert model.fromFile(MODEL3)
    assert model.displayName() == "LCZ map from downloads"
    assert model.group() == "Local Climate Zones"
    for child_id in model.childAlgorithms():
        ok, issues = model.validateChildAlgorithm(child_id)
        assert ok, (child_id, issues)
    assert model.validate() == (True, [])
