"""lcz:extractpatches and lcz:assessaccuracy in a real QgsApplication (processing.run)."""

from pathlib import Path

import numpy as np
import pytest
from lcz_testing import cell_square, read, write_polygons, write_stack
from osgeo import gdal

from lcz_qgis_plugin.core.assessment.accuracy import assess_accuracy
from lcz_qgis_plugin.core.training_data.extraction import extract_patches
from lcz_qgis_plugin.core.training_data.patch_file import open_patch_file
from tools import synthcity

pytestmark = pytest.mark.qgis


@pytest.fixture(scope="module")
def city(synthetic_cities):
    return synthetic_cities.with_stack(seed=5, size_km=1.0)


def patch_arrays(path):
    f, info = open_patch_file(str(path))
    with f:
        return {k: f[k][...] for k in f.keys()}, info


def test_algorithms_are_registered(qgis_app):
    from qgis.core import QgsApplication
    registry = QgsApplication.processingRegistry()
    assert registry.algorithmById("lcz:extractpatches") is not None
    assert registry.algorithmById("lcz:assessaccuracy") is not None


def test_extract_patches_through_processing_run(processing, city, tmp_path):
    town, stack = city
    results = processing.run("lcz:extractpatches", {
        "INPUT": stack, "TRAINING_AREAS": town.training_areas_kml,
        "VALIDATION_FRACTION": 0.25, "SEED": 9, "OUTPUT": str(tmp_path / "p.h5"),
        "OUTPUT_SUMMARY": str(tmp_path / "p.json")})
    core = extract_patches(stack, town.training_areas_kml, str(tmp_path / "core.h5"),
                           validation_fraction=0.25, seed=9)
    assert results["PATCHES"] == core.patches > 20
    alg, info = patch_arrays(results["OUTPUT"])
    ref, _ = patch_arrays(core.output)
    for key in ("patches", "labels", "centres", "polygon_ids", "split"):
        np.testing.assert_array_equal(alg[key], ref[key])
    assert info.channels[-1] == "DSM:height"
    assert (tmp_path / "p.json").exists()


def test_extract_patches_from_a_memory_layer_with_a_class_field(processing, tmp_path):
    """Layers that are not files (scratch outputs of a model) are read feature by feature."""
    from qgis.core import QgsFeature, QgsGeometry, QgsVectorLayer
    data = np.random.default_rng(2).normal(size=(2, 40, 40)).astype(np.float32)
    stack = write_stack(tmp_path / "s.tif", data, ["T:a", "T:b"])
    layer = QgsVectorLayer("Polygon?crs=EPSG:32633&field=klasse:string", "areas", "memory")
    features = []
    for label, wkt in (("B", cell_square(0, 0, rows=2, cols=2)), ("104", cell_square(3, 3))):
        feature = QgsFeature(layer.fields())
        feature.setAttributes([label])
        feature.setGeometry(QgsGeometry.fromWkt(wkt))
        features.append(feature)
    layer.dataProvider().addFeatures(features)
    results = processing.run("lcz:extractpatches", {
        "INPUT": stack, "TRAINING_AREAS": layer, "CLASS_FIELD": "klasse", "PATCH_SIZE": 8,
        "OUTPUT": str(tmp_path / "p.h5")})
    arrays, info = patch_arrays(results["OUTPUT"])
    assert results["PATCHES"] == 5 and sorted(arrays["labels"].tolist()) == [12] * 4 + [14]
    assert info.patch_size == 8 and info.channels == ["T:a", "T:b"]


def test_extract_patches_bad_labels_raise_a_processing_error(processing, tmp_path):
    from qgis.core import QgsProcessingException
    data = np.zeros((1, 40, 40), np.float32)
    stack = write_stack(tmp_path / "s.tif", data, ["T:a"])
    areas = write_polygons(tmp_path / "a.gpkg", [("Q", cell_square(0, 0)),
                                                 ("11", cell_square(1, 1))])
    with pytest.raises(QgsProcessingException, match="'Q' \\(1x\\)"):
        processing.run("lcz:extractpatches", {"INPUT": stack, "TRAINING_AREAS": areas,
                                              "PATCH_SIZE": 8, "OUTPUT": str(tmp_path / "p.h5")})
    assert not (tmp_path / "p.h5").exists()


