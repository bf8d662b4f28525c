"""The desktop as a GIS analyst meets it, checked with PyQGIS in a real QgsApplication: the
layers a classify run loads, the Device choices, the shipped graphical model in the Modeler
and the help pages."""


import os

import numpy as np
import pytest
from lcz_testing import channel_names, identity_card, linear_probe_model, write_stack

pytestmark = pytest.mark.qgis


@pytest.fixture
def stack_and_model(tmp_path):
    names = channel_names(3)
    card = identity_card("probe", names, 8, cell_size=40.0)
    model, *_ = linear_probe_model(tmp_path / "probe.onnx", card, seed=5)
    scene = np.random.default_rng(5).normal(size=(3, 48, 52)).astype(np.float32)
    return write_stack(tmp_path / "stack.tif", scene, names), model


def tree_order(project, paths):
    """Position in the layer tree (0 = top) of the layer of each path."""
    order = [node.layer().source() for node in project.layerTreeRoot().findLayers()]
    return [order.index(path) for path in paths]


def test_optional_outputs_load_below_the_map_with_styles_of_their_own(
        processing, stack_and_model, tmp_path):
    """The probabilities were drawn as an RGB of bands 1-3 on top of the LCZ map, hiding
    it, and the confidence too."""
    from qgis.core import QgsProject
    stack, model = stack_and_model
    # file names whose order would put the probabilities on top (QGIS loads by path)
    paths = {"OUTPUT": str(tmp_path / "a_map.tif"),
             "OUTPUT_CONFIDENCE": str(tmp_path / "b_confidence.tif"),
             "OUTPUT_PROBABILITIES": str(tmp_path / "c_probabilities.tif")}
    project = QgsProject.instance()
    project.removeAllMapLayers()
    processing.runAndLoadResults("lcz:classify", dict(INPUT=[stack], MODEL=model, **paths))
    layers = {key: next(layer for layer in project.mapLayers().values()
                        if layer.source() == path) for key, path in paths.items()}
    assert layers["OUTPUT"].renderer().type() == "paletted"
    confidence = layers["OUTPUT_CONFIDENCE"].renderer()
    assert confidence.type() == "singlebandgray" and confidence.grayBand() == 1
    contrast = confidence.contrastEnhancement()
    assert (contrast.minimumValue(), contrast.maximumValue()) == (0.0, 1.0)
    probabilities = layers["OUTPUT_PROBABILITIES"].renderer()
    assert probabilities.type() == "singlebandpseudocolor" and probabilities.band() == 1
    assert (probabilities.classificationMin(), probabilities.classificationMax()) == (0.0, 1.0)
    assert "band 1 of 17, Compact high-rise" in layers["OUTPUT_PROBABILITIES"].name()
    top, middle, bottom = tree_order(project, [paths[k] for k in (
        "OUTPUT", "OUTPUT_CONFIDENCE", "OUTPUT_PROBABILITIES")])
    assert top < middle < bottom
    project.removeAllMapLayers()


def test_device_choices_read_as_a_short_list_in_plain_words(qgis_app):
    """The Device help was one run-on paragraph of jargon (bfloat16, AMX, AVX-512 BF16)."""
    from qgis.core import QgsApplication

    from lcz_qgis_plugin.algorithms.classify import DEVICE_LABELS
    jargon = ("bfloat16", "float16", "float32", "AMX", "AVX", "VNNI", "CUDA", "TensorRT")
    for label in DEVICE_LABELS:
        assert len(label) <= 70 and not [word for word in jargon if word in label], label
    algorithm = QgsApplication.processingRegistry().algorithmById("lcz:classify")
    lines = algorithm.shortHelpString().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("- Device (DEVICE)"))
    choices = lines[start + 1:start + 1 + len(DEVICE_LABELS)]
    assert [line.split()[0] for line in choices] == [str(i) for i in range(len(DEVICE_LABELS))]
    for line in [lines[start]] + choices:
        assert len(line) <= 200 and not [word for word in jargon if word in line], line
    assert "help/performance.html" in lines[start]


def test_the_per_class_table_lines_up_in_the_desktop_log(qgis_app):
    """The extraction log's per-class table was pushed as ordinary info lines: the desktop's
    log (HTML, proportional font) collapsed the padding and the columns did not line up."""
    from processing.gui.AlgorithmDialog import AlgorithmDialog
    from qgis.core import QgsApplication
    from qgis.PyQt.QtGui import QFontDatabase
    from qgis.PyQt.QtWidgets import QTextEdit

    from lcz_qgis_plugin.algorithms.base import QgisFeedback
    from lcz_qgis_plugin.core.training_data.extraction import _table_lines
    rows = [dict(letter="2", name="Compact mid-rise", polygons=12, train=840, validation=210,
                 test=0, total=1050),
            dict(letter="G", name="Water", polygons=3, train=96, validation=24, test=0,
                 total=120)]
    lines = _table_lines(rows)
    dialog = AlgorithmDialog(QgsApplication.processingRegistry()
                             .createAlgorithmById("lcz:extractpatches"))
    QgisFeedback(dialog.createFeedback(), fixed_width_tables=True).table(lines)
    log = dialog.findChild(QTextEdit, "txtLog")
    shown = log.toPlainText().splitlines()[-len(lines):]
    assert [line.replace("\xa0", " ") for line in shown] == lines  # no padding collapsed
    fixed = QFontDatabase.systemFont(QFontDatabase.FixedFont).family()
    document = log.document()
    for number in range(document.blockCount() - len(lines), document.blockCount()):
        fragment = document.findBlockByNumber(number).begin().fragment()
        assert fragment.charFormat().fontFamily() == fixed  # the log's fixed-width font
    dialog.deleteLater()


