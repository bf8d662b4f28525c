"""Training/reference polygons (core.areas): WUDAPT template files with their ROI, unknown
labels, layer filters; read with both of GDAL's KML drivers."""

import numpy as np
import pytest
from lcz_testing import RecordingFeedback, write_stack
from osgeo import ogr
from wudapt_template import cell_ring, write_wudapt_template

from lcz_qgis_plugin.core.areas import kmz_as_kml, read_areas
from lcz_qgis_plugin.core.errors import InputError
from lcz_qgis_plugin.core.training_data.extraction import extract_patches

AREAS = [("2", cell_ring(0, 0, rows=2, cols=2)), ("B", cell_ring(3, 0)),
         ("2", cell_ring(0, 3)), ("G", cell_ring(3, 3))]
ROI = cell_ring(0, 0, rows=5, cols=5, inset=-50.0)


@pytest.fixture(params=["LIBKML", "KML"])
def kml_driver(request):
    """Read KML with LIBKML (GDAL's choice when it has it) or with the plain KML driver
    (LIBKML deregistered for the test, then both put back in their original order)."""
    libkml, kml = ogr.GetDriverByName("LIBKML"), ogr.GetDriverByName("KML")
    if libkml is None:
        if request.param == "LIBKML":
            pytest.skip("this GDAL has no LIBKML driver")
        yield "KML"
        return
    if request.param == "LIBKML":
        yield "LIBKML"
        return
    libkml.Deregister()
    try:
        yield "KML"
    finally:
        kml.Deregister()
        libkml.Register()
        kml.Register()


@pytest.mark.parametrize("kmz", [False, True], ids=["kml", "kmz"])
def test_wudapt_template_leaves_the_roi_out(kml_driver, kmz, tmp_path):
    path = write_wudapt_template(tmp_path / ("t.kmz" if kmz else "t.kml"), AREAS, roi=ROI,
                                 kmz=kmz)
    if not kmz:
        assert ogr.Open(path).GetDriver().GetName() == kml_driver
    feedback = RecordingFeedback()
    areas = read_areas(path, feedback=feedback)
    assert sorted(a.code for a in areas.areas) == [2, 2, 12, 17]
    assert len({a.polygon_id for a in areas.areas}) == 4
    assert areas.roi is not None
    xmin, xmax, ymin, ymax = areas.roi.GetEnvelope()
    assert 14.99 < xmin < xmax < 15.01 and 45.1 < ymin < ymax < 45.2  # lon/lat of the ROI
    message = [line for line in feedback.infos if "ROI" in line]
    assert len(message) == 1
    assert "the ROI polygon (the region of interest of the WUDAPT template) was left out " \
           "of the training areas" in message[0]
    assert f"{xmin:.6f},{xmax:.6f},{ymin:.6f},{ymax:.6f} [EPSG:4326]" in message[0]
    assert not feedback.warnings
    assert message[0] in areas.notes



def test_kmz_whose_kml_is_not_doc_kml(kml_driver, tmp_path):
    """A KMZ holding 'WUDAPT areas.kml' instead of doc.kml: read with either driver; where
    GDAL has no LIBKML (Debian unstable's GDAL under QGIS 3.44) kmz_as_kml names the path
    QGIS opens instead, its KML document through /vsizip/."""
    path = write_wudapt_template(tmp_path / "t.kmz", AREAS, roi=ROI, kmz=True,
                                 document="WUDAPT areas.kml")
    assert sorted(a.code for a in read_areas(path, feedback=RecordingFeedback()).areas) \
        == [2, 2, 12, 17]
    readable = kmz_as_kml(path)
    if kml_driver == "LIBKML":
        assert readable is None  # QGIS opens the .kmz itself
        return
    assert readable == f"/vsizip/{path}/WUDAPT areas.kml"
    assert ogr.Open(readable).GetDriver().GetName() == "KML"
    assert sorted(a.code for a in read_areas(readable, feedback=RecordingFeedback()).areas) \
        == [2, 2, 12, 17]
    assert kmz_as_kml(f"{path}|subset=\"Name\" = 'G'") \
        == f"/vsizip/{path}/WUDAPT areas.kml|subset=\"Name\" = 'G'"
    assert kmz_as_kml(str(tmp_path / "missing.kmz")) is None
    assert kmz_as_kml(write_wudapt_template(tmp_path / "t.kml", AREAS)) is None

