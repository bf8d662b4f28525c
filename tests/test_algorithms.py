"""The Processing provider and lcz:classify in a real QgsApplication (processing.run)."""

import os
import re

import numpy as np
import pytest
from lcz_testing import (
    ORIGIN,
    assert_refused,
    bad_input_cases,
    centre_value_model,
    channel_names,
    files_in,
    identity_card,
    linear_probe_model,
    read,
    write_stack,
)

from lcz_qgis_plugin.core.inference.engine import CPU, OPENVINO_F32, import_openvino

pytestmark = pytest.mark.qgis


@pytest.fixture
def scene_and_model(tmp_path):
    """A 3-channel stack (60 x 64 px of 10 m) and a linear probe model (8 px, 40 m cells)."""
    names = channel_names(3)
    card = identity_card("probe", names, 8, cell_size=40.0, version="1.2")
    model, *_ = linear_probe_model(tmp_path / "probe.onnx", card, seed=11)
    scene = np.random.default_rng(11).normal(size=(3, 60, 64)).astype(np.float32)
    stack = write_stack(tmp_path / "stack.tif", scene, names)
    return stack, model, scene, names


def provider():
    from qgis.core import QgsApplication
    return QgsApplication.processingRegistry().providerById("lcz")


def test_provider_is_registered_with_an_icon(qgis_app):
    lcz = provider()
    assert lcz is not None and lcz.name() == "Local Climate Zones"
    assert not lcz.icon().isNull()
    assert "lcz:classify" in [a.id() for a in lcz.algorithms()]


def test_algorithms_pass_qgis_core_compliance_checks(qgis_app):
    """The checks QGIS applies to its own algorithms (GenericAlgorithmsTest), plus ours."""
    for alg in provider().algorithms():
        assert re.fullmatch(r"[a-z0-9_]+", alg.name()), alg.id()
        assert alg.displayName() and alg.group() and alg.groupId() == alg.groupId().lower()
        assert alg.tags(), f"{alg.id()} has no tags"
        help_text = alg.shortHelpString()
        assert help_text, f"{alg.id()} has no shortHelpString"
        short = alg.shortDescription()
        assert short and short[0].isupper() and short.endswith(".")
        assert not short.lower().startswith("this algorithm")
        assert short.split(" ")[0].lower().endswith("s"), "should start with a verb ending in s"
        assert "</" not in short
        url = alg.helpUrl()
        assert url.startswith("file://") and os.path.exists(url[len("file://"):])
        # the LCZ literature under every mapping step; the Tools (environment, installer)
        # are about the software and go without it
        assert ("References" in help_text) == (alg.groupId() != "tools"), alg.id()
        for parameter in alg.parameterDefinitions():
            assert parameter.name() == parameter.name().upper(), parameter.name()
            assert re.search(rf"\({parameter.name()}\b", help_text), \
                f"{parameter.name()} is not documented in the help"
            assert parameter.description()
        assert not alg.icon().isNull()


def test_classify_through_processing_run(processing, scene_and_model, tmp_path):
    from lcz_qgis_plugin.core.inference.classify import classify
    stack, model, scene, names = scene_and_model
    results = processing.run("lcz:classify", {
        "INPUT": [stack], "MODEL": model, "OUTPUT": str(tmp_path / "out" / "lcz.tif"),
        "OUTPUT_PROBABILITIES": str(tmp_path / "out" / "p.tif"),
    })
    # DEVICE Automatic on a machine without GPU: the faster float32 engine on this CPU
    assert results["EXECUTION_PROVIDER"] in ((CPU, OPENVINO_F32) if import_openvino() else (CPU,))
    assert results["OUTPUT_CONFIDENCE"] is None
    expected = classify([stack], model, str(tmp_path / "core.tif"))
    np.testing.assert_array_equal(read(results["OUTPUT"]), read(expected.output))
    assert results["CLASSIFIED_CELLS"] == expected.classified_cells == 16 * 15
    assert read(results["OUTPUT_PROBABILITIES"]).shape == (17, 15, 16)


