"""Inputs and destinations that used to give a "successful" run with a wrong or missing result
(issue 12, item 5) now end with a clear error; and the help page is written where no other
local user can redirect it (item 7)."""

import os
import re
import shutil
import stat
import subprocess

import lcz_testing
import numpy as np
import pytest
from lcz_testing import (
    RecordingFeedback,
    files_in,
    shared_data,
    write_stack,
)
from s2_product import make_product
from test_preprocess_osm import lonlat_grid, osm_xml, square

from lcz_qgis_plugin.core.assessment.accuracy import assess_accuracy
from lcz_qgis_plugin.core.errors import InputError, OutputError
from lcz_qgis_plugin.core.preprocess.osm import rasterize_osm
from lcz_qgis_plugin.core.preprocess.sentinel2 import SO2SAT_BANDS, stack_sentinel2

# -- a truncated OpenStreetMap file -------------------------------------------------------------


def osm_buildings(folder):
    """A reference grid and an .osm XML file of six buildings inside it."""
    ref, _ = lonlat_grid(folder)
    path = osm_xml(folder / "city.osm", [(square(i), {"building": "yes"}) for i in range(6)])
    return ref, path


def cut(path, keep, suffix):
    """A copy of ``path`` cut after ``keep`` of its bytes, as an interrupted download is."""
    data = open(path, "rb").read()
    target = os.path.join(os.path.dirname(path), "cut" + suffix)
    with open(target, "wb") as f:
        f.write(data[:int(len(data) * keep)] if isinstance(keep, float) else data[:keep])
    return target


CUT_OFF = r"the OSM file .*cut.* looks cut off or damaged: .*Download the extract again"


@pytest.mark.parametrize("where", ["in a node", "before </osm>"])
def test_cut_off_osm_xml_is_refused(tmp_path, where):
    """Cut in the middle, GDAL's OSM driver used to return no feature and the run wrote a
    raster without a single building, with exit status 0."""
    ref, full = osm_buildings(tmp_path)
    text = open(full, encoding="utf-8").read()
    keep = text.index("<node", len(text) // 2) + 12 if where == "in a node" else \
        text.rindex("</osm>")
    path = cut(full, keep, ".osm")
    out = tmp_path / "out"
    with pytest.raises(InputError, match=CUT_OFF):
        rasterize_osm(ref, str(out / "osm.tif"), osm_file=path)
    assert not out.exists() or files_in(out) == []
    result = rasterize_osm(ref, str(out / "osm.tif"), osm_file=full)  # the whole file reads
    assert result.counts["building"] > 0


def test_cut_off_osm_pbf_is_refused(tmp_path):
    source = shared_data("osm/test.osm.pbf")
    whole = str(tmp_path / "test.osm.pbf")
    shutil.copyfile(source, whole)
    path = cut(whole, 0.6, ".osm.pbf")
    ref = write_stack(tmp_path / "ref.tif", np.zeros((1, 20, 20), np.float32), ["ref"],
                      epsg=32635, origin=(385000.0, 6672000.0))
    with pytest.raises(InputError, match=CUT_OFF + r".*") as info:
        rasterize_osm(ref, str(tmp_path / "out" / "osm.tif"), osm_file=path)
    assert "cut.osm.pbf" in str(info.value)


# -- damaged Sentinel-2 product metadata ----------------------------------------------------

X0, Y0 = 465181.0, 5080255.0


def bands(size=12):
    rng = np.random.default_rng(3)
    return {b: rng.uniform(0.02, 0.5, size=(size, size)).astype(np.float32)
            for b in SO2SAT_BANDS}


def damaged_product(folder, level, old, new):
    """A product whose MTD_MSIL*.xml has ``old`` replaced by ``new`` (once)."""
    product = make_product(folder, bands(), X0, Y0, level=level)
    name = "MTD_MSIL1C.xml" if level == "L1C" else "MTD_MSIL2A.xml"
    path = os.path.join(product, name)
    text = open(path, encoding="utf-8").read()
    assert old in text
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace(old, new, 1))
    return product


DAMAGED = [  # (case, level, text in the metadata, damaged text, element, value)
    ("NaN BOA_ADD_OFFSET", "L2A", '<BOA_ADD_OFFSET band_id="1">-1000<',
     '<BOA_ADD_OFFSET band_id="1">NaN<', "BOA_ADD_OFFSET", "NaN"),
    ("text RADIO_ADD_OFFSET", "L1C", '<RADIO_ADD_OFFSET band_id="3">-1000<',
     '<RADIO_ADD_OFFSET band_id="3">minus<', "RADIO_ADD_OFFSET", "minus"),
    ("quantification 0", "L1C", "<QUANTIFICATION_VALUE>10000<",
     "<QUANTIFICATION_VALUE>0<", "QUANTIFICATION_VALUE", "0"),
    ("quantification abc", "L2A", "<BOA_QUANTIFICATION_VALUE>10000<",
     "<BOA_QUANTIFICATION_VALUE>abc<", "BOA_QUANTIFICATION_VALUE", "abc"),
    ("quantification NaN", "L1C", "<QUANTIFICATION_VALUE>10000<",
     "<QUANTIFICATION_VALUE>nan<", "QUANTIFICATION_VALUE", "nan"),
    ("negative quantification", "L1C", "<QUANTIFICATION_VALUE>10000<",
     "<QUANTIFICATION_VALUE>-10000<", "QUANTIFICATION_VALUE", "-10000"),
    ("text band_id", "L2A", '<BOA_ADD_OFFSET band_id="2">', '<BOA_ADD_OFFSET band_id="B03">',
     "band_id of BOA_ADD_OFFSET", "B03"),
]