@pytest.mark.parametrize("folder,name", [("roi", "Untitled Polygon"), (None, "Roi"),
                                         ("Region", "ROI")])
def test_roi_is_recognised_as_a_folder_or_a_placemark_in_any_case(folder, name, tmp_path):
    path = write_wudapt_template(tmp_path / "t.kml", AREAS, roi=ROI, roi_folder=folder,
                                 roi_name=name)
    areas = read_areas(path, feedback=RecordingFeedback())
    assert sorted(a.code for a in areas.areas) == [2, 2, 12, 17] and areas.roi is not None


def test_unknown_labels_are_refused_unless_ignored(kml_driver, tmp_path):
    path = write_wudapt_template(tmp_path / "t.kmz", AREAS, roi=ROI, kmz=True,
                                 others=[("X", cell_ring(4, 4)), ("urban", cell_ring(4, 0)),
                                         ("X", cell_ring(4, 2))])
    with pytest.raises(InputError, match="'X' \\(2x\\), 'urban' \\(1x\\).*"
                                         "IGNORE_UNKNOWN_LABELS") as error:
        read_areas(path)
    assert "ROI" not in str(error.value)
    feedback = RecordingFeedback()
    areas = read_areas(path, feedback=feedback, ignore_unknown_labels=True)
    assert sorted(a.code for a in areas.areas) == [2, 2, 12, 17]
    assert len(feedback.warnings) == 1
    assert "skipped 3 polygon(s) whose class labels are not LCZ classes " \
           "(IGNORE_UNKNOWN_LABELS), in the placemark names: 'X' (2x), 'urban' (1x)" \
           in feedback.warnings[0]


def test_a_file_with_only_the_roi_and_unknown_labels_says_what_was_left_out(tmp_path):
    path = write_wudapt_template(tmp_path / "t.kml", [], roi=ROI,
                                 others=[("X", cell_ring(4, 4))])
    with pytest.raises(InputError, match="no labelled polygons \\(left out: 1 ROI polygon\\(s\\), "
                                         "1 polygon\\(s\\) with unknown labels\\)"):
        read_areas(path, ignore_unknown_labels=True, feedback=RecordingFeedback())


def test_attribute_filter_applies_to_every_folder(kml_driver, tmp_path):
    path = write_wudapt_template(tmp_path / "t.kml", AREAS, roi=ROI)
    areas = read_areas(path, attribute_filter="\"Name\" IN ('2', 'G')")
    assert sorted(a.code for a in areas.areas) == [2, 2, 17] and areas.roi is None
    with pytest.raises(InputError, match="holds no features that pass the filter"):
        read_areas(path, attribute_filter="\"Name\" = 'C'")
    with pytest.raises(InputError, match="layer filter .* cannot be applied"):
        read_areas(path, attribute_filter="\"no_such_field\" = 1")


def test_extract_patches_from_a_wudapt_kmz(tmp_path):
    """The template's ROI covers the whole stack; it must not become a training area."""
    data = np.random.default_rng(3).normal(size=(2, 50, 50)).astype(np.float32)
    stack = write_stack(tmp_path / "s.tif", data, ["T:a", "T:b"])
    path = write_wudapt_template(tmp_path / "t.kmz", AREAS, roi=ROI, kmz=True,
                                 others=[("X", cell_ring(4, 4))])
    with pytest.raises(InputError, match="'X' \\(1x\\)"):
        extract_patches(stack, path, str(tmp_path / "p.h5"), patch_size=8)
    feedback = RecordingFeedback()
    result = extract_patches(stack, path, str(tmp_path / "p.h5"), patch_size=8,
                             ignore_unknown_labels=True, feedback=feedback)
    assert result.patches == 4 + 1 + 1 + 1
    assert result.counts == {2: {"train": 5}, 12: {"train": 1}, 17: {"train": 1}}
    assert any("left out of the training areas" in line for line in feedback.infos)
    assert any("'X' (1x)" in line for line in feedback.warnings)