def test_assess_accuracy_through_processing_run(processing, city, tmp_path):
    town, _ = city
    truth = read(town.truth)
    mapped = truth.copy()
    mapped[0, :] = np.where(mapped[0, :] == 1, 2, 1)  # one row of errors
    lcz_map = write_stack(tmp_path / "map.tif", mapped[None], ["LCZ"], pixel=100.0,
                          origin=synthcity.ORIGIN, nodata=0, data_type=gdal.GDT_Byte)
    results = processing.run("lcz:assessaccuracy", {
        "INPUT": lcz_map, "REFERENCE_RASTER": town.truth,
        "OUTPUT_HTML": str(tmp_path / "r.html"), "OUTPUT_TABLE": "memory:"})
    assert results["SAMPLES"] == 100
    assert results["OA"] == pytest.approx(0.9)
    core = assess_accuracy(lcz_map, reference_raster=town.truth)
    for key, name in (("WA", "wa"), ("KAPPA", "kappa"), ("OA_BU", "oa_bu")):
        assert results[key] == pytest.approx(core.scores[name])
    assert "data:image/png" in Path(results["OUTPUT_HTML"]).read_text(encoding="utf-8")
    table = results["OUTPUT_TABLE"]  # a memory layer
    rows = {f["code"]: f for f in table.getFeatures()}
    assert len(rows) == 17
    for row in core.classes:
        assert rows[row.code]["reference"] == row.reference
        assert rows[row.code]["predicted"] == row.predicted
        if row.reference:
            assert rows[row.code]["producers_accuracy"] == pytest.approx(row.producers_accuracy)


def test_assess_accuracy_against_kml_polygons(processing, city, tmp_path):
    town, _ = city
    results = processing.run("lcz:assessaccuracy", {
        "INPUT": town.truth, "REFERENCE_AREAS": town.training_areas_kml,
        "OUTPUT_HTML": str(tmp_path / "r.html")})
    assert results["OA"] == 1.0 and results["KAPPA"] == pytest.approx(1.0)
    assert results["SAMPLES"] > 20


def test_assess_accuracy_needs_exactly_one_reference(processing, city, tmp_path):
    from qgis.core import QgsProcessingException
    town, _ = city
    with pytest.raises(QgsProcessingException, match="exactly one reference"):
        processing.run("lcz:assessaccuracy", {"INPUT": town.truth,
                                              "OUTPUT_HTML": str(tmp_path / "r.html")})


# -- layer filters, selections and WUDAPT template files (issue 11, items 2, 4, 7f) ---------

def small_case(tmp_path):
    """A 5 x 5-cell stack (10 m pixels) and LCZ map (100 m) at the test origin, and polygons
    in a GeoPackage: class 1 on 4 cells (fid 1), class D on 2 cells (fid 2)."""
    data = np.random.default_rng(7).normal(size=(2, 50, 50)).astype(np.float32)
    stack = write_stack(tmp_path / "s.tif", data, ["T:a", "T:b"])
    codes = np.full((5, 5), 1, np.uint8)
    codes[2, :] = 14
    lcz_map = write_stack(tmp_path / "map.tif", codes[None], ["LCZ"], pixel=100.0, nodata=0,
                          data_type=gdal.GDT_Byte)
    areas = write_polygons(tmp_path / "areas.gpkg", [("1", cell_square(0, 0, rows=2, cols=2)),
                                                    ("D", cell_square(2, 0, cols=2))])
    return stack, lcz_map, areas


def run_both(processing, stack, lcz_map, areas, tmp_path, name, **extra):
    """(patches, cells assessed, log) of lcz:extractpatches and lcz:assessaccuracy on
    ``areas`` (any TRAINING_AREAS / REFERENCE_AREAS value)."""
    from qgis.core import QgsProcessingFeedback
    feedback = QgsProcessingFeedback()
    extracted = processing.run("lcz:extractpatches", dict(
        {"INPUT": stack, "TRAINING_AREAS": areas, "PATCH_SIZE": 8,
         "OUTPUT": str(tmp_path / f"{name}.h5")}, **extra), feedback=feedback)
    assessed = processing.run("lcz:assessaccuracy", dict(
        {"INPUT": lcz_map, "REFERENCE_AREAS": areas,
         "OUTPUT_HTML": str(tmp_path / f"{name}.html")}, **extra), feedback=feedback)
    return extracted["PATCHES"], assessed["SAMPLES"], feedback.textLog()


