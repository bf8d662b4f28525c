"""lcz:preparedsm and core.dsm: the real Alexandria lidar DSM/DTM (../shared/data/dsm) and
synthetic surfaces with known heights.

About ``alexandria_va_hag.tif``: it is *not* DSM - DTM of the two files beside it (median
|difference| 4.4 m at 2 m, about +5 m outside buildings, correlation 0.71): it was made from
another surface. So the honest checks are (1) our heights equal DSM - DTM aggregated exactly as
documented, (2) after the same aggregation they agree with the hag raster as well as the source
data allow (correlation), and (3) they reproduce the independent building heights (``HEIGHT``
of the footprints file) to within a metre.
"""

import numpy as np
import pytest
from lcz_testing import assert_refused, bad_input_cases, read, shared_data, write_stack
from osgeo import gdal, ogr, osr

from lcz_qgis_plugin.core.preprocess.dsm import aggregate, ground_estimate, prepare_dsm

ALEX = "EPSG:26918"


def alexandria(name):
    return shared_data(f"dsm/alexandria_va_{name}.tif")


def as_nan(array, nodata=-9999):
    array = array.astype(np.float64)
    array[array == nodata] = np.nan
    return array


@pytest.fixture(scope="module")
def grid10(tmp_path_factory):
    """A 10 m grid inside the 2 m lidar tiles, on their lattice (origin 321500, 4298010):
    each 10 m pixel holds exactly 5 x 5 lidar pixels (rows 4.., columns 1.. of the source)."""
    dsm = gdal.Open(alexandria("dsm"))
    folder = tmp_path_factory.mktemp("alexandria")
    srs = osr.SpatialReference(wkt=dsm.GetProjection())
    return write_stack(folder / "grid10.tif", np.zeros((1, 51, 56), np.float32), ["ref"],
                       epsg=int(srs.GetAuthorityCode(None)), origin=(321500.0, 4298010.0))


WINDOW = (slice(4, 4 + 51 * 5), slice(1, 1 + 56 * 5))


@pytest.mark.parametrize("how", ["mean", "max"])
def test_alexandria_heights_are_dsm_minus_dtm_aggregated(grid10, tmp_path, how):
    result = prepare_dsm(alexandria("dsm"), grid10, str(tmp_path / "h.tif"),
                         dtm=alexandria("dtm"), aggregation=how)
    assert result.factor == 5 and result.aggregation == how
    ds = gdal.Open(result.output)
    assert ds.GetGeoTransform() == gdal.Open(grid10).GetGeoTransform()
    assert ds.GetRasterBand(1).GetDescription() == "DSM:height"
    ours = as_nan(ds.ReadAsArray())
    dsm = as_nan(read(alexandria("dsm")))[WINDOW]
    dtm = as_nan(read(alexandria("dtm")))[WINDOW]
    expected = aggregate(np.maximum(dsm - dtm, 0), 5, how)
    np.testing.assert_allclose(ours, expected, atol=1e-4)
    # the published height-above-ground raster, aggregated the same way
    hag = aggregate(as_nan(read(alexandria("hag")))[WINDOW], 5, how)
    valid = ~np.isnan(ours) & ~np.isnan(hag)
    assert np.corrcoef(ours[valid], hag[valid])[0, 1] > (0.75 if how == "mean" else 0.6)


def test_alexandria_building_heights_match_the_footprints(tmp_path):
    """On the lidar's own 2 m grid: median height inside each footprint vs its HEIGHT."""
    dsm_path = alexandria("dsm")
    footprints = shared_data("dsm/alexandria_va_buildings.geojson")
    result = prepare_dsm(dsm_path, dsm_path, str(tmp_path / "h2.tif"), dtm=alexandria("dtm"))
    assert result.factor == 1
    heights = as_nan(read(result.output))
    ds = gdal.Open(dsm_path)
    ids = gdal.GetDriverByName("MEM").Create("", ds.RasterXSize, ds.RasterYSize, 1,
                                             gdal.GDT_Int32)
    ids.SetGeoTransform(ds.GetGeoTransform())
    ids.SetProjection(ds.GetProjection())
    source = ogr.Open(footprints)
    layer = source.GetLayer()
    target = osr.SpatialReference(wkt=ds.GetProjection())
    memory = ogr.GetDriverByName("Memory").CreateDataSource("b")
    projected = memory.CreateLayer("b", target, ogr.wkbMultiPolygon)
    projected.CreateField(ogr.FieldDefn("bid", ogr.OFTInteger))
    transform = osr.CoordinateTransformation(layer.GetSpatialRef(), target)
    truth = {}
    for number, feature in enumerate(layer, start=1):
        geometry = feature.GetGeometryRef().Clone()
        geometry.Transform(transform)
        out = ogr.Feature(projected.GetLayerDefn())
        out.SetField("bid", number)
        out.SetGeometry(geometry)
        projected.CreateFeature(out)
        truth[number] = feature.GetField("HEIGHT")
    gdal.RasterizeLayer(ids, [1], projected, options=["ATTRIBUTE=bid"])
    labels = ids.ReadAsArray()
    errors = [np.nanmedian(heights[labels == n]) - h for n, h in truth.items()
              if h is not None and (labels == n).sum() >= 20]
    assert len(errors) >= 50
    assert np.median(np.abs(errors)) < 1.0


