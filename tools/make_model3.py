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
DESCRIPTION = (
    "From a Sentinel-2 product, an OpenStreetMap extract and a surface model to a styled Local "
    "Climate Zone map, with an LCZ model (.onnx). The steps are the plugin's algorithms: Stack "
    "Sentinel-2 bands, Rasterize OpenStreetMap layers and Heights from a surface model on the "
    "Sentinel-2 grid, Build model input stack with the channels the model needs, Classify "
    "Local Climate Zones. Each step runs with its default settings; open the model in the "
    "Graphical Modeler to change them. The map records the names of the input files. The "
    "plugin's help page Classify (help/classify.html) has more.")
HELP = {
    "SENTINEL2": "Sentinel-2 Level-1C or Level-2A product: the .zip as downloaded, or the "
                 "MTD_MSIL1C.xml / MTD_MSIL2A.xml file inside a .SAFE folder (a file dialog "
                 "cannot pick a folder; headless runs also take the .SAFE folder's path).",
    "OSM": "OpenStreetMap extract (.osm or .osm.pbf) covering the product's area: buildings, "
           "roads, water and land use become the OSM channels.",
    "DSM": "Digital surface model (buildings and trees included), any CRS and resolution: "
           "becomes the height channel.",
    "DTM": "Digital terrain model (bare ground), optional: without it the ground is estimated "
           "from the surface model.",
    "LCZ_MODEL": "The LCZ model (.onnx carrying the LCZ metadata). Its channels must be among "
                 "those the steps make: the Sentinel-2 bands, the OSM channels, DSM:height.",
    "lcz_map": "The LCZ map: a GeoTIFF of LCZ codes 1-17 (0 = no data) with the WUDAPT colours "
               "and a class legend.",
    "lcz_confidence": "Optional: the confidence of each cell, band 1 the top-1 probability, "
                      "band 2 the normalised entropy.",
}
OUTPUT_DESCRIPTIONS = {"lcz_map": "LCZ map", "lcz_confidence": "Confidence"}
BOX = (260, 44)
"""Width and height of the boxes in the Modeler: the names fit (the default 200 x 30 cut
"Rasterize OpenStreetMap layers" and the two-line ones)."""


def build_model():
    from qgis.core import QgsProcessingModelAlgorithm
    from qgis.core import QgsProcessingModelChildParameterSource as Source

    model = QgsProcessingModelAlgorithm(MODEL_NAME, "Local Climate Zones", "lcz")
    # Plain text only: QGIS formats this map into the dialog's help (and qgis_process help
    # prints QGIS's HTML as it is); each parameter's help is also its tooltip.
    model.setHelpContent({"ALG_DESC": DESCRIPTION, **{
        (f"classify:{name}" if name in OUTPUT_DESCRIPTIONS else name): text
        for name, text in HELP.items()}})
    add_inputs(model)
    # Only the map and its confidence are model outputs; the intermediate rasters go to
    # temporary files (open the model in the modeler to keep them too).
    stack = Source.fromChildOutput("stack", "OUTPUT")
    add_step(model, "stack", "lcz:stacksentinel2", "Stack Sentinel-2 bands",
             {"INPUT": Source.fromModelParameter("SENTINEL2")}, (120, 200))
    add_step(model, "osm", "lcz:rasterizeosm", "Rasterize OpenStreetMap layers",
             {"OSM_FILE": Source.fromModelParameter("OSM"), "REFERENCE": stack}, (420, 320))
    add_step(model, "heights", "lcz:preparedsm", "Heights from a surface model",
             {"DSM": Source.fromModelParameter("DSM"), "DTM": Source.fromModelParameter("DTM"),
              "REFERENCE": stack}, (720, 320))
    add_step(model, "inputs", "lcz:buildstack", "Build model input stack",
             {"MODEL": Source.fromModelParameter("LCZ_MODEL"),
              "INPUT": [stack, Source.fromChildOutput("osm", "OUTPUT"),
                        Source.fromChildOutput("heights", "OUTPUT")]}, (420, 460))
    add_step(model, "classify", "lcz:classify", "Classify Local Climate Zones",
             {"INPUT": [Source.fromChildOutput("inputs", "OUTPUT")],
              "MODEL": Source.fromModelParameter("LCZ_MODEL")}, (420, 600),
             [("OUTPUT", "lcz_map"), ("OUTPUT_CONFIDENCE", "lcz_confidence")])
    model.updateDestinationParameters()  # the children's kept outputs become model outputs
    return model


