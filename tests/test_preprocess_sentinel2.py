"""lcz:stacksentinel2 and core.sentinel2: SAFE-like products built from real Sentinel-2 L1C
arrays (../shared/data/s2) and from small synthetic arrays, written as real JP2 files."""

import os
import zipfile

import numpy as np
import pytest
from lcz_testing import (
    RecordingFeedback,
    assert_refused,
    bad_input_cases,
    files_in,
    read,
    shared_data,
)
from osgeo import gdal
from s2_product import block_mean, dn_of, make_product, write_jp2

from lcz_qgis_plugin.core.errors import Cancelled
from lcz_qgis_plugin.core.preprocess.sentinel2 import SO2SAT_BANDS, stack_sentinel2

X0, Y0 = 465181.0, 5080255.0  # s2/bbox.geojson, EPSG:32633
SOURCE_ORDER = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10",
                "B11", "B12")
TEN_M = ("B02", "B03", "B04", "B08")


@pytest.fixture(scope="module")
def scene():
    """Band -> 100 x 100 reflectance of the first date of the real Slovenian L1C scenes."""
    data = np.load(shared_data("s2/REFERENCE_SCENES.npy"), mmap_mode="r")
    first = np.asarray(data[0, :100, :100, :], dtype=np.float32)
    return {band: first[..., SOURCE_ORDER.index(band)] for band in SO2SAT_BANDS}


def synthetic(size=20, seed=0):
    rng = np.random.default_rng(seed)
    return {band: rng.uniform(0.02, 0.5, size=(size, size)).astype(np.float32)
            for band in SO2SAT_BANDS}


def bilinear_reference(coarse: np.ndarray, n: int) -> np.ndarray:
    """Bilinear 20 m -> 10 m written out: 10 m pixel i samples the 20 m raster at
    (i + 0.5) / 2 - 0.5 (pixel-centre convention), clamped at the edges."""
    def axis(size):
        u = np.clip((np.arange(n) + 0.5) / 2 - 0.5, 0, size - 1)
        i0 = np.floor(u).astype(int)
        return i0, np.minimum(i0 + 1, size - 1), u - i0
    r0, r1, fr = axis(coarse.shape[0])
    c0, c1, fc = axis(coarse.shape[1])
    top = coarse[r0][:, c0] * (1 - fc) + coarse[r0][:, c1] * fc
    bottom = coarse[r1][:, c0] * (1 - fc) + coarse[r1][:, c1] * fc
    return top * (1 - fr)[:, None] + bottom * fr[:, None]


def test_jp2_driver_is_available():
    assert gdal.GetDriverByName("JP2OpenJPEG") is not None


def test_real_l1c_zip_is_stacked_with_the_offset_removed(scene, tmp_path):
    product = make_product(tmp_path, scene, X0, Y0, level="L1C", as_zip=True)
    result = stack_sentinel2([product], str(tmp_path / "stack.tif"))
    ds = gdal.Open(result.output)
    assert (ds.RasterXSize, ds.RasterYSize) == (100, 100)
    assert ds.GetGeoTransform() == (X0, 10.0, 0.0, Y0, 0.0, -10.0)
    assert [ds.GetRasterBand(i + 1).GetDescription() for i in range(10)] == \
        ["S2:B02", "S2:B03", "S2:B04", "S2:B05", "S2:B06", "S2:B07", "S2:B08", "S2:B8A",
         "S2:B11", "S2:B12"]
    assert ds.GetRasterBand(1).DataType == gdal.GDT_UInt16
    assert ds.GetRasterBand(1).GetNoDataValue() == 0
    assert ds.GetMetadata_Dict("IMAGE_STRUCTURE")["COMPRESSION"] == "DEFLATE"
    assert ds.GetRasterBand(1).GetBlockSize() == [256, 256]
    stack = ds.ReadAsArray().astype(np.float64)
    for number, band in enumerate(SO2SAT_BANDS):
        if band in TEN_M:  # written at 10 m: exactly the source reflectance x 10000
            np.testing.assert_array_equal(stack[number], np.rint(scene[band] * 10000), band)
        else:  # written at 20 m, resampled bilinearly: within rounding of the reference
            coarse = dn_of(block_mean(scene[band], 2)).astype(np.float64) - 1000
            expected = bilinear_reference(coarse, 100)
            assert np.abs(stack[number] - expected).max() <= 0.5 + 1e-6, band
            # and close to the true 10 m values the 20 m band was averaged from
            assert np.corrcoef(stack[number].ravel(), scene[band].ravel())[0, 1] > 0.95


