"""lcz:extractpatches and lcz:assessaccuracy headless: qgis_process.bin with the ZIP plugin."""

import csv

import numpy as np
import pytest
from lcz_testing import read, small_case, write_stack
from wudapt_template import cell_ring, write_wudapt_template

from lcz_qgis_plugin.core.assessment.accuracy import assess_accuracy
from lcz_qgis_plugin.core.training_data.patch_file import open_patch_file
from tools import synthcity

pytestmark = pytest.mark.qgis_process


@pytest.fixture(scope="module")
def city(synthetic_cities):
    return synthetic_cities.with_stack(seed=6, size_km=1.0)


def test_help_lists_the_parameters(qgis_process):
    done = qgis_process.call("help", "lcz:extractpatches")
    for name in ("INPUT", "TRAINING_AREAS", "CLASS_FIELD", "IGNORE_UNKNOWN_LABELS",
                 "PATCH_SIZE", "CELL_SIZE",
                 "MAX_PER_POLYGON", "MAX_PER_CLASS", "VALIDATION_FRACTION", "TEST_FRACTION",
                 "SEED", "OUTPUT", "OUTPUT_SUMMARY"):
        assert f"{name}:" in done.stdout, name
    done = qgis_process.call("help", "lcz:assessaccuracy")
    for name in ("INPUT", "REFERENCE_AREAS", "CLASS_FIELD", "IGNORE_UNKNOWN_LABELS",
                 "REFERENCE_RASTER", "OUTPUT_HTML", "OUTPUT_TABLE"):
        assert f"{name}:" in done.stdout, name


def test_extract_patches_json(qgis_process, city, tmp_path):
    town, stack = city
    done, answer = qgis_process.run_json("lcz:extractpatches", {
        "INPUT": stack, "TRAINING_AREAS": town.training_areas, "PATCH_SIZE": 32,
        "MAX_PER_POLYGON": 4, "TEST_FRACTION": 0.3, "SEED": 1,
        "OUTPUT": str(tmp_path / "p.h5")})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = answer["results"]
    f, info = open_patch_file(results["OUTPUT"])
    with f:
        assert f["patches"].shape == (results["PATCHES"], 11, 32, 32)
        _, per_polygon = np.unique(f["polygon_ids"][...], return_counts=True)
        assert per_polygon.max() <= 4
        assert "split" in f
    assert info.patch_size == 32


def test_extract_patches_outside_the_raster_fails_with_the_reason(qgis_process, city,
                                                                   synthetic_cities, tmp_path):
    _, stack = city
    other = synthetic_cities.city(seed=1, size_km=0.5)
    # shift the stack far away: same CRS, no overlap with the training areas
    data = read(stack)
    moved = write_stack(tmp_path / "moved.tif", data, [f"S2:{b}" for b in synthcity.BANDS]
                        + ["DSM:height"], origin=(300000.0, 5100000.0))
    done, _ = qgis_process.run_json("lcz:extractpatches", {
        "INPUT": moved, "TRAINING_AREAS": other.training_areas,
        "OUTPUT": str(tmp_path / "p.h5")})
    assert done.returncode != 0
    assert "lie entirely outside it" in done.stdout + done.stderr
    assert not (tmp_path / "p.h5").exists()


def test_assess_accuracy_json_with_a_csv_table(qgis_process, city, tmp_path):
    town, _ = city
    done, answer = qgis_process.run_json("lcz:assessaccuracy", {
        "INPUT": town.truth, "REFERENCE_AREAS": town.training_areas, "CLASS_FIELD": "lcz",
        "OUTPUT_HTML": str(tmp_path / "r.html"), "OUTPUT_TABLE": str(tmp_path / "t.csv")})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = answer["results"]
    core = assess_accuracy(town.truth, reference_areas=town.training_areas)
    assert results["OA"] == 1.0 and results["SAMPLES"] == core.samples
    with open(tmp_path / "t.csv", newline="") as f:
        rows = {int(r["code"]): r for r in csv.DictReader(f)}
    assert len(rows) == 17
    for row in core.classes:
        assert int(rows[row.code]["reference"]) == row.reference
    assert "Confusion matrix" in (tmp_path / "r.html").read_text(encoding="utf-8")
    text = (tmp_path / "t.csv").read_text(encoding="utf-8")  # numbers unquoted (issue 11, 7f)
    assert "\n1,1,Compact high-rise," in text and '\n13,C,"Bush, scrub",' in text
    assert '"' not in text.replace('"Bush, scrub"', "")