def test_extraction_defaults_lead_to_a_training_with_validation(processing, tmp_path):
    """Defaults were validation 0 and a temporary patch file: a first training without
    validation patches, and the file gone when QGIS closed."""
    from lcz_testing import cell_square
    from qgis.core import (
        QgsApplication,
        QgsFeature,
        QgsGeometry,
        QgsProcessingFeedback,
        QgsVectorLayer,
    )

    from lcz_qgis_plugin.core.training_data.patch_file import open_patch_file

    class Warnings(QgsProcessingFeedback):
        def __init__(self):
            super().__init__()
            self.lines = []

        def pushWarning(self, warning):  # noqa: N802
            self.lines.append(warning)

    algorithm = QgsApplication.processingRegistry().algorithmById("lcz:extractpatches")
    assert algorithm.parameterDefinition("VALIDATION_FRACTION").defaultValue() == 0.2
    patch_size = algorithm.parameterDefinition("PATCH_SIZE")
    assert patch_size.defaultValue() == 48
    assert "MSMLA 48" in patch_size.description() and "32" in patch_size.description()
    stack = write_stack(tmp_path / "s.tif", np.ones((2, 40, 40), np.float32), ["T:a", "T:b"])
    layer = QgsVectorLayer("Polygon?crs=EPSG:32633&field=lcz:string", "areas", "memory")
    for label, wkt in (("B", cell_square(0, 0)), ("B", cell_square(2, 2)),
                       ("B", cell_square(0, 3))):
        feature = QgsFeature(layer.fields())
        feature.setAttributes([label])
        feature.setGeometry(QgsGeometry.fromWkt(wkt))
        layer.dataProvider().addFeature(feature)
    feedback = Warnings()
    results = processing.run("lcz:extractpatches", {
        "INPUT": stack, "TRAINING_AREAS": layer, "PATCH_SIZE": 8,
        "OUTPUT": "TEMPORARY_OUTPUT"}, feedback=feedback)
    f, info = open_patch_file(results["OUTPUT"])
    with f:
        split = f["split"][...]
    assert sorted(split.tolist()) == [0, 0, 1]  # one of three polygons held out
    assert [line for line in feedback.lines if "temporary folder" in line
            and results["OUTPUT"] in line]


MODEL3 = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "lcz_qgis_plugin", "models", "lcz_map_from_downloads.model3")


def shipped_model():
    from qgis.core import QgsProcessingModelAlgorithm
    model = QgsProcessingModelAlgorithm()
    assert model.fromFile(MODEL3)
    return model


def test_shipped_model_is_valid_in_the_modeler_with_plain_help(qgis_app):
    """The Modeler called it invalid ("Parameter DEVICE is mandatory" and ten more: the file
    stored no values for parameters that have defaults)."""
    model = shipped_model()
    valid, issues = model.validate()
    assert valid, issues
    for child_id in model.childAlgorithms():
        assert model.validateChildAlgorithm(child_id) == (True, []), child_id
    help_map = model.helpContent()
    for text in help_map.values():
        assert "<" not in text and ">" not in text, text  # plain text
    for definition in model.parameterDefinitions():
        assert help_map.get(definition.name()), f"{definition.name()} is not documented"
        if not definition.isDestination():
            assert definition.help() == help_map[definition.name()]  # the tooltip
    assert model.displayName() == "LCZ map from downloads"


def test_shipped_model_runs_with_only_the_mandatory_inputs_and_names_them_in_the_map(
        processing, synthetic_cities, tmp_path):
    """Maps made through the model recorded the temporary stack name OUTPUT.tif instead of
    the user's input files."""
    from osgeo import gdal
    from qgis.core import QgsProcessingContext

    city = synthetic_cities.city(seed=3, size_km=1.0)
    channels = ["S2:B02", "S2:B04", "S2:B08", "OSM:building_fraction", "DSM:height"]
    model_file, *_ = linear_probe_model(tmp_path / "probe.onnx",
                                        identity_card("probe", channels, 8), seed=3)
    parameters = {"SENTINEL2": os.path.join(city.safe, "MTD_MSIL2A.xml"), "OSM": city.osm,
                  "DSM": city.dsm, "LCZ_MODEL": model_file,
                  "classify:lcz_map": str(tmp_path / "map.tif")}
    model = shipped_model()
    assert model.checkParameterValues(parameters, QgsProcessingContext()) == (True, "")
    results = processing.run(model, parameters)
    metadata = gdal.Open(results["classify:lcz_map"]).GetMetadata()
    assert metadata["LCZ_SOURCES"].split(";") == [
        os.path.basename(city.safe), os.path.basename(city.osm), os.path.basename(city.dsm)]
