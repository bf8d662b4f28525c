"""Runs inside the QGIS desktop application (``qgis.bin --code tests/gui_desktop.py``) under
Xvfb, started by tests/test_gui.py: what a user sees in the first hour, with screenshots.

It opens the Processing Toolbox at the "Local Climate Zones" provider, every algorithm's dialog,
an LCZ map (the layer's default .qml style) in the map canvas with its legend, and the shipped
graphical model in the Modeler; saves a PNG of each in ``LCZ_GUI_OUT`` and writes what it
found to ``LCZ_GUI_OUT/results.json``, then ends the application (``os._exit``: closing
QGIS normally would ask whether to save the project).

Inputs (environment): ``LCZ_GUI_OUT`` the folder for the PNGs and the results,
``LCZ_GUI_MAP`` an LCZ map GeoTIFF with its .qml, ``LCZ_GUI_SAMPLES`` a JSON list of
[x, y, code] points of that map to read the rendered colours at, ``LCZ_GUI_MODEL3`` the
.model3 file. Runs with QGIS's own Python (system packages), not the project's venv.
"""

import json
import os
import time
import traceback

from qgis.core import QgsApplication, QgsProject
from qgis.PyQt.QtCore import Qt, QTimer
from qgis.PyQt.QtGui import QColor
from qgis.utils import iface, plugins

OUT = os.environ["LCZ_GUI_OUT"]
RESULTS = {}


def settle(seconds: float = 0.5) -> None:
    """Let Qt lay out and paint (the checks read what was drawn)."""
    end = time.time() + seconds
    while time.time() < end:
        QgsApplication.processEvents()
        time.sleep(0.02)


def save(widget, name: str) -> str:
    path = os.path.join(OUT, name)
    widget.grab().save(path)
    return path


def tree_texts(model, parent, depth=0):
    """(depth, text) of every row under ``parent`` in the toolbox's model, depth first."""
    rows = []
    for row in range(model.rowCount(parent)):
        index = model.index(row, 0, parent)
        rows.append((depth, model.data(index, Qt.DisplayRole), index))
        rows.extend(tree_texts(model, index, depth + 1))
    return rows


def toolbox() -> dict:
    """The Processing Toolbox with the Local Climate Zones provider expanded."""
    dock = plugins["processing"].toolbox
    dock.show()
    dock.raise_()
    tree = dock.algorithmTree
    model = tree.model()
    top = [model.index(row, 0) for row in range(model.rowCount())]
    names = [model.data(index, Qt.DisplayRole) for index in top]
    found = {"providers": names}
    for index in top:
        if model.data(index, Qt.DisplayRole) == "Local Climate Zones":
            tree.expandRecursively(index)
            tree.scrollTo(index, tree.PositionAtTop)
            rows = tree_texts(model, index)
            found["groups"] = [text for depth, text, _ in rows if depth == 0]
            found["algorithms"] = [text for depth, text, _ in rows if depth == 1]
            found["icon"] = not model.data(index, Qt.DecorationRole).isNull()
    settle(1.0)
    found["screenshot"] = save(iface.mainWindow(), "toolbox.png")
    save(dock, "toolbox_dock.png")
    return found


def algorithm_dialog(algorithm_id: str, screenshot: str) -> dict:
    """processing.createAlgorithmDialog, as the Toolbox opens it, at its default size: a
    widget per parameter, the help beside them, and whether the parameters need a horizontal
    scroll bar (a label too long pushes the file buttons out of sight)."""
    import processing
    from qgis.PyQt.QtWidgets import QScrollArea, QTextBrowser
    dialog = processing.createAlgorithmDialog(algorithm_id)
    dialog.show()
    settle(1.0)
    panel = dialog.mainWidget()
    parameters = [p.name() for p in dialog.algorithm().parameterDefinitions()
                  if not p.flags() & p.FlagHidden]
    widgets = {name: wrapper.wrappedWidget() if hasattr(wrapper, "wrappedWidget")
               else getattr(wrapper, "widget", None) for name, wrapper in panel.wrappers.items()}
    scrolls = [area.horizontalScrollBar().isVisible() for area in panel.findChildren(QScrollArea)]
    helps = [browser.toPlainText() for browser in dialog.findChildren(QTextBrowser)]
    widths = {name: max(widget.minimumSizeHint().width(), wrapper.wrappedLabel().sizeHint()
                        .width() if getattr(wrapper, "wrappedLabel", None)
                        and wrapper.wrappedLabel() else 0)
              for (name, wrapper), widget in zip(panel.wrappers.items(), widgets.values())
              if widget is not None}
    found = {"title": dialog.windowTitle(), "parameters": parameters,
             "wrappers": sorted(widgets), "without_widget": sorted(
                 name for name, widget in widgets.items() if widget is None),
             "size": [dialog.width(), dialog.height()],
             "horizontal_scroll_bar": any(scrolls),
             "widest": sorted(widths.items(), key=lambda item: -item[1])[:3],
             "help": max(helps, key=len)[:300] if helps else "",
             "screenshot": save(dialog, screenshot)}
    dialog.close()
    return found


