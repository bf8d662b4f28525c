"""The synthetic city (tools/synthcity.py): deterministic, readable by GDAL/OGR like the real
inputs it imitates, and built so that some classes differ only in the ancillary layers."""

import glob
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from lcz_testing import S2_BANDS, read, stack_from_synthcity
from osgeo import gdal, ogr

from lcz_qgis_plugin.core.areas import read_areas
from lcz_qgis_plugin.core.lcz_classes import LCZ_CODES, lcz_class
from tools import synthcity


@pytest.fixture(scope="module")
def city(synthetic_cities):
    return synthetic_cities.city(seed=7, size_km=1.0)


@pytest.fixture(scope="module")
def big_city(synthetic_cities):
    """2 x 2 km: enough districts for every class (each at least twice in the draw)."""
    return synthetic_cities.city(seed=11, size_km=2.0)


def arrays_of(city) -> dict:
    out = {"truth": read(city.truth), "dsm": read(city.dsm), "dtm": read(city.dtm)}
    for band in S2_BANDS + ("SCL",):
        out[band] = read(city.band_path(band))
    return out


def osm_features(path):
    ds = ogr.Open(path)
    layer = ds.GetLayerByName("multipolygons")
    out = []
    for feature in layer:
        out.append({k: feature.GetField(k) for k in ("building", "natural", "landuse",
                                                     "leisure", "amenity", "other_tags")})
    return out


def test_same_seed_same_city_other_seed_other_city(city, tmp_path):
    again = synthcity.generate(str(tmp_path / "again"), seed=7, size_km=1.0)
    first, second = arrays_of(city), arrays_of(again)
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)
    with open(city.osm) as a, open(again.osm) as b:
        assert a.read() == b.read()
    with open(city.training_areas_kml) as a, open(again.training_areas_kml) as b:
        assert a.read() == b.read()
    other = synthcity.generate(str(tmp_path / "other"), seed=8, size_km=1.0)
    third = arrays_of(other)
    assert (third["truth"] != first["truth"]).mean() > 0.5  # an independent layout
    assert not np.array_equal(third["B04"], first["B04"])


def test_truth_raster_is_styled_lcz_codes(city):
    ds = gdal.Open(city.truth)
    assert (ds.RasterXSize, ds.RasterYSize) == (10, 10)
    assert ds.GetGeoTransform() == (synthcity.ORIGIN[0], 100.0, 0.0, synthcity.ORIGIN[1], 0.0,
                                    -100.0)
    band = ds.GetRasterBand(1)
    assert band.DataType == gdal.GDT_Byte
    values = band.ReadAsArray()
    assert set(np.unique(values)) <= set(LCZ_CODES)
    assert band.GetColorTable().GetColorEntry(1)[:3] == lcz_class(1).rgb
    assert band.GetCategoryNames()[17] == lcz_class(17).label
    assert os.path.exists(os.path.splitext(city.truth)[0] + ".qml")


def test_l2a_safe_product_has_offset_metadata_and_lossless_jp2(city):
    name = os.path.basename(city.safe)
    assert name.startswith("S2B_MSIL2A_") and "_T33UVP_" in name and name.endswith(".SAFE")
    root = ET.parse(os.path.join(city.safe, "MTD_MSIL2A.xml")).getroot()
    offsets = {e.get("band_id"): int(e.text) for e in root.iter("BOA_ADD_OFFSET")}
    assert offsets == {str(i): -1000 for i in range(13)}
    assert root.find(".//Product_Info/PROCESSING_BASELINE").text >= "04.00"
    assert root.find(".//Product_Info/PRODUCT_START_TIME").text.startswith("2023-")
    assert root.find(".//BOA_QUANTIFICATION_VALUE").text == "10000"
    r10 = glob.glob(os.path.join(city.safe, "GRANULE", "*", "IMG_DATA", "R10m", "*.jp2"))
    r20 = glob.glob(os.path.join(city.safe, "GRANULE", "*", "IMG_DATA", "R20m", "*.jp2"))
    assert sorted(os.path.basename(p).split("_")[2] for p in r10) == ["B02", "B03", "B04", "B08"]
    assert {"B05", "B06", "B07", "B8A", "B11", "B12", "SCL"} <= \
        {os.path.basename(p).split("_")[2] for p in r20}
    for band, res in (("B04", 10), ("B8A", 20), ("SCL", 20)):
        ds = gdal.Open(city.band_path(band))
        assert ds.GetDriver().ShortName == "JP2OpenJPEG"
        assert ds.GetGeoTransform()[1] == res and ds.RasterXSize == 1000 // res
        assert "32633" in ds.GetSpatialRef().GetAuthorityCode(None)
        assert os.path.basename(city.band_path(band)).endswith(f"_{band}_{res}m.jp2")
    dn = read(city.band_path("B08")).astype(int)
    assert dn.min() >= 1 and dn.dtype == int
    reflectance = (dn - 1000) / 10000.0
    assert 0.0 <= reflectance.min() and reflectance.max() < 0.8
    assert 0.05 < np.median(reflectance) < 0.5


