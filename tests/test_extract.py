"""lcz:extractpatches core: patches from training areas, checked against the stack itself."""

import json
import os

import h5py
import numpy as np
import pytest
from lcz_testing import (
    ORIGIN,
    RecordingFeedback,
    cell_square,
    channel_names,
    files_in,
    read,
    stack_from_synthcity,
    write_kml,
    write_polygons,
    write_stack,
)
from osgeo import gdal, ogr

from lcz_qgis_plugin.core.errors import Cancelled, InputError
from lcz_qgis_plugin.core.training_data.extraction import extract_patches
from lcz_qgis_plugin.core.training_data.patch_file import open_patch_file
from tools import synthcity


@pytest.fixture(scope="module")
def city(synthetic_cities):
    return synthetic_cities.with_stack(seed=5, size_km=1.0)


@pytest.fixture
def small_stack(tmp_path):
    """60 x 60 px of 10 m (6 x 6 cells of 100 m), three channels of random values."""
    data = np.random.default_rng(3).normal(size=(3, 60, 60)).astype(np.float32)
    return write_stack(tmp_path / "small.tif", data, channel_names(3)), data


def load(path):
    f, info = open_patch_file(str(path))
    with f:
        arrays = {k: f[k][...] for k in f.keys()}
    return arrays, info


def cells_inside(areas_path, rows, cols, cell=100.0, origin=ORIGIN, field="lcz"):
    """(row, col) -> label of every cell centre inside a polygon, by brute force."""
    ds = ogr.Open(str(areas_path))
    layer = ds.GetLayer(0)
    out = {}
    point = ogr.Geometry(ogr.wkbPoint)
    for feature in layer:
        geometry = feature.GetGeometryRef()
        for r in range(rows):
            for c in range(cols):
                point.SetPoint_2D(0, origin[0] + (c + 0.5) * cell, origin[1] - (r + 0.5) * cell)
                if geometry.Contains(point):
                    out[(r, c)] = feature.GetField(field)
    return out


