"""lcz_qgis_plugin.core.inference.classify without QGIS: maps checked cell by cell against a plain
per-cell reference, with real GeoTIFFs and real onnxruntime sessions."""

import re

import numpy as np
import pytest
from lcz_testing import (
    ORIGIN,
    RecordingFeedback,
    centre_value_model,
    channel_names,
    files_in,
    identity_card,
    linear_probe_model,
    read,
    reference_classes,
    reference_probabilities,
    write_stack,
)
from osgeo import gdal

from lcz_qgis_plugin.core.errors import Cancelled, InputError
from lcz_qgis_plugin.core.inference import classify as classify_module
from lcz_qgis_plugin.core.inference.classify import classify, strip_bounds
from lcz_qgis_plugin.core.inference.majority import majority_filter
from lcz_qgis_plugin.core.lcz_classes import LCZ_CLASSES


def probe_case(tmp_path, patch, stride, height, width, channels=3, seed=1, **card_overrides):
    rng = np.random.default_rng(seed)
    names = channel_names(channels)
    card = identity_card("probe", names, patch, cell_size=10.0 * stride, **card_overrides)
    model, weights, bias = linear_probe_model(tmp_path / "probe.onnx", card, seed=seed)
    scene = rng.normal(size=(channels, height, width)).astype(np.float32)
    return card, model, weights, bias, scene, names


@pytest.mark.parametrize("patch,stride,height,width", [
    (8, 4, 37, 50),     # even/even: exactly centred; partial cells at both far edges
    (32, 10, 64, 75),   # the usual 32 px patch at 100 m cells
    (48, 10, 50, 61),   # MSMLA's 48 px patch: reflection reaches deep into the scene
    (7, 3, 20, 22),     # odd/odd
    (6, 5, 23, 31),     # mixed parity: half a pixel towards the top left, as documented
])
def test_map_matches_reference_cell_by_cell(tmp_path, patch, stride, height, width):
    card, model, weights, bias, scene, names = probe_case(tmp_path, patch, stride, height, width)
    stack = write_stack(tmp_path / "stack.tif", scene, names)
    result = classify([stack], model, str(tmp_path / "out" / "lcz.tif"),
                      probabilities_output=str(tmp_path / "out" / "p.tif"))
    probs, valid = reference_probabilities(
        scene, np.ones(scene.shape[1:], bool), card, stride,
        lambda patch_: patch_.reshape(-1) @ weights + bias)
    assert valid.all()
    expected = reference_classes(probs, valid)
    assert read(result.output).shape == expected.shape
    np.testing.assert_array_equal(read(result.output), expected)
    np.testing.assert_allclose(read(result.probabilities).transpose(1, 2, 0), probs, atol=2e-6)
    assert result.patches == expected.size


def test_centre_pixel_decides_with_centre_value_model(tmp_path):
    """The map can be read off the scene: the cell's class is its centre pixel's value."""
    names = channel_names(2)
    card = identity_card("centre", names, 9, cell_size=40.0)
    model = centre_value_model(tmp_path / "centre.onnx", card)
    rng = np.random.default_rng(3)
    scene = np.zeros((2, 30, 26), np.float32)
    scene[0] = rng.integers(1, 18, size=(30, 26))
    scene[1] = rng.normal(size=(30, 26))
    stack = write_stack(tmp_path / "s.tif", scene, names)
    out = classify([stack], model, str(tmp_path / "lcz.tif")).output
    np.testing.assert_array_equal(read(out), scene[0, 2::4, 2::4].astype(np.uint8))


def test_output_grid_is_anchored_at_the_raster_origin(tmp_path):
    card, model, *_ , scene, names = probe_case(tmp_path, 8, 4, 37, 50)
    stack = write_stack(tmp_path / "stack.tif", scene, names)
    out = classify([stack], model, str(tmp_path / "lcz.tif")).output
    ds = gdal.Open(out)
    assert ds.GetGeoTransform() == (ORIGIN[0], 40.0, 0.0, ORIGIN[1], 0.0, -40.0)
    assert (ds.RasterXSize, ds.RasterYSize) == (12, 9)  # centres at 2, 6, ... < 50 and < 37


