"""lcz:buildstack and core.buildstack, and the four preprocessing algorithms headless:
qgis_process.bin runs and a .model3 chain (Sentinel-2 product -> stack -> model input stack)."""

import os

import numpy as np
import onnx
import pytest
from lcz_testing import (
    assert_refused,
    bad_input_cases,
    files_in,
    identity_card,
    linear_probe_model,
    read,
    write_stack,
)
from osgeo import gdal
from s2_product import make_product

from lcz_qgis_plugin.core.errors import InputError, ModelError
from lcz_qgis_plugin.core.model.card_file import read_metadata_props, read_model_card
from lcz_qgis_plugin.core.preprocess.buildstack import build_stack, parse_channel_list
from lcz_qgis_plugin.core.preprocess.sentinel2 import SO2SAT_BANDS, channel_name

S2 = [channel_name(b) for b in SO2SAT_BANDS]
CHANNELS_13 = S2 + ["OSM:building_fraction", "DSM:height", "OSM:impervious_fraction"]
MODEL3 = os.path.join(os.path.dirname(__file__), "data", "s2_to_input_stack.model3")


@pytest.fixture
def layers(tmp_path):
    """A UInt16 S2 stack (nodata 0), a Float32 OSM raster and a height raster on one grid,
    and a 13-channel model."""
    rng = np.random.default_rng(1)
    s2 = rng.integers(1, 5000, size=(10, 12, 14)).astype(np.uint16)
    s2[:, 0, 0] = 0
    osm = rng.uniform(0, 1, size=(6, 12, 14)).astype(np.float32)
    osm[0, 5, 5] = -9999
    dsm = rng.uniform(0, 30, size=(1, 12, 14)).astype(np.float32)
    osm_names = ["OSM:building_fraction", "OSM:building_height", "OSM:road_fraction",
                 "OSM:water_fraction", "OSM:vegetation_fraction", "OSM:impervious_fraction"]
    paths = [write_stack(tmp_path / "s2.tif", s2, list(reversed(S2)),
                         data_type=gdal.GDT_UInt16, nodata=0),
             write_stack(tmp_path / "osm.tif", osm, osm_names, nodata=-9999),
             write_stack(tmp_path / "dsm.tif", dsm, ["DSM:height"], nodata=-9999)]
    model, *_ = linear_probe_model(tmp_path / "m13.onnx", identity_card("m13", CHANNELS_13, 4))
    return paths, model, {"s2": s2[::-1], "osm": osm, "dsm": dsm}


def test_card_is_read_without_onnxruntime(layers):
    _, model, _ = layers
    assert read_metadata_props(model) == {p.key: p.value for p in onnx.load(model).metadata_props}
    assert read_model_card(model).channels == CHANNELS_13


@pytest.mark.parametrize("extension", [".vrt", ".tif"])
def test_stack_holds_the_model_channels_in_order(layers, tmp_path, extension):
    paths, model, data = layers
    result = build_stack(model, paths, str(tmp_path / "out" / f"stack{extension}"))
    ds = gdal.Open(result.output)
    assert [ds.GetRasterBand(i + 1).GetDescription() for i in range(ds.RasterCount)] == \
        CHANNELS_13
    stack = ds.ReadAsArray().astype(np.float64)
    np.testing.assert_array_equal(stack[:10][:, 1:, 1:], data["s2"][:, 1:, 1:])
    np.testing.assert_array_equal(stack[11], data["dsm"][0])
    np.testing.assert_allclose(stack[12], data["osm"][5], rtol=1e-7)
    nodata = [ds.GetRasterBand(i + 1).GetNoDataValue() for i in range(13)]
    if extension == ".vrt":  # per-band types and no-data kept
        assert ds.GetRasterBand(1).DataType == gdal.GDT_UInt16 and nodata[0] == 0
        assert nodata[10] == -9999 and stack[0, 0, 0] == 0
    else:  # one no-data value per GeoTIFF: mixed inputs become Float32 / -9999
        assert ds.GetRasterBand(1).DataType == gdal.GDT_Float32 and set(nodata) == {-9999}
        assert stack[0, 0, 0] == -9999 and stack[10, 5, 5] == -9999
    assert files_in(tmp_path / "out") == [f"stack{extension}"]


