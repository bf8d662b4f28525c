"""lcz:assessaccuracy core against hand-made maps whose scores are worked out by hand."""

import os
import subprocess
import sys

import numpy as np
import pytest
from lcz_testing import RecordingFeedback, cell_square, write_polygons, write_stack
from osgeo import gdal

from lcz_qgis_plugin.core.assessment.accuracy import assess_accuracy, recode
from lcz_qgis_plugin.core.errors import InputError

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
            "from lcz_qgis_plugin.core.assessment.accuracy import assess_accuracy\n"
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
    import lcz_qgis_plugin.core.assessment.accuracy as assess
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


# -- reference rasters: cell centre unless finer in both directions (issue 11, item 5) ------

def _srs(epsg):
    from osgeo import osr
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def test_reference_coarser_in_one_direction_is_sampled_at_cell_centres(tmp_path):
    """A reference in EPSG:4326 at 52 N with 0.0009 degree pixels: 62 m east-west but 100 m
    north-south, so not finer than the 100 m map in both directions. Every cell must take the
    reference pixel that holds its centre (worked out here with PROJ, pixel by pixel)."""
    from osgeo import osr
    origin, rows, cols = (500000.0, 5762000.0), 10, 12
    step = 0.0009
    lon0, lat0 = 14.9903, 52.01013  # no cell centre within 6 % of a pixel of its edge
    codes = np.random.default_rng(11).choice([1, 2, 4, 5, 6, 9, 11, 14], size=(40, 60))
    reference = write_stack(tmp_path / "ref_4326.tif", codes[None].astype(np.float32), ["LCZ"],
                            epsg=4326, data_type=gdal.GDT_Byte, nodata=0,
                            geotransform=(lon0, step, 0.0, lat0, 0.0, -step))
    to_lonlat = osr.CoordinateTransformation(_srs(32633), _srs(4326))
    expected = np.zeros((rows, cols), np.uint8)
    for r in range(rows):
        for c in range(cols):
            lon, lat = to_lonlat.TransformPoint(origin[0] + (c + 0.5) * 100.0,
                                                origin[1] - (r + 0.5) * 100.0)[:2]
            fx, fy = (lon - lon0) / step, (lat0 - lat) / step
            assert min(fx % 1, 1 - fx % 1, fy % 1, 1 - fy % 1) > 0.05
            expected[r, c] = codes[int(fy), int(fx)]
    lcz_map = write_stack(tmp_path / "map.tif", expected[None].astype(np.float32), ["LCZ"],
                          pixel=100.0, origin=origin, data_type=gdal.GDT_Byte, nodata=0)
    feedback = RecordingFeedback()
    result = assess_accuracy(lcz_map, reference_raster=reference, feedback=feedback)
    assert result.samples == rows * cols
    assert result.scores["oa"] == 1.0, np.argwhere(result.matrix - np.diag(np.diag(result.matrix)))
    assert any("not finer than the map in both directions" in line and "centre" in line
               for line in feedback.infos)


def _area_majority_by_hand(block, centre_rc, pixel_x, pixel_y):
    """The class covering most of a cell made of equal reference pixels; ties: the centre
    pixel's class if tied, else the tied class of the pixel nearest the centre (None when
    two tied classes are equally near: the test avoids those cells)."""
    values, counts = np.unique(block, return_counts=True)
    tied = values[counts == counts.max()]
    if len(tied) == 1:
        return int(tied[0]), "clear"
    if block[centre_rc] in tied:
        return int(block[centre_rc]), "centre"
    ky, kx = block.shape
    rr, cc = np.meshgrid((np.arange(ky) + 0.5) * pixel_y - ky * pixel_y / 2,
                         (np.arange(kx) + 0.5) * pixel_x - kx * pixel_x / 2, indexing="ij")
    distance = np.hypot(rr, cc)
    nearest = {int(v): distance[block == v].min() for v in tied}
    best = min(nearest.values())
    winners = [v for v, d in nearest.items() if abs(d - best) < 1e-9]
    return (winners[0], "nearest") if len(winners) == 1 else (None, "ambiguous")