def test_a_layer_filter_limits_patches_and_cells(processing, tmp_path):
    stack, lcz_map, areas = small_case(tmp_path)
    assert run_both(processing, stack, lcz_map, areas, tmp_path, "all")[:2] == (6, 6)
    patches, cells, log = run_both(processing, stack, lcz_map, f"{areas}|subset=\"lcz\" = 'D'",
                                   tmp_path, "filtered")
    assert (patches, cells) == (2, 2)
    assert "read 1 feature(s) (layer filter \"lcz\" = 'D')" in log


def test_selected_features_only_limits_patches_and_cells(processing, tmp_path):
    from qgis.core import QgsProcessingFeatureSourceDefinition, QgsProject, QgsVectorLayer
    stack, lcz_map, areas = small_case(tmp_path)
    layer = QgsVectorLayer(areas, "training areas", "ogr")
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    try:
        layer.selectByIds([1])
        selected = QgsProcessingFeatureSourceDefinition(layer.id(), True)
        patches, cells, log = run_both(processing, stack, lcz_map, selected, tmp_path, "sel")
        assert (patches, cells) == (4, 4)
        assert "read 1 feature(s) (selected features only)" in log
        whole = QgsProcessingFeatureSourceDefinition(layer.id(), False)
        assert run_both(processing, stack, lcz_map, whole, tmp_path, "whole")[:2] == (6, 6)
    finally:
        QgsProject.instance().removeMapLayer(layer.id())


@pytest.mark.parametrize("kmz", [False, True], ids=["kml", "kmz"])
def test_wudapt_template_file_leaves_the_roi_out(processing, kmz, tmp_path):
    """The file as a whole (every class folder), ROI left out, unknown labels refused unless
    IGNORE_UNKNOWN_LABELS; a filter applies to every folder; one folder can be picked."""
    from qgis.core import QgsProcessingException
    from wudapt_template import cell_ring, write_wudapt_template
    stack, lcz_map, _ = small_case(tmp_path)
    path = write_wudapt_template(
        tmp_path / ("t.kmz" if kmz else "t.kml"),
        [("1", cell_ring(0, 0, rows=2, cols=2)), ("D", cell_ring(2, 0, cols=2))],
        roi=cell_ring(0, 0, rows=5, cols=5, inset=-20.0), kmz=kmz,
        others=[("X", cell_ring(4, 4))])
    with pytest.raises(QgsProcessingException, match="'X' \\(1x\\).*IGNORE_UNKNOWN_LABELS"):
        run_both(processing, stack, lcz_map, path, tmp_path, "refused")
    patches, cells, log = run_both(processing, stack, lcz_map, path, tmp_path, "template",
                                   IGNORE_UNKNOWN_LABELS=True)
    assert (patches, cells) == (6, 6)
    assert "left out of the training areas" in log and "left out of the reference areas" in log
    assert "(IGNORE_UNKNOWN_LABELS), in the placemark names: 'X' (1x)" in log
    filtered = run_both(processing, stack, lcz_map, f"{path}|subset=\"Name\" = 'D'", tmp_path,
                        "kml_filter")
    assert filtered[:2] == (2, 2)
    folder = run_both(processing, stack, lcz_map, f"{path}|layername=LCZ 1", tmp_path, "folder")
    assert folder[:2] == (4, 4)


def test_per_class_csv_has_unquoted_numbers(processing, tmp_path):
    stack, lcz_map, areas = small_case(tmp_path)
    processing.run("lcz:assessaccuracy", {
        "INPUT": lcz_map, "REFERENCE_AREAS": areas, "OUTPUT_HTML": str(tmp_path / "r.html"),
        "OUTPUT_TABLE": str(tmp_path / "t.csv")})
    lines = (tmp_path / "t.csv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "code,letter,name,reference,predicted,producers_accuracy," \
                       "users_accuracy,f1"
    assert lines[1] == "1,1,Compact high-rise,4,4,1,1,1"
    assert lines[14] == "14,D,Low plants,2,2,1,1,1"
    assert lines[5] == "5,5,Open mid-rise,0,0,,,"
    assert lines[13] == '13,C,"Bush, scrub",0,0,,,'  # quoted only where the comma needs it
    assert '"' not in "".join(lines).replace('"Bush, scrub"', "")