def test_channel_list_stacks_without_a_model(layers, tmp_path):
    """A training stack (for lcz:extractpatches) before any model exists."""
    paths, _, data = layers
    wanted = ["DSM:height", "S2:B04", "OSM:building_fraction"]
    result = build_stack(None, paths, str(tmp_path / "out" / "train.vrt"), channels=wanted)
    ds = gdal.Open(result.output)
    assert [ds.GetRasterBand(i + 1).GetDescription() for i in range(3)] == wanted
    stack = ds.ReadAsArray().astype(np.float64)
    np.testing.assert_array_equal(stack[0], data["dsm"][0])
    np.testing.assert_array_equal(stack[1], data["s2"][2])
    assert parse_channel_list(" S2:B02, S2:B03;DSM:height\n") == ["S2:B02", "S2:B03",
                                                                  "DSM:height"]
    with pytest.raises(InputError, match="S2:B02 more than once"):
        parse_channel_list("S2:B02,S2:B02")
    with pytest.raises(InputError, match="Missing: OSM:sky.*channel list needs|channel list "
                                         "needs. Missing: OSM:sky"):
        build_stack(None, paths, str(tmp_path / "out" / "x.vrt"), channels=["OSM:sky"])
    with pytest.raises(InputError, match="either a model or a channel list"):
        build_stack(layers[1], paths, str(tmp_path / "out" / "x.vrt"), channels=wanted)
    with pytest.raises(InputError, match="give a model"):
        build_stack(None, paths, str(tmp_path / "out" / "x.vrt"))
    assert files_in(tmp_path / "out") == ["train.vrt"]


def test_built_stack_is_accepted_by_classify(layers, tmp_path):
    from lcz_qgis_plugin.core.inference.classify import classify
    paths, model, _ = layers
    stack = build_stack(model, paths, str(tmp_path / "stack.vrt")).output
    result = classify([stack], model, str(tmp_path / "lcz.tif"), cell_size=20.0)
    assert result.classified_cells > 0


def _missing(tmp_path, paths, model):
    return {"rasters": paths[:1] + paths[2:]}


def _shifted(tmp_path, paths, model):
    shifted = write_stack(tmp_path / "shifted.tif", read(paths[2])[None], ["DSM:height"],
                          origin=(500010.0, 5000000.0))
    return {"rasters": paths[:2] + [shifted]}


def _other_crs(tmp_path, paths, model):
    other = write_stack(tmp_path / "utm34.tif", read(paths[2])[None], ["DSM:height"],
                        epsg=32634)
    return {"rasters": paths[:2] + [other]}


def descriptions(path):
    ds = gdal.Open(path)  # keep the dataset alive while its bands are asked
    return [ds.GetRasterBand(b + 1).GetDescription() for b in range(ds.RasterCount)]


def _coarse(tmp_path, paths, model):
    coarse = [write_stack(tmp_path / f"c{i}.tif", read(p).reshape(-1, 12, 14),
                          descriptions(p), pixel=20.0)
              for i, p in enumerate(paths)]
    return {"rasters": coarse}


def _no_card(tmp_path, paths, model):
    plain = onnx.load(model)
    del plain.metadata_props[:]
    onnx.save(plain, tmp_path / "plain.onnx")
    return {"model": str(tmp_path / "plain.onnx")}


def _corrupt_model(tmp_path, paths, model):
    (tmp_path / "bad.onnx").write_bytes(b"\xff\xff\xff\xff not protobuf" * 20)
    return {"model": str(tmp_path / "bad.onnx")}


BAD = [  # (case, change, message, error)
    ("missing channels", _missing,
     r"Missing: OSM:building_fraction, OSM:impervious_fraction\. Available: S2:B12 \(s2.tif\);"
     r".*DSM:height \(dsm.tif\).*lcz:rasterizeosm", InputError),
    ("grid shifted", _shifted,
     r"shifted.tif \(channel DSM:height\) is not on the grid .*origin \(500010.00.*"
     r"reference raster", InputError),
    ("different CRS", _other_crs, r"utm34.tif .*CRS WGS 84 / UTM zone 34N instead", InputError),
    ("pixel size", _coarse, r"20 m pixels, but the model was trained on 10 m", InputError),
    ("model without card", _no_card, r"carries no LCZ model metadata", ModelError),
    ("corrupt model", _corrupt_model, r"not a valid ONNX model", ModelError),
    ("not tif or vrt", lambda t, p, m: {"output": str(t / "out" / "s.png")},
     r"must be a GeoTIFF \(.tif\) or a VRT", InputError),
]


@pytest.mark.parametrize("case", bad_input_cases(BAD))
def test_bad_input_is_refused_and_leaves_nothing(layers, tmp_path, case):
    paths, model, _ = layers
    options = {"model": model, "rasters": paths, "output": str(tmp_path / "out" / "s.tif")}
    assert_refused(case, build_stack, options, tmp_path, paths, model)


@pytest.mark.qgis
def test_buildstack_and_classify_through_processing_run(processing, layers, tmp_path):
    from qgis.core import QgsProcessingException
    paths, model, _ = layers
    built = processing.run("lcz:buildstack", {"MODEL": model, "INPUT": paths,
                                              "OUTPUT": str(tmp_path / "stack.tif")})
    assert built["CHANNELS"] == ",".join(CHANNELS_13)
    classified = processing.run("lcz:classify", {"INPUT": [built["OUTPUT"]], "MODEL": model,
                                                 "CELL_SIZE": 20,
                                                 "OUTPUT": str(tmp_path / "lcz.tif")})
    assert classified["CLASSIFIED_CELLS"] > 0
    with pytest.raises(QgsProcessingException, match="Missing: DSM:height"):
        processing.run("lcz:buildstack", {"MODEL": model, "INPUT": paths[:2],
                                          "OUTPUT": str(tmp_path / "x.tif")})
    listed = processing.run("lcz:buildstack", {"CHANNEL_LIST": "S2:B02, DSM:height",
                                               "INPUT": paths,
                                               "OUTPUT": str(tmp_path / "train.tif")})
    assert listed["CHANNELS"] == "S2:B02,DSM:height"