def test_layer_filter_is_honoured(qgis_process, tmp_path):
    """qgis_process with ``|subset=``: only the filtered polygons count (issue 11, item 4)."""
    stack, lcz_map, areas = small_case(tmp_path)
    for reference, cells in ((areas, 6), (f"{areas}|subset=\"lcz\" = 'D'", 2)):
        done, answer = qgis_process.run_json("lcz:assessaccuracy", {
            "INPUT": lcz_map, "REFERENCE_AREAS": reference,
            "OUTPUT_HTML": str(tmp_path / "r.html")})
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert answer["results"]["SAMPLES"] == cells
    done, answer = qgis_process.run_json("lcz:extractpatches", {
        "INPUT": stack, "TRAINING_AREAS": f"{areas}|subset=\"lcz\" = 'D'", "PATCH_SIZE": 8,
        "OUTPUT": str(tmp_path / "p.h5")})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert answer["results"]["PATCHES"] == 2


def test_wudapt_kmz_with_roi_and_unknown_labels(qgis_process, tmp_path):
    """A WUDAPT template KMZ (issue 11, item 2): refused for its unknown label, accepted with
    IGNORE_UNKNOWN_LABELS; the ROI never becomes a training area."""
    stack, _, _ = small_case(tmp_path)
    path = write_wudapt_template(
        tmp_path / "t.kmz", [("1", cell_ring(0, 0, rows=2, cols=2)),
                             ("D", cell_ring(2, 0, cols=2))],
        roi=cell_ring(0, 0, rows=5, cols=5, inset=-20.0), kmz=True,
        others=[("X", cell_ring(4, 4))])
    parameters = {"INPUT": stack, "TRAINING_AREAS": path, "PATCH_SIZE": 8,
                  "OUTPUT": str(tmp_path / "p.h5")}
    done, _ = qgis_process.run_json("lcz:extractpatches", parameters)
    assert done.returncode != 0
    assert "'X' (1x)" in done.stdout + done.stderr
    assert "IGNORE_UNKNOWN_LABELS" in done.stdout + done.stderr
    done, answer = qgis_process.run_json("lcz:extractpatches",
                                         dict(parameters, IGNORE_UNKNOWN_LABELS="true"))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert answer["results"]["PATCHES"] == 6
    assert "left out of the training areas" in done.stdout + done.stderr


def test_wudapt_kmz_where_gdal_has_no_libkml_driver(qgis_process, tmp_path):
    """Debian unstable's GDAL (QGIS 3.44 there) has no LIBKML driver, so QGIS cannot open a
    .kmz as a layer; the plugin still reads it (its doc.kml, through GDAL's KML driver).
    Reproduced for real with GDAL_SKIP=LIBKML on qgis_process.bin."""
    stack, lcz_map, _ = small_case(tmp_path)
    path = write_wudapt_template(
        tmp_path / "t.kmz", [("1", cell_ring(0, 0, rows=2, cols=2)),
                             ("D", cell_ring(2, 0, cols=2))],
        roi=cell_ring(0, 0, rows=5, cols=5, inset=-20.0), kmz=True)
    env = dict(qgis_process.env, GDAL_SKIP="LIBKML")
    done, answer = qgis_process.run_json("lcz:extractpatches", {
        "INPUT": stack, "TRAINING_AREAS": path, "PATCH_SIZE": 8,
        "OUTPUT": str(tmp_path / "p.h5")}, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert answer["results"]["PATCHES"] == 6
    done, answer = qgis_process.run_json("lcz:assessaccuracy", {
        "INPUT": lcz_map, "REFERENCE_AREAS": path,
        "OUTPUT_HTML": str(tmp_path / "r.html")}, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert answer["results"]["SAMPLES"] == 6
