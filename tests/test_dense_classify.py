"""lcz:classify with a dense model: maps checked cell by cell (and pixel by pixel for the fine
map) against a plain reference that maps the whole reflected scene without tiles; seams
measured; the run's guarantees (bad input, cancel, memory, engines, Processing,
qgis_process). Exactly known dense ONNX models are built here (tests/dense_testing.py)."""

import json
import os
import re
import subprocess
import sys
import threading
import tracemalloc

import numpy as np
import pytest
from dense_testing import (
    conv_logits,
    conv_model,
    dense_card,
    onnx_logits,
    pooled_model,
    reference_dense,
    strided_model,
)
from lcz_testing import (
    BadInput,
    RecordingFeedback,
    assert_refused,
    bad_input_cases,
    channel_names,
    files_in,
    identity_card,
    linear_probe_model,
    read,
    write_stack,
)
from osgeo import gdal

from lcz_qgis_plugin.core.errors import Cancelled, ModelError
from lcz_qgis_plugin.core.inference.classify import FLOAT_NODATA, classify
from lcz_qgis_plugin.core.inference.engine import OPENVINO_F32, import_openvino
from lcz_qgis_plugin.core.inference.tiles import TileLayout, make_layout
from lcz_qgis_plugin.core.lcz_classes import LCZ_CLASSES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = [1, 2, 3, 5, 6, 8, 11, 14]
NAMES = channel_names(3)


