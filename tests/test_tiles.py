"""Tiles with per-pixel label masks for dense models (lcz:extractpatches, SAMPLES = tiles):
masks checked pixel by pixel against an independent numpy computation, the tile grid, the
split by polygon, the patch-file schema version 2 (and version 1 still read), bad input, the
algorithm through processing.run, and the commit protocol."""

import json
import math
import os

import h5py
import numpy as np
import pytest
from faults import assert_one_clear_error, run_core_limited, snapshot
from lcz_testing import (
    ORIGIN,
    RecordingFeedback,
    assert_refused,
    bad_input_cases,
    channel_names,
    files_in,
    write_polygons,
    write_stack,
)

from lcz_qgis_plugin.core.errors import Cancelled, InputError
from lcz_qgis_plugin.core.training_data.extraction import extract_patches
from lcz_qgis_plugin.core.training_data.patch_file import (
    PatchFileInfo,
    PatchWriter,
    open_patch_file,
)

NODATA = -9999.0
CODES = {"2": 2, "6": 6, "A": 11, "D": 14, "E": 15}


def ring(corners) -> str:
    """WKT polygon through pixel corners ``(row, col)`` of the test stacks (10 m, ORIGIN)."""
    points = [(ORIGIN[0] + 10.0 * c, ORIGIN[1] - 10.0 * r) for r, c in corners]
    points.append(points[0])
    return "POLYGON((" + ",".join(f"{x} {y}" for x, y in points) + "))"


def box(r0, c0, r1, c1) -> str:
    """WKT of the pixels rows r0 .. r1 - 1, columns c0 .. c1 - 1 (edges on pixel edges)."""
    return ring([(r0, c0), (r0, c1), (r1, c1), (r1, c0)])


# Polygons of the mask test, in pixel rows/cols (end exclusive), each as rectangles whose
# union is the polygon; their ids in the GeoPackage are 1, 2, ... in this order.
POLYGONS = [
    ("2", [(2, 3, 12, 20)]),
    ("2", [(8, 15, 15, 30)]),                       # overlaps 1, same class: 1 owns it
    ("E", [(10, 25, 14, 40)]),                      # overlaps 2, other class: unlabelled
    ("A", [(20, 50, 30, 55), (30, 50, 35, 66)]),    # an L
    ("D", [(42, 60, 60, 80)]),                      # reaches past the bottom-right edge
    ("6", [(38, 2, 48, 25)]),                       # holds no-data pixels
]
L_SHAPE = [(20, 50), (20, 55), (30, 55), (30, 66), (35, 66), (35, 50)]


def expected_labels(shape, polygons, invalid):
    """(LCZ code, owning polygon id) per pixel, worked out with numpy alone: a pixel's centre
    is inside a rectangle iff the pixel is; areas of two classes -> 0; same class -> the
    lowest id; no-data -> 0."""
    classes = np.zeros(shape, np.int64)  # bit per class
    owner = np.zeros(shape, np.int64)
    for pid, (label, rects) in reversed(list(enumerate(polygons, start=1))):
        inside = np.zeros(shape, bool)
        for r0, c0, r1, c1 in rects:
            inside[r0:r1, c0:c1] = True
        classes[inside] |= 1 << CODES[label]
        owner[inside] = pid  # descending ids: the lowest id is written last
    single = (classes > 0) & ((classes & (classes - 1)) == 0) & ~invalid
    codes = np.where(single, np.log2(np.maximum(classes, 1)).astype(np.int64), 0)
    return codes, np.where(single, owner, 0)


def mask_stack(tmp_path, rows=50, cols=70):
    data = np.random.default_rng(11).normal(size=(3, rows, cols)).astype(np.float32)
    data[1, 40:45, 5:20] = NODATA  # one channel's no-data makes the pixel no-data
    data[2, 0, 0] = np.nan
    stack = write_stack(tmp_path / "stack.tif", data, channel_names(3), nodata=NODATA)
    items = [(label, ring(L_SHAPE) if label == "A" else box(*rects[0]))
             for label, rects in POLYGONS]
    return stack, write_polygons(tmp_path / "areas.gpkg", items), data