def test_nodata_cells_and_nodata_pixels(tmp_path):
    card, model, weights, bias, scene, names = probe_case(tmp_path, 8, 4, 40, 44)
    nodata = -9999.0
    invalid = np.zeros(scene.shape[1:], bool)
    invalid[0:14, 0:14] = True            # a no-data corner: cells there are mostly no-data
    invalid[22, 10] = True                # the centre pixel of cell (5, 2)
    invalid[30:33, 30:32] = True          # a few pixels: cells keep a class, pixels read as 0
    invalid[:, 43] = True                 # a no-data column at the edge
    scene[1][invalid] = nodata            # one channel is enough to make a pixel no-data
    stack = write_stack(tmp_path / "stack.tif", scene, names, nodata=nodata)
    result = classify([stack], model, str(tmp_path / "lcz.tif"),
                      probabilities_output=str(tmp_path / "p.tif"),
                      confidence_output=str(tmp_path / "c.tif"))
    probs, valid = reference_probabilities(scene, ~invalid, card, 4,
                                           lambda p: p.reshape(-1) @ weights + bias)
    assert not valid[5, 2] and not valid[0, 0] and not valid[7, 7] and valid[0, 5]
    assert valid[7, 8] and invalid[26:34, 30:38].any()  # classified despite no-data pixels
    classes = read(result.output)
    np.testing.assert_array_equal(classes, reference_classes(probs, valid))
    got = read(result.probabilities).transpose(1, 2, 0)
    np.testing.assert_allclose(got[valid], probs[valid], atol=2e-6)
    assert (got[~valid] == -9999).all()
    confidence = read(result.confidence)
    assert (confidence[:, ~valid] == -9999).all()
    np.testing.assert_allclose(confidence[0][valid], probs[valid].max(axis=1), atol=2e-6)
    entropy = -(probs[valid] * np.log(probs[valid])).sum(axis=-1) / np.log(17)
    np.testing.assert_allclose(confidence[1][valid], entropy, atol=2e-6)
    assert result.classified_cells == valid.sum()


def test_uint16_stack_with_zero_nodata_and_so2sat_scaling(tmp_path):
    names = [f"S2:B{b}" for b in ("02", "03", "04")]
    card = identity_card("scaled", names, 8, cell_size=40.0, scale=[1e-4] * 3,
                         mean=[0.1, 0.12, 0.09], std=[0.05, 0.04, 0.06])
    model, weights, bias = linear_probe_model(tmp_path / "m.onnx", card, seed=4)
    rng = np.random.default_rng(4)
    dn = rng.integers(1, 4000, size=(3, 33, 29)).astype(np.uint16)
    dn[:, 10:30, 0:12] = 0
    stack = write_stack(tmp_path / "s.tif", dn, names, nodata=0, data_type=gdal.GDT_UInt16)
    out = classify([stack], model, str(tmp_path / "lcz.tif"),
                   probabilities_output=str(tmp_path / "p.tif"))
    probs, valid = reference_probabilities(dn.astype(np.float64), (dn != 0).all(axis=0), card,
                                           4, lambda p: p.reshape(-1) @ weights + bias)
    np.testing.assert_array_equal(read(out.output), reference_classes(probs, valid))
    np.testing.assert_allclose(read(out.probabilities).transpose(1, 2, 0)[valid], probs[valid],
                               atol=2e-5)