def smooth_scene(height: int, width: int, seed: int, channels: int = 3,
                 blur: int = 5) -> np.ndarray:
    """Noise blurred twice over ``blur`` pixels: neighbouring cells are alike, as in a real
    scene, so a seam would stand out against the differences inside tiles."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(channels, height + 2 * blur, width + 2 * blur))
    kernel = np.ones(blur) / blur
    for axis in (1, 2, 1, 2):
        noise = np.apply_along_axis(lambda v: np.convolve(v, kernel, "same"), axis, noise)
    return (noise[:, blur:-blur, blur:-blur] * 3.0).astype(np.float32)


def with_nodata(scene: np.ndarray, value: float = -99.0):
    """Holes in all channels and in channel 0 alone; returns (scene, valid)."""
    scene = scene.copy()
    valid = np.ones(scene.shape[1:], bool)
    scene[:, 9:15, 20:41] = value
    valid[9:15, 20:41] = False
    scene[0, 30:52, 4:9] = value
    valid[30:52, 4:9] = False
    return scene, valid


def outside_raster(fine: np.ndarray, width: int, height: int, stride: int) -> np.ndarray:
    """The fine map's pixels beyond the raster (the last cells reach up to half a cell past
    it): no data."""
    rows = np.arange(fine.shape[0])[:, None] * stride >= height
    cols = np.arange(fine.shape[1])[None, :] * stride >= width
    return rows | cols


def check_against_reference(result, card, scene, valid, stride, logits_of):
    cells, cell_valid, pixels, pixel_valid = reference_dense(scene, valid, card, stride,
                                                             logits_of)
    codes = np.asarray(card.class_codes)
    probs = read(result.probabilities).transpose(1, 2, 0)
    assert ((probs[..., 0] != FLOAT_NODATA) == cell_valid).all()
    np.testing.assert_allclose(probs[cell_valid], cells[cell_valid], atol=1e-5)
    expected = np.where(cell_valid, codes[cells.argmax(axis=-1)], 0)
    np.testing.assert_array_equal(read(result.output), expected)
    if result.fine:
        fine = read(result.fine)
        expected_fine = np.where(pixel_valid, codes[pixels.argmax(axis=-1)], 0)
        expected_fine[outside_raster(fine, scene.shape[2], scene.shape[1],
                                     card.output_stride)] = 0
        np.testing.assert_array_equal(fine, expected_fine)


# --- the tiles ----------------------------------------------------------------------------------

@pytest.mark.parametrize("field,multiple,stride,tile", [
    (1, 1, 1, 16), (5, 1, 1, 24), (5, 2, 1, 20), (4, 8, 2, 32), (95, 8, 1, 256)])
def test_blending_weights_add_up_to_one_and_skip_what_the_edge_spoils(field, multiple, stride,
                                                                       tile):
    card = dense_card("net", NAMES, receptive_field=field, tile_multiple=multiple,
                      output_stride=stride)
    layout = make_layout(card, tile)
    assert layout.overlap >= field / 2 and layout.overlap % multiple == 0
    assert layout.origin(3) % multiple == 0 and layout.step % multiple == 0
    tiles = range(-1, 5)
    total = np.zeros((len(tiles) + 2) * layout.out_tile)
    shift = 2 * layout.out_tile  # output pixel 0 of the sum
    for index in tiles:
        window = layout.weights(index == tiles[0], index == tiles[-1])
        start = layout.origin(index) // stride + shift
        total[start:start + layout.out_tile] += window
        inner = window[layout.border:layout.out_tile - layout.border]
        assert inner.min() > 0  # never 0 in the part a tile keeps
        assert (window[:layout.border] == 0).all() or index == tiles[0]
    cores = slice(tiles[0] * layout.out_step + shift, (tiles[-1] + 1) * layout.out_step + shift)
    np.testing.assert_allclose(total[cores], 1.0, atol=1e-6)


def test_default_tile_size_follows_the_receptive_field():
    assert make_layout(dense_card("a", NAMES, receptive_field=1)).tile == 256
    wide = make_layout(dense_card("b", NAMES, receptive_field=180, tile_multiple=16))
    assert (wide.overlap, wide.tile) == (96, 672)  # 7 overlaps: half of every tile kept


# --- cell by cell, pixel by pixel ----------------------------------------------------------------

@pytest.mark.parametrize("kernel,tile", [(1, 16), (1, 40), (5, 24), (5, 56)])
def test_conv_models_match_the_whole_scene_reference(tmp_path, kernel, tile):
    """A per-pixel linear map (1x1) and a 5x5 convolution, tiles smaller and larger than the
    scene, no-data holes: the map, the probabilities and the fine map equal the reference's
    (numpy convolution of the whole reflected scene, averaged to 40 m cells)."""
    card = dense_card("conv", NAMES, receptive_field=kernel, cell_size=40.0, classes=CLASSES)
    model, weights, bias = conv_model(tmp_path / "m.onnx", card, kernel, seed=kernel)
    scene, valid = with_nodata(smooth_scene(63, 70, seed=kernel))
    stack = write_stack(tmp_path / "s.tif", scene, NAMES, nodata=-99.0)
    out = tmp_path / "out"
    log = RecordingFeedback()
    result = classify([stack], model, str(out / "lcz.tif"), device="cpu", tile_size=tile,
                      probabilities_output=str(out / "p.tif"), fine_output=str(out / "f.tif"),
                      batch_size=32, feedback=log)
    check_against_reference(result, card, scene, valid, 4,
                            lambda image: conv_logits(image, weights, bias))
    assert result.tiles > 0 and result.pixels == result.tiles * tile * tile
    assert re.search(r"skipped \d+ cell\(s\) whose cell is mostly no-data: no-data in T:c0 "
                     r"\(\d+ cells\), .*T:c1, T:c2", log.log)


@pytest.mark.parametrize("build,field,multiple,stride", [
    (pooled_model, 5, 2, 1),    # a pooling level: tiles must start on even pixels
    (strided_model, 4, 2, 2),   # output stride 2: 20 m output pixels
    (strided_model, 6, 4, 4),   # output stride 4: one 40 m output pixel per cell
])
@pytest.mark.parametrize("prefetch", [True, False])
def test_pooling_and_stride_models_match_the_whole_scene(tmp_path, build, field, multiple,
                                                         stride, prefetch):
    """Two dates averaged, reference = the model itself on the whole reflected scene."""
    card = dense_card("net", NAMES, receptive_field=field, tile_multiple=multiple,
                      output_stride=stride, cell_size=40.0, classes=CLASSES)
    model = build(tmp_path / "m.onnx", card, seed=4)
    scene, valid = with_nodata(smooth_scene(70, 83, seed=5))
    stack = write_stack(tmp_path / "s.tif", scene, NAMES, nodata=-99.0)
    out = tmp_path / "out"
    result = classify([stack, stack], model, str(out / "lcz.tif"), device="cpu", tile_size=24,
                      probabilities_output=str(out / "p.tif"), fine_output=str(out / "f.tif"),
                      prefetch=prefetch, batch_size=32)
    check_against_reference(result, card, scene, valid, 4,
                            lambda image: onnx_logits(model, image))
    assert gdal.Open(result.fine).GetGeoTransform()[1] == 10.0 * stride


def test_tiles_start_on_the_tile_multiple_from_the_raster_origin(tmp_path):
    """An EXTENT that starts on an odd pixel: the pooling grid stays the raster's, so the
    map of the extent is the same window of the full map."""
    card = dense_card("net", NAMES, receptive_field=5, tile_multiple=2, cell_size=30.0,
                      classes=CLASSES)
    model = pooled_model(tmp_path / "m.onnx", card, seed=6)
    stack = write_stack(tmp_path / "s.tif", smooth_scene(66, 72, seed=6), NAMES)
    full = classify([stack], model, str(tmp_path / "full.tif"), tile_size=20,
                    probabilities_output=str(tmp_path / "fp.tif"))
    x0, y0 = 500000.0, 5000000.0
    part = classify([stack], model, str(tmp_path / "part.tif"), tile_size=20,
                    probabilities_output=str(tmp_path / "pp.tif"),
                    extent=(x0 + 95, y0 - 400, x0 + 500, y0 - 35))
    assert gdal.Open(part.output).GetGeoTransform()[0] == x0 + 90
    np.testing.assert_allclose(read(part.probabilities), read(full.probabilities)[:, 1:14, 3:17],
                               atol=1e-6)


# --- seams ---------------------------------------------------------------------------------------

def neighbour_differences(probs: np.ndarray, layout: TileLayout) -> tuple[float, float]:
    """Mean |p_cell - p_neighbour| (summed over classes) of horizontally and vertically
    neighbouring cells (10 m cells: one pixel each) whose common edge lies across a tile
    border, i.e. within the tiles' overlap of a border between two tiles' cores, and of
    those inside tiles (more than two overlaps away from every such border)."""
    across, inside = [], []
    for axis in (0, 1):
        diff = np.abs(np.diff(probs, axis=axis)).sum(axis=2)
        edges = np.arange(diff.shape[axis]) + 1  # the pixel where the pair's second cell is
        distance = np.minimum(edges % layout.step, layout.step - edges % layout.step)
        pairs = diff if axis == 0 else diff.T  # pairs along the first axis
        across.append(pairs[distance <= layout.overlap].ravel())
        inside.append(pairs[distance > 2 * layout.overlap].ravel())
    return float(np.concatenate(across).mean()), float(np.concatenate(inside).mean())


def test_two_tile_sizes_give_the_same_map(tmp_path):
    stack = write_stack(tmp_path / "s.tif", smooth_scene(200, 190, seed=11), NAMES)
    card = dense_card("net", NAMES, receptive_field=5, tile_multiple=2, cell_size=20.0,
                      classes=CLASSES)
    model = pooled_model(tmp_path / "pooled.onnx", card, seed=12)
    maps = [classify([stack], model, str(tmp_path / f"lcz{tile}.tif"), tile_size=tile,
                     probabilities_output=str(tmp_path / f"p{tile}.tif"))
            for tile in (32, 58)]
    classes = [read(m.output) for m in maps]
    assert classes[0].size == 100 * 95
    assert (classes[0] == classes[1]).mean() >= 0.999
    np.testing.assert_allclose(read(maps[0].probabilities), read(maps[1].probabilities),
                               atol=1e-5)


def test_no_step_at_tile_borders(tmp_path):
    """The neighbour statistic over the whole map (10 m cells, 8 x 8 tiles): cells across
    tile borders differ as much as cells inside tiles (measured 0.98-1.02 over scenes). The
    same statistic on the same 5x5 convolution whose card says it sees only its own pixel
    (tiles then overlap by 1 px, and the pixels by the tiles' edges see the zero padding)
    finds the step (measured 2.4), so it can see one."""
    stack = write_stack(tmp_path / "s.tif", smooth_scene(240, 240, seed=1, blur=9), NAMES)
    ratios = {}
    for declared in (5, 1):
        card = dense_card("conv", NAMES, receptive_field=declared, cell_size=10.0,
                          classes=CLASSES)
        model, *_ = conv_model(tmp_path / f"conv{declared}.onnx", card, 5, seed=13)
        result = classify([stack], model, str(tmp_path / f"lcz{declared}.tif"), tile_size=32,
                          probabilities_output=str(tmp_path / f"p{declared}.tif"))
        probs = read(result.probabilities).transpose(1, 2, 0)
        across, inside = neighbour_differences(probs, make_layout(card, 32))
        ratios[declared] = across / inside
    assert 0.9 < ratios[5] < 1.1, ratios
    assert ratios[1] > 1.5, ratios


# --- bad input, cancel, memory -------------------------------------------------------------------

@pytest.fixture(scope="module")
def strided(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    card = dense_card("net", NAMES, receptive_field=4, tile_multiple=8, output_stride=2,
                      cell_size=40.0, classes=CLASSES)
    model = strided_model(folder / "m.onnx", card, seed=1)
    stack = write_stack(folder / "s.tif", smooth_scene(40, 44, seed=1), NAMES)
    patch_model, *_ = linear_probe_model(folder / "patch.onnx",
                                         identity_card("probe", NAMES, 8, cell_size=40.0))
    return folder, model, stack, patch_model


BAD_DENSE_INPUT = [
    ("cell size not whole output pixels", lambda tmp, f: {"cell_size": 30.0},
     r"cell size 30 m is not a whole multiple of this dense model's output pixel \(20 m.*"
     r"Use 20 m or 40 m"),
    ("fine map from a patch model", lambda tmp, f: {"model": f[3]},
     r"OUTPUT_FINE .*needs a dense model, but probe is a patch model.*leave OUTPUT_FINE empty"),
    ("tile size not a multiple", lambda tmp, f: {"tile_size": 60},
     r"tile size 60 px is not a multiple of the model's tile multiple 8 .*use 56 or 64 px"),
    ("tile size too small", lambda tmp, f: {"tile_size": 16},
     r"tile size 16 px is too small for this model: .*overlapping by 8 px on each side, so "
     r"tiles of at least 32 px"),
    ("tile size too large", lambda tmp, f: {"tile_size": 8192},
     r"tile size 8192 px is larger than 4096 px"),
    ("output stride not the card's", lambda tmp, f: {"model": wrong_stride(tmp, f)},
     r"the model returned shape \(\d+, 8, 16, 16\) for tiles of 32 px, expected \(N, 8, 32, "
     r"32\) \(its card says 8 classes and output stride 1\)", ModelError),
    ("patch-shaped graph with a dense card", lambda tmp, f: {"model": patch_graph(tmp)},
     r"outputs shape \['N', 8\], but its metadata lists a dense model's \(N, 8, H/s, W/s\)",
     ModelError),
]


def wrong_stride(tmp_path, context) -> str:
    """The strided model (output stride 2) with a card that says 1."""
    card = dense_card("net", NAMES, receptive_field=4, tile_multiple=8, cell_size=40.0,
                      classes=CLASSES)
    return strided_model(tmp_path / "wrong.onnx", card, seed=1, stride=2)


def patch_graph(tmp_path) -> str:
    """A patch model's graph (N x C x 8 x 8 -> N x K) whose card says dense."""
    from onnx import TensorProto, helper
    from onnx import numpy_helper as nh
    card = dense_card("net", NAMES, receptive_field=4, cell_size=40.0, classes=CLASSES)
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "w", "b"], ["y"])]
    graph = helper.make_graph(
        nodes, "patch", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        [nh.from_array(np.ones((3, 8), np.float32), "w"),
         nh.from_array(np.zeros(8, np.float32), "b")])
    import onnx
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    for key, value in card.to_metadata_props().items():  # past the writer, which refuses it
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, tmp_path / "patch-graph.onnx")
    return str(tmp_path / "patch-graph.onnx")