def test_patches_are_the_cells_inside_the_areas_centred_like_classify(city, tmp_path):
    town, stack = city
    feedback = RecordingFeedback()
    result = extract_patches(stack, town.training_areas, str(tmp_path / "p.h5"),
                             summary_output=str(tmp_path / "p.json"), feedback=feedback)
    arrays, info = load(result.output)
    truth = read(town.truth)
    expected = cells_inside(town.training_areas, *truth.shape, origin=synthcity.ORIGIN)
    assert result.patches == len(expected) == len(arrays["labels"]) > 20
    assert info.channels == [f"S2:{b}" for b in synthcity.BANDS] + ["DSM:height"]
    assert info.scale == [1e-4] * 10 + [1.0] and info.offset == [0.0] * 11
    assert info.patch_size == 48 and info.cell_size == 100.0 and info.pixel_size == 10.0
    assert "split" not in arrays
    # the patch of cell (r, c) is the 48 x 48 window centred on pixel (10r+5, 10c+5) of the
    # stack reflected at its edges, exactly as lcz:classify cuts it
    scene = read(stack)
    padded = np.pad(scene, ((0, 0), (48, 48), (48, 48)), mode="reflect")
    x0, y0 = synthcity.ORIGIN
    seen = set()
    for k, (x, y) in enumerate(arrays["centres"]):
        c, r = int((x - x0) // 100), int((y0 - y) // 100)
        assert (x, y) == (x0 + (c + 0.5) * 100, y0 - (r + 0.5) * 100)
        top, left = r * 10 + 5 - 24 + 48, c * 10 + 5 - 24 + 48
        np.testing.assert_array_equal(arrays["patches"][k], padded[:, top:top + 48, left:left + 48])
        assert arrays["labels"][k] == truth[r, c]
        seen.add((r, c))
    assert seen == set(expected)
    summary = json.loads((tmp_path / "p.json").read_text())
    assert summary["patches"] == result.patches
    assert sum(row["total"] for row in summary["classes"].values()) == result.patches
    assert any("Wrote" in line for line in feedback.infos)
    assert feedback.percent[-1] == 100.0


def test_wudapt_kml_gives_the_same_patches_after_reprojection(city, tmp_path):
    town, stack = city
    feedback = RecordingFeedback()
    from_gpkg = extract_patches(stack, town.training_areas, str(tmp_path / "a.h5"))
    from_kml = extract_patches(stack, town.training_areas_kml, str(tmp_path / "b.h5"),
                               feedback=feedback)
    a, _ = load(from_gpkg.output)
    b, _ = load(from_kml.output)
    np.testing.assert_array_equal(a["centres"], b["centres"])
    np.testing.assert_array_equal(a["labels"], b["labels"])
    assert any("Reprojected" in line and "WGS 84" in line for line in feedback.infos)


def test_band_scale_and_offset_are_recorded(city, tmp_path):
    town, _ = city
    stack = stack_from_synthcity(town, tmp_path / "raw_dn.tif", offset_in_metadata=True)
    result = extract_patches(stack, town.training_areas, str(tmp_path / "p.h5"))
    arrays, info = load(result.output)
    assert info.scale[:10] == [1e-4] * 10 and info.offset[:10] == pytest.approx([-0.1] * 10)
    assert (info.scale[10], info.offset[10]) == (1.0, 0.0)
    assert arrays["patches"][:, :10].min() >= 1.0  # raw DN with the +1000 offset


def test_caps_and_seed(city, tmp_path):
    town, stack = city
    capped = extract_patches(stack, town.training_areas, str(tmp_path / "a.h5"),
                             max_per_polygon=3, max_per_class=5, seed=1)
    arrays, _ = load(capped.output)
    _, per_polygon = np.unique(arrays["polygon_ids"], return_counts=True)
    _, per_class = np.unique(arrays["labels"], return_counts=True)
    assert per_polygon.max() <= 3 and per_class.max() <= 5
    again = extract_patches(stack, town.training_areas, str(tmp_path / "b.h5"),
                            max_per_polygon=3, max_per_class=5, seed=1)
    other = extract_patches(stack, town.training_areas, str(tmp_path / "c.h5"),
                            max_per_polygon=3, max_per_class=5, seed=2)
    np.testing.assert_array_equal(load(again.output)[0]["centres"], arrays["centres"])
    assert not np.array_equal(load(other.output)[0]["centres"], arrays["centres"])


def test_hold_out_split_is_by_polygon_and_per_class(small_stack, tmp_path):
    stack, _ = small_stack
    items = [("D", cell_square(r, c)) for r in range(5) for c in range(2)]  # 10 polygons
    items += [("2", cell_square(0, 3, rows=2, cols=2))]  # one polygon of 4 cells
    areas = write_polygons(tmp_path / "areas.gpkg", items)
    feedback = RecordingFeedback()
    result = extract_patches(stack, areas, str(tmp_path / "p.h5"), patch_size=8,
                             validation_fraction=0.2, test_fraction=0.2, seed=4,
                             feedback=feedback)
    arrays, info = load(result.output)
    assert info.has_split
    split_of = {}
    for pid, split in zip(arrays["polygon_ids"], arrays["split"]):
        assert split_of.setdefault(int(pid), int(split)) == int(split)
    natural = [s for pid, s in split_of.items() if pid <= 10]
    assert sorted(natural) == [0] * 6 + [1] * 2 + [2] * 2
    assert split_of[11] == 0  # the only polygon of class 2 stays in training
    assert any("too few polygons" in w and "2 (1)" in w for w in feedback.warnings)
    assert result.counts[14] == {"train": 6, "validation": 2, "test": 2}


def test_unknown_labels_are_all_listed(small_stack, tmp_path):
    stack, _ = small_stack
    areas = write_polygons(tmp_path / "areas.gpkg", [
        ("3", cell_square(0, 0)), ("X", cell_square(1, 1)), ("99", cell_square(2, 2)),
        ("H", cell_square(3, 3)), ("X", cell_square(4, 4)), ("104", cell_square(5, 5))])
    with pytest.raises(InputError) as error:
        extract_patches(stack, areas, str(tmp_path / "p.h5"), patch_size=8)
    message = str(error.value)
    for label in ("'X' (2x)", "'99' (1x)", "'H' (1x)"):
        assert label in message
    assert "'3'" not in message and "'104'" not in message and "101-107" in message
    assert not (tmp_path / "p.h5").exists()


def test_kml_placemarks_without_names(small_stack, tmp_path):
    stack, _ = small_stack
    ds = gdal.Open(stack)
    from osgeo import osr
    utm = ds.GetSpatialRef()
    utm.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    wgs = osr.SpatialReference()
    wgs.ImportFromEPSG(4326)
    wgs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    to_wgs = osr.CoordinateTransformation(utm, wgs)

    def ring(r, c):
        xa, ya = ORIGIN[0] + c * 100 + 10, ORIGIN[1] - r * 100 - 10
        corners = [(xa, ya), (xa + 80, ya), (xa + 80, ya - 80), (xa, ya - 80)]
        return [to_wgs.TransformPoint(x, y)[:2] for x, y in corners]

    kml = write_kml(tmp_path / "areas.kml", [("A", ring(0, 0)), (None, ring(1, 1)),
                                             ("G", ring(2, 2))])
    feedback = RecordingFeedback()
    result = extract_patches(stack, kml, str(tmp_path / "p.h5"), patch_size=8,
                             feedback=feedback)
    assert result.patches == 2 and set(result.counts) == {11, 17}
    assert any("1 placemarks without a name" in w for w in feedback.warnings)
    unnamed = write_kml(tmp_path / "unnamed.kml", [(None, ring(0, 0)), (None, ring(1, 1))])
    with pytest.raises(InputError, match="Name each placemark"):
        extract_patches(stack, unnamed, str(tmp_path / "q.h5"), patch_size=8)


def test_polygons_outside_the_raster(small_stack, tmp_path):
    stack, _ = small_stack
    far = cell_square(50, 50)
    x, y = ORIGIN[0] + 210, ORIGIN[1] - 210  # 20 m square in a cell's corner: no centre
    corner = f"POLYGON(({x} {y},{x + 20} {y},{x + 20} {y - 20},{x} {y - 20},{x} {y}))"
    areas = write_polygons(tmp_path / "areas.gpkg", [("6", cell_square(1, 1)), ("A", far),
                                                     ("B", corner)])
    feedback = RecordingFeedback()
    result = extract_patches(stack, areas, str(tmp_path / "p.h5"), patch_size=8,
                             feedback=feedback)
    assert result.patches == 1 and set(result.counts) == {6}
    assert any("outside the input raster" in w and "2 ('A')" in w for w in feedback.warnings)
    assert any("hold no cell centre" in w and "3 ('B')" in w for w in feedback.warnings)
    only_far = write_polygons(tmp_path / "far.gpkg", [("A", far), ("B", cell_square(60, 1))])
    with pytest.raises(InputError, match="2 lie entirely outside it"):
        extract_patches(stack, only_far, str(tmp_path / "q.h5"), patch_size=8)
    assert not (tmp_path / "q.h5").exists()


def test_polygons_in_another_crs_are_reprojected(small_stack, tmp_path):
    stack, _ = small_stack
    items = [("1", cell_square(0, 0, rows=2, cols=3)), ("E", cell_square(4, 1, cols=2))]
    utm = write_polygons(tmp_path / "utm.gpkg", items)
    mercator = write_polygons(tmp_path / "merc.gpkg", items, epsg=3857, source_epsg=32633)
    feedback = RecordingFeedback()
    a = extract_patches(stack, utm, str(tmp_path / "a.h5"), patch_size=8)
    b = extract_patches(stack, mercator, str(tmp_path / "b.h5"), patch_size=8,
                        feedback=feedback)
    assert a.patches == b.patches == 8
    np.testing.assert_array_equal(load(a.output)[0]["centres"], load(b.output)[0]["centres"])
    assert any("Reprojected 2 training areas from WGS 84 / Pseudo-Mercator" in line
               for line in feedback.infos)


def test_class_field_problems(small_stack, tmp_path):
    stack, _ = small_stack
    areas = write_polygons(tmp_path / "areas.gpkg", [("3", cell_square(0, 0))], field="kind")
    with pytest.raises(InputError, match=r"cannot tell which field .* \(fields: kind\)"):
        extract_patches(stack, areas, str(tmp_path / "p.h5"), patch_size=8)
    with pytest.raises(InputError, match="has no field 'lcz'. Its fields are: kind"):
        extract_patches(stack, areas, str(tmp_path / "p.h5"), patch_size=8, class_field="lcz")
    result = extract_patches(stack, areas, str(tmp_path / "p.h5"), patch_size=8,
                             class_field="kind")
    assert result.counts == {3: {"train": 1}}


def test_stack_and_output_problems(small_stack, tmp_path):
    stack, data = small_stack
    areas = write_polygons(tmp_path / "areas.gpkg", [("3", cell_square(0, 0))])
    unnamed = write_stack(tmp_path / "unnamed.tif", data, ["T:a", "", "T:c"])
    with pytest.raises(InputError, match="bands 2 of the input stack .* have no description"):
        extract_patches(unnamed, areas, str(tmp_path / "p.h5"), patch_size=8)
    with pytest.raises(InputError, match="must end in .h5"):
        extract_patches(stack, areas, str(tmp_path / "p.tif"), patch_size=8)
    with pytest.raises(InputError, match="not a whole multiple"):
        extract_patches(stack, areas, str(tmp_path / "p.h5"), patch_size=8, cell_size=35)


def test_cancel_leaves_no_patch_file(city, tmp_path):
    town, stack = city
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(Cancelled):
        extract_patches(stack, town.training_areas, str(out / "p.h5"), strip_memory_mb=1,
                        feedback=RecordingFeedback(cancel_after=1))
    assert files_in(out) == []


def test_patch_file_is_readable_by_h5py_in_batches(city, tmp_path):
    town, stack = city
    result = extract_patches(stack, town.training_areas, str(tmp_path / "p.h5"),
                             validation_fraction=0.3, seed=3)
    with h5py.File(result.output, "r") as f:
        assert f["patches"].chunks[1:] == (11, 48, 48)
        batch = f["patches"][5:9]
        assert batch.shape == (4, 11, 48, 48) and batch.dtype == np.float32
        assert set(np.unique(f["split"][...])) <= {0, 1}
        assert json.loads(f.attrs["source"])["validation_fraction"] == 0.3
    assert os.path.getsize(result.output) > 0


def test_wudapt_kml_with_one_folder_per_class_is_read_whole(tmp_path):
    """WUDAPT templates keep each class in its own folder (one OGR layer each)."""
    from lcz_qgis_plugin.core.areas import read_areas
    square = "14.0,48.0,0 14.001,48.0,0 14.001,48.001,0 14.0,48.0,0"
    folders = "".join(
        f"<Folder><name>LCZ {name}</name><Placemark><name>{name}</name><Polygon>"
        f"<outerBoundaryIs><LinearRing><coordinates>{square}</coordinates></LinearRing>"
        f"</outerBoundaryIs></Polygon></Placemark></Folder>" for name in ("2", "B", "G"))
    path = tmp_path / "wudapt.kml"
    path.write_text('<?xml version="1.0" encoding="UTF-8"?><kml xmlns="http://www.opengis.net/'
                    f'kml/2.2"><Document>{folders}</Document></kml>')
    areas = read_areas(str(path))
    assert [a.code for a in areas.areas] == [2, 12, 17]
    assert len({a.polygon_id for a in areas.areas}) == 3
    assert "4326" in areas.crs_wkt or "WGS 84" in areas.crs_wkt


def test_cells_whose_patch_is_mostly_nodata_are_skipped(tmp_path):
    data = np.random.default_rng(5).normal(size=(2, 60, 60)).astype(np.float32)
    data[:, :, 30:] = -9999.0  # the east half is no-data
    stack = write_stack(tmp_path / "s.tif", data, ["T:a", "T:b"], nodata=-9999.0)
    areas = write_polygons(tmp_path / "a.gpkg", [("5", cell_square(0, 0, rows=6, cols=6))])
    feedback = RecordingFeedback()
    result = extract_patches(stack, areas, str(tmp_path / "p.h5"), patch_size=8,
                             feedback=feedback)
    arrays, _ = load(result.output)
    assert result.patches == 18  # the 3 western columns of cells
    assert (arrays["centres"][:, 0] < ORIGIN[0] + 300).all()
    assert any("skipped 18 cell(s) whose patch is mostly no-data" in w for w in feedback.warnings)
    east = write_polygons(tmp_path / "e.gpkg", [("5", cell_square(0, 3, rows=6, cols=3))])
    with pytest.raises(InputError, match="every cell inside the training areas is no-data"):
        extract_patches(stack, east, str(tmp_path / "q.h5"), patch_size=8)
    assert not (tmp_path / "q.h5").exists()


def unequal_polygons(tmp_path):
    """22 x 20 cells of 100 m. LCZ D: one polygon of 200 cells and 25 of 4 cells; LCZ 2:
    polygons of 40, 30, 20 and 10 cells; LCZ 7: two polygons of 5 cells; LCZ G: one of 3."""
    data = np.random.default_rng(8).normal(size=(2, 220, 200)).astype(np.float32)
    stack = write_stack(tmp_path / "wide.tif", data, channel_names(2))
    items = [("D", cell_square(0, 0, rows=10, cols=20))]
    items += [("D", cell_square(10 + 2 * i, 2 * j, rows=2, cols=2))
              for i in range(5) for j in range(5)]
    items += [("2", cell_square(r, 10, rows=n, cols=10)) for r, n in ((10, 4), (14, 3), (17, 2),
                                                                       (19, 1))]
    items += [("7", cell_square(20, 0, cols=5)), ("7", cell_square(20, 5, cols=5)),
              ("G", cell_square(21, 0, cols=3))]
    return stack, write_polygons(tmp_path / "unequal.gpkg", items)


def split_by_polygon(path):
    arrays, _ = load(path)
    split_of, code_of = {}, {}
    for pid, code, split in zip(arrays["polygon_ids"], arrays["labels"], arrays["split"]):
        assert split_of.setdefault(int(pid), int(split)) == int(split)  # never shared
        code_of[int(pid)] = int(code)
    return split_of, code_of, arrays


def test_split_aims_at_the_fraction_of_patches_not_of_polygons(tmp_path):
    """Old rule (a share of the polygons): LCZ D got 5 of its 26 polygons for validation,
    i.e. 20 patches (7 %) or, when the big polygon was among them, over 70 %. Now the held-out
    patches come within half the smallest polygon (2 patches here) of the requested share."""
    stack, areas = unequal_polygons(tmp_path)
    for seed in (0, 1, 2, 3):
        feedback = RecordingFeedback()
        result = extract_patches(stack, areas, str(tmp_path / f"s{seed}.h5"), patch_size=8,
                                 validation_fraction=0.2, test_fraction=0.1, seed=seed,
                                 feedback=feedback)
        split_of, code_of, _ = split_by_polygon(result.output)
        d = result.counts[14]
        assert sum(d.values()) == 300
        assert abs(d["validation"] - 60) <= 2 and abs(d["test"] - 30) <= 2, (seed, d)
        big = min(pid for pid, code in code_of.items() if code == 14)
        assert split_of[big] == 0  # the 200-cell polygon stays in training
        assert result.counts[2] == {"train": 70, "validation": 20, "test": 10}


def test_split_minimum_per_class_and_its_warnings(tmp_path):
    stack, areas = unequal_polygons(tmp_path)
    feedback = RecordingFeedback()
    result = extract_patches(stack, areas, str(tmp_path / "p.h5"), patch_size=8,
                             validation_fraction=0.2, test_fraction=0.1, seed=4,
                             feedback=feedback)
    # two polygons: one for validation even though 50 % is far from 20 %; none for test
    assert result.counts[7] == {"train": 5, "validation": 5}
    assert result.counts[17] == {"train": 3}  # one polygon: all in training
    assert any("too few polygons" in w and "7 (2), G (1)" in w for w in feedback.warnings)
    far = [w for w in feedback.warnings if "could not bring the hold-out near" in w]
    assert len(far) == 1 and "7 validation 5 of 10 patches (50 %)" in far[0], far
    assert "D " not in far[0] and "2 " not in far[0]


def test_split_is_deterministic_for_a_seed(tmp_path):
    stack, areas = unequal_polygons(tmp_path)
    runs = [extract_patches(stack, areas, str(tmp_path / f"{name}.h5"), patch_size=8,
                            validation_fraction=0.2, test_fraction=0.1, seed=seed)
            for name, seed in (("a", 7), ("b", 7), ("c", 8))]
    a, b, c = (split_by_polygon(run.output)[0] for run in runs)
    assert a == b and a != c
    assert runs[0].counts == runs[1].counts


def test_summary_table_columns_line_up_with_split_shares(tmp_path):
    stack, areas = unequal_polygons(tmp_path)
    feedback = RecordingFeedback()
    extract_patches(stack, areas, str(tmp_path / "p.h5"), patch_size=8,
                    validation_fraction=0.2, test_fraction=0.1, seed=4, feedback=feedback)
    start = next(i for i, line in enumerate(feedback.infos) if line.startswith("Wrote"))
    table = feedback.infos[start + 1:start + 6]
    assert table[0].split() == ["LCZ", "class", "polygons", "train", "validation", "test",
                                "total"]
    assert len({len(line) for line in table}) == 1, table  # right-aligned to one edge
    seven = next(line for line in table if "Lightweight low-rise" in line)
    assert "5 (50 %)" in seven and "0 (0 %)" in seven
    d = next(line for line in table if "Low plants" in line)
    assert "60 (20 %)" in d
    for title in ("polygons", "train", "validation", "test", "total"):  # right edges agree
        edge = table[0].index(title) + len(title)
        assert all(line[edge - 1] != " " and (edge == len(line) or line[edge] == " ")
                   for line in table), (title, table)