def test_extent_in_another_crs_is_reprojected(processing, scene_and_model, tmp_path):
    from qgis.core import (
        QgsCoordinateReferenceSystem,
        QgsCoordinateTransform,
        QgsProject,
        QgsRectangle,
    )
    stack, model, *_ = scene_and_model
    # cells 2..5 x 3..6 of the 40 m lattice, expressed in WGS 84
    utm = QgsRectangle(ORIGIN[0] + 2 * 40 + 5, ORIGIN[1] - 6 * 40 - 35,
                       ORIGIN[0] + 5 * 40 + 35, ORIGIN[1] - 3 * 40 - 5)
    wgs84 = QgsCoordinateReferenceSystem("EPSG:4326")
    transform = QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:32633"), wgs84,
                                       QgsProject.instance())
    g = transform.transformBoundingBox(utm)
    extent = f"{g.xMinimum()},{g.xMaximum()},{g.yMinimum()},{g.yMaximum()} [EPSG:4326]"
    full = processing.run("lcz:classify", {"INPUT": [stack], "MODEL": model,
                                           "OUTPUT": str(tmp_path / "full.tif")})["OUTPUT"]
    part = processing.run("lcz:classify", {"INPUT": [stack], "MODEL": model, "EXTENT": extent,
                                           "OUTPUT": str(tmp_path / "part.tif")})["OUTPUT"]
    assert read(part).shape == (4, 4)
    np.testing.assert_array_equal(read(part), read(full)[3:7, 2:6])


def test_cell_size_device_batch_and_majority_parameters(processing, scene_and_model, tmp_path):
    stack, model, *_ = scene_and_model
    results = processing.run("lcz:classify", {
        "INPUT": [stack], "MODEL": model, "CELL_SIZE": 80, "DEVICE": 2, "BATCH_SIZE": 3,
        "MAJORITY_RADIUS": 1, "THREADS": 1, "OUTPUT": str(tmp_path / "lcz.tif")})
    assert read(results["OUTPUT"]).shape == (7, 8)  # cell centres 4, 12, ..., 52 < 60 rows
    from osgeo import gdal
    meta = gdal.Open(results["OUTPUT"]).GetMetadata()
    assert meta["LCZ_CELL_SIZE"] == "80" and meta["LCZ_MAJORITY_RADIUS"] == "1"


def test_loaded_map_is_styled_with_a_legend(processing, scene_and_model, tmp_path):
    from qgis.core import QgsProject, QgsRasterLayer
    stack, model, *_ = scene_and_model
    out = str(tmp_path / "styled.tif")
    processing.runAndLoadResults("lcz:classify", {"INPUT": [stack], "MODEL": model,
                                                  "OUTPUT": out})
    loaded = [layer for layer in QgsProject.instance().mapLayers().values()
              if os.path.abspath(layer.source()) == os.path.abspath(out)]
    assert loaded, "the LCZ map was not loaded into the project"
    for layer in (loaded[0], QgsRasterLayer(out, "again")):  # and in any later session
        renderer = layer.renderer()
        assert renderer.type() == "paletted"
        classes = {c.value: (c.label, c.color.name()) for c in renderer.classes()}
        assert classes[1] == ("LCZ 1 Compact high-rise", "#8c0000")
        assert classes[17] == ("LCZ G Water", "#6a6aff")
        legend = [label for label, _ in renderer.legendSymbologyItems()]
        assert "LCZ A Dense trees" in legend and len(legend) == 17
    QgsProject.instance().removeAllMapLayers()


def test_cancel_through_processing_leaves_nothing(processing, scene_and_model, tmp_path):
    from qgis.core import QgsProcessingException, QgsProcessingFeedback
    stack, model, *_ = scene_and_model
    feedback = QgsProcessingFeedback()
    feedback.progressChanged.connect(lambda p: feedback.cancel() if p > 10 else None)
    out_dir = tmp_path / "out"
    with pytest.raises(QgsProcessingException, match="cancelled"):
        processing.run("lcz:classify", {"INPUT": [stack], "MODEL": model, "BATCH_SIZE": 4,
                                        "OUTPUT": str(out_dir / "lcz.tif")}, feedback=feedback)
    assert files_in(out_dir) == []


# -- bad input: one case per row, each with the problem and the fix in the message ------------

def _degrees(tmp_path, stack, model, scene, names):
    wgs = write_stack(tmp_path / "wgs.tif", scene, names, epsg=4326,
                      geotransform=(14.0, 0.0001, 0, 46.0, 0, -0.0001))
    return {"INPUT": [wgs]}


def _different_grids(tmp_path, stack, model, scene, names):
    shifted = write_stack(tmp_path / "shifted.tif", scene, names,
                          origin=(ORIGIN[0] + 10, ORIGIN[1]))
    return {"INPUT": [stack, shifted]}