def test_finer_anisotropic_reference_takes_the_class_covering_most_of_each_cell(tmp_path):
    """Reference pixels 20 m x 33.3 m on 100 m cells: 5 x 3 pixels of equal area per cell.
    The answer per cell is counted here from the pixels; ties of both kinds occur."""
    rows, cols, kx, ky = 8, 8, 5, 3
    rng = np.random.default_rng(4)
    codes = rng.choice([2, 5, 9, 14], size=(rows * ky, cols * kx), p=[.3, .3, .2, .2])
    expected = np.zeros((rows, cols), np.uint8)
    kinds = []
    for r in range(rows):
        for c in range(cols):
            block = codes[r * ky:(r + 1) * ky, c * kx:(c + 1) * kx]
            expected[r, c], kind = _area_majority_by_hand(block, (1, 2), 20.0, 100.0 / 3)
            kinds.append(kind)
    assert "ambiguous" not in kinds and {"centre", "nearest"} <= set(kinds), kinds
    reference = write_stack(tmp_path / "ref.tif", codes[None].astype(np.float32), ["LCZ"],
                            data_type=gdal.GDT_Byte, nodata=0,
                            geotransform=(500000.0, 20.0, 0.0, 5000000.0, 0.0, -100.0 / 3))
    lcz_map = write_map(tmp_path / "map.tif", expected)
    feedback = RecordingFeedback()
    result = assess_accuracy(lcz_map, reference_raster=reference, feedback=feedback)
    assert result.samples == rows * cols
    assert result.scores["oa"] == 1.0, np.argwhere(result.matrix - np.diag(np.diag(result.matrix)))
    assert any("covering most of its area" in line and "5 x 3 sub-samples" in line
               for line in feedback.infos)


def test_area_majority_ties_never_favour_a_code():
    """Two classes with 4 of 9 sub-samples each: the centre's class wins when tied; when the
    centre holds neither (no data), the tied class nearest to the centre wins, be it the higher
    or the lower code."""
    from lcz_qgis_plugin.core.assessment.accuracy import area_majority
    fine = np.array([[9, 9, 2],
                     [9, 0, 2],
                     [2, 9, 2]], np.uint8)
    assert area_majority(fine, 3, 3, np.array([[0]], np.uint8))[0, 0] == 9
    assert area_majority(fine, 3, 3, np.array([[2]], np.uint8))[0, 0] == 2
    assert area_majority(fine, 3, 3, np.array([[9]], np.uint8))[0, 0] == 9
    mirrored = np.array([[2, 2, 9],
                         [2, 0, 9],
                         [9, 2, 9]], np.uint8)
    assert area_majority(mirrored, 3, 3, np.array([[0]], np.uint8))[0, 0] == 2
    clear = np.array([[14, 14, 3, 0]], np.uint8)
    assert area_majority(clear, 4, 1, np.array([[3]], np.uint8))[0, 0] == 14
    assert area_majority(np.zeros((2, 2), np.uint8), 2, 2, np.array([[5]], np.uint8))[0, 0] == 0


# -- reference polygons: those the map does not use are counted (issue 11, item 8a) ---------

def test_reference_polygons_off_the_map_are_counted(lcz_map, tmp_path):
    areas = write_polygons(tmp_path / "ref.gpkg", [
        ("1", cell_square(0, 0, rows=2, cols=2)),
        ("D", cell_square(2, 0, cols=2)),
        ("2", cell_square(40, 40)),                      # far away
        ("3", cell_square(-5, 0, rows=2)),               # north of the map
        ("A", "POLYGON((500190 4999810,500210 4999810,500210 4999790,500190 4999790,"
              "500190 4999810))")])                     # 20 m square on a cell corner
    feedback = RecordingFeedback()
    result = assess_accuracy(lcz_map, reference_areas=areas, report=str(tmp_path / "r.html"),
                             feedback=feedback)
    assert result.samples == 6
    outside = "2 of 5 reference polygons are outside the map and were not used: polygon " \
              "3 ('2'), 4 ('3')."
    small = "1 of 5 reference polygons hold no cell centre of the map (100 cells) and were " \
            "not used: polygon 5 ('A')."
    assert outside in feedback.warnings and small in feedback.warnings
    assert outside in result.notes and small in result.notes
    page = open(result.report, encoding="utf-8").read()
    assert "2 of 5 reference polygons are outside the map" in page
    clean = RecordingFeedback()
    assess_accuracy(lcz_map, reference_areas=write_polygons(
        tmp_path / "in.gpkg", [("1", cell_square(0, 0))]), feedback=clean)
    assert not clean.warnings


def test_wudapt_template_as_reference(lcz_map, tmp_path):
    """ROI left out (it covers the whole map); unknown labels refused unless ignored."""
    from wudapt_template import cell_ring, write_wudapt_template
    path = write_wudapt_template(
        tmp_path / "ref.kmz", [("1", cell_ring(0, 0, rows=2, cols=2)),
                               ("D", cell_ring(2, 0, cols=2))],
        roi=cell_ring(0, 0, rows=3, cols=4, inset=-30.0), kmz=True,
        others=[("urban", cell_ring(2, 2))])
    with pytest.raises(InputError, match="'urban' \\(1x\\).*IGNORE_UNKNOWN_LABELS"):
        assess_accuracy(lcz_map, reference_areas=path)
    feedback = RecordingFeedback()
    result = assess_accuracy(lcz_map, reference_areas=path, ignore_unknown_labels=True,
                             feedback=feedback)
    assert result.samples == 6 and result.scores["oa"] == pytest.approx(4 / 6)
    assert any("left out of the reference areas" in line for line in feedback.infos)
    assert any("'urban' (1x)" in line for line in feedback.warnings)
