"""lcz:rasterizeosm and core.osm: the real Helsinki extract (../shared/data/osm) checked against
footprint areas computed independently with OGR, and small synthetic layers whose fractions
can be worked out by hand."""

import os

import numpy as np
import pytest
from lcz_testing import (
    RecordingFeedback,
    assert_refused,
    bad_input_cases,
    files_in,
    read,
    shared_data,
    write_stack,
)
from osgeo import gdal, ogr, osr

from lcz_qgis_plugin.core.errors import InputError
from lcz_qgis_plugin.core.preprocess.osm import (
    BANDS,
    building_height,
    parse_other_tags,
    rasterize_osm,
)

X0, Y0 = 500000.0, 6000000.0  # synthetic grid, EPSG:32633, 10 m


def reference(path, width=10, height=10, epsg=32633, x0=X0, y0=Y0, pixel=10.0):
    return write_stack(path, np.zeros((1, height, width), np.float32), ["ref"], epsg=epsg,
                       origin=(x0, y0), pixel=pixel)


def utm(epsg):
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def write_layer(path, features, geometry_type, epsg=32633):
    """features: list of (wkt, {field: value}) -> a GeoPackage layer."""
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = ds.CreateLayer("layer", utm(epsg), geometry_type)
    names = sorted({k for _, fields in features for k in fields})
    for name in names:
        layer.CreateField(ogr.FieldDefn(name, ogr.OFTString))
    for wkt, fields in features:
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetGeometry(ogr.CreateGeometryFromWkt(wkt))
        for key, value in fields.items():
            feature.SetField(key, value)
        layer.CreateFeature(feature)
    ds = None
    return str(path)


def box(x_a, y_a, x_b, y_b):
    """Rectangle in grid pixels (columns x_a..x_b, rows y_a..y_b from the top-left)."""
    xa, xb = X0 + 10 * x_a, X0 + 10 * x_b
    ya, yb = Y0 - 10 * y_a, Y0 - 10 * y_b
    return f"POLYGON(({xa} {ya}, {xb} {ya}, {xb} {yb}, {xa} {yb}, {xa} {ya}))"


def osm_xml(path, ways, bounds=None, ids=None):
    """A tiny .osm XML file; ways: list of (list of (lon, lat), {tag: value}). ``ids``: the
    way ids (default 1, 2 ...); a way's nodes are numbered from its id, so a way written
    with the same id into two files is the same OSM element in both. ``bounds``: (lon_min,
    lat_min, lon_max, lat_max) written as the file's <bounds>."""
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', '<osm version="0.6" generator="test">']
    if bounds:
        lines.append(f'  <bounds minlat="{bounds[1]:.7f}" minlon="{bounds[0]:.7f}" '
                     f'maxlat="{bounds[3]:.7f}" maxlon="{bounds[2]:.7f}"/>')
    way_lines = []
    for number, (coords, tags) in zip(ids or range(1, len(ways) + 1), ways):
        refs = []
        for lon, lat in coords:
            if refs and (lon, lat) == coords[0]:
                refs.append(refs[0])
                continue
            node_id = number * 1000 + len(refs) + 1
            lines.append(f'  <node id="{node_id}" version="1" lat="{lat:.7f}" lon="{lon:.7f}"/>')
            refs.append(node_id)
        way_lines.append(f'  <way id="{number}" version="1">')
        way_lines += [f'    <nd ref="{r}"/>' for r in refs]
        way_lines += [f'    <tag k="{k}" v="{v}"/>' for k, v in tags.items()]
        way_lines.append("  </way>")
    lines += way_lines + ["</osm>"]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return str(path)


LON0, LAT0, D = 15.0, 54.0, 0.0004  # a lon/lat test area; D ~ 26 m east, 44 m north


def lonlat_grid(folder, width=30, height=30):
    """A 10 m EPSG:32633 reference whose top-left is ~100 m north-west of (LON0, LAT0); returns
    the reference and the WGS 84 -> UTM transformation."""
    to_utm = osr.CoordinateTransformation(utm(4326), utm(32633))
    x, y, _ = to_utm.TransformPoint(LON0, LAT0)
    x0, y0 = np.floor(x / 10) * 10 - 100, np.ceil(y / 10) * 10 + 100
    return reference(folder / "ref.tif", width, height, 32633, x0, y0), to_utm


def square(i, j=0):
    """The lon/lat ring of a D x D building, i steps of 2 D east and j of 2 D north."""
    lon, lat = LON0 + 2 * i * D, LAT0 + 2 * j * D
    return [(lon, lat), (lon + D, lat), (lon + D, lat + D), (lon, lat + D), (lon, lat)]