def add_inputs(model) -> None:
    """The model's inputs, each with its help (the dialog's tooltip, qgis_process's help)."""
    from qgis.core import (
        QgsProcessingModelParameter,
        QgsProcessingParameterFile,
        QgsProcessingParameterRasterLayer,
    )
    from qgis.PyQt.QtCore import QPointF, QSizeF
    inputs = (
        (QgsProcessingParameterFile(
            "SENTINEL2", "Sentinel-2 product (.zip, or the MTD_MSIL*.xml of a .SAFE folder)",
            QgsProcessingParameterFile.File), 120),
        (QgsProcessingParameterFile("OSM", "OpenStreetMap extract (.osm, .osm.pbf)",
                                    QgsProcessingParameterFile.File,
                                    fileFilter="OpenStreetMap (*.osm *.pbf)"), 420),
        (QgsProcessingParameterRasterLayer("DSM", "Surface model (DSM)"), 720),
        (QgsProcessingParameterRasterLayer("DTM", "Terrain model (DTM)", optional=True), 980),
        (QgsProcessingParameterFile("LCZ_MODEL", "LCZ model (.onnx)",
                                    QgsProcessingParameterFile.File, extension="onnx"), 1240))
    for definition, x in inputs:
        definition.setHelp(HELP[definition.name()])
        model.addModelParameter(definition, QgsProcessingModelParameter(definition.name()))
        model.parameterComponent(definition.name()).setPosition(QPointF(x, 60))
        model.parameterComponent(definition.name()).setSize(QSizeF(*BOX))


def add_step(model, child_id, algorithm, description, sources, position, outputs=()):
    """One child algorithm: its inputs, every other parameter at its default, and the
    outputs it passes out of the model as (its output, model output name)."""
    from qgis.core import QgsProcessingModelChildAlgorithm, QgsProcessingModelOutput
    from qgis.PyQt.QtCore import QPointF, QSizeF
    step = QgsProcessingModelChildAlgorithm(algorithm)
    step.setChildId(child_id)
    step.setDescription(description)
    step.setPosition(QPointF(*position))
    step.setSize(QSizeF(*BOX))
    for name, source in sources.items():
        step.addParameterSources(name, source if isinstance(source, list) else [source])
    store_defaults(step)
    kept = {}
    for output_name, model_output in outputs:
        out = QgsProcessingModelOutput(model_output)
        out.setChildId(child_id)
        out.setChildOutputName(output_name)
        out.setDescription(OUTPUT_DESCRIPTIONS[model_output])
        out.setMandatory(False)
        kept[model_output] = out
    step.setModelOutputs(kept)
    model.addChildAlgorithm(step)


def store_defaults(step) -> None:
    """Give every parameter of ``step`` that has a default and no source that default as a
    value: the Modeler (unlike a headless run) calls a model without them invalid, each
    mandatory parameter with a default "is mandatory"."""
    from qgis.core import QgsApplication, QgsProcessingDestinationParameter
    from qgis.core import QgsProcessingModelChildParameterSource as Source
    algorithm = QgsApplication.processingRegistry().algorithmById(step.algorithmId())
    for definition in algorithm.parameterDefinitions():
        if (definition.name() in step.parameterSources()
                or isinstance(definition, QgsProcessingDestinationParameter)
                or definition.defaultValue() is None):
            continue
        step.addParameterSources(definition.name(),
                                 [Source.fromStaticValue(definition.defaultValue())])


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