@pytest.mark.parametrize("case", bad_input_cases(BAD_DENSE_INPUT))
def test_bad_input_is_refused_before_any_output(strided, tmp_path, case: BadInput):
    good = {"inputs": [strided[2]], "model": strided[1], "output": str(tmp_path / "out" / "l.tif"),
            "fine_output": str(tmp_path / "out" / "f.tif"), "tile_size": 32}
    assert_refused(case, classify, good, tmp_path, strided)


def test_tile_size_is_ignored_for_patch_models_with_a_warning(strided, tmp_path):
    folder, _, stack, patch_model = strided
    log = RecordingFeedback()
    tiled = classify([stack], patch_model, str(tmp_path / "a.tif"), tile_size=64, feedback=log)
    plain = classify([stack], patch_model, str(tmp_path / "b.tif"))
    assert "TILE_SIZE (64 px) applies to dense models only" in " ".join(log.warnings)
    np.testing.assert_array_equal(read(tiled.output), read(plain.output))


def lcz_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("lcz-")]


@pytest.mark.parametrize("after", [1, 3, 7])
def test_cancel_leaves_no_output_and_no_thread(strided, tmp_path, after):
    folder, model, stack, _ = strided
    out = tmp_path / "out"
    with pytest.raises(Cancelled):
        classify([stack], model, str(out / "lcz.tif"), tile_size=32, batch_size=16,
                  probabilities_output=str(out / "p.tif"), fine_output=str(out / "f.tif"),
                  feedback=RecordingFeedback(cancel_after_progress=after))
    assert files_in(out) == []
    assert lcz_threads() == []