def test_dates_are_averaged_where_valid(tmp_path):
    card, model, weights, bias, scene_a, names = probe_case(tmp_path, 8, 4, 36, 40, seed=5)
    scene_b = np.random.default_rng(6).normal(size=scene_a.shape).astype(np.float32)
    invalid_b = np.zeros(scene_a.shape[1:], bool)
    invalid_b[:, :18] = True   # date b is missing on the left: cells there use date a alone
    scene_b[0][invalid_b] = np.nan
    a = write_stack(tmp_path / "a.tif", scene_a, names)
    b = write_stack(tmp_path / "b.tif", scene_b, names)
    result = classify([a, b], model, str(tmp_path / "lcz.tif"),
                      probabilities_output=str(tmp_path / "p.tif"))

    def logits(p):
        return p.reshape(-1) @ weights + bias
    pa, va = reference_probabilities(scene_a, np.ones(scene_a.shape[1:], bool), card, 4, logits)
    pb, vb = reference_probabilities(scene_b, ~invalid_b, card, 4, logits)
    assert va.all() and not vb.all() and vb.any()
    expected = np.where(vb[..., None], (pa + pb) / 2, pa)
    np.testing.assert_allclose(read(result.probabilities).transpose(1, 2, 0), expected,
                               atol=2e-6)
    np.testing.assert_array_equal(read(result.output), reference_classes(expected, va))
    assert result.patches == va.sum() + vb.sum()
    assert gdal.Open(result.output).GetMetadataItem("LCZ_DATES_AVERAGED") == "2"


def naive_majority(classes, radius):
    out = classes.copy()
    rows, cols = classes.shape
    for i in range(rows):
        for j in range(cols):
            if classes[i, j] == 0:
                continue
            window = classes[max(0, i - radius):i + radius + 1, max(0, j - radius):j + radius + 1]
            counts = np.bincount(window[window > 0], minlength=18)
            best = np.flatnonzero(counts == counts.max())
            out[i, j] = classes[i, j] if classes[i, j] in best else best.min()
    return out


@pytest.mark.parametrize("radius", [1, 2])
def test_majority_filter_in_the_map(tmp_path, radius):
    names = channel_names(1)
    card = identity_card("centre", names, 5, cell_size=30.0)
    model = centre_value_model(tmp_path / "centre.onnx", card)
    rng = np.random.default_rng(radius)
    cells = rng.choice([2, 6, 11, 14, 17], size=(21, 19), p=[0.4, 0.15, 0.15, 0.15, 0.15])
    cells[4:7, 3:5] = 0  # no-data cells keep no-data and do not vote
    scene = np.repeat(np.repeat(cells, 3, axis=0), 3, axis=1).astype(np.float32)[None]
    stack = write_stack(tmp_path / "s.tif", scene, names, nodata=0)
    raw = classify([stack], model, str(tmp_path / "raw.tif")).output
    np.testing.assert_array_equal(read(raw), cells)
    # a tiny strip budget forces several strips, so the filter's halo between blocks matters
    filtered = classify([stack], model, str(tmp_path / "maj.tif"), majority_radius=radius,
                        strip_memory_mb=0.01)
    np.testing.assert_array_equal(read(filtered.output), naive_majority(cells, radius))
    assert filtered.class_counts == {int(c): int((naive_majority(cells, radius) == c).sum())
                                     for c in (2, 6, 11, 14, 17)
                                     if (naive_majority(cells, radius) == c).any()}


def test_majority_filter_tie_rules():
    classes = np.array([[3, 3, 5],
                        [5, 5, 3],
                        [0, 4, 4]], np.uint8)
    # centre (5): counts 3->3, 5->3, 4->2: tie between 3 and 5, the centre's own class stays
    assert majority_filter(classes, 1)[1, 1] == 5
    # top-right (5): its window holds 3, 5, 5, 3 (2 each): tie, own class stays
    assert majority_filter(classes, 1)[0, 2] == 5
    # bottom-middle (4): window 5, 5, 3, 0, 4, 4 -> 5: 2, 4: 2, 3: 1 -> own class stays
    assert majority_filter(classes, 1)[2, 1] == 4
    lone = np.array([[7, 2, 9]], np.uint8)  # every window is a tie: each cell keeps its own
    assert majority_filter(lone, 1).tolist() == [[7, 2, 9]]
    # the centre (1) is outnumbered by a tie of 3 and 5 (4 each): the lower code wins
    outvoted = np.array([[5, 5, 3], [5, 1, 3], [5, 3, 3]], np.uint8)
    assert majority_filter(outvoted, 1)[1, 1] == 3