def dialogs() -> dict:
    """The dialog of every algorithm of the provider, by id."""
    provider = QgsApplication.processingRegistry().providerById("lcz")
    return {alg.id(): algorithm_dialog(alg.id(), f"dialog_{alg.name()}.png")
            for alg in provider.algorithms()}


def lcz_map() -> dict:
    """The map added as a user adds it (its .qml is the default style), the canvas zoomed to
    it, the rendered colours at sample points and the legend of the Layers panel."""
    layer = iface.addRasterLayer(os.environ["LCZ_GUI_MAP"], "LCZ map")
    canvas = iface.mapCanvas()
    canvas.setExtent(layer.extent())
    canvas.refresh()
    settle(1.0)
    for _ in range(200):
        if not canvas.isDrawing():
            break
        settle(0.1)
    settle(0.5)
    image = canvas.grab().toImage()
    to_pixel = canvas.getCoordinateTransform()
    colours = []
    for x, y, code in json.loads(os.environ["LCZ_GUI_SAMPLES"]):
        point = to_pixel.transform(x, y)
        colour = QColor(image.pixel(int(round(point.x())), int(round(point.y()))))
        colours.append([code, [colour.red(), colour.green(), colour.blue()]])
    view = iface.layerTreeView()
    node = QgsProject.instance().layerTreeRoot().findLayer(layer.id())
    view.expandAll()
    legend = [n.data(Qt.DisplayRole) for n in view.layerTreeModel().layerLegendNodes(node)]
    settle(0.5)
    return {"renderer": layer.renderer().type(), "colours": colours, "legend": legend,
            "canvas_size": [image.width(), image.height()],
            "screenshot": save(iface.mainWindow(), "map.png"),
            "canvas": save(canvas, "map_canvas.png")}


def modeler() -> dict:
    """The shipped .model3 opened in the Graphical Modeler."""
    from processing.modeler.ModelerDialog import ModelerDialog
    from qgis.gui import QgsModelChildAlgorithmGraphicItem
    dialog = ModelerDialog.create()
    dialog.loadModel(os.environ["LCZ_GUI_MODEL3"])
    dialog.resize(1500, 950)
    dialog.show()
    settle(1.0)
    view, scene = dialog.view(), dialog.view().scene()
    shown = scene.itemsBoundingRect()  # the whole model in the screenshot
    zoom = 0.95 * min(view.viewport().width() / shown.width(),
                      view.viewport().height() / shown.height())
    view.resetTransform()
    view.scale(zoom, zoom)
    view.centerOn(shown.center())
    settle(1.0)
    model = dialog.model()
    children = {}
    for child_id, child in model.childAlgorithms().items():
        ok, issues = model.validateChildAlgorithm(child_id)
        children[child_id] = {"algorithm": child.algorithmId(),
                              "resolved": child.algorithm() is not None,
                              "valid": ok, "issues": list(issues)}
    items = [item for item in scene.items()
             if isinstance(item, QgsModelChildAlgorithmGraphicItem)]
    valid, issues = model.validate()
    return {"name": model.displayName(), "children": children, "child_items": len(items),
            "valid": valid, "issues": list(issues),
            "inputs": sorted(model.parameterComponents()),
            "screenshot": save(dialog, "modeler.png")}


def run() -> None:
    iface.mainWindow().resize(1600, 1000)
    settle(1.0)
    for name, check in (("toolbox", toolbox), ("dialogs", dialogs), ("map", lcz_map),
                        ("modeler", modeler)):
        try:
            RESULTS[name] = check()
        except Exception:  # noqa: BLE001 (reported to the test, which fails on it)
            RESULTS[name] = {"error": traceback.format_exc()}
    with open(os.path.join(OUT, "results.json"), "w", encoding="utf-8") as f:
        json.dump(RESULTS, f, indent=2)
    os._exit(0)


QTimer.singleShot(1000, run)
