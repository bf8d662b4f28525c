"""Faults, for real: a full disk (file-size limit; a small tmpfs where mounting is allowed), a
read-only destination, an output that is an input through a link or a virtual raster.

After each: a non-zero exit with one message naming the problem and the fix, every previous
output and every input byte-identical, and no partial file left (tests/faults.py).
"""

import os

import pytest
from faults import (
    assert_one_clear_error,
    assert_unchanged,
    fill,
    partials,
    read_only,
    run_core_limited,
    small_tmpfs,
    snapshot,
)
from lcz_testing import identity_card, linear_probe_model, stack_from_synthcity
from osgeo import gdal

from lcz_qgis_plugin.core.assessment.accuracy import assess_accuracy
from lcz_qgis_plugin.core.errors import InputError, OutputError
from lcz_qgis_plugin.core.inference.classify import classify
from lcz_qgis_plugin.core.preprocess.buildstack import build_stack
from lcz_qgis_plugin.core.preprocess.dsm import prepare_dsm
from lcz_qgis_plugin.core.preprocess.osm import rasterize_osm
from lcz_qgis_plugin.core.training_data.extraction import extract_patches

LIMIT = 4096  # bytes: every output of these runs is larger


@pytest.fixture(scope="module")
def scene(tmp_path_factory, synthetic_cities):
    """A 1 km synthetic city, its model input stack and a 32 px model for it, in a folder of
    their own (the tests snapshot it, and link to it)."""
    folder = tmp_path_factory.mktemp("fault_inputs")
    town = synthetic_cities.private_copy(seed=11, size_km=1.0, folder=folder / "city")
    stack = stack_from_synthcity(town, folder / "stack.tif")
    ds = gdal.Open(stack)
    channels = [ds.GetRasterBand(i).GetDescription() for i in range(1, ds.RasterCount + 1)]
    model, _, _ = linear_probe_model(folder / "model.onnx", identity_card(
        "probe", channels, 32, scale=[1e-4] * (len(channels) - 1) + [0.1]))
    return {"folder": str(folder), "town": town, "stack": stack, "model": model,
            "channels": channels}


def _cases(s, out):
    """name -> (core function, args, kwargs) writing into ``out``."""
    town = s["town"]
    return {
        "classify": ("lcz_qgis_plugin.core.inference.classify:classify",
                     [[s["stack"]], s["model"], f"{out}/lcz.tif"],
                     {"probabilities_output": f"{out}/probabilities.tif",
                      "confidence_output": f"{out}/confidence.tif", "device": "cpu"}),
        "stacksentinel2": ("lcz_qgis_plugin.core.preprocess.sentinel2:stack_sentinel2",
                           [[town.safe], f"{out}/s2.tif"], {}),
        "rasterizeosm": ("lcz_qgis_plugin.core.preprocess.osm:rasterize_osm",
                         [s["stack"], f"{out}/osm.tif"], {"osm_file": town.osm}),
        "preparedsm": ("lcz_qgis_plugin.core.preprocess.dsm:prepare_dsm",
                       [town.dsm, s["stack"], f"{out}/height.tif"], {"dtm": town.dtm}),
        "buildstack-tif": ("lcz_qgis_plugin.core.preprocess.buildstack:build_stack",
                           [None, [s["stack"]], f"{out}/stack.tif"],
                           {"channels": s["channels"]}),
        "buildstack-vrt": ("lcz_qgis_plugin.core.preprocess.buildstack:build_stack",
                           [None, [s["stack"]], f"{out}/stack.vrt"],
                           {"channels": s["channels"]}),
        "assessaccuracy": ("lcz_qgis_plugin.core.assessment.accuracy:assess_accuracy", [town.truth],
                           {"reference_areas": town.training_areas,
                            "report": f"{out}/report.html", "table": f"{out}/classes.csv"}),
        "extractpatches": ("lcz_qgis_plugin.core.training_data.extraction:extract_patches",
                           [s["stack"], town.training_areas, f"{out}/patches.h5"],
                           {"patch_size": 32, "validation_fraction": 0.2,
                            "summary_output": f"{out}/patches.json"}),
    }


@pytest.mark.parametrize("case", ["classify", "stacksentinel2", "rasterizeosm", "preparedsm",
                                  "buildstack-tif", "buildstack-vrt", "extractpatches",
                                  "assessaccuracy"])
def test_full_disk_keeps_the_previous_outputs_and_the_inputs(scene, tmp_path, case):
    out = tmp_path / "out"
    call, args, kwargs = _cases(scene, out)[case]
    good = run_core_limited(call, args, kwargs)
    assert good.returncode == 0, good.stderr
    before = snapshot(out, scene["folder"])
    assert len([p for p in before if p.startswith(str(out))]) >= 1
    done = run_core_limited(call, args, kwargs, limit=LIMIT)
    assert_one_clear_error(done, "File too large", "free some space")
    assert_unchanged(before, out, scene["folder"])