def load(path):
    f, info = open_patch_file(str(path))
    with f:
        return {k: f[k][...] for k in f.keys()}, info


def tile_index(centre, tile, step=None):
    """(row, col) of the tile with this centre on the 10 m test grid."""
    step = step or tile // 2
    col = (round((centre[0] - ORIGIN[0]) / 10.0 - tile / 2)) / step
    row = (round((ORIGIN[1] - centre[1]) / 10.0 - tile / 2)) / step
    assert row == int(row) and col == int(col), centre
    return int(row), int(col)


def test_masks_equal_an_independent_computation_pixel_by_pixel(tmp_path):
    stack, areas, data = mask_stack(tmp_path)
    rows, cols, tile, step = 50, 70, 16, 8
    feedback = RecordingFeedback()
    result = extract_patches(stack, areas, str(tmp_path / "t.h5"), samples="tiles",
                             tile_size=tile, summary_output=str(tmp_path / "t.json"),
                             feedback=feedback)
    arrays, info = load(result.output)
    invalid = (data[1] == NODATA) | np.isnan(data).any(axis=0)
    codes, owner = expected_labels((rows, cols), POLYGONS, invalid)
    # the grid: every 8 px from the origin until the raster's last pixel is reached
    n_rows, n_cols = math.ceil((rows - tile) / step) + 1, math.ceil((cols - tile) / step) + 1
    assert (n_rows, n_cols) == (6, 8)
    pad = ((0, (n_rows - 1) * step + tile - rows), (0, (n_cols - 1) * step + tile - cols))
    values = np.pad(data, ((0, 0),) + pad, mode="reflect")
    codes_padded, owner_padded = np.pad(codes, pad), np.pad(owner, pad)
    wanted = {(i, j) for i in range(n_rows) for j in range(n_cols)
              if codes_padded[i * step:i * step + tile, j * step:j * step + tile].any()}
    found = [tile_index(c, tile) for c in arrays["centres"]]
    assert sorted(found) == sorted(wanted) and len(found) == result.patches == len(wanted)
    assert "split" not in arrays and info.sample_kind == "tiles" and info.patch_size == tile
    assert info.grid_origin == list(ORIGIN) and info.cell_size == 100.0
    for k, (i, j) in enumerate(found):
        window = (slice(i * step, i * step + tile), slice(j * step, j * step + tile))
        mask, owners = codes_padded[window], owner_padded[window]
        np.testing.assert_array_equal(arrays["masks"][k], mask, err_msg=str((i, j)))
        np.testing.assert_array_equal(arrays["patches"][k], values[(slice(None),) + window])
        assert arrays["labels"][k] == np.argmax(np.bincount(mask[mask > 0]))
        assert arrays["polygon_ids"][k] == np.argmax(np.bincount(owners[mask > 0]))
    # no-data values are stored as they are; pixels past the edge are reflected, unlabelled
    assert (arrays["patches"] == NODATA).any() and np.isnan(arrays["patches"]).any()
    labelled = {str(c): int((codes == c).sum()) for c in np.unique(codes[codes > 0])}
    summary = json.load(open(tmp_path / "t.json"))
    assert {c: row["total"] for c, row in summary["classes"].items()} == labelled
    assert summary["labelled_pixels"] == int((codes > 0).sum()) and summary["tiles"] == len(found)
    assert summary["pixels_in_conflicting_polygons"] == 4 * 5  # polygons 2 and 3
    assert summary["labelled_pixels_nodata"] == 5 * 15 and summary["nodata"] == [NODATA] * 3
    assert result.counts == {int(c): {"train": n} for c, n in labelled.items()}
    assert any(f"Wrote {len(found)} tiles of 16 px" in line for line in feedback.infos)
    assert any("20 pixel(s) lie in overlapping training areas" in w for w in feedback.warnings)
    assert any("75 pixel(s) inside the training areas are no-data" in w
               for w in feedback.warnings)
    assert feedback.percent[-1] == 100.0