def test_memory_does_not_grow_with_the_scene_height(tmp_path):
    """Tiles are read, run and summed row of tiles by row of tiles: a scene four times as
    tall takes no more memory (numpy's allocations, traced)."""
    card = dense_card("conv", NAMES, receptive_field=5, cell_size=40.0, classes=CLASSES)
    model, *_ = conv_model(tmp_path / "m.onnx", card, 5, seed=2)
    peaks = {}
    for height in (96, 384):
        scene = np.random.default_rng(height).normal(size=(3, height, 160)).astype(np.float32)
        stack = write_stack(tmp_path / f"s{height}.tif", scene, NAMES)
        classify([stack], model, str(tmp_path / f"warm{height}.tif"), tile_size=32)
        tracemalloc.start()
        try:
            classify([stack], model, str(tmp_path / f"l{height}.tif"), tile_size=32,
                     probabilities_output=str(tmp_path / f"p{height}.tif"),
                     fine_output=str(tmp_path / f"f{height}.tif"))
            peaks[height] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peaks[384] < 1.25 * peaks[96], peaks


# --- engines -------------------------------------------------------------------------------------

@pytest.mark.skipif(import_openvino() is None, reason="openvino is not installed")
def test_openvino_float32_gives_onnxruntimes_map(tmp_path):
    """OpenVINO compiled for the tile shape: the same class on >= 99 % of cells and pixels."""
    card = dense_card("net", NAMES, receptive_field=5, tile_multiple=2, cell_size=20.0,
                      classes=CLASSES)
    model = pooled_model(tmp_path / "m.onnx", card, seed=8)
    stack = write_stack(tmp_path / "s.tif", smooth_scene(90, 100, seed=8), NAMES)
    maps = {}
    for device in ("cpu", "openvino"):
        result = classify([stack], model, str(tmp_path / f"{device}.tif"), device=device,
                          tile_size=40, fine_output=str(tmp_path / f"{device}-fine.tif"))
        maps[device] = result
    assert maps["openvino"].provider == OPENVINO_F32
    for key in ("output", "fine"):
        a, b = (read(getattr(maps[d], key)) for d in ("cpu", "openvino"))
        assert (a == b).mean() >= 0.99, key


