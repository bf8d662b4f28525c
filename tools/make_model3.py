"""Writes the graphical model shipped with the plugin: ``lcz_map_from_downloads.model3``.

The model chains the plugin's algorithms the way a user would in the graphical modeler:
Sentinel-2 product -> stack; OSM extract and DSM/DTM -> layers on the stack's grid; the
model's input stack; LCZ map. It is built here with the PyQGIS modeler API rather than edited
by hand, so it stays valid XML for the QGIS version that writes it; run this script again after
changing an algorithm's parameters. Every parameter a step does not take from the model's
inputs or another step holds the algorithm's default as a fixed value: the Graphical Modeler
marks a step whose mandatory parameter has no value as invalid (a red box, and "Model is
Invalid" on Run), even when the algorithm has a default.

    QT_QPA_PLATFORM=offscreen QT_HASH_SEED=1 .venv/bin/python -m tools.make_model3

(``QT_HASH_SEED=1`` writes the XML attributes in the order of the committed file, so that
the diff shows only what changed.)
"""

from __future__ import annotations

import os
import sys

MODEL3 = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "lcz_qgis_plugin", "models", "lcz_map_from_downloads.model3")
MODEL_NAME = "LCZ map from downloads"
MODEL_GROUP = "Local Climate Zones"
BOX = (260, 44)
"""Width and height of the boxes in the Modeler: the names fit (the default 200 x 30 cut
"Rasterize OpenStreetMap layers" and the two-line ones)."""