def test_l2a_safe_folder_with_cloud_mask(scene, tmp_path):
    scl = np.full((100, 100), 4, np.uint16)  # vegetation
    scl[10:30, 20:40] = 9  # cloud, high probability
    scl[60:70, 60:80] = 3  # cloud shadow
    scl[80:90, 0:20] = 8  # cloud, medium probability
    product = make_product(tmp_path, scene, X0, Y0, level="L2A", scl=scl)
    assert os.path.isdir(os.path.join(product, "GRANULE"))
    masked = read(stack_sentinel2([product], str(tmp_path / "m.tif"), mask_clouds=True).output)
    clear = read(stack_sentinel2([product], str(tmp_path / "c.tif")).output)
    cloudy = np.isin(scl, (3, 8, 9))
    assert (masked[:, cloudy] == 0).all()
    np.testing.assert_array_equal(masked[:, ~cloudy], clear[:, ~cloudy])
    np.testing.assert_array_equal(clear[0], np.rint(scene["B02"] * 10000))
    assert (clear > 0).all()


def test_adjacent_tiles_of_one_date_are_mosaicked(scene, tmp_path):
    left = {b: v[:, :60] for b, v in scene.items()}
    right = {b: v[:, 40:] for b, v in scene.items()}
    a = make_product(tmp_path / "a", left, X0, Y0, tile="T33TVM")
    b = make_product(tmp_path / "b", right, X0 + 400.0, Y0, tile="T33TWM", as_zip=True)
    whole = make_product(tmp_path / "w", scene, X0, Y0)
    mosaic = read(stack_sentinel2([a, b], str(tmp_path / "mosaic.tif")).output)
    single = read(stack_sentinel2([whole], str(tmp_path / "single.tif")).output)
    assert mosaic.shape == single.shape == (10, 100, 100)
    for number, band in enumerate(SO2SAT_BANDS):
        if band in TEN_M:
            np.testing.assert_array_equal(mosaic[number], single[number])
        else:  # away from the left tile's last columns (edge clamping of the resampling)
            keep = np.r_[0:56, 62:100]
            np.testing.assert_array_equal(mosaic[number][:, keep], single[number][:, keep])


def test_extent_and_polygon_aoi(tmp_path):
    product = make_product(tmp_path, synthetic(40), X0, Y0)
    full = read(stack_sentinel2([product], str(tmp_path / "full.tif")).output)
    # extent: 15 m inside the left/top edges, snapped outwards to the 10 m lattice
    extent = (X0 + 15, Y0 - 205, X0 + 155, Y0 - 35)
    part = stack_sentinel2([product], str(tmp_path / "part.tif"), extent=extent)
    ds = gdal.Open(part.output)
    assert ds.GetGeoTransform()[0] == X0 + 10 and ds.GetGeoTransform()[3] == Y0 - 30
    np.testing.assert_array_equal(ds.ReadAsArray(), full[:, 3:21, 1:16])
    triangle = (f"POLYGON(({X0} {Y0}, {X0 + 400} {Y0}, {X0} {Y0 - 400}, {X0} {Y0}))")
    cut = read(stack_sentinel2([product], str(tmp_path / "aoi.tif"), aoi_wkt=triangle,
                               aoi_crs="EPSG:32633").output)
    rows, cols = np.mgrid[0:40, 0:40]
    inside = rows + cols + 1 < 40  # pixel centre left of the diagonal
    outside = rows + cols + 1 > 40  # (centres on the diagonal itself may go either way)
    assert (cut[:, outside] == 0).all()
    np.testing.assert_array_equal(cut[:, inside], full[:, inside])