@pytest.mark.skipif(import_openvino() is None, reason="openvino is not installed")
def test_automatic_device_measures_on_tiles(tmp_path, monkeypatch):
    from lcz_qgis_plugin.core.inference import engine_choice
    from lcz_qgis_plugin.core.inference.engine import Engine, clear_engine_cache
    monkeypatch.setenv(engine_choice.CACHE_ENV, str(tmp_path / "cache"))
    clear_engine_cache()
    card = dense_card("net", NAMES, receptive_field=5, tile_multiple=2, classes=CLASSES)
    model = pooled_model(tmp_path / "m.onnx", card, seed=9)
    log = RecordingFeedback()
    engine = Engine(model, "auto", feedback=log)
    assert "measured on this CPU against" in log.log
    assert engine.tile_size == 256
    tiles = np.zeros((3, 3, 256, 256), np.float32)
    assert engine.pixel_probabilities(tiles).shape == (3, 256, 256, len(CLASSES))
    clear_engine_cache()


# --- Processing, qgis_process, the command line --------------------------------------------------

@pytest.fixture(scope="module")
def dense_inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dense_inputs")
    card = dense_card("net", NAMES, receptive_field=5, tile_multiple=2, cell_size=40.0,
                      classes=CLASSES)
    model = pooled_model(folder / "net.onnx", card, seed=3)
    stack = write_stack(folder / "s.tif", smooth_scene(48, 52, seed=3), NAMES)
    return stack, model