def test_alexandria_without_dtm_uses_a_ground_estimate(grid10, tmp_path):
    with_dtm = as_nan(read(prepare_dsm(alexandria("dsm"), grid10, str(tmp_path / "a.tif"),
                                       dtm=alexandria("dtm")).output))
    result = prepare_dsm(alexandria("dsm"), grid10, str(tmp_path / "b.tif"))
    assert "opening of the DSM over 102 m" in result.ground
    estimated = as_nan(read(result.output))
    valid = ~np.isnan(with_dtm) & ~np.isnan(estimated)
    assert np.median(np.abs(estimated[valid] - with_dtm[valid])) < 0.5
    assert np.corrcoef(estimated[valid], with_dtm[valid])[0, 1] > 0.9


# -- synthetic surfaces ------------------------------------------------------------------------

def synthetic_dsm(tmp_path, epsg=32633):
    """1 m DSM: terrain rising 0.05 m/m to the east from 100 m, a 30 x 30 m block 15 m tall,
    a 10 x 10 m no-data hole; 200 x 200 px."""
    x = np.arange(200)[None, :].repeat(200, 0)
    terrain = 100.0 + 0.05 * x
    surface = terrain.copy()
    surface[40:70, 100:130] += 15.0
    surface[150:160, 150:160] = -9999
    dsm = write_stack(tmp_path / "dsm.tif", surface[None].astype(np.float32), ["dsm"],
                      epsg=epsg, pixel=1.0, origin=(500000.0, 5000000.0), nodata=-9999)
    dtm = write_stack(tmp_path / "dtm.tif", terrain[None].astype(np.float32), ["dtm"],
                      epsg=epsg, pixel=1.0, origin=(500000.0, 5000000.0), nodata=-9999)
    ref = write_stack(tmp_path / "ref.tif", np.zeros((1, 20, 20), np.float32), ["ref"],
                      origin=(500000.0, 5000000.0))
    return dsm, dtm, ref


def test_synthetic_block_heights_nodata_and_aggregation(tmp_path):
    dsm, dtm, ref = synthetic_dsm(tmp_path)
    mean = read(prepare_dsm(dsm, ref, str(tmp_path / "m.tif"), dtm=dtm).output)
    assert mean.shape == (20, 20)
    np.testing.assert_allclose(mean[4:7, 10:13], 15.0, atol=1e-3)  # inside the block
    assert np.abs(mean[:4]).max() < 1e-3  # bare ground
    assert mean[15, 15] == -9999  # all 10 x 10 DSM pixels are no data
    high = read(prepare_dsm(dsm, ref, str(tmp_path / "x.tif"), dtm=dtm,
                            aggregation="max").output)
    np.testing.assert_allclose(high[4:7, 10:13], 15.0, atol=1e-3)


def test_synthetic_ground_estimate_without_dtm(tmp_path):
    dsm, _, ref = synthetic_dsm(tmp_path)
    result = prepare_dsm(dsm, ref, str(tmp_path / "g.tif"), ground_window=50.0)
    heights = read(result.output)
    np.testing.assert_allclose(heights[4:7, 10:13], 15.0, atol=0.1)  # slope kept as ground
    # bare ground on the slope, farther than a window from the DSM's east edge (nearer, the
    # opening cannot see the terrain beyond the edge: documented edge effect)
    assert np.abs(heights[:3, :14]).max() < 0.1
    ground = ground_estimate(np.array([[1, 1, 5, 5, 1, 1, 1]], np.float64).repeat(7, 0), 5)
    assert (ground == 1).all()


