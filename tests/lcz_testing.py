"""Test helpers: real GeoTIFF stacks, tiny real ONNX models following the contract, and a
slow but obviously correct reference classifier to check maps cell by cell."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from osgeo import gdal, osr

from lcz_qgis_plugin.core.errors import InputError
from lcz_qgis_plugin.core.feedback import Feedback
from lcz_qgis_plugin.core.lcz_classes import LCZ_CODES
from lcz_qgis_plugin.core.model.card import ModelCard
from lcz_qgis_plugin.core.model.card_writer import write_model_card

ORIGIN = (500000.0, 5000000.0)
UTM33 = 32633



def write_stack(path, data: np.ndarray, names: list[str], *, nodata=None, epsg: int = UTM33,
                pixel: float = 10.0, origin=ORIGIN, data_type=gdal.GDT_Float32,
                geotransform=None) -> str:
    """Write ``data`` (bands x rows x cols) as a GeoTIFF with band descriptions ``names``."""
    bands, rows, cols = data.shape
    ds = gdal.GetDriverByName("GTiff").Create(os.fspath(path), cols, rows, bands, data_type)
    ds.SetGeoTransform(geotransform or (origin[0], pixel, 0.0, origin[1], 0.0, -pixel))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    ds.SetProjection(srs.ExportToWkt())
    for i in range(bands):
        band = ds.GetRasterBand(i + 1)
        band.WriteArray(data[i])
        band.SetDescription(names[i])
        if nodata is not None:
            band.SetNoDataValue(nodata)
    ds = None
    return os.fspath(path)


def channel_names(n: int) -> list[str]:
    return [f"T:c{i}" for i in range(n)]


def _save(graph, card: ModelCard, path) -> str:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    write_model_card(model, card, os.fspath(path))
    return os.fspath(path)


def identity_card(name: str, channels: list[str], patch: int, **overrides) -> ModelCard:
    n = len(channels)
    values = dict(name=name, channels=channels, patch_size=patch, scale=[1.0] * n,
                  offset=[0.0] * n, mean=[0.0] * n, std=[1.0] * n, pixel_size=10.0,
                  cell_size=100.0, version="test")
    values.update(overrides)
    return ModelCard(**values)


def linear_probe_model(path, card: ModelCard, seed: int = 0, softmax: bool = False):
    """logits = flatten(patch) @ W + b: every pixel of the patch matters, at its position, so
    any shift, mirror or scaling error changes the map. Returns (path, W, b)."""
    rng = np.random.default_rng(seed)
    size = card.n_channels * card.patch_size * card.patch_size
    weights = (rng.normal(size=(size, card.n_classes)) / np.sqrt(size)).astype(np.float32)
    bias = rng.normal(size=card.n_classes).astype(np.float32)
    nodes = [helper.make_node("Flatten", ["x"], ["flat"]),
             helper.make_node("Gemm", ["flat", "W", "b"], ["logits" if softmax else "y"])]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["y"], axis=1))
    graph = helper.make_graph(
        nodes, "linear_probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                       ["N", card.n_channels, card.patch_size, card.patch_size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", card.n_classes])],
        [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")])
    return _save(graph, card, path), weights, bias


def centre_value_model(path, card: ModelCard, sharpness: float = 50.0) -> str:
    """logits_k = -sharpness * (v - code_k)^2 with v = channel 0 at the patch's centre pixel
    (index patch//2): the map shows the rounded centre value, so cells can be read off."""
    c = card.patch_size // 2
    codes = np.asarray(card.class_codes, dtype=np.float32)[None, :]
    nodes = [
        helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["centre"]),
        helper.make_node("Reshape", ["centre", "shape"], ["v"]),
        helper.make_node("Sub", ["v", "codes"], ["d"]),
        helper.make_node("Mul", ["d", "d"], ["d2"]),
        helper.make_node("Mul", ["d2", "minus_sharpness"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([0, c, c], np.int64), "starts"),
        numpy_helper.from_array(np.array([1, c + 1, c + 1], np.int64), "ends"),
        numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes"),
        numpy_helper.from_array(np.array([-1, 1], np.int64), "shape"),
        numpy_helper.from_array(codes, "codes"),
        numpy_helper.from_array(np.array([-sharpness], np.float32), "minus_sharpness"),
    ]
    graph = helper.make_graph(
        nodes, "centre_value",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                       ["N", card.n_channels, card.patch_size, card.patch_size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", card.n_classes])], inits)
    return _save(graph, card, path)


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def reference_probabilities(scene: np.ndarray, valid: np.ndarray, card: ModelCard, stride: int,
                            logits_of_patch, max_nodata_fraction: float = 0.5):
    """Per-cell loops over a fully padded scene: the convention written out plainly.

    ``scene``: raw values C x H x W; ``valid``: H x W. Returns (probabilities rows x cols x K,
    cell validity rows x cols)."""
    _, height, width = scene.shape
    p = card.patch_size
    gain = (np.asarray(card.scale) / np.asarray(card.std))[:, None, None]
    bias = ((np.asarray(card.offset) - np.asarray(card.mean)) / np.asarray(card.std))[:, None, None]
    norm = np.where(valid, scene * gain + bias, 0.0)
    padded = np.pad(norm, ((0, 0), (p, p), (p, p)), mode="reflect")
    padded_valid = np.pad(valid, p, mode="reflect")
    rows = len([r for r in range(0, height) if r * stride + stride // 2 < height])
    cols = len([c for c in range(0, width) if c * stride + stride // 2 < width])
    probs = np.zeros((rows, cols, card.n_classes))
    cell_valid = np.zeros((rows, cols), bool)
    for i in range(rows):
        for j in range(cols):
            top = i * stride + stride // 2 - p // 2 + p
            left = j * stride + stride // 2 - p // 2 + p
            window_valid = padded_valid[top:top + p, left:left + p]
            centre_ok = valid[i * stride + stride // 2, j * stride + stride // 2]
            enough = window_valid.mean() >= 1.0 - max_nodata_fraction
            cell_valid[i, j] = centre_ok and enough
            if cell_valid[i, j]:
                z = logits_of_patch(padded[:, top:top + p, left:left + p])
                probs[i, j] = softmax(z / card.temperature)
    return probs, cell_valid


def reference_classes(probs, cell_valid, codes=LCZ_CODES) -> np.ndarray:
    return np.where(cell_valid, np.asarray(codes)[probs.argmax(axis=-1)], 0).astype(np.uint8)


def read(path, band=None) -> np.ndarray:
    ds = gdal.Open(os.fspath(path))
    return ds.ReadAsArray() if band is None else ds.GetRasterBand(band).ReadAsArray()


def files_in(folder) -> list[str]:
    """Every file in ``folder`` including hidden ones (partial outputs are hidden)."""
    return sorted(os.listdir(folder))


SHARED_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..",
                           "shared", "data")


def shared_data(relative: str) -> str:
    """Path of a real data file in ../shared/data; skips the test when it is absent (a user's
    clone has no ../shared)."""
    import pytest
    path = os.path.normpath(os.path.join(SHARED_DATA, relative))
    if not os.path.exists(path):
        pytest.skip(f"real test data {relative} is absent: ../shared/data exists only in the "
                    f"project's own workspace")
    return path


S2_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")


def stack_from_synthcity(city, path, with_height: bool = True, offset_in_metadata=False) -> str:
    """A 10 m input stack made directly from a synthetic city's JP2s and DSM/DTM with GDAL
    (independent of the plugin's preprocessing algorithms): S2:B02 ... S2:B12 as DN with the
    BOA_ADD_OFFSET removed (or, with ``offset_in_metadata``, as stored with a GDAL
    scale/offset saying so), 20 m bands resampled by nearest neighbour, and DSM:height =
    mean of DSM - DTM per 10 m pixel."""
    first = gdal.Open(city.band_path("B02"))
    width, height = first.RasterXSize, first.RasterYSize
    bands, names = [], []
    for band in S2_BANDS:
        src = gdal.Open(city.band_path(band))
        if src.RasterXSize != width:
            src = gdal.Warp("", src, format="MEM", width=width, height=height,
                            resampleAlg="near")
        dn = src.ReadAsArray().astype(np.float32)
        bands.append(dn if offset_in_metadata else dn - 1000.0)
        names.append(f"S2:{band}")
    if with_height:
        dsm = gdal.Open(city.dsm).ReadAsArray().astype(np.float64)
        dtm = gdal.Open(city.dtm).ReadAsArray().astype(np.float64)
        k = dsm.shape[0] // height
        h = (dsm - dtm).reshape(height, k, width, k).mean(axis=(1, 3))
        bands.append(h.astype(np.float32))
        names.append("DSM:height")
    out = write_stack(path, np.stack(bands), names, geotransform=first.GetGeoTransform())
    if offset_in_metadata:
        ds = gdal.Open(out, gdal.GA_Update)
        for i in range(len(S2_BANDS)):
            ds.GetRasterBand(i + 1).SetScale(1e-4)
            ds.GetRasterBand(i + 1).SetOffset(-0.1)
        ds = None
    return out


def cell_square(row: int, col: int, rows: int = 1, cols: int = 1, cell: float = 100.0,
                origin=ORIGIN, inset: float = 10.0) -> str:
    """WKT of a rectangle covering cells (row, col) ... (row+rows-1, col+cols-1), inset."""
    xa, ya = origin[0] + col * cell + inset, origin[1] - row * cell - inset
    xb, yb = origin[0] + (col + cols) * cell - inset, origin[1] - (row + rows) * cell + inset
    return f"POLYGON(({xa} {ya},{xb} {ya},{xb} {yb},{xa} {yb},{xa} {ya}))"


def write_polygons(path, items, *, epsg: int = UTM33, field: str = "lcz",
                   source_epsg: int | None = None) -> str:
    """A GeoPackage of polygons ``items = [(label, wkt), ...]`` (WKT in ``source_epsg``,
    default ``epsg``), stored in ``epsg`` with the label in a text field ``field``."""
    from osgeo import ogr
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    transform = None
    if source_epsg and source_epsg != epsg:
        src = osr.SpatialReference()
        src.ImportFromEPSG(source_epsg)
        src.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        transform = osr.CoordinateTransformation(src, srs)
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(os.fspath(path))
    layer = ds.CreateLayer("areas", srs, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn(field, ogr.OFTString))
    for label, wkt in items:
        feature = ogr.Feature(layer.GetLayerDefn())
        if label is not None:
            feature.SetField(field, str(label))
        geometry = ogr.CreateGeometryFromWkt(wkt)
        if transform is not None:
            geometry.Transform(transform)
        feature.SetGeometry(geometry)
        layer.CreateFeature(feature)
    ds = None
    return os.fspath(path)



def small_map(folder) -> tuple[str, str]:
    """A 5 x 5-cell LCZ map (100 m, class 1 with one row of D) at the test origin, and
    polygons in a GeoPackage: class 1 on 4 cells (fid 1), class D on 2 cells (fid 2)."""
    codes = np.full((5, 5), 1, np.uint8)
    codes[2, :] = 14
    lcz_map = write_stack(os.path.join(folder, "map.tif"), codes[None], ["LCZ"], pixel=100.0,
                          nodata=0, data_type=gdal.GDT_Byte)
    areas = write_polygons(os.path.join(folder, "areas.gpkg"),
                           [("1", cell_square(0, 0, rows=2, cols=2)),
                            ("D", cell_square(2, 0, cols=2))])
    return lcz_map, areas


def small_case(folder) -> tuple[str, str, str]:
    """:func:`small_map` and its 5 x 5-cell stack of 10 m pixels (two random channels)."""
    data = np.random.default_rng(7).normal(size=(2, 50, 50)).astype(np.float32)
    stack = write_stack(os.path.join(folder, "s.tif"), data, ["T:a", "T:b"])
    return (stack, *small_map(folder))

def write_kml(path, items) -> str:
    """A KML of placemarks ``items = [(name or None, [(lon, lat), ...]), ...]``."""
    marks = []
    for name, ring in items:
        coords = " ".join(f"{lon},{lat},0" for lon, lat in ring + ring[:1])
        tag = f"<name>{name}</name>" if name is not None else ""
        marks.append(f"<Placemark>{tag}<Polygon><outerBoundaryIs><LinearRing><coordinates>"
                     f"{coords}</coordinates></LinearRing></outerBoundaryIs></Polygon>"
                     f"</Placemark>")
    with open(path, "w", encoding="utf-8") as f:
        f.write('<?xml version="1.0" encoding="UTF-8"?>\n<kml xmlns="http://www.opengis.net/kml'
                '/2.2"><Document><Folder><name>areas</name>' + "".join(marks) +
                "</Folder></Document></kml>\n")
    return os.fspath(path)


class RecordingFeedback(Feedback):
    """The tests' one feedback double: keeps what a run reports and cancels when told.

    Progress goes to ``percent``; log lines to ``infos`` and ``warnings`` and, in the order
    they came, to ``lines``. The run is cancelled after :meth:`cancel`, after
    ``cancel_after`` cancel checks, or once ``cancel_after_progress`` progress reports have
    come (to stop a run part way through its work)."""

    def __init__(self, cancel_after: int | None = None,
                 cancel_after_progress: int | None = None):
        self.infos, self.warnings, self.lines, self.percent = [], [], [], []
        self.cancel_after = cancel_after
        self.cancel_after_progress = cancel_after_progress
        self.checks = 0
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def progress(self, percent):
        self.percent.append(percent)

    def is_cancelled(self):
        self.checks += 1
        by_checks = self.cancel_after is not None and self.checks > self.cancel_after
        by_progress = (self.cancel_after_progress is not None
                       and len(self.percent) >= self.cancel_after_progress)
        return self.cancelled or by_checks or by_progress

    def info(self, message):
        self.infos.append(message)
        self.lines.append(message)

    def warning(self, message):
        self.warnings.append(message)
        self.lines.append(message)

    @property
    def log(self) -> str:
        return "\n".join(self.infos + self.warnings)


def conv_probe_model(path, card: ModelCard, seed: int = 0, width: int = 8,
                     logit_scale: float = 3.0) -> str:
    """A small CNN (3x3 conv, ReLU, 3x3 conv with stride 2, ReLU, global average pool, dense):
    the layer types of the real models, so that engines which rewrite convolutions (OpenVINO,
    float16, bfloat16) are exercised, with logits of a few units so that the map has many
    classes and close calls, like a trained model's."""
    rng = np.random.default_rng(seed)
    c = card.n_channels

    def he(*shape):
        fan_in = int(np.prod(shape[1:]))
        return (rng.normal(size=shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    dense = he(card.n_classes, width).T * logit_scale
    inits = [numpy_helper.from_array(he(width, c, 3, 3), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.1, width).astype(np.float32), "b1"),
             numpy_helper.from_array(he(width, width, 3, 3), "w2"),
             numpy_helper.from_array(np.zeros(width, np.float32), "b2"),
             numpy_helper.from_array(np.ascontiguousarray(dense), "w3"),
             numpy_helper.from_array(rng.normal(0, 0.5, card.n_classes).astype(np.float32),
                                     "b3")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1],
                              strides=[2, 2]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "w3", "b3"], ["y"])]
    graph = helper.make_graph(
        nodes, "conv_probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                       ["N", c, card.patch_size, card.patch_size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", card.n_classes])], inits)
    return _save(graph, card, path)


# -- bad input: tables of cases, one body that runs them ---------------------------------------

class BadInput(NamedTuple):
    """One row of a bad-input table: ``id`` names the case; ``change(tmp_path, *context)``
    breaks the good input and returns the arguments that replace the good ones; ``message`` is
    the regular expression the refusal must match; ``error`` the exception expected (None:
    the one the table's test gives)."""

    id: str
    change: Callable[..., dict]
    message: str
    error: type | None = None


def bad_input_cases(table) -> list:
    """One pytest parameter per row of ``table`` (tuples in :class:`BadInput`'s field order),
    with the row's id as the test id."""
    cases = [BadInput(*row) for row in table]
    for case in cases:  # a row in another order would test nothing, or the wrong thing
        assert isinstance(case.message, str) and callable(case.change), case.id
        assert case.error is None or issubclass(case.error, BaseException), case.id
    return [pytest.param(case, id=case.id) for case in cases]


def assert_refused(case: BadInput, run, good: dict, tmp_path, *context, error=InputError,
                   out_dir=None) -> None:
    """Run ``run(**arguments)``, the ``good`` arguments with ``case``'s changes: it must raise
    ``case.error`` (default ``error``) with a message matching ``case.message``, and leave no
    file in ``out_dir`` (default ``tmp_path / "out"``, where the good outputs go)."""
    arguments = dict(good)
    arguments.update(case.change(tmp_path, *context))
    with pytest.raises(case.error or error) as info:
        run(**arguments)
    assert re.search(case.message, str(info.value), re.S), str(info.value)
    out_dir = out_dir or tmp_path / "out"
    assert not os.path.exists(out_dir) or files_in(out_dir) == []


# -- synthetic cities, generated once per run ----------------------------------------------------

CITY_PATHS = ("folder", "truth", "safe", "osm", "dsm", "dtm", "training_areas",
              "training_areas_kml", "safe_zip")


class SyntheticCities:
    """tools.synthcity cities keyed by (seed, size_km), each generated once per test run (the
    ``synthetic_cities`` fixture). The cached files are shared between test modules: read them,
    never write beside them; a test that snapshots, links or damages its inputs takes a
    :meth:`private_copy`."""

    def __init__(self, tmp_path_factory):
        self._tmp = tmp_path_factory
        self._cities, self._stacks = {}, {}

    def city(self, seed: int, size_km: float):
        """The city of ``seed`` and ``size_km``, in ``<folder>/city``."""
        from tools import synthcity
        key = (seed, float(size_km))
        if key not in self._cities:
            folder = self._tmp.mktemp(f"city_seed{seed}_{size_km:g}km")
            self._cities[key] = synthcity.generate(str(folder / "city"), seed=seed,
                                                   size_km=size_km)
        return self._cities[key]

    def with_stack(self, seed: int, size_km: float):
        """(city, its 10 m model input stack from :func:`stack_from_synthcity`)."""
        city = self.city(seed, size_km)
        key = (seed, float(size_km))
        if key not in self._stacks:
            stack = os.path.join(os.path.dirname(city.folder), "stack.tif")
            self._stacks[key] = stack_from_synthcity(city, stack)
        return city, self._stacks[key]

    def private_copy(self, seed: int, size_km: float, folder):
        """A copy of the city in ``folder`` (its files byte-identical), for this test only."""
        city = self.city(seed, size_km)
        folder = os.fspath(folder)
        shutil.copytree(city.folder, folder)

        def moved(path):
            return path and os.path.join(folder, os.path.relpath(path, city.folder))

        return dataclasses.replace(city, **{name: moved(getattr(city, name))
                                            for name in CITY_PATHS})