@pytest.mark.parametrize("case,level,old,new,element,value", DAMAGED,
                         ids=[d[0] for d in DAMAGED])
def test_damaged_sentinel2_metadata_is_refused(tmp_path, case, level, old, new, element,
                                               value):
    """Used to give an all-no-data band (NaN offset), infinities or a traceback
    (ZeroDivisionError, ValueError)."""
    product = damaged_product(tmp_path, level, old, new)
    out = tmp_path / "out"
    with pytest.raises(InputError) as info:
        stack_sentinel2([product], str(out / "stack.tif"))
    message = str(info.value)
    assert product in message and f"{element} is '{value}'" in message, message
    assert "damaged" in message and "Download the product again" in message
    assert not out.exists() or files_in(out) == []


# -- destinations of lcz:assessaccuracy, checked before any work ----------------------------

@pytest.fixture
def small_map(tmp_path):
    (tmp_path / "notes.txt").write_text("a file, so no folder can be made under it")
    return lcz_testing.small_map(tmp_path)


def test_core_report_destination_is_checked_before_any_work(small_map, tmp_path):
    lcz_map, areas = small_map
    feedback = RecordingFeedback()
    report = tmp_path / "notes.txt" / "report.html"
    with pytest.raises(OutputError, match=r"cannot create the folder .*notes.txt for the "
                                          r"accuracy report: .*notes.txt is a file, not a "
                                          r"folder; choose another folder"):
        assess_accuracy(lcz_map, reference_areas=areas, report=str(report), feedback=feedback)
    assert feedback.percent == [] and feedback.infos == []  # nothing was computed


def assess(processing, small_map, tmp_path, table):
    lcz_map, areas = small_map
    return processing.run("lcz:assessaccuracy", {
        "INPUT": lcz_map, "REFERENCE_AREAS": areas, "OUTPUT_HTML": str(tmp_path / "r.html"),
        "OUTPUT_TABLE": table})


@pytest.mark.qgis
@pytest.mark.parametrize("table,message", [
    ("notes.txt/t.csv", r"cannot create the folder .*notes.txt for the per-class table: "
                        r".*notes.txt is a file"),
    ("t.xyz", r"the per-class table .*t.xyz must end in .csv, .gpkg, .xlsx, .ods"),
], ids=["folder under a file", "unknown extension"])
def test_unwritable_table_stops_the_run_before_the_report(processing, small_map, tmp_path,
                                                          table, message):
    from qgis.core import QgsProcessingException
    with pytest.raises(QgsProcessingException, match=message):
        assess(processing, small_map, tmp_path, str(tmp_path / table))
    assert not (tmp_path / "r.html").exists()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(("t.", ".t."))]


@pytest.fixture
def read_only_folder(tmp_path):
    """A read-only file system (tmpfs mounted ro): refuses root too, unlike chmod."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a read-only tmpfs needs root and mount")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mount is not allowed here: {done.stderr.strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.qgis_process
def test_table_on_a_read_only_disk_fails_in_qgis_process(qgis_process, small_map, tmp_path,
                                                         read_only_folder):
    """GDAL's CSV writer on a read-only folder gave a sink that dropped every row: the run
    reported success (exit 0) and wrote no table."""
    lcz_map, areas = small_map
    done, _ = qgis_process.run_json("lcz:assessaccuracy", {
        "INPUT": lcz_map, "REFERENCE_AREAS": areas, "OUTPUT_HTML": str(tmp_path / "r.html"),
        "OUTPUT_TABLE": str(read_only_folder / "t.csv")})
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-2000:]
    assert re.search(r"cannot write the per-class table into .*ro: Read-only file system",
                     output)
    assert "Traceback" not in output
    assert not (tmp_path / "r.html").exists() and os.listdir(read_only_folder) == []


# -- the help page (item 7) -------------------------------------------------------------------

@pytest.mark.qgis
def test_help_page_is_private_and_never_follows_a_link(qgis_app, tmp_path, monkeypatch):
    """helpUrl() wrote to a fixed name in the shared temporary folder, through any link
    another local user planted there."""
    import tempfile

    from qgis.core import QgsApplication
    from qgis.PyQt.QtCore import QUrl

    from lcz_qgis_plugin.algorithms import base
    shared = tmp_path / "shared_tmp"
    shared.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    monkeypatch.setattr(base, "_help_folder", None)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    old_folder = shared / "lcz_qgis_plugin_help"  # the old fixed place, links planted
    old_folder.mkdir()
    (old_folder / "classify.html").symlink_to(victim)
    for guess in ("lcz_qgis_plugin_help-", "lcz_qgis_plugin_help-classify"):
        (shared / guess).symlink_to(tmp_path)
    algorithm = QgsApplication.processingRegistry().algorithmById("lcz:classify")
    page = QUrl(algorithm.helpUrl()).toLocalFile()
    folder = os.path.dirname(page)
    assert victim.read_text() == "precious"
    assert os.path.dirname(folder) == str(shared) and not os.path.islink(folder)
    info = os.lstat(folder)
    assert stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()
    assert stat.S_IMODE(info.st_mode) == 0o700
    assert not os.path.islink(page) and "lcz:classify" in open(page, encoding="utf-8").read()
    # a link put in place of the page (by anyone who could) is replaced, never written through
    os.remove(page)
    os.symlink(victim, page)
    assert QUrl(algorithm.helpUrl()).toLocalFile() == page
    assert victim.read_text() == "precious" and not os.path.islink(page)