def test_reference_in_another_crs_is_reprojected(tmp_path):
    dsm, dtm, _ = synthetic_dsm(tmp_path, epsg=32633)
    # the same area in ETRS89 / LAEA (EPSG:3035), 10 m
    src = osr.SpatialReference()
    src.ImportFromEPSG(32633)
    src.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    dst = osr.SpatialReference()
    dst.ImportFromEPSG(3035)
    dst.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    x, y, _ = osr.CoordinateTransformation(src, dst).TransformPoint(500100.0, 4999900.0)
    x0, y0 = np.floor(x / 10) * 10 - 50, np.ceil(y / 10) * 10 + 50
    ref = write_stack(tmp_path / "laea.tif", np.zeros((1, 10, 10), np.float32), ["ref"],
                      epsg=3035, origin=(x0, y0))
    heights = read(prepare_dsm(dsm, ref, str(tmp_path / "laea_h.tif"), dtm=dtm).output)
    assert heights.shape == (10, 10)
    assert heights.max() == pytest.approx(15.0, abs=0.5)  # the block, seen in another CRS
    assert np.median(heights) < 0.5


BAD = [
    ("DSM outside the grid", lambda t, d, r: {"reference": write_stack(
        t / "far.tif", np.zeros((1, 5, 5), np.float32), ["r"], origin=(700000.0, 5000000.0))},
     r"does not overlap the reference raster.*same area"),
    ("DSM without CRS", lambda t, d, r: {"dsm": _no_crs(t)}, r"has no CRS; assign one"),
    ("unknown aggregation", lambda t, d, r: {"aggregation": "median"},
     r"unknown aggregation 'median'; use one of auto, mean, max"),
    ("missing DSM", lambda t, d, r: {"dsm": str(t / "none.tif")}, r"none.tif does not exist"),
    ("output not a GeoTIFF", lambda t, d, r: {"output": str(t / "out" / "h.asc")},
     r"must be a GeoTIFF"),
]


def _no_crs(tmp_path):
    path = str(tmp_path / "nocrs.tif")
    ds = gdal.GetDriverByName("GTiff").Create(path, 10, 10, 1, gdal.GDT_Float32)
    ds.SetGeoTransform((500000.0, 1, 0, 5000000.0, 0, -1))
    ds = None
    return path


@pytest.mark.parametrize("case", bad_input_cases(BAD))
def test_bad_input_is_refused_and_leaves_nothing(tmp_path, case):
    dsm, _, ref = synthetic_dsm(tmp_path)
    options = {"dsm": dsm, "reference": ref, "output": str(tmp_path / "out" / "h.tif")}
    assert_refused(case, prepare_dsm, options, tmp_path, dsm, ref)


@pytest.mark.qgis
def test_preparedsm_through_processing_run(processing, tmp_path):
    dsm, dtm, ref = synthetic_dsm(tmp_path)
    results = processing.run("lcz:preparedsm", {
        "DSM": dsm, "DTM": dtm, "REFERENCE": ref, "AGGREGATION": 2, "GROUND_WINDOW": 100,
        "OUTPUT": str(tmp_path / "h.tif")})
    assert results["AGGREGATION_USED"] == "max"
    core = prepare_dsm(dsm, ref, str(tmp_path / "core.tif"), dtm=dtm, aggregation="max")
    np.testing.assert_array_equal(read(results["OUTPUT"]), read(core.output))


@pytest.mark.parametrize("with_dtm", [True, False])
def test_blocks_stitch_exactly(tmp_path, with_dtm):
    """Blocks of 3 rows (with the opening's halo) give the same heights as one block."""
    dsm, dtm, ref = synthetic_dsm(tmp_path)
    options = dict(dtm=dtm if with_dtm else None, ground_window=30.0)
    whole = read(prepare_dsm(dsm, ref, str(tmp_path / "one.tif"), **options).output)
    blocks = read(prepare_dsm(dsm, ref, str(tmp_path / "many.tif"), block_rows=3,
                              **options).output)
    np.testing.assert_array_equal(blocks, whole)


# -- inputs that give wrong heights without failing: warned --------------------------------------

def rolling_terrain(tmp_path, name="dem", nodata=-9999.0, sea_rows=0):
    """1 m bare-ground model, 200 x 200 px: a 0.05 slope with gentle 0.4 m undulations (as a
    DEM/DTM: no buildings, no trees); the first ``sea_rows`` rows are sea at exactly 0 m."""
    y, x = np.mgrid[0:200, 0:200]
    ground = 20.0 + 0.05 * x + 0.4 * np.sin(x / 13.0) * np.cos(y / 17.0)
    ground[:sea_rows] = 0.0
    return write_stack(tmp_path / f"{name}.tif", ground[None].astype(np.float32), [name],
                       pixel=1.0, origin=(500000.0, 5000000.0), nodata=nodata)