def build_model():
    from qgis.core import (
        QgsProcessingModelAlgorithm,
        QgsProcessingModelChildAlgorithm,
        QgsProcessingModelOutput,
        QgsProcessingModelParameter,
        QgsProcessingParameterFile,
        QgsProcessingParameterRasterLayer,
    )
    from qgis.core import QgsProcessingModelChildParameterSource as Source
    from qgis.PyQt.QtCore import QPointF, QSizeF

    model = QgsProcessingModelAlgorithm(MODEL_NAME, MODEL_GROUP, "lcz")
    model.setHelpContent({
        "ALG_DESC": "From a Sentinel-2 product, an OpenStreetMap extract and a surface model to "
                    "a styled Local Climate Zone map, with an LCZ model (.onnx). Each step is "
                    "one of the plugin's algorithms: open the model in the graphical modeler "
                    "to change their settings.",
        "SENTINEL2": "Sentinel-2 L1C/L2A product: the .zip as downloaded, a .SAFE folder "
                     "(headless runs) or the MTD_MSIL1C.xml / MTD_MSIL2A.xml file inside it "
                     "(file dialogs cannot pick a folder).",
        "OSM": "OpenStreetMap extract (.osm or .osm.pbf) covering the product's area.",
        "DSM": "Digital surface model (any CRS and resolution).",
        "DTM": "Digital terrain model (optional; without it the ground is estimated).",
        "LCZ_MODEL": "LCZ model (.onnx with LCZ metadata) whose channels the steps provide.",
    })

    def parameter(definition, x, y):
        definition.setFlags(definition.flags())
        model.addModelParameter(definition, QgsProcessingModelParameter(definition.name()))
        model.parameterComponent(definition.name()).setPosition(QPointF(x, y))
        model.parameterComponent(definition.name()).setSize(QSizeF(*BOX))

    parameter(QgsProcessingParameterFile(
        "SENTINEL2", "Sentinel-2 product (.zip, .SAFE or its MTD_MSIL*.xml)",
        QgsProcessingParameterFile.File), 160, 60)
    parameter(QgsProcessingParameterFile("OSM", "OpenStreetMap extract (.osm, .osm.pbf)",
                                         QgsProcessingParameterFile.File,
                                         fileFilter="OpenStreetMap (*.osm *.pbf)"), 460, 60)
    parameter(QgsProcessingParameterRasterLayer("DSM", "Surface model (DSM)"), 760, 60)
    parameter(QgsProcessingParameterRasterLayer("DTM", "Terrain model (DTM)", optional=True),
              1060, 60)
    parameter(QgsProcessingParameterFile("LCZ_MODEL", "LCZ model (.onnx)",
                                         QgsProcessingParameterFile.File, extension="onnx"),
              1360, 60)

    def child(child_id, algorithm, description, sources, x, y, outputs=()):
        step = QgsProcessingModelChildAlgorithm(algorithm)
        step.setChildId(child_id)
        step.setDescription(description)
        step.setPosition(QPointF(x, y))
        step.setSize(QSizeF(*BOX))
        for name, source in sources.items():
            step.addParameterSources(name, source if isinstance(source, list) else [source])
        for name, value in _defaults(algorithm, sources).items():
            step.addParameterSources(name, [Source.fromStaticValue(value)])
        kept = {}
        for output_name, model_output in outputs:
            out = QgsProcessingModelOutput(model_output)
            out.setChildId(child_id)
            out.setChildOutputName(output_name)
            out.setDescription(model_output)
            out.setMandatory(False)
            kept[model_output] = out
        step.setModelOutputs(kept)
        model.addChildAlgorithm(step)

    # Only the map and its confidence are model outputs; the intermediate rasters go to
    # temporary files (open the model in the modeler to keep them too).
    stack = Source.fromChildOutput("stack", "OUTPUT")
    child("stack", "lcz:stacksentinel2", "Stack Sentinel-2 bands",
          {"INPUT": Source.fromModelParameter("SENTINEL2")}, 160, 200)
    child("osm", "lcz:rasterizeosm", "Rasterize OpenStreetMap layers",
          {"OSM_FILE": Source.fromModelParameter("OSM"), "REFERENCE": stack}, 460, 320)
    child("heights", "lcz:preparedsm", "Heights from a surface model",
          {"DSM": Source.fromModelParameter("DSM"), "DTM": Source.fromModelParameter("DTM"),
           "REFERENCE": stack}, 760, 320)
    child("inputs", "lcz:buildstack", "Build model input stack",
          {"MODEL": Source.fromModelParameter("LCZ_MODEL"),
           "INPUT": [stack, Source.fromChildOutput("osm", "OUTPUT"),
                     Source.fromChildOutput("heights", "OUTPUT")]}, 460, 460)
    child("classify", "lcz:classify", "Classify Local Climate Zones",
          {"INPUT": [Source.fromChildOutput("inputs", "OUTPUT")],
           "MODEL": Source.fromModelParameter("LCZ_MODEL")}, 460, 600,
          [("OUTPUT", "lcz_map"), ("OUTPUT_CONFIDENCE", "lcz_confidence")])
    model.updateDestinationParameters()  # the children's kept outputs become model outputs
    return model


def _defaults(algorithm: str, sources: dict) -> dict:
    """The default value of each mandatory input parameter of ``algorithm`` not in
    ``sources`` (none for outputs, optional parameters, or without a default)."""
    from qgis.core import QgsApplication
    found = QgsApplication.processingRegistry().algorithmById(algorithm)
    if found is None:
        raise RuntimeError(f"{algorithm} is not registered; is the plugin's provider added?")
    return {p.name(): p.defaultValue() for p in found.parameterDefinitions()
            if p.name() not in sources and not p.isDestination()
            and not p.flags() & p.FlagOptional and p.defaultValue() is not None}


def main() -> int:
    from qgis.core import QgsApplication
    app = QgsApplication([], False)
    app.initQgis()
    sys.path.insert(0, "/usr/share/qgis/python/plugins")
    from processing.core.Processing import Processing
    Processing.initialize()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, root)
    from lcz_qgis_plugin.provider import LczProvider
    provider = LczProvider()  # keep a reference: the registry does not own Python providers
    QgsApplication.processingRegistry().addProvider(provider)
    model = build_model()
    os.makedirs(os.path.dirname(MODEL3), exist_ok=True)
    if not model.toFile(MODEL3):
        print(f"could not write {MODEL3}", file=sys.stderr)
        return 1
    print(MODEL3)
    return 0


if __name__ == "__main__":
    sys.exit(main())