def test_processing_run_with_a_dense_model_and_the_fine_map(processing, dense_inputs, tmp_path):
    stack, model = dense_inputs
    results = processing.run("lcz:classify", {
        "INPUT": [stack], "MODEL": model, "DEVICE": 2, "TILE_SIZE": 24, "MAJORITY_RADIUS": 1,
        "OUTPUT": str(tmp_path / "lcz.tif"), "OUTPUT_FINE": str(tmp_path / "fine.tif")})
    expected = classify([stack], model, str(tmp_path / "core.tif"), tile_size=24,
                        majority_radius=1, fine_output=str(tmp_path / "core-fine.tif"))
    assert results["OUTPUT_FINE"] == str(tmp_path / "fine.tif")
    np.testing.assert_array_equal(read(results["OUTPUT"]), read(expected.output))
    np.testing.assert_array_equal(read(results["OUTPUT_FINE"]), read(expected.fine))
    fine = gdal.Open(results["OUTPUT_FINE"])
    assert (fine.RasterYSize, fine.RasterXSize) == (48, 52)
    assert fine.GetGeoTransform() == (500000.0, 10.0, 0.0, 5000000.0, 0.0, -10.0)
    band = fine.GetRasterBand(1)
    assert band.DataType == gdal.GDT_Byte and band.GetNoDataValue() == 0
    assert band.GetColorTable().GetColorEntry(2)[:3] == LCZ_CLASSES[1].rgb
    assert band.GetCategoryNames()[2] == "LCZ 2 Compact mid-rise"
    assert (tmp_path / "fine.qml").exists()
    assert fine.GetMetadataItem("LCZ_MODEL_KIND") == "dense"
    assert fine.GetMetadataItem("LCZ_TILE_SIZE") == "24"


@pytest.mark.qgis_process
def test_qgis_process_runs_a_dense_model(qgis_process, dense_inputs, tmp_path):
    stack, model = dense_inputs
    done, answer = qgis_process.run_json("lcz:classify", {
        "INPUT": [stack], "MODEL": model, "DEVICE": 2,
        "OUTPUT": str(tmp_path / "lcz.tif"), "OUTPUT_FINE": str(tmp_path / "fine.tif")})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    expected = classify([stack], model, str(tmp_path / "core.tif"),
                        fine_output=str(tmp_path / "core-fine.tif"))
    np.testing.assert_array_equal(read(answer["results"]["OUTPUT_FINE"]), read(expected.fine))
    np.testing.assert_array_equal(read(answer["results"]["OUTPUT"]), read(expected.output))


def test_command_line_writes_the_fine_map(dense_inputs, tmp_path):
    stack, model = dense_inputs
    done = subprocess.run(
        [sys.executable, "-m", "lcz_qgis_plugin.core", "classify", "--input", stack, "--model",
         model, "--output", str(tmp_path / "l.tif"), "--fine", str(tmp_path / "f.tif"),
         "--tile-size", "32", "--device", "cpu"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["fine"] == str(tmp_path / "f.tif")
    assert read(tmp_path / "f.tif").shape == (48, 52)
