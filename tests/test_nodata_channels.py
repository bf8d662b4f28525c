"""Cells skipped as mostly no-data: lcz:extractpatches and lcz:classify name the channel(s)
responsible, and OSM building heights no longer blank the cells of untagged buildings."""

import numpy as np
import pytest
from lcz_testing import (
    ORIGIN,
    RecordingFeedback,
    cell_square,
    identity_card,
    linear_probe_model,
    write_polygons,
    write_stack,
)
from osgeo import ogr, osr

from lcz_qgis_plugin.core.errors import InputError
from lcz_qgis_plugin.core.inference.classify import classify
from lcz_qgis_plugin.core.preprocess.osm import rasterize_osm
from lcz_qgis_plugin.core.training_data.extraction import extract_patches

NODATA = -9999.0


def test_extract_names_the_channels_of_skipped_cells(tmp_path):
    """Two S2 bands no-data along the east edge (6 cells), OSM:building_height no-data on a
    3 x 3 cell block (what untagged buildings used to give): the warning says which."""
    names = ["S2:B02", "S2:B03", "OSM:building_height"]
    data = np.random.default_rng(3).uniform(1, 2, size=(3, 60, 60)).astype(np.float32)
    data[:2, :, 50:] = NODATA
    data[2, :30, :30] = NODATA
    stack = write_stack(tmp_path / "s.tif", data, names, nodata=NODATA)
    areas = write_polygons(tmp_path / "a.gpkg", [("2", cell_square(0, 0, rows=6, cols=6))])
    feedback = RecordingFeedback()
    result = extract_patches(stack, areas, str(tmp_path / "p.h5"), patch_size=8,
                             feedback=feedback)
    assert result.patches == 36 - 15
    assert ("skipped 15 cell(s) whose patch is mostly no-data: no-data in "
            "OSM:building_height (9 cells), S2:B02, S2:B03 (6 cells).") in feedback.warnings
    assert result.summary["cells_mostly_nodata_by_channel"] == {
        "OSM:building_height": 9, "S2:B02": 6, "S2:B03": 6}


def probe(tmp_path, names, patch=8):
    card = identity_card("probe", names, patch)
    return linear_probe_model(tmp_path / "probe.onnx", card)[0]


def test_classify_names_channels_and_no_data_that_only_adds_up(tmp_path):
    """Cell (0, 0): T:a is no-data on 3 of its 8 patch columns, T:b on 3 others; neither
    alone reaches half the patch, together they do. Cell (1, 1): T:b no-data at its centre."""
    names = ["T:a", "T:b"]
    data = np.random.default_rng(4).normal(size=(2, 20, 20)).astype(np.float32)
    data[0, 1:9, 1:4] = NODATA
    data[1, 1:9, 6:9] = NODATA
    data[1, 15, 15] = NODATA
    stack = write_stack(tmp_path / "s.tif", data, names, nodata=NODATA)
    feedback = RecordingFeedback()
    result = classify([stack], probe(tmp_path, names), str(tmp_path / "lcz.tif"),
                      feedback=feedback)
    assert result.classified_cells == 2
    assert ("skipped 2 cell(s) whose patch is mostly no-data: no-data in T:b (1 cell), "
            "several channels together (1 cell).") in feedback.infos


def test_classify_refusal_names_the_channel(tmp_path):
    names = ["S2:B04", "OSM:building_height"]
    data = np.ones((2, 20, 20), np.float32)
    data[1] = NODATA
    stack = write_stack(tmp_path / "s.tif", data, names, nodata=NODATA)
    with pytest.raises(InputError, match=r"no-data in OSM:building_height \(4 cells\)"):
        classify([stack], probe(tmp_path, names), str(tmp_path / "lcz.tif"))


def test_untagged_buildings_do_not_blank_cells(tmp_path):
    """A district of buildings without height or levels tags (most of OSM): every cell is
    classified with OSM:building_height (before, their pixels were no-data and so were the
    cells)."""
    reference = write_stack(tmp_path / "ref.tif", np.zeros((1, 30, 30), np.float32), ["ref"])
    x0, y0 = ORIGIN
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(tmp_path / "b.gpkg"))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    layer = ds.CreateLayer("buildings", srs, ogr.wkbPolygon)
    for row in range(6):
        for col in range(6):
            xa, ya = x0 + 50 * col + 5, y0 - 50 * row - 5
            xb, yb = xa + 40, ya - 40
            feature = ogr.Feature(layer.GetLayerDefn())
            feature.SetGeometry(ogr.CreateGeometryFromWkt(
                f"POLYGON(({xa} {ya},{xb} {ya},{xb} {yb},{xa} {yb},{xa} {ya}))"))
            layer.CreateFeature(feature)
    ds = layer = None
    osm = rasterize_osm(reference, str(tmp_path / "osm.tif"),
                        buildings=[str(tmp_path / "b.gpkg")])
    names = ["OSM:building_fraction", "OSM:building_height"]
    feedback = RecordingFeedback()
    result = classify([osm.output], probe(tmp_path, names), str(tmp_path / "lcz.tif"),
                      feedback=feedback)
    assert result.classified_cells == 9
    assert not any("skipped" in line for line in feedback.infos)
