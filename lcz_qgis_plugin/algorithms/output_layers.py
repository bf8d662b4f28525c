"""How lcz:classify's outputs look when QGIS loads them into the project.

The LCZ map gets its legend (the .qml sidecar) and stays on top; the confidence (band 1, the
top-1 probability) is drawn as a grey ramp from 0 to 1 and the class probabilities as one
band (the first class; Symbology picks another) with a colour ramp from 0 to 1, both below the
map. QGIS would draw a raster of two or more bands as an RGB of bands 1-3 and add the layers
in the order of their file paths, so a probability layer could hide the map.
"""

from osgeo import gdal
from qgis.core import (
    QgsColorRampShader,
    QgsContrastEnhancement,
    QgsLayerTreeLayer,
    QgsProcessingLayerPostProcessorInterface,
    QgsProject,
    QgsRasterLayer,
    QgsRasterShader,
    QgsSingleBandGrayRenderer,
    QgsSingleBandPseudoColorRenderer,
)
from qgis.PyQt.QtGui import QColor

from ..core.outputs import sidecars

ORDER = ("OUTPUT", "OUTPUT_FINE", "OUTPUT_CONFIDENCE", "OUTPUT_PROBABILITIES")
"""The outputs from top to bottom of the layer tree."""

PROBABILITY_RAMP = ((0.0, "#f7fbff"), (0.5, "#6baed6"), (1.0, "#08306b"))

_pending = set()
"""Post-processors whose layers QGIS has still to load: QGIS keeps only a pointer to them."""


def style_loaded_outputs(context, outputs: dict) -> None:
    """Give each output of ``outputs`` (name -> path) that QGIS will load into the project its
    style and its place below the map."""
    run = _Run()
    for key, path in outputs.items():
        if key in ORDER and path and context.willLoadLayerOnCompletion(path):
            processor = _OutputLayer(run, key)
            run.expected.add(key)
            _pending.add(processor)
            context.layerToLoadOnCompletionDetails(path).setPostProcessor(processor)


def style_class_map(layer: QgsRasterLayer) -> None:
    layer.loadNamedStyle(sidecars(layer.source())[1])


def style_confidence(layer: QgsRasterLayer) -> None:
    """Band 1 (top-1 probability) as a grey ramp from 0 (black) to 1 (white)."""
    renderer = QgsSingleBandGrayRenderer(layer.dataProvider(), 1)
    contrast = QgsContrastEnhancement(layer.dataProvider().dataType(1))
    contrast.setContrastEnhancementAlgorithm(QgsContrastEnhancement.StretchToMinimumMaximum)
    contrast.setMinimumValue(0.0)
    contrast.setMaximumValue(1.0)
    renderer.setContrastEnhancement(contrast)
    layer.setRenderer(renderer)


def style_probabilities(layer: QgsRasterLayer) -> None:
    """Band 1 (the first class) with a colour ramp from 0 to 1, its class in the layer name."""
    ramp = QgsColorRampShader(0.0, 1.0)
    ramp.setColorRampType(QgsColorRampShader.Interpolated)
    ramp.setColorRampItemList([QgsColorRampShader.ColorRampItem(value, QColor(colour),
                                                                f"{value:g}")
                               for value, colour in PROBABILITY_RAMP])
    shader = QgsRasterShader(0.0, 1.0)
    shader.setRasterShaderFunction(ramp)
    renderer = QgsSingleBandPseudoColorRenderer(layer.dataProvider(), 1, shader)
    renderer.setClassificationMin(0.0)
    renderer.setClassificationMax(1.0)
    layer.setRenderer(renderer)
    dataset = gdal.Open(layer.source())
    first_class = dataset.GetRasterBand(1).GetDescription() if dataset else ""
    layer.setName(f"{layer.name()}: band 1 of {layer.bandCount()}"
                  + (f", {first_class}" if first_class else ""))


STYLES = {"OUTPUT": style_class_map, "OUTPUT_FINE": style_class_map,
          "OUTPUT_CONFIDENCE": style_confidence,
          "OUTPUT_PROBABILITIES": style_probabilities}


class _Run:
    """The layers one run loads, kept in :data:`ORDER` in the layer tree."""

    def __init__(self):
        self.expected = set()
        self.loaded = {}

    def arrange(self, project: QgsProject) -> None:
        """Put this run's loaded layers in :data:`ORDER` where the topmost of them is (when they
        share a group): a layer added later lands on top of the tree."""
        root = project.layerTreeRoot()
        nodes = [root.findLayer(self.loaded[key]) for key in ORDER if key in self.loaded]
        nodes = [node for node in nodes if node is not None]
        if len(nodes) < 2 or any(node.parent() is not nodes[0].parent() for node in nodes):
            return
        parent = nodes[0].parent()
        ids = {node.layerId() for node in nodes}
        top = min(i for i, child in enumerate(parent.children())
                  if isinstance(child, QgsLayerTreeLayer) and child.layerId() in ids)
        # insert the copies first: a layer whose last node leaves the tree leaves the project
        parent.insertChildNodes(top, [node.clone() for node in nodes])
        for node in nodes:
            parent.removeChildNode(node)


class _OutputLayer(QgsProcessingLayerPostProcessorInterface):
    """Styles one loaded output and puts its run's layers in order."""

    def __init__(self, run: _Run, key: str):
        super().__init__()
        self.run, self.key = run, key

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802 (QGIS API name)
        if isinstance(layer, QgsRasterLayer):
            STYLES[self.key](layer)
            layer.triggerRepaint()
            self.run.loaded[self.key] = layer.id()
            self.run.arrange(context.project() or QgsProject.instance())
        _pending.discard(self)