def test_indices_make_a_float_file(tmp_path):
    product = make_product(tmp_path, synthetic(20, seed=3), X0, Y0)
    result = stack_sentinel2([product], str(tmp_path / "idx.tif"), bands=["B4", "B8"],
                             indices=["ndvi", "NDMI"])
    ds = gdal.Open(result.output)
    assert [ds.GetRasterBand(i + 1).GetDescription() for i in range(4)] == \
        ["S2:B04", "S2:B08", "IDX:NDVI", "IDX:NDMI"]
    assert ds.GetRasterBand(1).DataType == gdal.GDT_Float32
    assert ds.GetRasterBand(3).GetNoDataValue() == -9999
    red, nir, ndvi, ndmi = ds.ReadAsArray().astype(np.float64)
    np.testing.assert_allclose(ndvi, (nir - red) / (nir + red), atol=1e-6)
    assert np.abs(ndmi).max() <= 1 and not np.allclose(ndmi, ndvi)


def test_loose_band_rasters(tmp_path):
    data = synthetic(20, seed=5)
    paths = []
    for band in ("B04", "B03", "B02"):
        path = str(tmp_path / f"T33TVM_20230704T100031_{band}.jp2")
        write_jp2(path, dn_of(data[band], 0), X0, Y0, 10.0, 32633)
        paths.append(path)
    result = stack_sentinel2(paths, str(tmp_path / "rgb.tif"), bands=["B4", "B3", "B2"])
    stack = read(result.output)
    assert result.level == "bands"
    for number, band in enumerate(("B04", "B03", "B02")):
        np.testing.assert_array_equal(stack[number], dn_of(data[band], 0))


def test_add_directory_on_a_safe_folder_reads_the_product(tmp_path):
    """QGIS's "Add Directory..." adds every file under the folder (metadata, manifest, band
    JP2s): they were read as a product plus loose bands and refused; now they stand for the
    one product, stacked as the folder itself is."""
    product = make_product(tmp_path, synthetic(20, seed=6), X0, Y0, level="L2A")
    with open(os.path.join(product, "manifest.safe"), "w") as f:
        f.write("<manifest/>")
    every_file = sorted(os.path.join(base, name) for base, _, names in os.walk(product)
                        for name in names)
    assert len(every_file) > 10
    added = stack_sentinel2(every_file, str(tmp_path / "added.tif"))
    folder = stack_sentinel2([product], str(tmp_path / "folder.tif"))
    assert added.products == 1 and added.level == "L2A"
    np.testing.assert_array_equal(read(added.output), read(folder.output))


def test_reading_a_safe_folder_closes_its_metadata_file(tmp_path):
    """The MTD_MSIL*.xml of a .SAFE folder was read through an unclosed file (a
    ResourceWarning in QGIS's log panel)."""
    import gc
    import warnings

    from lcz_qgis_plugin.core.preprocess.sentinel2 import open_product
    product = make_product(tmp_path, synthetic(10, seed=7), X0, Y0, level="L2A")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        open_product(product)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_cancel_leaves_nothing(tmp_path):
    product = make_product(tmp_path, synthetic(12), X0, Y0)
    cancelled = RecordingFeedback()
    cancelled.cancel()
    out = tmp_path / "out"
    with pytest.raises(Cancelled):
        stack_sentinel2([product], str(out / "s.tif"), feedback=cancelled)
    assert files_in(out) == []


# -- bad input, each with the problem and the fix in the message -----------------------------