def test_jp2_is_lossless(tmp_path):
    dn = np.random.default_rng(0).integers(1, 12000, size=(40, 40)).astype(np.uint16)
    path = str(tmp_path / "x.jp2")
    synthcity.write_jp2(path, dn, 10.0)
    np.testing.assert_array_equal(read(path), dn)


def test_osm_file_reads_with_gdal_osm_driver_and_buildings_have_heights(city):
    ds = ogr.Open(city.osm)
    assert ds.GetDriver().GetName() == "OSM"
    features = osm_features(city.osm)
    buildings = [f for f in features if f["building"]]
    assert len(buildings) > 50
    with_height = [f for f in buildings if f["other_tags"] and '"height"=>' in f["other_tags"]]
    with_levels = [f for f in buildings
                   if f["other_tags"] and '"building:levels"=>' in f["other_tags"]]
    assert len(with_height) > 0.4 * len(buildings) and len(with_levels) > 0.1 * len(buildings)
    lines = ds.GetLayerByName("lines")
    highways = [f.GetField("highway") for f in lines if f.GetField("highway")]
    assert highways
    # the buildings sit in the scene (WGS 84 lon/lat around 14.2 E, 48.2 N)
    layer = ds.GetLayerByName("multipolygons")
    layer.ResetReading()
    minx, maxx, miny, maxy = layer.GetExtent()
    assert 13.5 < minx < maxx < 15.0 and 47.5 < miny < maxy < 49.0


def test_osm_has_water_and_land_use_where_the_truth_has_them(big_city):
    features = osm_features(big_city.osm)
    truth = read(big_city.truth)
    assert any(f["natural"] == "water" for f in features) == (truth == 17).any()
    assert any(f["landuse"] == "forest" for f in features) == (truth == 11).any()
    assert any(f["leisure"] == "park" for f in features) == (truth == 12).any()


def test_dsm_dtm_heights(city):
    dsm, dtm = read(city.dsm), read(city.dtm)
    ds = gdal.Open(city.dsm)
    assert ds.GetGeoTransform()[1] == 2.0 and ds.GetRasterBand(1).GetNoDataValue() == -9999
    assert ds.GetRasterBand(1).DataType == gdal.GDT_Float32
    height = dsm - dtm
    assert height.min() >= 0 and height.max() > 3
    assert np.ptp(dtm) < 60  # gentle terrain


def test_training_areas_mixed_codings_and_kml_names_agree_with_truth(big_city):
    gpkg = read_areas(big_city.training_areas)
    kml = read_areas(big_city.training_areas_kml)
    assert gpkg.class_field == "lcz" and kml.class_field == "Name"
    assert [a.code for a in gpkg.areas] == [a.code for a in kml.areas]
    labels = {a.label for a in gpkg.areas}
    assert labels & {"A", "B", "C", "D", "E", "F", "G"}, "letters exercise the parser"
    assert labels & {str(c) for c in range(101, 108)}, "WUDAPT codes exercise the parser"
    assert {a.label for a in kml.areas} <= {lcz_class(c).letter for c in LCZ_CODES}
    truth = read(big_city.truth)
    x0, y0 = synthcity.ORIGIN
    point = ogr.Geometry(ogr.wkbPoint)
    inside = 0
    for area in gpkg.areas:  # every cell centre inside a polygon has the polygon's class
        minx, maxx, miny, maxy = area.geometry.GetEnvelope()
        for r in range(truth.shape[0]):
            for c in range(truth.shape[1]):
                point.SetPoint_2D(0, x0 + (c + 0.5) * 100, y0 - (r + 0.5) * 100)
                if area.geometry.Contains(point):
                    inside += 1
                    assert truth[r, c] == area.code
    assert inside >= len(gpkg.areas)


def test_every_class_present_in_a_2km_city(big_city):
    assert set(np.unique(read(big_city.truth))) == set(LCZ_CODES)


