"""lcz:assessaccuracy core against hand-made maps whose scores are worked out by hand."""

import os
import subprocess
import sys

import numpy as np
import pytest
from osgeo import gdal

from lcz_qgis_plugin.core.assess import assess_accuracy, recode
from lcz_qgis_plugin.core.errors import InputError
from lcz_testing import RecordingFeedback, cell_square, write_polygons, write_stack

# 3 x 4 cells of 100 m. Reference and map; the map's 0 is no-data (that cell is not counted).
REFERENCE = np.array([[1, 1, 2, 2],
                      [1, 1, 2, 11],
                      [14, 14, 11, 11]], np.uint8)
MAP = np.array([[1, 2, 2, 2],
                [1, 1, 2, 11],
                [14, 11, 11, 0]], np.uint8)
# By hand: 11 cells compared, 9 agree -> OA 9/11. Row (reference) totals 1:4, 2:3, A:2, D:2;
# column (map) totals 1:3, 2:4, A:3, D:1 -> chance agreement (12+12+6+2)/121 = 32/121,
# kappa = (99/121 - 32/121) / (89/121) = 67/89. WA: the two errors earn W(1,2) = .92 and
# W(D,A) = .67 -> (9 + .92 + .67)/11. OA_BU: 6 of the 7 built-built cells; OA_N: 3 of 4;
# built vs natural: all 11. F1: class 1 (tp 3, fn 1) 6/7, class 2 (tp 3, fp 1) 6/7,
# A (tp 2, fp 1) 4/5, D (tp 1, fn 1) 2/3.
EXPECTED = {"samples": 11, "oa": 9 / 11, "kappa": 67 / 89, "wa": (9 + .92 + .67) / 11,
            "oa_bu": 6 / 7, "oa_n": 3 / 4, "oa_built_vs_natural": 1.0}
EXPECTED_F1 = {"1": 6 / 7, "2": 6 / 7, "11": 4 / 5, "14": 2 / 3}


def write_map(path, codes, pixel=100.0, epsg=32633, nodata=0, data_type=gdal.GDT_Byte):
    path = write_stack(path, codes[None].astype(np.float32), ["LCZ"], pixel=pixel, epsg=epsg,
                       data_type=data_type, nodata=nodata)
    return path


def check_scores(result):
    for key, value in EXPECTED.items():
        assert result.scores[key] == pytest.approx(value), key
    for code, value in EXPECTED_F1.items():
        assert result.scores["f1"][code] == pytest.approx(value), code


@pytest.fixture
def lcz_map(tmp_path):
    return write_map(tmp_path / "map.tif", MAP)


def test_against_a_reference_raster(lcz_map, tmp_path):
    reference = write_map(tmp_path / "ref.tif", REFERENCE)
    result = assess_accuracy(lcz_map, reference_raster=reference,
                             report=str(tmp_path / "r.html"))
    check_scores(result)
    assert result.matrix[0, 1] == 1 and result.matrix[13, 10] == 1
    row = {c.code: c for c in result.classes}
    assert (row[1].reference, row[1].predicted) == (4, 3)
    assert row[1].producers_accuracy == pytest.approx(3 / 4) and row[1].users_accuracy == 1.0
    assert row[2].producers_accuracy == 1.0 and row[2].users_accuracy == pytest.approx(3 / 4)
    assert np.isnan(row[5].f1) and row[5].reference == 0
    page = open(result.report, encoding="utf-8").read()
    assert "81.8 %" in page and "0.753" in page  # OA 9/11, kappa 67/89
    assert "data:image/png;base64," in page
    assert "Compact high-rise" in page and "Low plants" in page


def test_wudapt_coded_reference_gives_the_same_scores(lcz_map, tmp_path):
    wudapt = np.where(REFERENCE > 10, REFERENCE - 10 + 100, REFERENCE)
    assert wudapt.max() == 104
    reference = write_map(tmp_path / "ref.tif", wudapt)
    check_scores(assess_accuracy(lcz_map, reference_raster=reference))


def test_finer_reference_takes_the_mode_per_cell(lcz_map, tmp_path):
    fine = np.repeat(np.repeat(REFERENCE, 10, axis=0), 10, axis=1)
    noise = np.random.default_rng(0).random(fine.shape) < 0.3
    fine = np.where(noise, 9, fine).astype(np.uint8)  # 30 % of each cell's pixels say 9
    reference = write_map(tmp_path / "ref10.tif", fine, pixel=10.0)
    feedback = RecordingFeedback()
    check_scores(assess_accuracy(lcz_map, reference_raster=reference, feedback=feedback))
    assert any("mode" in line for line in feedback.infos)


def test_reference_raster_in_another_crs_is_reprojected(lcz_map, tmp_path):
    fine = np.repeat(np.repeat(REFERENCE, 10, axis=0), 10, axis=1)
    utm = write_map(tmp_path / "ref10.tif", fine, pixel=10.0)
    mercator = str(tmp_path / "ref_3857.tif")
    gdal.Warp(mercator, utm, dstSRS="EPSG:3857", resampleAlg="near", xRes=8, yRes=8)
    feedback = RecordingFeedback()
    check_scores(assess_accuracy(lcz_map, reference_raster=mercator, feedback=feedback))
    assert any("reprojected from WGS 84 / Pseudo-Mercator" in line for line in feedback.infos)