def _missing_band(tmp_path):
    bands = {b: v for b, v in synthetic(12).items() if b not in ("B11", "B8A")}
    return {"inputs": [make_product(tmp_path, bands, X0, Y0, as_zip=True)]}


def _not_sentinel2_zip(tmp_path):
    path = tmp_path / "holiday.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("photos/readme.txt", "not a satellite product")
    return {"inputs": [str(path)]}


def _corrupt_jp2(tmp_path):
    product = make_product(tmp_path, synthetic(12), X0, Y0)
    for base, _, files in os.walk(product):
        for name in files:
            if name.endswith("_B05.jp2"):
                with open(os.path.join(base, name), "r+b") as f:
                    f.seek(0)
                    f.write(b"\0garbage" * 16)
    return {"inputs": [product]}


def _truncated_jp2(tmp_path):
    product = make_product(tmp_path, synthetic(64, seed=9), X0, Y0)
    for base, _, files in os.walk(product):
        for name in files:
            if name.endswith("_B03.jp2"):
                path = os.path.join(base, name)
                size = os.path.getsize(path)
                with open(path, "r+b") as f:
                    f.truncate(size // 2)
    return {"inputs": [product]}


def _mixed_dates(tmp_path):
    return {"inputs": [
        make_product(tmp_path / "a", synthetic(12), X0, Y0, date="2023-07-04"),
        make_product(tmp_path / "b", synthetic(12), X0 + 120, Y0, date="2023-07-09")]}


def _mixed_levels(tmp_path):
    return {"inputs": [make_product(tmp_path / "a", synthetic(12), X0, Y0, level="L1C"),
                       make_product(tmp_path / "b", synthetic(12), X0 + 120, Y0, level="L2A")]}


def _mixed_zones(tmp_path):
    return {"inputs": [make_product(tmp_path / "a", synthetic(12), X0, Y0),
                       make_product(tmp_path / "b", synthetic(12), X0, Y0, epsg=32634)]}


def _aoi_outside(tmp_path):
    far = "POLYGON((0 0, 100 0, 100 100, 0 0))"
    return {"inputs": [make_product(tmp_path, synthetic(12), X0, Y0)], "aoi_wkt": far,
            "aoi_crs": "EPSG:32633"}


def _extent_outside(tmp_path):
    return {"inputs": [make_product(tmp_path, synthetic(12), X0, Y0)],
            "extent": (10.0, 40.0, 10.1, 40.1, "EPSG:4326")}


def _clouds_on_l1c(tmp_path):
    return {"inputs": [make_product(tmp_path, synthetic(12), X0, Y0)], "mask_clouds": True}


def _unknown_band(tmp_path):
    return {"inputs": [make_product(tmp_path, synthetic(12), X0, Y0)], "bands": ["B02", "B13"]}


BAD = [
    ("missing bands", _missing_band, r"lacks band\(s\) B8A, B11 .*Use a complete product"),
    ("zip that is not Sentinel-2", _not_sentinel2_zip,
     r"holiday.zip is not a Sentinel-2 product: it holds no MTD_MSIL1C.xml"),
    ("corrupt JP2", _corrupt_jp2, r"band B05 of .* cannot be read .*damaged or incomplete; "
                                  r"download the product again"),
    ("truncated JP2", _truncated_jp2, r"B03 .*damaged or incomplete; download the product"),
    ("mixed dates", _mixed_dates, r"mixed dates in one mosaic: .*2023-07-04.*2023-07-09.*"
                                  r"stack each date separately"),
    ("mixed levels", _mixed_levels, r"mixed processing levels in one mosaic.*L1C.*L2A"),
    ("mixed UTM zones", _mixed_zones, r"different CRSs .*Stack each zone separately"),
    ("AOI outside the tile", _aoi_outside, r"the AOI .* lies outside the Sentinel-2 data.*"
                                           r"Choose an AOI inside the tile"),
    ("extent outside the tile", _extent_outside, r"the extent .* lies outside the Sentinel-2"),
    ("cloud mask without SCL", _clouds_on_l1c, r"cloud masking needs the scene classification"
                                               r" \(SCL\).*L1C"),
    ("unknown band", _unknown_band, r"'B13' is not a Sentinel-2 band"),
]


@pytest.mark.parametrize("case", bad_input_cases(BAD))
def test_bad_input_is_refused_and_leaves_nothing(tmp_path, case):
    assert_refused(case, stack_sentinel2, {"output": str(tmp_path / "out" / "stack.tif")},
                   tmp_path)


# -- through Processing -----------------------------------------------------------------------

@pytest.mark.qgis
def test_stacksentinel2_through_processing_run(processing, tmp_path):
    product = make_product(tmp_path, synthetic(20, seed=4), X0, Y0, as_zip=True)
    results = processing.run("lcz:stacksentinel2", {
        "INPUT": [product], "BANDS": "B2,B3,B4,B8,B11", "RESAMPLING": 0, "INDICES": [0],
        "OUTPUT": str(tmp_path / "s2.tif")})
    assert results["LEVEL"] == "L1C" and results["PRODUCTS"] == 1
    core = stack_sentinel2([product], str(tmp_path / "core.tif"),
                           bands=["B02", "B03", "B04", "B08", "B11"], resampling="nearest",
                           indices=["NDVI"])
    np.testing.assert_array_equal(read(results["OUTPUT"]), read(core.output))
    ds = gdal.Open(results["OUTPUT"])
    assert ds.GetRasterBand(6).GetDescription() == "IDX:NDVI"


@pytest.mark.qgis
def test_stacksentinel2_extent_in_another_crs_through_processing(processing, tmp_path):
    from qgis.core import QgsProcessingException
    product = make_product(tmp_path, synthetic(20, seed=6), X0, Y0)
    results = processing.run("lcz:stacksentinel2", {
        "INPUT": [product], "EXTENT": f"{X0 + 50},{X0 + 150},{Y0 - 120},{Y0 - 20} [EPSG:32633]",
        "OUTPUT": str(tmp_path / "part.tif")})
    assert read(results["OUTPUT"]).shape == (10, 10, 10)
    with pytest.raises(QgsProcessingException, match="not a Sentinel-2 band"):
        processing.run("lcz:stacksentinel2", {"INPUT": [product], "BANDS": "B2,NIR",
                                              "OUTPUT": str(tmp_path / "x.tif")})


def test_offset_removal_keeps_no_data_and_valid_dark_pixels():
    from lcz_qgis_plugin.core.preprocess.sentinel2 import Product, _to_reflectance
    dn = np.array([[0, 500, 1000, 1001, 11000, 65535]], np.uint16)
    product = Product(source="p", level="L2A", offsets={"B02": -1000.0})
    np.testing.assert_array_equal(_to_reflectance(dn, product, "B02"),
                                  [[0, 1, 1, 1, 10000, 64535]])
    old_baseline = Product(source="p", level="L2A")  # before 04.00: no offset in the metadata
    np.testing.assert_array_equal(_to_reflectance(dn, old_baseline, "B02"), dn)
    scaled = Product(source="p", level="L1C", quantification=20000.0, offsets={"B02": -1000.0})
    np.testing.assert_array_equal(_to_reflectance(dn, scaled, "B02"),
                                  [[0, 1, 1, 1, 5000, 32268]])


def test_blocks_stitch_exactly(tmp_path, monkeypatch):
    """Blocks of 16 rows (20 m bands resampled per block, a two-tile mosaic, an AOI) give
    the same stack as one block."""
    import lcz_qgis_plugin.core.preprocess.sentinel2 as s2
    data = synthetic(40, seed=8)
    a = make_product(tmp_path / "a", {b: v[:, :24] for b, v in data.items()}, X0, Y0)
    b = make_product(tmp_path / "b", {b: v[:, 16:] for b, v in data.items()}, X0 + 160, Y0)
    aoi = f"POLYGON(({X0} {Y0}, {X0 + 400} {Y0 - 100}, {X0 + 50} {Y0 - 400}, {X0} {Y0}))"
    options = dict(aoi_wkt=aoi, aoi_crs="EPSG:32633", indices=["NDBI"])
    whole = read(stack_sentinel2([a, b], str(tmp_path / "one.tif"), **options).output)
    monkeypatch.setattr(s2, "BLOCK_ROWS", 16)
    blocks = read(stack_sentinel2([a, b], str(tmp_path / "three.tif"), **options).output)
    np.testing.assert_array_equal(blocks, whole)
    assert (whole[:, 20, 10] != -9999).all() and (whole[:, 39, 39] == -9999).all()


def test_l2a_bands_are_taken_at_their_native_resolution(tmp_path):
    """L2A products also hold resampled copies (B02_20m, B05_60m ...); the native one is used."""
    data = synthetic(12, seed=11)
    product = make_product(tmp_path, data, X0, Y0, level="L2A")
    img = next(os.path.join(b, d) for b, ds, _ in os.walk(product) for d in ds
               if d == "IMG_DATA")
    stem = os.path.basename(next(iter(os.listdir(os.path.join(img, "R10m")))))[:22]
    os.makedirs(os.path.join(img, "R60m"))
    for band, folder in (("B02", "R20m"), ("B05", "R60m")):
        write_jp2(os.path.join(img, folder, f"{stem}_{band}_{folder[1:]}.jp2"),
                  np.full((6, 6), 7777, np.uint16), X0, Y0, 20.0, 32633)
    stack = read(stack_sentinel2([product], str(tmp_path / "s.tif"), bands=["B02", "B05"]).output)
    np.testing.assert_array_equal(stack[0], np.rint(data["B02"] * 10000))
    assert (stack != 7777 - 1000).all()


def test_stacking_log_line_is_plain_english(tmp_path):
    """'Stacking ... of 1 L1C product' / 'of 2 L1C products' / 'from loose band rasters',
    never 'of 1 bands input(s)'."""
    from lcz_testing import RecordingFeedback
    data = synthetic(20, seed=6)
    left = {b: v[:, :12] for b, v in data.items()}
    right = {b: v[:, 8:] for b, v in data.items()}
    one = make_product(tmp_path / "one", data, X0, Y0)
    a = make_product(tmp_path / "a", left, X0, Y0, tile="T33TVM")
    b = make_product(tmp_path / "b", right, X0 + 80.0, Y0, tile="T33TWM")
    loose = str(tmp_path / "T33TVM_20230704T100031_B04.jp2")
    write_jp2(loose, dn_of(data["B04"], 0), X0, Y0, 10.0, 32633)
    lines = {}
    for name, inputs, bands in (("one", [one], ["B4"]), ("mosaic", [a, b], ["B4", "B3"]),
                                ("loose", [loose], ["B4"])):
        feedback = RecordingFeedback()
        stack_sentinel2(inputs, str(tmp_path / f"{name}.tif"), bands=bands, feedback=feedback)
        lines[name] = next(line for line in feedback.infos if line.startswith("Stacking"))
    assert lines["one"] == ("Stacking B04 of 1 L1C product dated 2023-07-04 onto 20 x 20 px "
                            "of 10 m; offset removed: -1000"), lines["one"]
    assert lines["mosaic"] == ("Stacking B04, B03 of 2 L1C products dated 2023-07-04 onto "
                               "20 x 20 px of 10 m; offsets removed: -1000, -1000"), lines["mosaic"]
    assert lines["loose"] == ("Stacking B04 from loose band rasters onto 20 x 20 px of 10 m; "
                              "offset removed: 0"), lines["loose"]
    assert not any("(s)" in line or "bands input" in line for line in lines.values())