def _tiny_raster(tmp_path, stack, model, scene, names):
    return {"INPUT": [write_stack(tmp_path / "tiny.tif", scene[:, :5, :6], names)]}


def _wrong_names(tmp_path, stack, model, scene, names):
    return {"INPUT": [write_stack(tmp_path / "named.tif", scene, ["T:c0", "B3", "T:c1"])]}


def _all_nodata(tmp_path, stack, model, scene, names):
    return {"INPUT": [write_stack(tmp_path / "empty.tif", np.zeros_like(scene), names,
                                  nodata=0)]}


def _corrupt_model(tmp_path, stack, model, scene, names):
    (tmp_path / "corrupt.onnx").write_bytes(b"this is not a protobuf" * 10)
    return {"MODEL": str(tmp_path / "corrupt.onnx")}


def _no_contract(tmp_path, stack, model, scene, names):
    import onnx
    plain = onnx.load(model)
    del plain.metadata_props[:]
    onnx.save(plain, tmp_path / "plain.onnx")
    return {"MODEL": str(tmp_path / "plain.onnx")}


def _coarse_pixels(tmp_path, stack, model, scene, names):
    return {"INPUT": [write_stack(tmp_path / "20m.tif", scene, names, pixel=20.0)]}


BAD_INPUTS = [
    ("crs in degrees", _degrees, r"geographic CRS \(degrees\).*Reproject it to a projected CRS"),
    ("cell size", lambda *a: {"CELL_SIZE": 45},
     r"cell size 45 m is not a whole multiple of the input pixel size 10 m.*Use 40 m or 50 m"),
    ("extent outside", lambda *a: {"EXTENT": "0,100,0,100 [EPSG:32633]"},
     r"does not overlap the input raster.*Choose an extent inside the raster"),
    ("raster smaller than a patch", _tiny_raster,
     r"smaller than one 8 x 8 pixel patch.*Use a larger area"),
    ("model missing", lambda t, *a: {"MODEL": str(t / "missing.onnx")},
     r"missing.onnx does not exist.*Choose an .onnx model"),
    ("model corrupt", _corrupt_model, r"not a valid ONNX model.*Export it again"),
    ("model without contract", _no_contract,
     r"carries no LCZ model metadata.*python -m training export"),
    ("band names", _wrong_names, r"Missing: T:c2\. The raster's bands not used by the model: "
                                 r"B3\..*lcz:buildstack"),
    ("all no-data", _all_nodata, r"every cell of the output is no-data.*no-data values"),
    ("dates on different grids", _different_grids,
     r"date stacks are not on one grid.*geotransform.*warp them onto one grid"),
    ("pixel size", _coarse_pixels, r"20 m pixels, but the model was trained on 10 m.*Resample"),
    ("not a GeoTIFF", lambda t, *a: {"OUTPUT": str(t / "out" / "lcz.img")},
     r"must be a GeoTIFF \(\.tif\)"),
]


@pytest.mark.parametrize("case", bad_input_cases(BAD_INPUTS))
def test_bad_input_is_refused_and_leaves_nothing(processing, scene_and_model, tmp_path, case):
    from qgis.core import QgsProcessingException
    stack, model, scene, names = scene_and_model
    out_dir = tmp_path / "out"
    parameters = {"INPUT": [stack], "MODEL": model, "OUTPUT": str(out_dir / "lcz.tif"),
                  "OUTPUT_PROBABILITIES": str(out_dir / "p.tif"),
                  "OUTPUT_CONFIDENCE": str(out_dir / "c.tif")}
    assert_refused(case, lambda **p: processing.run("lcz:classify", p), parameters, tmp_path,
                   stack, model, scene, names, error=QgsProcessingException)


def test_centre_value_model_through_processing(processing, tmp_path):
    """A map that can be read off its input, through the Processing adapter."""
    names = channel_names(1)
    model = centre_value_model(tmp_path / "c.onnx", identity_card("c", names, 5, cell_size=30.0))
    cells = np.arange(1, 18, dtype=np.float32).reshape(1, 17)
    cells = np.tile(cells, (4, 1))
    scene = np.repeat(np.repeat(cells, 3, axis=0), 3, axis=1)[None]
    stack = write_stack(tmp_path / "s.tif", scene, names)
    out = processing.run("lcz:classify", {"INPUT": [stack], "MODEL": model,
                                          "OUTPUT": str(tmp_path / "lcz.tif")})["OUTPUT"]
    np.testing.assert_array_equal(read(out), cells.astype(np.uint8))