# -- headless: qgis_process.bin ------------------------------------------------------------------

@pytest.fixture(scope="module")
def product(tmp_path_factory):
    folder = tmp_path_factory.mktemp("s2")
    rng = np.random.default_rng(2)
    bands = {b: rng.uniform(0.02, 0.4, size=(16, 16)).astype(np.float32) for b in SO2SAT_BANDS}
    zipped = make_product(folder, bands, 465180.0, 5080260.0, as_zip=True)
    model, *_ = linear_probe_model(folder / "s2.onnx", identity_card("s2", S2, 4))
    return zipped, model


@pytest.mark.qgis_process
def test_stacksentinel2_and_buildstack_through_qgis_process(qgis_process, product, tmp_path):
    from lcz_qgis_plugin.core.preprocess.sentinel2 import stack_sentinel2
    zipped, model = product
    done, answer = qgis_process.run_json("lcz:stacksentinel2", {
        "INPUT": zipped, "OUTPUT": str(tmp_path / "s2.tif")})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert answer["results"]["LEVEL"] == "L1C"
    core = stack_sentinel2([zipped], str(tmp_path / "core.tif"))
    np.testing.assert_array_equal(read(answer["results"]["OUTPUT"]), read(core.output))
    done, answer = qgis_process.run_json("lcz:buildstack", {
        "MODEL": model, "INPUT": str(tmp_path / "s2.tif"), "OUTPUT": str(tmp_path / "in.vrt")})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert gdal.Open(str(tmp_path / "in.vrt")).RasterCount == 10
    done, _ = qgis_process.run_json("lcz:stacksentinel2", {
        "INPUT": zipped, "BANDS": "B2,B13", "OUTPUT": str(tmp_path / "bad.tif")})
    assert done.returncode != 0 and "'B13' is not a Sentinel-2 band" in done.stdout + done.stderr
    assert not (tmp_path / "bad.tif").exists()


@pytest.mark.qgis_process
def test_rasterizeosm_and_preparedsm_through_qgis_process(qgis_process, tmp_path):
    from osgeo import ogr
    ref = write_stack(tmp_path / "ref.tif", np.zeros((1, 8, 8), np.float32), ["ref"])
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(tmp_path / "b.gpkg"))
    srs = gdal.Open(ref).GetSpatialRef()
    layer = ds.CreateLayer("buildings", srs, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("height", ogr.OFTReal))
    feature = ogr.Feature(layer.GetLayerDefn())
    feature.SetGeometry(ogr.CreateGeometryFromWkt(
        "POLYGON((500020 4999980, 500040 4999980, 500040 4999960, 500020 4999960, "
        "500020 4999980))"))
    feature.SetField("height", 21.0)
    layer.CreateFeature(feature)
    ds = layer = None
    done, answer = qgis_process.run_json("lcz:rasterizeosm", {
        "REFERENCE": ref, "BUILDINGS": str(tmp_path / "b.gpkg"),
        "OUTPUT": str(tmp_path / "osm.tif")})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    building, height = read(answer["results"]["OUTPUT"])[:2]
    assert building.sum() == pytest.approx(4) and height[2, 2] == pytest.approx(21)
    surface = np.full((1, 40, 40), 50.0, np.float32)
    surface[0, 8:16, 8:16] += 12
    dsm = write_stack(tmp_path / "dsm.tif", surface, ["dsm"], pixel=2.0)
    done, answer = qgis_process.run_json("lcz:preparedsm", {
        "DSM": dsm, "REFERENCE": ref, "GROUND_WINDOW": 40, "OUTPUT": str(tmp_path / "h.tif")})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    heights = read(answer["results"]["OUTPUT"])
    np.testing.assert_allclose(heights[2:3, 2:3], 12.0, atol=1e-4)
    assert answer["results"]["AGGREGATION_USED"] == "mean"


@pytest.mark.qgis_process
def test_model3_chain_product_to_model_input_stack(qgis_process, product, tmp_path):
    zipped, model = product
    done, answer = qgis_process.run_json(MODEL3, {
        "products": zipped, "model": model,
        "build:input_stack": str(tmp_path / "input_stack.tif")})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    ds = gdal.Open(str(tmp_path / "input_stack.tif"))
    assert [ds.GetRasterBand(i + 1).GetDescription() for i in range(ds.RasterCount)] == S2
    assert ds.RasterXSize == 16 and ds.GetRasterBand(1).DataType == gdal.GDT_UInt16