def test_terrain_model_given_as_dsm_is_warned(tmp_path):
    from lcz_testing import RecordingFeedback
    dem = rolling_terrain(tmp_path)
    _, _, ref = synthetic_dsm(tmp_path)
    for dtm in (None, dem):  # the DEM alone, and the DEM given as both DSM and DTM
        feedback = RecordingFeedback()
        result = prepare_dsm(dem, ref, str(tmp_path / f"h{dtm is None}.tif"), dtm=dtm,
                             feedback=feedback)
        assert result.percentiles[90] < 3.0
        terrain = [w for w in feedback.warnings if "looks like a terrain model" in w]
        assert len(terrain) == 1, feedback.log
        assert "DEM/DTM" in terrain[0] and "as DSM and the terrain model as DTM" in terrain[0]
        assert not any("no-data value" in w for w in feedback.warnings)  # -9999: no warning


def test_surface_model_with_buildings_is_not_warned(tmp_path):
    """The same terrain with 9 m buildings of 12 x 12 m every 30 m (16 % of the area)."""
    from lcz_testing import RecordingFeedback
    dtm = rolling_terrain(tmp_path, "ground")
    surface = read(dtm).astype(np.float32)
    y, x = np.mgrid[0:200, 0:200]
    surface[(y % 30 < 12) & (x % 30 < 12)] += 9.0
    dsm = write_stack(tmp_path / "town.tif", surface[None], ["dsm"], pixel=1.0,
                      origin=(500000.0, 5000000.0), nodata=-9999.0)
    _, _, ref = synthetic_dsm(tmp_path)
    for ground in (dtm, None):
        feedback = RecordingFeedback()
        result = prepare_dsm(dsm, ref, str(tmp_path / f"h{ground is None}.tif"), dtm=ground,
                             ground_window=50.0, feedback=feedback)
        assert result.percentiles[90] == pytest.approx(9.0, abs=0.5)
        assert feedback.warnings == [], feedback.warnings
        assert any("90th percentile 9." in line for line in feedback.infos), feedback.infos


def test_nodata_value_that_is_a_plausible_height_is_warned(tmp_path):
    """A DSM with no-data 0 loses its sea-level pixels: said, with the fix."""
    from lcz_testing import RecordingFeedback
    dsm = rolling_terrain(tmp_path, "coast_dsm", nodata=0.0, sea_rows=50)
    dtm = rolling_terrain(tmp_path, "coast_dtm", nodata=-1.0)
    _, _, ref = synthetic_dsm(tmp_path)
    feedback = RecordingFeedback()
    heights = read(prepare_dsm(dsm, ref, str(tmp_path / "h.tif"), dtm=dtm,
                               feedback=feedback).output)
    assert (heights[:5] == -9999).all()  # the sea rows became no data: what is warned about
    said = [w for w in feedback.warnings if "no-data value" in w]
    assert len(said) == 2, feedback.warnings
    dsm_said = next(w for w in said if "DSM coast_dsm.tif" in w)
    assert "no-data value 0," in dsm_said and "exactly 0 m (sea level)" in dsm_said
    assert "gdal_edit.py -unsetnodata coast_dsm.tif" in dsm_said and "-9999" in dsm_said
    dtm_said = next(w for w in said if "DTM coast_dtm.tif" in w)
    assert "exactly -1 m " in dtm_said and "sea level" not in dtm_said


def test_height_histogram_percentile_to_a_tenth_of_a_metre():
    from lcz_qgis_plugin.core.preprocess.dsm import HeightHistogram
    values = np.random.default_rng(0).gamma(2.0, 3.0, size=(300, 300)).astype(np.float32)
    values[::7] = np.nan
    histogram = HeightHistogram()
    for block in np.array_split(values, 7):
        histogram.add(block)
    assert histogram.total == np.count_nonzero(~np.isnan(values))
    for q in (50, 90, 99):
        exact = np.nanpercentile(values, q)
        assert exact <= histogram.percentile(q) <= exact + 0.1 + 1e-6
    histogram.add(np.array([500.0] * 10 ** 6, np.float32))
    assert histogram.percentile(99) == np.inf
    assert np.isnan(HeightHistogram().percentile(99))


def test_alexandria_dtm_given_as_dsm_is_warned_and_the_dsm_is_not(grid10, tmp_path):
    from lcz_testing import RecordingFeedback
    said = {}
    for name in ("dsm", "dtm"):
        feedback = RecordingFeedback()
        result = prepare_dsm(alexandria(name), grid10, str(tmp_path / f"{name}.tif"),
                             feedback=feedback)
        said[name] = (result.percentiles, [w for w in feedback.warnings if "terrain model" in w])
    # measured: DSM 90th percentile 8.7 m, 99th 20.8 m; DTM 1.4 m and 6.3 m (the opening's
    # residuals of narrow terrain features and the edges: why the check uses the 90th)
    assert said["dsm"][0][90] > 6 and said["dsm"][1] == []
    assert said["dtm"][0][90] < 2 and len(said["dtm"][1]) == 1