def utm_area(rings, to_utm):
    area = 0.0
    for ring in rings:
        polygon = ogr.CreateGeometryFromWkt(
            "POLYGON((" + ", ".join(f"{lon} {lat}" for lon, lat in ring) + "))")
        polygon.Transform(to_utm)
        area += polygon.GetArea()
    return area


# -- real data: Helsinki -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def helsinki(tmp_path_factory):
    """The Helsinki extract on a 10 m EPSG:32635 grid inside the extract, rasterized once."""
    pbf = shared_data("osm/Helsinki.osm.pbf")
    folder = tmp_path_factory.mktemp("helsinki")
    wgs84 = osr.SpatialReference()
    wgs84.ImportFromEPSG(4326)
    wgs84.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    to_utm = osr.CoordinateTransformation(wgs84, utm(32635))
    x_a, y_a, _ = to_utm.TransformPoint(24.938, 60.177)
    x_b, y_b, _ = to_utm.TransformPoint(24.951, 60.166)
    x0, y0 = np.floor(x_a / 10) * 10, np.ceil(y_a / 10) * 10
    width, height = int((x_b - x0) // 10), int((y0 - y_b) // 10)
    ref = reference(folder / "ref.tif", width, height, 32635, x0, y0)
    feedback = RecordingFeedback()
    result = rasterize_osm(ref, str(folder / "osm.tif"), osm_file=pbf, feedback=feedback)
    return pbf, ref, result, to_utm, feedback


def footprint_area(pbf, to_utm, grid_box):
    """Union of building=* footprints (not building=no) clipped to the grid, with OGR alone;
    invalid rings (cut by the extract's edge) repaired with buffer(0)."""
    gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        source = ogr.Open(pbf)  # keep the dataset alive while its layer is read
        layer = source.GetLayerByName("multipolygons")
        layer.SetAttributeFilter("building IS NOT NULL AND building <> 'no'")
        parts = ogr.Geometry(ogr.wkbMultiPolygon)
        for feature in layer:
            geometry = feature.GetGeometryRef().Clone()
            geometry.Transform(to_utm)
            if not geometry.IsValid():
                geometry = geometry.Buffer(0)
            if geometry is None or geometry.IsEmpty():
                continue
            polygons = [geometry] if geometry.GetGeometryType() == ogr.wkbPolygon else \
                [geometry.GetGeometryRef(i) for i in range(geometry.GetGeometryCount())]
            for polygon in polygons:
                parts.AddGeometry(polygon)
        return parts.UnionCascaded().Intersection(grid_box).GetArea()
    finally:
        gdal.PopErrorHandler()


def test_helsinki_building_area_matches_the_footprints(helsinki):
    pbf, ref, result, to_utm, _ = helsinki
    ds = gdal.Open(result.output)
    x0, px, _, y0, _, py = ds.GetGeoTransform()
    width, height = ds.RasterXSize, ds.RasterYSize
    grid_box = ogr.CreateGeometryFromWkt(
        f"POLYGON(({x0} {y0}, {x0 + width * px} {y0}, {x0 + width * px} {y0 + height * py}, "
        f"{x0} {y0 + height * py}, {x0} {y0}))")
    expected = footprint_area(pbf, to_utm, grid_box)
    fraction = ds.GetRasterBand(1).ReadAsArray().astype(np.float64)
    rasterized = fraction.sum() * px * px
    assert expected > 100000  # central Helsinki: lots of buildings
    assert abs(rasterized / expected - 1) < 0.01, (rasterized, expected)


def test_helsinki_bands_are_aligned_and_consistent(helsinki):
    _, ref, result, _, feedback = helsinki
    out, grid = gdal.Open(result.output), gdal.Open(ref)
    assert out.GetGeoTransform() == grid.GetGeoTransform()
    assert (out.RasterXSize, out.RasterYSize) == (grid.RasterXSize, grid.RasterYSize)
    assert osr.SpatialReference(wkt=out.GetProjection()).GetAuthorityCode(None) == "32635"
    assert [out.GetRasterBand(i + 1).GetDescription() for i in range(out.RasterCount)] == \
        list(BANDS)
    assert out.GetRasterBand(1).DataType == gdal.GDT_Float32
    building, heights, road, water, vegetation, impervious, known_share = out.ReadAsArray()
    for fraction in (building, road, water, vegetation, impervious):
        assert fraction.min() >= 0 and fraction.max() <= 1 + 1e-6
    assert (impervious >= np.maximum(building, road) - 1e-6).all()  # a union
    assert road.mean() > 0.05 and vegetation.mean() > 0.05 and building.mean() > 0.2
    known = heights[heights > 0]
    assert known.size > 100 and 3 <= np.median(known) <= 40  # metres, from height/levels
    assert (heights[building == 0] == 0).all()
    assert result.buildings_with_height > 50 and feedback.warnings == []
    # about a third of these buildings are tagged: the others get the fill height, so no
    # pixel is no-data, and the share of tagged building area says where heights are known
    assert (heights[building > 0] > 0).all() and (heights != -9999).all()
    assert 0.1 < known_share[building > 0].mean() < 0.9
    assert known_share.min() >= 0 and known_share.max() <= 1 + 1e-6
    assert (known_share[building == 0] == 0).all()


# -- synthetic layers with known answers ---------------------------------------------------------

def test_vector_layers_give_exact_fractions_and_heights(tmp_path):
    ref = reference(tmp_path / "ref.tif")
    buildings = write_layer(tmp_path / "b.gpkg", [
        (box(2, 2, 4, 4), {"height": "12"}),
        (box(6, 2, 7, 3), {"building:levels": "4"}),
        (box(8, 2, 9, 3), {}),
        (box(6, 6, 6.5, 7), {"height": "40 ft"}),
    ], ogr.wkbPolygon)
    line = f"LINESTRING({X0 - 50} {Y0 - 75}, {X0 + 150} {Y0 - 75})"  # centre of row 7
    roads = write_layer(tmp_path / "r.gpkg", [(line, {"highway": "primary"})],
                        ogr.wkbLineString)
    water = write_layer(tmp_path / "w.gpkg", [(box(0, 0, 2, 1), {})], ogr.wkbPolygon)
    landuse = write_layer(tmp_path / "l.gpkg", [(box(0, 9, 5, 10), {"landuse": "grass"}),
                                                (box(5, 9, 10, 10), {"amenity": "parking"})],
                          ogr.wkbPolygon)
    result = rasterize_osm(ref, str(tmp_path / "osm.tif"), buildings=[buildings],
                           roads=[roads + "|layername=layer"], water=[water],
                           landuse=[landuse], metres_per_level=2.5)
    building, heights, road, wet, green, impervious, known = read(result.output)
    assert building[2:4, 2:4].min() == 1 and np.allclose(heights[2:4, 2:4], 12)
    assert heights[2, 6] == pytest.approx(10)  # 4 levels x 2.5 m
    # building without height or levels, 3 tagged buildings only: 2 levels x 2.5 m
    assert heights[2, 8] == pytest.approx(5.0) and result.fill_height == pytest.approx(5.0)
    assert known[2, 8] == 0 and known[2, 6] == 1 and known[6, 6] == 1
    assert known[building == 0].max() == 0
    assert building[6, 6] == pytest.approx(0.5) and heights[6, 6] == pytest.approx(12.192)
    assert building.sum() == pytest.approx(4 + 1 + 1 + 0.5)
    assert heights[building == 0].max() == 0
    np.testing.assert_allclose(road[7], 1.0)  # 12 m road centred on a 10 m row
    np.testing.assert_allclose(road[6], 0.1)
    np.testing.assert_allclose(road[8], 0.1)
    assert road.sum() == pytest.approx(12.0)
    assert wet[0, :2].min() == 1 and wet.sum() == pytest.approx(2)
    assert green[9, :5].min() == 1 and green.sum() == pytest.approx(5)
    expected_impervious = np.maximum.reduce([building, road, np.zeros_like(road)])
    expected_impervious[9, 5:] = 1
    expected_impervious[6, 6] = 0.55  # half-pixel building + 1 m of road, 5 m^2 in both
    np.testing.assert_allclose(impervious, expected_impervious, atol=1e-6)
    filled = rasterize_osm(ref, str(tmp_path / "filled.tif"), buildings=[buildings],
                           default_height=7.0)
    assert read(filled.output, 2)[2, 8] == pytest.approx(7.0)


def test_osm_file_tags_in_other_tags_are_read(tmp_path):
    """Through GDAL's OSM driver: height and building:levels live in other_tags."""
    lon0, lat0 = 15.0, 54.0
    to_utm = osr.CoordinateTransformation(utm(4326), utm(32633))
    x, y, _ = to_utm.TransformPoint(lon0, lat0)
    x0, y0 = np.floor(x / 10) * 10 - 100, np.ceil(y / 10) * 10 + 100
    ref = reference(tmp_path / "ref.tif", 30, 30, 32633, x0, y0)
    d = 0.0004  # ~ 26 x 44 m
    square = [(lon0, lat0), (lon0 + d, lat0), (lon0 + d, lat0 + d), (lon0, lat0 + d),
              (lon0, lat0)]
    east = [(lon0 + 2 * d, lat0), (lon0 + 3 * d, lat0), (lon0 + 3 * d, lat0 + d),
            (lon0 + 2 * d, lat0 + d), (lon0 + 2 * d, lat0)]
    path = osm_xml(tmp_path / "tiny.osm", [
        (square, {"building": "yes", "height": "15 m", "name": "A"}),
        (east, {"building": "apartments", "building:levels": "6"}),
        ([(lon0 - d, lat0 - d), (lon0 + 4 * d, lat0 - d)], {"highway": "residential"}),
        ([(lon0 - d, lat0 - 2 * d), (lon0 + 4 * d, lat0 - 2 * d)],
         {"highway": "primary", "tunnel": "yes"}),
    ])
    result = rasterize_osm(ref, str(tmp_path / "osm.tif"), osm_file=path)
    building, heights, road, *_ = read(result.output)
    assert result.counts["building"] == 2 and result.counts["road"] == 1
    assert set(np.round(np.unique(heights[building > 0.99]), 3)) == {15.0, 18.0}
    area = 0.0
    for ring in (square, east):
        polygon = ogr.CreateGeometryFromWkt(
            "POLYGON((" + ", ".join(f"{lon} {lat}" for lon, lat in ring) + "))")
        polygon.Transform(to_utm)
        area += polygon.GetArea()
    assert building.sum() * 100 == pytest.approx(area, rel=0.01)
    assert road.sum() > 0 and road.sum() * 100 < 6 * 30 * 10 + 200  # one 6 m road, no tunnel


def test_extract_without_buildings_gives_zeros_and_a_warning(tmp_path):
    ref = reference(tmp_path / "ref.tif", 20, 20, 32633, 500000.0, 5985000.0)
    path = osm_xml(tmp_path / "roads.osm", [([(15.0, 54.0), (15.001, 54.0)],
                                             {"highway": "service"})])
    feedback = RecordingFeedback()
    result = rasterize_osm(ref, str(tmp_path / "osm.tif"), osm_file=path, feedback=feedback)
    assert (read(result.output, 1) == 0).all()
    assert any("no building footprint" in w for w in feedback.warnings)


@pytest.mark.parametrize("exceptions", [False, True])
def test_degenerate_ways_are_dropped_in_both_ogr_error_modes(tmp_path, exceptions):
    """A pedestrian area closed on its first node (a ring of two points) cannot be buffered.
    OGR raises or returns None depending on a process-wide switch that another library (QGIS,
    a script) may have flipped: the way is dropped either way and the good road is still
    drawn."""
    ref = reference(tmp_path / "ref.tif", 20, 20, 32633, 499900.0, 5983600.0)
    path = osm_xml(tmp_path / "roads.osm", [
        ([(15.0005, 54.0), (15.0005, 54.0)], {"highway": "pedestrian", "area": "yes"}),
        ([(15.0, 54.0), (15.001, 54.0)], {"highway": "service"})])
    before = ogr.GetUseExceptions()
    if exceptions:
        ogr.UseExceptions()
    try:
        result = rasterize_osm(ref, str(tmp_path / "osm.tif"), osm_file=path)
    finally:
        if exceptions and not before:
            ogr.DontUseExceptions()
    assert result.counts["road"] == 1
    assert read(result.output, 3).sum() > 0


def test_tag_helpers():
    assert parse_other_tags('"height"=>"12.5","building:levels"=>"4","a\\"b"=>"x"') == \
        {"height": "12.5", "building:levels": "4", 'a"b': "x"}
    assert building_height({"height": "12,5 m"}, 3.0) == 12.5
    assert building_height({"height": "33'"}, 3.0) == pytest.approx(10.0584)
    assert building_height({"height": "tall", "building:levels": "3"}, 3.2) == \
        pytest.approx(9.6)
    assert building_height({}, 3.0) is None


# -- bad input -------------------------------------------------------------------------------

def _no_source(tmp_path, ref):
    return {}


def _not_osm(tmp_path, ref):
    path = tmp_path / "notes.osm"
    path.write_text("these are my notes, not OpenStreetMap")
    return {"osm_file": str(path)}


def _missing_file(tmp_path, ref):
    return {"osm_file": str(tmp_path / "nowhere.osm.pbf")}


def _reference_without_crs(tmp_path, ref):
    path = str(tmp_path / "nocrs.tif")
    ds = gdal.GetDriverByName("GTiff").Create(path, 5, 5, 1, gdal.GDT_Byte)
    ds.SetGeoTransform((0, 10, 0, 0, 0, -10))
    ds = None
    return {"reference": path, "buildings": [write_layer(
        tmp_path / "b.gpkg", [(box(1, 1, 2, 2), {})], ogr.wkbPolygon)]}


def _layer_without_crs(tmp_path, ref):
    path = tmp_path / "b.csv"
    path.write_text("WKT,height\n\"POLYGON((0 0,1 0,1 1,0 0))\",3\n")
    return {"buildings": [str(path)]}


BAD = [
    ("no OSM data", _no_source, r"no OpenStreetMap data given: choose an .osm/.osm.pbf file"),
    ("not an OSM file", _not_osm, r"OSM driver cannot read .*notes.osm.*Give an .osm"),
    ("missing file", _missing_file, r"nowhere.osm.pbf does not exist"),
    ("reference without CRS", _reference_without_crs, r"has no coordinate reference system"),
    ("layer without CRS", _layer_without_crs, r"has no CRS; assign one"),
]


@pytest.mark.parametrize("case", bad_input_cases(BAD))
def test_bad_input_is_refused_and_leaves_nothing(tmp_path, case):
    ref = reference(tmp_path / "ref.tif")
    options = {"reference": ref, "output": str(tmp_path / "out" / "osm.tif")}
    assert_refused(case, rasterize_osm, options, tmp_path, ref)


@pytest.mark.qgis
def test_rasterizeosm_through_processing_run(processing, tmp_path):
    ref = reference(tmp_path / "ref.tif")
    buildings = write_layer(tmp_path / "b.gpkg", [(box(2, 2, 4, 4), {"height": "9"})],
                            ogr.wkbPolygon)
    results = processing.run("lcz:rasterizeosm", {
        "REFERENCE": ref, "BUILDINGS": buildings, "METRES_PER_LEVEL": 3.0, "SUPERSAMPLE": 4,
        "OUTPUT": str(tmp_path / "osm.tif")})
    assert results["BUILDINGS_FOUND"] == 1
    building, heights = read(results["OUTPUT"])[:2]
    assert building.sum() == pytest.approx(4) and heights[3, 3] == pytest.approx(9)
    assert os.path.exists(results["OUTPUT"])


def test_blocks_stitch_exactly(tmp_path, monkeypatch):
    """Small blocks (8 x 8 px on a 10 x 10 grid: four blocks) give the same raster as one."""
    import lcz_qgis_plugin.core.preprocess.osm as osm
    ref = reference(tmp_path / "ref.tif")
    buildings = write_layer(tmp_path / "b.gpkg", [
        (box(1.3, 1.7, 8.6, 9.2), {"height": "10"}), (box(7.5, 0.5, 9.5, 8.5), {})],
        ogr.wkbPolygon)
    line = f"LINESTRING({X0 - 5} {Y0 - 3}, {X0 + 105} {Y0 - 97})"
    roads = write_layer(tmp_path / "r.gpkg", [(line, {"highway": "secondary"})],
                        ogr.wkbLineString)
    whole = read(rasterize_osm(ref, str(tmp_path / "one.tif"), buildings=[buildings],
                               roads=[roads]).output)
    monkeypatch.setattr(osm, "BLOCK_SUBPIXELS", 80)
    tiled = read(rasterize_osm(ref, str(tmp_path / "four.tif"), buildings=[buildings],
                               roads=[roads]).output)
    np.testing.assert_array_equal(tiled, whole)
    assert whole[0].sum() > 50 and whole[2].sum() > 5


# -- a city in several extracts; what layers are read; unknown heights; coverage ---------------

def test_overlapping_extracts_count_each_building_once(tmp_path):
    """Two district extracts share building 2 and the road (same OSM ids): each is copied
    once, and a BUILDINGS layer exported from an extract (osm_way_id) does not add it again."""
    ref, to_utm = lonlat_grid(tmp_path)
    road = ([(LON0 - D, LAT0 - D), (LON0 + 8 * D, LAT0 - D)], {"highway": "residential"})
    west = osm_xml(tmp_path / "west.osm", [
        (square(0), {"building": "yes", "height": "15"}),
        (square(1), {"building": "yes"}), road], ids=[11, 12, 50])
    east = osm_xml(tmp_path / "east.osm", [
        (square(1), {"building": "yes"}),
        (square(2), {"building": "house", "building:levels": "2"}), road], ids=[12, 13, 50])
    feedback = RecordingFeedback()
    both = rasterize_osm(ref, str(tmp_path / "both.tif"), osm_file=[west, east],
                         feedback=feedback)
    assert both.counts["building"] == 3 and both.counts["road"] == 1
    assert both.duplicates == 2 and both.buildings_with_height == 2
    building = read(both.output, 1)
    area = utm_area([square(0), square(1), square(2)], to_utm)
    assert building.sum() * 100 == pytest.approx(area, rel=0.01)
    assert any("2 copies of the same OSM element" in line for line in feedback.infos)
    exported = str(tmp_path / "east.gpkg")
    gdal.VectorTranslate(exported, east, layers=["multipolygons"])
    mixed = rasterize_osm(ref, str(tmp_path / "mixed.tif"), osm_file=west,
                          buildings=[exported + "|layername=multipolygons"])
    assert mixed.counts["building"] == 3
    np.testing.assert_array_equal(read(mixed.output, 1), building)


def test_roads_and_buildings_layers_keep_what_osm_calls_roads_and_buildings(tmp_path):
    """OSM exports given as layers: barriers and power lines in a lines layer are not roads,
    a grass polygon in a multipolygons layer is not a building. A layer without highway or
    building fields is taken whole."""
    ref = reference(tmp_path / "ref.tif")
    row = lambda r: f"LINESTRING({X0 - 50} {Y0 - 10 * r - 5}, {X0 + 150} {Y0 - 10 * r - 5})"
    lines = write_layer(tmp_path / "lines.gpkg", [
        (row(1), {"highway": "residential"}),
        (row(3), {"barrier": "fence"}),
        (row(5), {"other_tags": '"power"=>"line"'}),
        (row(7), {"highway": "primary", "other_tags": '"tunnel"=>"yes"'}),
    ], ogr.wkbLineString)
    polygons = write_layer(tmp_path / "mp.gpkg", [
        (box(1, 1, 3, 3), {"building": "yes"}),
        (box(5, 5, 8, 8), {"landuse": "grass"}),
        (box(6, 1, 7, 2), {"building": "no", "amenity": "parking"}),
    ], ogr.wkbPolygon)
    feedback = RecordingFeedback()
    result = rasterize_osm(ref, str(tmp_path / "osm.tif"), buildings=[polygons],
                           roads=[lines], feedback=feedback)
    building, _, road = read(result.output)[:3]
    assert result.counts == {"building": 1, "road": 1, "water": 0, "vegetation": 0,
                             "paved": 0}
    assert building.sum() == pytest.approx(4)
    np.testing.assert_allclose(road[1], 0.6)  # the 6 m residential road only
    assert road.sum() == pytest.approx(6)
    assert any("roads layer" in line and "3 feature(s) left out" in line
               for line in feedback.infos)
    assert any("buildings layer" in line and "2 feature(s) left out" in line
               for line in feedback.infos)
    plain = write_layer(tmp_path / "plain.gpkg", [(row(1), {"name": "a"}),
                                                   (row(3), {"name": "b"})], ogr.wkbLineString)
    whole = rasterize_osm(ref, str(tmp_path / "plain.tif"), roads=[plain])
    assert whole.counts["road"] == 2 and read(whole.output, 3).sum() == pytest.approx(8)


def test_unknown_heights_are_filled_and_their_share_is_logged(tmp_path):
    """12 of 40 buildings tagged: the others get the tagged median, no pixel is no-data,
    the known-height band says which is which, and the log reminds of DEFAULT_HEIGHT."""
    ref = reference(tmp_path / "ref.tif", 20, 20)
    features = []
    for k in range(40):
        r, c = divmod(k, 8)
        tags = {"height": str(6 + 3 * (k % 3))} if k < 12 else {}  # 6, 9, 12 m: median 9
        features.append((box(2 * c + 0.5, 2 * r + 0.5, 2 * c + 1.5, 2 * r + 1.5), tags))
    buildings = write_layer(tmp_path / "b.gpkg", features, ogr.wkbPolygon)
    feedback = RecordingFeedback()
    result = rasterize_osm(ref, str(tmp_path / "osm.tif"), buildings=[buildings],
                           supersample=2, feedback=feedback)
    building, heights, *_, known = read(result.output)
    assert result.fill_height == pytest.approx(9.0) and result.buildings_with_height == 12
    assert (heights != -9999).all() and (known != -9999).all()
    has = building > 0
    assert (heights[has] > 0).all() and (heights[~has] == 0).all()
    assert known[has].sum() / has.sum() == pytest.approx(12 / 40)
    assert np.allclose(heights[has & (known == 0)], 9.0)
    assert sorted(set(np.round(heights[has & (known == 1)], 3))) == [6.0, 9.0, 12.0]
    line = next(i for i in feedback.infos if "Buildings with a height" in i)
    assert "30% (12 of 40)" in line and "28 are given 9.0 m" in line
    assert "median height of the 12 tagged buildings" in line and "DEFAULT_HEIGHT" in line
    chosen = rasterize_osm(ref, str(tmp_path / "chosen.tif"), buildings=[buildings],
                           supersample=2, default_height=4.0)
    assert np.allclose(read(chosen.output, 2)[has & (known == 0)], 4.0)


def test_pixels_outside_the_extract_bounds_are_nodata(tmp_path):
    """An extract whose <bounds> end half-way across the grid: east of them every band is
    no data, west of them fractions are 0 where OSM has nothing."""
    ref, to_utm = lonlat_grid(tmp_path)
    ds = gdal.Open(ref)
    x0, px, _, y0, _, _ = ds.GetGeoTransform()
    to_wgs84 = osr.CoordinateTransformation(utm(32633), utm(4326))
    lon_mid, _, _ = to_wgs84.TransformPoint(x0 + 150, y0 - 150)  # 15 px east
    lon_west, lat_south, _ = to_wgs84.TransformPoint(x0 - 500, y0 - 800)
    _, lat_north, _ = to_wgs84.TransformPoint(x0, y0 + 500)
    path = osm_xml(tmp_path / "half.osm", [(square(0), {"building": "yes"})],
                   bounds=(lon_west, lat_south, lon_mid, lat_north))
    feedback = RecordingFeedback()
    result = rasterize_osm(ref, str(tmp_path / "osm.tif"), osm_file=path, feedback=feedback)
    bands = read(result.output)
    outside = (bands == -9999).all(axis=0)
    assert not ((bands == -9999) & ~outside).any()  # no data in every band or in none
    columns = outside.mean(axis=0)
    assert set(columns[:14]) == {0.0} and set(columns[16:]) == {1.0}  # the edge is curved
    assert result.uncovered_pixels == outside.sum()
    assert 12 * 30 <= result.uncovered_pixels <= 16 * 30
    assert any("lies outside the bounds the OpenStreetMap file(s) declare" in line
               for line in feedback.infos)
    unbounded = RecordingFeedback()
    whole = rasterize_osm(ref, str(tmp_path / "whole.tif"), osm_file=osm_xml(
        tmp_path / "nobounds.osm", [(square(0), {"building": "yes"})]), feedback=unbounded)
    assert whole.uncovered_pixels == 0 and (read(whole.output) != -9999).all()
    assert any("declare(s) no bounds" in line for line in unbounded.infos)
    np.testing.assert_array_equal(bands[:, ~outside], read(whole.output)[:, ~outside])
    assert bands[0][~outside].sum() > 10  # the building, west of the edge


def test_coverage_polygons_mark_the_rest_as_nodata(tmp_path):
    ref = reference(tmp_path / "ref.tif")
    buildings = write_layer(tmp_path / "b.gpkg", [(box(1, 1, 3, 3), {"height": "9"})],
                            ogr.wkbPolygon)
    area = write_layer(tmp_path / "area.gpkg", [(box(0, 0, 6, 10.2), {}),
                                                 (box(5, 0, 6.4, 4), {})], ogr.wkbPolygon)
    result = rasterize_osm(ref, str(tmp_path / "osm.tif"), buildings=[buildings],
                           coverage=area, supersample=5)
    bands = read(result.output)
    assert (bands[:, :, :6] != -9999).all() and (bands[:, :, 7:] == -9999).all()
    assert (bands[:, :4, 6] == -9999).all()  # 40 % of these pixels is covered: less than half
    assert result.uncovered_pixels == 40
    assert bands[0].max() == 1 and bands[0][bands[0] != -9999].sum() == pytest.approx(4)
    away = write_layer(tmp_path / "away.gpkg", [(box(50, 50, 60, 60), {})], ogr.wkbPolygon)
    with pytest.raises(InputError, match="COVERAGE polygons cover none of the reference grid"):
        rasterize_osm(ref, str(tmp_path / "out" / "x.tif"), buildings=[buildings],
                      coverage=[away])
    assert not (tmp_path / "out").exists() or files_in(tmp_path / "out") == []


# -- through QGIS: layers QGIS must convert first, several OSM files ---------------------------

@pytest.fixture(scope="module")
def cell(tmp_path_factory):
    """An .osm extract with a building (15 m), a park and a road, and the same data as a
    GeoPackage of two layers (multipolygons, lines) exported with GDAL."""
    folder = tmp_path_factory.mktemp("cell")
    ref, to_utm = lonlat_grid(folder)
    osm = osm_xml(folder / "x.osm", [
        (square(0), {"building": "yes", "height": "15"}),
        (square(2), {"leisure": "park"}),
        ([(LON0 - D, LAT0 - D), (LON0 + 8 * D, LAT0 - D)], {"highway": "residential"})])
    gpkg = str(folder / "cell.gpkg")
    gdal.VectorTranslate(gpkg, osm, layers=["multipolygons", "lines"])
    layers = ogr.Open(gpkg)
    assert sorted(layers.GetLayer(i).GetName() for i in range(layers.GetLayerCount())) == \
        ["lines", "multipolygons"]
    layers = None
    second = osm_xml(folder / "y.osm", [
        (square(0), {"building": "yes", "height": "15"}),
        (square(1), {"building": "yes"})], ids=[1, 7])
    return {"ref": ref, "osm": osm, "gpkg": gpkg, "second": second,
            "one": utm_area([square(0)], to_utm), "two": utm_area([square(0), square(1)],
                                                                    to_utm)}


def layer_forms(cell):
    """BUILDINGS given as a layer QGIS converts before the algorithm can read it."""
    return {"gpkg layer": cell["gpkg"] + "|layername=multipolygons",
            "gpkg layer with subset": cell["gpkg"] + '|layername=multipolygons|subset='
                                                     '"building" IS NOT NULL',
            "osm file layer": cell["osm"] + "|layername=multipolygons"}


FORMS = ["gpkg layer", "gpkg layer with subset", "osm file layer"]


def check_building_only(path, cell):
    """One 15 m building: the park of the multipolygons layer is not a building."""
    building, heights = read(path)[:2]
    assert building.sum() * 100 == pytest.approx(cell["one"], rel=0.03)
    assert set(np.round(np.unique(heights[building > 0.99]), 3)) == {15.0}


@pytest.mark.qgis
@pytest.mark.parametrize("form", FORMS)
def test_converted_layers_through_processing_run(processing, cell, tmp_path, form):
    results = processing.run("lcz:rasterizeosm", {
        "REFERENCE": cell["ref"], "BUILDINGS": layer_forms(cell)[form],
        "OUTPUT": str(tmp_path / "osm.tif")})
    assert results["BUILDINGS_FOUND"] == 1
    check_building_only(results["OUTPUT"], cell)


@pytest.mark.qgis
def test_several_osm_files_through_processing_run(processing, cell, tmp_path):
    results = processing.run("lcz:rasterizeosm", {
        "REFERENCE": cell["ref"], "OSM_FILE": [cell["osm"], cell["second"]],
        "OUTPUT": str(tmp_path / "two.tif")})
    assert results["BUILDINGS_FOUND"] == 2  # building 1 is in both files
    assert read(results["OUTPUT"], 1).sum() * 100 == pytest.approx(cell["two"], rel=0.03)
    single = processing.run("lcz:rasterizeosm", {
        "REFERENCE": cell["ref"], "OSM_FILE": cell["osm"], "OUTPUT": str(tmp_path / "one.tif")})
    assert single["BUILDINGS_FOUND"] == 1
    check_building_only(single["OUTPUT"], cell)


@pytest.mark.qgis_process
@pytest.mark.parametrize("form", FORMS)
def test_converted_layers_through_qgis_process(qgis_process, cell, tmp_path, form):
    """These layers crashed qgis_process (SIGSEGV, no message) when QGIS converted them
    without a feedback object."""
    done, answer = qgis_process.run_json("lcz:rasterizeosm", {
        "REFERENCE": cell["ref"], "BUILDINGS": layer_forms(cell)[form],
        "OUTPUT": str(tmp_path / "osm.tif")})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert answer["results"]["BUILDINGS_FOUND"] == 1
    check_building_only(answer["results"]["OUTPUT"], cell)


@pytest.mark.qgis_process
def test_several_osm_files_through_qgis_process(qgis_process, cell, tmp_path):
    """OSM_FILE=a.osm OSM_FILE=b.osm, as qgis_process repeats a parameter."""
    done, answer = qgis_process.run_json("lcz:rasterizeosm", {
        "REFERENCE": cell["ref"], "OSM_FILE": [cell["osm"], cell["second"]],
        "ROADS": cell["gpkg"] + "|layername=lines", "OUTPUT": str(tmp_path / "osm.tif")})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert answer["results"]["BUILDINGS_FOUND"] == 2
    assert read(answer["results"]["OUTPUT"], 1).sum() * 100 == pytest.approx(cell["two"],
                                                                             rel=0.03)