def test_classify_onto_a_nearly_full_disk_through_qgis_process(scene, tmp_path, qgis_process):
    """The reproduced case: a good map from an earlier run on a disk with little room."""
    out = tmp_path / "small"
    with small_tmpfs(out, 1024):
        parameters = {"INPUT": scene["stack"], "MODEL": scene["model"], "DEVICE": 2,
                      "OUTPUT": f"{out}/lcz.tif"}
        qgis_process.run("lcz:classify", parameters)
        fill(out, 2048)
        before = snapshot(out, scene["folder"])
        parameters["OUTPUT_PROBABILITIES"] = f"{out}/probabilities.tif"
        done, _ = qgis_process.run_json("lcz:classify", parameters)
        assert_one_clear_error(done, "No space left on device", "free some space")
        assert_unchanged(before, out, scene["folder"], qgis_loaded_inputs=[scene["stack"]])
        assert gdal.Open(f"{out}/lcz.tif").GetRasterBand(1).Checksum() >= 0


def test_read_only_destination_is_refused_before_any_work(scene, tmp_path, qgis_process):
    out = tmp_path / "ro"
    out.mkdir()
    classify([scene["stack"]], scene["model"], str(out / "lcz.tif"), device="cpu")
    before = snapshot(out, scene["folder"])
    with read_only(out):
        done, _ = qgis_process.run_json("lcz:classify", {
            "INPUT": scene["stack"], "MODEL": scene["model"], "OUTPUT": str(out / "lcz.tif")})
        assert_one_clear_error(done, str(out), "choose a folder you can write to")
        for writer in (lambda: build_stack(None, [scene["stack"]], str(out / "s.vrt"),
                                           channels=scene["channels"]),
                       lambda: extract_patches(scene["stack"], scene["town"].training_areas,
                                               str(out / "p.h5"), patch_size=32)):
            with pytest.raises(OutputError, match="choose a folder you can write to"):
                writer()
    assert_unchanged(before, out, scene["folder"], qgis_loaded_inputs=[scene["stack"]])


def test_output_reaching_an_input_through_a_symlinked_folder(scene, tmp_path, qgis_process):
    link = tmp_path / "link"
    os.symlink(scene["folder"], link)
    before = snapshot(scene["folder"])
    done, _ = qgis_process.run_json("lcz:classify", {
        "INPUT": scene["stack"], "MODEL": scene["model"], "OUTPUT": str(link / "stack.tif")})
    assert_one_clear_error(done, "is the same file as the input", "stack.tif")
    assert_unchanged(before, scene["folder"], qgis_loaded_inputs=[scene["stack"]])


def test_classify_of_a_vrt_onto_its_own_source(scene, tmp_path):
    vrt = str(tmp_path / "inputs.vrt")
    build_stack(None, [scene["stack"]], vrt, channels=scene["channels"])
    before = snapshot(scene["folder"], tmp_path)
    with pytest.raises(InputError, match="reached through a link or a virtual raster"):
        classify([vrt], scene["model"], scene["stack"], device="cpu")
    assert_unchanged(before, scene["folder"], tmp_path)


@pytest.mark.parametrize("case", ["preparedsm", "rasterizeosm", "extractpatches-summary",
                                  "assessaccuracy-report"])
def test_outputs_onto_inputs_are_refused(scene, tmp_path, case):
    town = scene["town"]
    work = tmp_path / "work"
    work.mkdir()
    reference = str(work / "reference.tif")
    gdal.Translate(reference, scene["stack"])
    before = snapshot(scene["folder"], work)
    with pytest.raises(InputError, match="is the same file as the input"):
        if case == "preparedsm":  # DSM = REFERENCE = OUTPUT
            prepare_dsm(reference, reference, reference)
        elif case == "rasterizeosm":
            rasterize_osm(reference, reference, osm_file=town.osm)
        elif case == "extractpatches-summary":
            extract_patches(reference, town.training_areas, str(work / "p.h5"),
                            patch_size=32, summary_output=reference)
        else:  # the report onto the map it assesses
            assess_accuracy(reference, reference_areas=town.training_areas, report=reference)
    assert_unchanged(before, scene["folder"], work)
    assert not partials(work)


def test_stacksentinel2_full_disk_message_names_the_output(scene, tmp_path):
    out = tmp_path / "o"
    done = run_core_limited("lcz_qgis_plugin.core.preprocess.sentinel2:stack_sentinel2",
                            [[scene["town"].safe], f"{out}/s2.tif"], {}, limit=LIMIT)
    text = assert_one_clear_error(done, "Sentinel-2 stack")
    assert f"{out}/s2.tif" in text
    assert not os.listdir(out)
