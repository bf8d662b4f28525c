"""The desktop as a GIS analyst meets it, checked with PyQGIS in a real QgsApplication: the
layers a classify run loads, the Device choices, the shipped graphical model in the Modeler
and the help pages."""


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