def test_against_reference_polygons_in_any_coding(lcz_map, tmp_path):
    areas = write_polygons(tmp_path / "ref.gpkg", [
        ("1", cell_square(0, 0, rows=2, cols=2)),   # map: 1 2 / 1 1 -> 3 of 4
        ("D", cell_square(2, 0, cols=2)),           # map: D A     -> 1 of 2
        ("101", cell_square(2, 2)),                 # A; map: A    -> 1 of 1
        ("G", cell_square(2, 3))])                  # the map has no data there
    result = assess_accuracy(lcz_map, reference_areas=areas, report=str(tmp_path / "r.html"))
    assert result.samples == 7
    assert result.scores["oa"] == pytest.approx(5 / 7)
    assert result.matrix[0, 0] == 3 and result.matrix[0, 1] == 1
    assert result.matrix[13, 13] == 1 and result.matrix[13, 10] == 1 and result.matrix[10, 10] == 1
    assert result.matrix[16].sum() == 0


def test_polygons_in_another_crs_are_reprojected(lcz_map, tmp_path):
    items = [("1", cell_square(0, 0, rows=2, cols=2)), ("D", cell_square(2, 0, cols=2))]
    areas = write_polygons(tmp_path / "ref.gpkg", items, epsg=4326, source_epsg=32633)
    feedback = RecordingFeedback()
    result = assess_accuracy(lcz_map, reference_areas=areas, feedback=feedback)
    assert result.samples == 6 and result.scores["oa"] == pytest.approx(4 / 6)
    assert any("Reprojected 2 reference areas from WGS 84" in line for line in feedback.infos)


def test_unknown_reference_labels_are_listed(lcz_map, tmp_path):
    areas = write_polygons(tmp_path / "ref.gpkg", [("1", cell_square(0, 0)),
                                                   ("urban", cell_square(1, 1))])
    with pytest.raises(InputError, match="'urban' \\(1x\\)"):
        assess_accuracy(lcz_map, reference_areas=areas)


def test_no_overlap_and_ambiguous_reference_are_refused(lcz_map, tmp_path):
    far = write_polygons(tmp_path / "far.gpkg", [("1", cell_square(40, 40))])
    with pytest.raises(InputError, match="no cell of the LCZ map .* has both a class"):
        assess_accuracy(lcz_map, reference_areas=far, report=str(tmp_path / "r.html"))
    assert not (tmp_path / "r.html").exists()
    reference = write_map(tmp_path / "ref.tif", REFERENCE)
    with pytest.raises(InputError, match="exactly one reference"):
        assess_accuracy(lcz_map, reference_raster=reference, reference_areas=far)
    with pytest.raises(InputError, match="exactly one reference"):
        assess_accuracy(lcz_map)


def test_report_without_matplotlib_is_a_table_only_report(lcz_map, tmp_path):
    """A Python where matplotlib cannot be imported (blocked in sys.modules): a real
    ImportError, the path QGIS installs without matplotlib take."""
    reference = write_map(tmp_path / "ref.tif", REFERENCE)
    report = tmp_path / "plain.html"
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from lcz_qgis_plugin.core.assess import assess_accuracy\n"
            "from lcz_qgis_plugin.core.feedback import ConsoleFeedback\n"
            f"assess_accuracy({lcz_map!r}, reference_raster={reference!r}, "
            f"report={str(report)!r}, feedback=ConsoleFeedback())\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=root, env=dict(os.environ, PYTHONPATH=root))
    assert done.returncode == 0, done.stderr
    page = report.read_text(encoding="utf-8")
    assert "data:image/png" not in page
    assert "needs matplotlib" in page and "81.8 %" in page
    assert "matplotlib is not installed" in done.stderr


def test_large_map_is_read_in_strips(tmp_path, monkeypatch):
    import lcz_qgis_plugin.core.assess as assess
    monkeypatch.setattr(assess, "STRIP_ROWS", 2)
    codes = np.random.default_rng(1).integers(1, 18, size=(7, 9)).astype(np.uint8)
    truth = codes.copy()
    truth[3, 4] = 1 if codes[3, 4] != 1 else 2
    lcz_map = write_map(tmp_path / "m.tif", codes)
    reference = write_map(tmp_path / "r.tif", truth)
    feedback = RecordingFeedback()
    result = assess_accuracy(lcz_map, reference_raster=reference, feedback=feedback)
    assert result.samples == 63 and result.scores["oa"] == pytest.approx(62 / 63)
    assert len(feedback.percent) == 4 and feedback.percent[-1] == 100.0


def test_recode_reads_all_codings():
    values = np.array([0, 1, 10, 11, 17, 18, 100, 101, 107, 108, 255, -1])
    np.testing.assert_array_equal(recode(values), [0, 1, 10, 11, 17, 0, 0, 11, 17, 0, 0, 0])
    assert recode(np.array([np.nan, 3.0]))[1] == 3


def test_cancel_leaves_no_report(lcz_map, tmp_path):
    from lcz_qgis_plugin.core.errors import Cancelled
    reference = write_map(tmp_path / "ref.tif", REFERENCE)
    with pytest.raises(Cancelled):
        assess_accuracy(lcz_map, reference_raster=reference, report=str(tmp_path / "r.html"),
                        feedback=RecordingFeedback(cancel_after=0))
    assert not (tmp_path / "r.html").exists()