def test_extent_classifies_a_window_of_the_full_map(tmp_path):
    """Cells at the extent border still see real pixels beyond it (no reflection there)."""
    card, model, weights, bias, scene, names = probe_case(tmp_path, 8, 4, 60, 64, seed=7)
    stack = write_stack(tmp_path / "stack.tif", scene, names)
    full = read(classify([stack], model, str(tmp_path / "full.tif"),
                         probabilities_output=str(tmp_path / "fp.tif")).probabilities)
    x0, y0 = ORIGIN
    # an extent from the middle of cell column 3 to inside column 9, rows 2 to 10
    extent = (x0 + 3 * 40 + 15, y0 - 10 * 40 - 5, x0 + 9 * 40 + 1, y0 - 2 * 40 - 39)
    part = classify([stack], model, str(tmp_path / "part.tif"), extent=extent,
                    probabilities_output=str(tmp_path / "pp.tif"))
    ds = gdal.Open(part.output)
    assert ds.GetGeoTransform() == (x0 + 3 * 40, 40.0, 0.0, y0 - 2 * 40, 0.0, -40.0)
    assert (ds.RasterYSize, ds.RasterXSize) == (9, 7)
    np.testing.assert_allclose(read(part.probabilities), full[:, 2:11, 3:10], atol=1e-6)


def test_strips_give_the_same_map_as_one_strip(tmp_path, monkeypatch):
    card, model, weights, bias, scene, names = probe_case(tmp_path, 8, 4, 90, 50, seed=8)
    stack = write_stack(tmp_path / "stack.tif", scene, names)
    one = RecordingFeedback()
    with monkeypatch.context() as patched:
        patched.setattr(classify_module, "FIRST_STRIP_ROWS", 10**6)
        a = classify([stack], model, str(tmp_path / "a.tif"), feedback=one,
                     probabilities_output=str(tmp_path / "ap.tif"))
    many = RecordingFeedback()
    b = classify([stack], model, str(tmp_path / "b.tif"), feedback=many, batch_size=7,
                 probabilities_output=str(tmp_path / "bp.tif"), strip_memory_mb=0.02)
    growing = RecordingFeedback()
    c = classify([stack], model, str(tmp_path / "c.tif"), feedback=growing, batch_size=5,
                 probabilities_output=str(tmp_path / "cp.tif"))
    assert re.search(r" 1 strip\(s\) of up to 22 cell rows", " ".join(one.lines))
    assert re.search(r" 11 strip\(s\) of up to 2 cell rows", " ".join(many.lines))
    assert re.search(r" 4 strip\(s\) of up to 22 cell rows", " ".join(growing.lines))
    np.testing.assert_array_equal(read(a.output), read(c.output))
    np.testing.assert_array_equal(read(a.probabilities), read(c.probabilities))
    np.testing.assert_array_equal(read(a.output), read(b.output))
    np.testing.assert_array_equal(read(a.probabilities), read(b.probabilities))
    assert many.percent == sorted(many.percent)
    assert many.percent[-1] == pytest.approx(100.0)


@pytest.mark.parametrize("total,largest,expected", [
    (22, 22, [(0, 2), (2, 6), (6, 14), (14, 22)]),
    (21, 5, [(0, 2), (2, 6), (6, 11), (11, 16), (16, 21)]),
    (3, 1, [(0, 1), (1, 2), (2, 3)]),
    (1, 40, [(0, 1)]),
])
def test_strips_start_small_and_grow_to_the_memory_budget(total, largest, expected):
    assert strip_bounds(total, largest) == expected


def test_model_outputting_probabilities_with_temperature(tmp_path):
    names = channel_names(2)
    card = identity_card("calibrated", names, 6, cell_size=30.0, output_kind="probabilities",
                         temperature=2.5)
    model, weights, bias = linear_probe_model(tmp_path / "m.onnx", card, seed=9, softmax=True)
    scene = np.random.default_rng(9).normal(size=(2, 25, 27)).astype(np.float32)
    stack = write_stack(tmp_path / "s.tif", scene, names)
    out = classify([stack], model, str(tmp_path / "lcz.tif"),
                   probabilities_output=str(tmp_path / "p.tif"))
    # log(softmax(z)) = z - const, so the calibrated result is softmax(z / T)
    probs, valid = reference_probabilities(scene, np.ones(scene.shape[1:], bool), card, 3,
                                           lambda p: p.reshape(-1) @ weights + bias)
    np.testing.assert_allclose(read(out.probabilities).transpose(1, 2, 0), probs, atol=2e-6)