def test_narrow_memory_gives_the_same_file(tmp_path):
    """Tiny strips (pass 1) and windows of one tile column (pass 2) change nothing."""
    stack, areas, _ = mask_stack(tmp_path)
    wide = extract_patches(stack, areas, str(tmp_path / "a.h5"), samples="tiles", tile_size=16)
    narrow = extract_patches(stack, areas, str(tmp_path / "b.h5"), samples="tiles",
                             tile_size=16, strip_memory_mb=0.001)
    a, _ = load(wide.output)
    b, _ = load(narrow.output)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert wide.counts == narrow.counts


def split_polygons_scene(tmp_path):
    """60 x 80 px; class D: 12 squares of 6 x 6 px, class 2: 4 bars; none overlap."""
    data = np.random.default_rng(4).normal(size=(2, 60, 80)).astype(np.float32)
    stack = write_stack(tmp_path / "s.tif", data, channel_names(2))
    rects = [("D", (2 + 10 * (k // 6), 2 + 13 * (k % 6), 8 + 10 * (k // 6), 8 + 13 * (k % 6)))
             for k in range(12)]
    rects += [("2", (25 + 8 * k, 3, 30 + 8 * k, 75)) for k in range(4)]
    areas = write_polygons(tmp_path / "a.gpkg", [(label, box(*r)) for label, r in rects])
    owner = np.zeros((60, 80), np.int64)
    for pid, (_, (r0, c0, r1, c1)) in enumerate(rects, start=1):
        owner[r0:r1, c0:c1] = pid
    return stack, areas, owner, rects


def test_split_by_polygon_holds_pixel_by_pixel(tmp_path):
    stack, areas, owner, rects = split_polygons_scene(tmp_path)
    tile, step = 16, 8
    result = extract_patches(stack, areas, str(tmp_path / "t.h5"), samples="tiles",
                             tile_size=tile, validation_fraction=0.25, test_fraction=0.25,
                             seed=3)
    arrays, info = load(result.output)
    assert info.has_split
    owner_padded = np.pad(owner, ((0, 4), (0, 0)))  # 7 x 9 tiles reach row 64, column 80
    split_of, copies = {}, {}
    for k, centre in enumerate(arrays["centres"]):
        i, j = tile_index(centre, tile)
        split = int(arrays["split"][k])
        assert split not in copies.setdefault((i, j), {}), "one copy per split"
        copies[(i, j)][split] = arrays["masks"][k]
        owners = owner_padded[i * step:i * step + tile, j * step:j * step + tile]
        mask = arrays["masks"][k]
        for pid in np.unique(owners[mask > 0]):  # only this split's polygons are labelled
            assert split_of.setdefault(int(pid), split) == split, pid
        assert split_of[int(arrays["polygon_ids"][k])] == split
    for (i, j), by_split in copies.items():  # copies are disjoint and together complete
        owners = owner_padded[i * step:i * step + tile, j * step:j * step + tile]
        stacked = np.stack(list(by_split.values()))
        assert ((stacked > 0).sum(axis=0) <= 1).all()
        assert np.array_equal(stacked.max(axis=0) > 0, owners > 0)
    assert set(split_of) == set(range(1, len(rects) + 1))
    per_split = {name: 0 for name in ("train", "validation", "test")}
    for pid, split in split_of.items():
        per_split[("train", "validation", "test")[split]] += int((owner == pid).sum())
    totals = {name: sum(c.get(name, 0) for c in result.counts.values()) for name in per_split}
    assert totals == per_split and min(totals.values()) > 0
    d = result.counts[14]  # 12 equal squares: 3 for validation, 3 for test
    assert d == {"train": 216, "validation": 108, "test": 108}


def test_split_is_repeatable_for_a_seed(tmp_path):
    stack, areas, _, _ = split_polygons_scene(tmp_path)
    runs = [extract_patches(stack, areas, str(tmp_path / f"{n}.h5"), samples="tiles",
                            tile_size=16, validation_fraction=0.25, seed=s)
            for n, s in (("a", 5), ("b", 5))]
    a, b = load(runs[0].output)[0], load(runs[1].output)[0]
    for key in ("masks", "split", "polygon_ids", "centres"):
        np.testing.assert_array_equal(a[key], b[key])


# -- the schema --------------------------------------------------------------------------------

def info(**changes):
    values = dict(channels=["S2:B02", "S2:B03"], patch_size=16, pixel_size=10.0,
                  cell_size=100.0, scale=[1e-4, 1e-4], offset=[0.0, 0.0], crs="EPSG:32633",
                  source={"stack": "city.tif"})
    values.update(changes)
    return PatchFileInfo(**values)


def test_a_version_2_tile_file_reads_back(tmp_path):
    path = str(tmp_path / "t.h5")
    rng = np.random.default_rng(0)
    tiles = rng.random((3, 2, 16, 16), dtype=np.float32)
    masks = rng.integers(0, 18, (3, 16, 16)).astype(np.uint8)
    with PatchWriter(path, info(nodata=[0.0, float("nan")], grid_origin=[5.0, 7.0]),
                     split=True, masks=True) as w:
        w.append(tiles[:2], [1, 2], [7, 8], np.zeros((2, 2)), split=[0, 1], masks=masks[:2])
        w.append(tiles[2:], [17], [9], np.ones((1, 2)), split=[2], masks=masks[2:])
    f, read = open_patch_file(path)
    with f:
        assert read.sample_kind == "tiles" and read.has_masks and read.count == 3
        assert read.nodata == [0.0, None] and read.patch_size == 16
        assert read.grid_origin == [5.0, 7.0]
        assert f.attrs["schema_version"] == 2 and f.attrs["sample_kind"] == "tiles"
        np.testing.assert_array_equal(f["masks"][:], masks)
        np.testing.assert_array_equal(f["patches"][:], tiles)
        assert f["masks"].dtype == np.uint8 and f["masks"].compression == "gzip"
        assert f["masks"].chunks == (64, 16, 16)
    assert files_in(tmp_path) == ["t.h5"]


def test_version_1_files_are_written_and_read_as_before(tmp_path):
    path = str(tmp_path / "p.h5")
    with PatchWriter(path, info()) as w:
        w.append(np.zeros((2, 2, 16, 16)), [1, 2], [7, 8], np.zeros((2, 2)))
    with h5py.File(path, "r") as f:
        assert f.attrs["schema_version"] == 1
        assert not {"sample_kind", "nodata", "grid_origin"} & set(f.attrs) and "masks" not in f
    f, read = open_patch_file(path)
    f.close()
    assert read.sample_kind == "patches" and not read.has_masks and read.nodata is None
    assert read.grid_origin is None
    # a file as the first version of the plugin wrote it, attribute by attribute
    old = str(tmp_path / "old.h5")
    with h5py.File(old, "w") as f:
        f["patches"] = np.zeros((1, 1, 8, 8), np.float32)
        f["labels"] = np.array([3], np.uint8)
        f["polygon_ids"] = np.array([1], np.int64)
        f["centres"] = np.zeros((1, 2))
        f.attrs.update({"schema": "lcz-patches", "schema_version": 1, "channels": '["T:a"]',
                        "scale": "[1.0]", "offset": "[0.0]", "patch_size": 8,
                        "pixel_size": 10.0, "cell_size": 100.0, "crs": "", "source": "{}"})
    f, read = open_patch_file(old)
    f.close()
    assert read.sample_kind == "patches" and read.channels == ["T:a"] and read.count == 1


def test_writer_refuses_wrong_masks_and_leaves_nothing(tmp_path):
    path = str(tmp_path / "t.h5")
    tiles = np.zeros((1, 2, 16, 16), np.float32)
    for masks, message in ((None, "pass masks"), (np.full((1, 16, 16), 18), "LCZ codes 1-17 or 0"),
                           (np.zeros((1, 8, 8)), "shape")):
        with pytest.raises(ValueError, match=message):
            with PatchWriter(path, info(), masks=True) as w:
                w.append(tiles, [1], [1], np.zeros((1, 2)), masks=masks)
    with pytest.raises(ValueError, match="without masks"):
        with PatchWriter(path, info()) as w:
            w.append(tiles, [1], [1], np.zeros((1, 2)), masks=np.ones((1, 16, 16)))
    with pytest.raises(ValueError, match="needs masks=True"):
        PatchWriter(path, info(sample_kind="tiles"))
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("change, message", [
    (lambda f: f.attrs.__setitem__("schema_version", 3), "schema 3.*Update"),
    (lambda f: f.attrs.__setitem__("schema_version", 1), "not marked as a tile file"),
    (lambda f: f.__delitem__("masks"), "has no masks dataset"),
    (lambda f: f.attrs.__setitem__("sample_kind", "pixels"), "unknown sample_kind 'pixels'"),
])
def test_inconsistent_tile_files_are_refused(tmp_path, change, message):
    path = str(tmp_path / "t.h5")
    with PatchWriter(path, info(), masks=True) as w:
        w.append(np.zeros((1, 2, 16, 16)), [1], [1], np.zeros((1, 2)),
                 masks=np.ones((1, 16, 16), np.uint8))
    with h5py.File(path, "r+") as f:
        change(f)
    with pytest.raises(InputError, match=message):
        open_patch_file(path)


# -- bad input --------------------------------------------------------------------------------

def _small(tmp_path):
    data = np.random.default_rng(1).normal(size=(2, 40, 40)).astype(np.float32)
    return {"stack_path": write_stack(tmp_path / "s.tif", data, channel_names(2)),
            "areas": write_polygons(tmp_path / "a.gpkg", [("3", box(2, 2, 20, 20))])}


BAD = [
    ("tile size 0", lambda p: {"tile_size": 0}, r"tile size must be a whole number .* 16 to "
                                                r"1024, not 0"),
    ("negative tile size", lambda p: {"tile_size": -8}, r"not -8"),
    ("tile size too small", lambda p: {"tile_size": 8}, r"from 16 to 1024, not 8"),
    ("tile size too large", lambda p: {"tile_size": 2048}, r"not 2048"),
    ("tile size not whole", lambda p: {"tile_size": 32.5}, r"whole number .* not 32.5"),
    ("tile larger than the stack", lambda p: {"tile_size": 64},
     r"40 x 40 pixels, smaller than one 64 x 64 pixel tile.*TILE_SIZE of at most 40"),
    ("sampling caps", lambda p: {"max_per_class": 10},
     r"MAX_PER_POLYGON and MAX_PER_CLASS limit patches.*Set both to 0"),
    ("unknown samples", lambda p: {"samples": "pixels"}, r"SAMPLES must be 'patches' .* or "
                                                         r"'tiles'.*not 'pixels'"),
    ("areas outside the stack", lambda p: {"areas": write_polygons(
        p / "far.gpkg", [("3", box(100, 100, 120, 120))])},
     r"none of the 1 training areas .* contains a pixel centre.*1 lie entirely outside"),
    ("all no-data", lambda p: {"stack_path": write_stack(
        p / "nd.tif", np.full((2, 40, 40), NODATA, np.float32), channel_names(2),
        nodata=NODATA)}, r"every pixel inside the training areas is no-data"),
    ("split leaves no training", lambda p: {"validation_fraction": 0.6, "test_fraction": 0.4},
     r"fractions must be in \[0, 1\) and leave some areas for training"),
    ("not .h5", lambda p: {"output": str(p / "out" / "t.tif")}, r"must end in .h5"),
    ("cell size", lambda p: {"cell_size": 35.0}, r"not a whole multiple"),
]


@pytest.mark.parametrize("case", bad_input_cases(BAD))
def test_bad_input_is_refused_and_leaves_nothing(tmp_path, case):
    good = dict(_small(tmp_path), output=str(tmp_path / "out" / "t.h5"), samples="tiles",
                tile_size=16)
    (tmp_path / "out").mkdir()
    assert_refused(case, extract_patches, good, tmp_path)


# -- the commit protocol ------------------------------------------------------------------------

def test_cancel_mid_way_keeps_the_previous_file(tmp_path):
    stack, areas, _ = mask_stack(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    extract_patches(stack, areas, str(out / "t.h5"), samples="tiles", tile_size=32)
    before = snapshot(out)
    feedback = RecordingFeedback(cancel_after_progress=8)  # 6 strips, then 2 rows of tiles
    with pytest.raises(Cancelled):
        extract_patches(stack, areas, str(out / "t.h5"), samples="tiles", tile_size=16,
                        summary_output=str(out / "t.json"), feedback=feedback,
                        strip_memory_mb=0.01)
    assert snapshot(out) == before and files_in(out) == ["t.h5"]


def test_full_disk_mid_way_leaves_no_file(tmp_path):
    stack, areas, _ = mask_stack(tmp_path)
    out = tmp_path / "out"
    call = "lcz_qgis_plugin.core.training_data.extraction:extract_patches"
    kwargs = {"samples": "tiles", "tile_size": 16, "summary_output": f"{out}/t.json"}
    good = run_core_limited(call, [stack, areas, f"{out}/t.h5"], kwargs)
    assert good.returncode == 0, good.stderr
    size = os.path.getsize(out / "t.h5")
    os.remove(out / "t.h5")
    os.remove(out / "t.json")
    done = run_core_limited(call, [stack, areas, f"{out}/t.h5"], kwargs, limit=size // 2)
    assert_one_clear_error(done, "File too large", "free some space")
    assert files_in(out) == []


# -- through Processing ----------------------------------------------------------------------------

@pytest.mark.qgis
def test_extractpatches_tiles_through_processing_run(processing, tmp_path):
    stack, areas, _ = mask_stack(tmp_path)
    results = processing.run("lcz:extractpatches", {
        "INPUT": stack, "TRAINING_AREAS": areas, "SAMPLES": 1, "TILE_SIZE": 16,
        "VALIDATION_FRACTION": 0.3, "SEED": 2, "OUTPUT": str(tmp_path / "alg.h5")})
    core = extract_patches(stack, areas, str(tmp_path / "core.h5"), samples="tiles",
                           tile_size=16, validation_fraction=0.3, seed=2)
    alg, read = load(results["OUTPUT"])
    ref, _ = load(core.output)
    assert results["PATCHES"] == core.patches == len(alg["masks"]) > 10
    assert read.sample_kind == "tiles" and read.patch_size == 16
    for key in ("patches", "masks", "labels", "centres", "polygon_ids", "split"):
        np.testing.assert_array_equal(alg[key], ref[key], err_msg=key)


@pytest.mark.qgis
def test_extractpatches_tiles_bad_tile_size_through_processing(processing, tmp_path):
    from qgis.core import QgsProcessingException
    small = _small(tmp_path)
    with pytest.raises(QgsProcessingException, match="smaller than one 64 x 64 pixel tile"):
        processing.run("lcz:extractpatches", {
            "INPUT": small["stack_path"], "TRAINING_AREAS": small["areas"], "SAMPLES": 1,
            "TILE_SIZE": 64, "OUTPUT": str(tmp_path / "t.h5")})
    assert not (tmp_path / "t.h5").exists()