def test_some_classes_differ_only_in_ancillary_layers(big_city, tmp_path):
    """1 vs 3 and 8 vs 10: the same spectra (within noise) but very different heights;
    E vs 8: the same spectra, no buildings."""
    stack = read(stack_from_synthcity(big_city, tmp_path / "stack.tif"))
    truth = read(big_city.truth)
    cells = stack.reshape(stack.shape[0], truth.shape[0], 10, truth.shape[1], 10)
    per_cell = cells.mean(axis=(2, 4))  # channels x rows x cols
    spectra = {c: per_cell[:10, truth == c].mean(axis=1) / 1e4 for c in (1, 3, 6, 8, 10, 15)}
    height = {c: per_cell[10, truth == c].mean() for c in (1, 3, 8, 10, 15)}
    rms = lambda a, b: float(np.sqrt(np.mean((spectra[a] - spectra[b]) ** 2)))  # noqa: E731
    assert rms(1, 3) < 0.005 and rms(8, 10) < 0.005 and rms(8, 15) < 0.01
    assert rms(1, 6) > 2 * rms(1, 3)  # a class that does differ spectrally
    assert height[1] > 3 * height[3] and height[10] > 1.8 * height[8]
    assert height[15] < 1.0
    assert synthcity.RECIPES[1].roofs == synthcity.RECIPES[3].roofs
    assert synthcity.RECIPES[1].building_fraction == synthcity.RECIPES[3].building_fraction


def test_cli_writes_a_city_and_a_zipped_product(tmp_path, capsys):
    assert synthcity.main(["--out", str(tmp_path / "c"), "--seed", "3", "--size-km", "0.5",
                           "--zip-safe"]) == 0
    assert "synthetic city" in capsys.readouterr().out
    assert (tmp_path / "c" / "synthcity.json").exists()
    assert read(tmp_path / "c" / "lcz_truth.tif").shape == (5, 5)
    zipped = glob.glob(str(tmp_path / "c" / "*.SAFE.zip"))
    assert len(zipped) == 1
    safe = os.path.basename(zipped[0])[:-len(".zip")]
    jp2 = glob.glob(str(tmp_path / "c" / safe / "GRANULE" / "*" / "IMG_DATA" / "R10m" /
                        "*_B04_10m.jp2"))[0]
    inside = f"/vsizip/{zipped[0]}/{os.path.relpath(jp2, str(tmp_path / 'c'))}"
    np.testing.assert_array_equal(read(inside), read(jp2))


@pytest.mark.slow
def test_ancillary_height_is_what_separates_the_lookalike_classes(tmp_path):
    """Train on one city, test on another: a random forest on per-cell statistics of the
    patches does far better with DSM:height than with Sentinel-2 alone (README figure)."""
    from sklearn.ensemble import RandomForestClassifier

    from lcz_qgis_plugin.core.training_data.extraction import extract_patches
    from lcz_qgis_plugin.core.training_data.patch_file import open_patch_file

    def features(seed):
        town = synthcity.generate(str(tmp_path / f"c{seed}"), seed=seed, size_km=2.0)
        stack = stack_from_synthcity(town, tmp_path / f"s{seed}.tif")
        result = extract_patches(stack, town.training_areas, str(tmp_path / f"p{seed}.h5"),
                                 patch_size=20)
        f, _ = open_patch_file(result.output)
        with f:
            patches, labels = f["patches"][...], f["labels"][...]
        cell = patches[:, :, 5:15, 5:15]  # the cell's own 10 x 10 pixels
        return np.concatenate([cell.mean(axis=(2, 3)), cell.std(axis=(2, 3))], axis=1), labels

    (x_train, y_train), (x_test, y_test) = features(1), features(2)
    spectral = [i for i in range(x_train.shape[1]) if i % 11 != 10]  # drop DSM:height
    scores = {}
    for name, columns in (("s2", spectral), ("s2+height", list(range(x_train.shape[1])))):
        forest = RandomForestClassifier(200, random_state=0, n_jobs=1)
        forest.fit(x_train[:, columns], y_train)
        scores[name] = float((forest.predict(x_test[:, columns]) == y_test).mean())
    assert scores["s2+height"] > 0.85, scores
    assert scores["s2+height"] - scores["s2"] > 0.2, scores


def test_gdal_sentinel2_driver_reads_the_product(city):
    """GDAL's own SENTINEL2 driver understands the product's metadata (band list, granule
    list, tile geocoding), as it does real L2A products."""
    product = gdal.Open(os.path.join(city.safe, "MTD_MSIL2A.xml"))
    assert product.GetDriver().ShortName == "SENTINEL2"
    subsets = dict(product.GetSubDatasets())
    ten = [name for name in subsets if name.endswith(":10m:EPSG_32633")]
    twenty = [name for name in subsets if name.endswith(":20m:EPSG_32633")]
    assert ten and twenty
    ds = gdal.Open(ten[0])
    assert ds.GetGeoTransform() == (synthcity.ORIGIN[0], 10.0, 0.0, synthcity.ORIGIN[1], 0.0,
                                    -10.0)
    names = [ds.GetRasterBand(i + 1).GetMetadataItem("BANDNAME") for i in range(ds.RasterCount)]
    assert sorted(names) == ["B2", "B3", "B4", "B8"]
    np.testing.assert_array_equal(ds.GetRasterBand(names.index("B4") + 1).ReadAsArray(),
                                  read(city.band_path("B04")))