def test_class_map_is_styled_for_any_gis(tmp_path):
    card, model, *_, scene, names = probe_case(tmp_path, 8, 4, 30, 30)
    stack = write_stack(tmp_path / "stack.tif", scene, names)
    result = classify([stack], model, str(tmp_path / "lcz.tif"),
                      probabilities_output=str(tmp_path / "p.tif"),
                      confidence_output=str(tmp_path / "c.tif"), device="cpu")
    ds = gdal.Open(result.output)
    band = ds.GetRasterBand(1)
    assert band.DataType == gdal.GDT_Byte and band.GetNoDataValue() == 0
    table = band.GetColorTable()
    for lcz in LCZ_CLASSES:
        assert table.GetColorEntry(lcz.code)[:3] == lcz.rgb
    names_ = band.GetCategoryNames()
    assert names_[2] == "LCZ 2 Compact mid-rise" and names_[11] == "LCZ A Dense trees"
    meta = ds.GetMetadata()
    assert meta["LCZ_MODEL_NAME"] == "probe" and meta["LCZ_MODEL_VERSION"] == "test"
    assert meta["LCZ_EXECUTION_PROVIDER"] == "CPUExecutionProvider"
    assert (tmp_path / "lcz.qml").read_text().count("<paletteEntry") == 17
    p = gdal.Open(result.probabilities)
    assert [p.GetRasterBand(i + 1).GetDescription() for i in range(17)] == \
        [c.name for c in LCZ_CLASSES]
    assert p.GetMetadataItem("LCZ_EXECUTION_PROVIDER") == "CPUExecutionProvider"
    c = gdal.Open(result.confidence)
    assert c.RasterCount == 2 and c.GetRasterBand(2).GetDescription() == "normalised entropy"


def test_cancel_leaves_nothing_behind(tmp_path):
    card, model, *_, scene, names = probe_case(tmp_path, 8, 4, 80, 40)
    stack = write_stack(tmp_path / "stack.tif", scene, names)
    out_dir = tmp_path / "out"
    with pytest.raises(Cancelled, match="cancelled"):
        classify([stack], model, str(out_dir / "lcz.tif"), batch_size=5, majority_radius=1,
                 probabilities_output=str(out_dir / "p.tif"), strip_memory_mb=0.02,
                 feedback=RecordingFeedback(cancel_after_progress=3))
    assert files_in(out_dir) == []


def test_rerun_replaces_outputs_and_stale_sidecars(tmp_path):
    card, model, *_, scene, names = probe_case(tmp_path, 8, 4, 30, 30)
    stack = write_stack(tmp_path / "stack.tif", scene, names)
    out = tmp_path / "o" / "lcz.tif"
    classify([stack], model, str(out))
    first = read(out)
    classify([stack], model, str(out), cell_size=80.0)
    assert read(out).shape != first.shape
    assert sorted(files_in(out.parent)) == ["lcz.qml", "lcz.tif", "lcz.tif.aux.xml"]


def test_error_after_outputs_were_created_removes_them(tmp_path):
    """An all-no-data scene is only known to be empty after reading it: outputs go away."""
    card, model, *_, scene, names = probe_case(tmp_path, 8, 4, 30, 30)
    scene[:] = -1.0
    stack = write_stack(tmp_path / "stack.tif", scene, names, nodata=-1.0)
    out_dir = tmp_path / "out"
    with pytest.raises(InputError, match="every cell of the output is no-data"):
        classify([stack], model, str(out_dir / "lcz.tif"),
                 confidence_output=str(out_dir / "c.tif"))
    assert files_in(out_dir) == []
