"""Plain multi-band rasters (Earth Engine, Copernicus Browser, SNAP exports): bare Sentinel-2
band ids as band descriptions, and INPUT_BANDS naming the bands of a raster without names,
through the core (classify, buildstack, extractpatches, the command line) and processing.run.
Maps are compared cell by cell with real GeoTIFFs and a real onnxruntime session."""

import json
import re

import numpy as np
import pytest
from lcz_testing import (
    RecordingFeedback,
    cell_square,
    files_in,
    identity_card,
    linear_probe_model,
    read,
    reference_classes,
    reference_probabilities,
    write_polygons,
    write_stack,
)
from osgeo import gdal

from lcz_qgis_plugin.core import __main__ as cli
from lcz_qgis_plugin.core.channels import (
    PRESETS,
    band_channels,
    canonical_channel,
    parse_input_bands,
)
from lcz_qgis_plugin.core.errors import InputError
from lcz_qgis_plugin.core.inference.classify import classify
from lcz_qgis_plugin.core.preprocess.buildstack import build_stack, parse_channel_list
from lcz_qgis_plugin.core.training_data.extraction import extract_patches
from lcz_qgis_plugin.core.training_data.patch_file import open_patch_file

SO2SAT = ["S2:B02", "S2:B03", "S2:B04", "S2:B05", "S2:B06", "S2:B07", "S2:B08", "S2:B8A",
          "S2:B11", "S2:B12"]
L1C = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"]
"""Band names of Earth Engine's COPERNICUS/S2_HARMONIZED, in its order."""
ROWS, COLS, PATCH, STRIDE = 30, 34, 8, 4


# -- the rule: band description or user name -> contract channel name -----------------------

@pytest.mark.parametrize("name,channel", [
    ("B2", "S2:B02"), ("B02", "S2:B02"), ("b2", "S2:B02"), ("b8a", "S2:B8A"),
    ("B8a", "S2:B8A"), ("B8A", "S2:B8A"), ("B1", "S2:B01"), ("B10", "S2:B10"),
    ("B12", "S2:B12"), ("S2:B2", "S2:B02"), ("S2:B02", "S2:B02"), ("S2_B11", "S2:B11"),
    ("s2-b8a", "S2:B8A"), ("Sentinel-2 B4", "S2:B04"), ("S2A_B04", "S2:B04"),
    ("B2 (490 nm)", "S2:B02"), ("B02_490nm", "S2:B02"), ("B4 - 665nm", "S2:B04"),
    ("B8A (864.7 nm)", "S2:B8A"), ("B2(490nm)", "S2:B02"), ("B02_10m", "S2:B02"),
    (" B3 ", "S2:B03"),
    # not Sentinel-2 ids: kept as they are
    ("B13", "B13"), ("B0", "B0"), ("B8B", "B8B"), ("SR_B2", "SR_B2"), ("Band 1", "Band 1"),
    ("B2 blue", "B2 blue"), ("OSM:building_fraction", "OSM:building_fraction"),
    ("DSM:height", "DSM:height"), ("IDX:NDVI", "IDX:NDVI"), ("QA60", "QA60"),
])
def test_band_name_rule(name, channel):
    assert canonical_channel(name) == channel


@pytest.mark.parametrize("text,preset", [
    ("so2sat", "so2sat"), ("SO2SAT", "so2sat"), ("LCZ42", "so2sat"), ("so2sat-lcz42", "so2sat"),
    ("s2-l1c-13", "s2-l1c-13"), ("S2 L1C", "s2-l1c-13"), ("l1c", "s2-l1c-13"),
    ("s2_l2a_12", "s2-l2a-12"), ("L2A", "s2-l2a-12"), (" s2-12 ", "s2-l2a-12"),
])
def test_presets_accept_several_spellings(text, preset):
    wanted = {p.name: p.channels for p in PRESETS}[preset]
    assert parse_input_bands(text).names == wanted


def test_presets_hold_the_documented_orders():
    presets = {p.name: list(p.channels) for p in PRESETS}
    assert presets["so2sat"] == SO2SAT
    assert presets["s2-l1c-13"] == [canonical_channel(b) for b in L1C]
    assert presets["s2-l2a-12"] == [canonical_channel(b) for b in L1C if b != "B10"]


def test_input_bands_list_parsing():
    assert parse_input_bands(None) is None and parse_input_bands("  ") is None
    assert parse_input_bands("B2, -, OSM:building_fraction;b8a").names == \
        ("S2:B02", None, "OSM:building_fraction", "S2:B8A")
    assert parse_input_bands(["B2", None, "-"]).names == ("S2:B02", None, None)
    with pytest.raises(InputError, match="S2:B02 more than once"):
        parse_input_bands("B2,B02")
    with pytest.raises(InputError, match="empty name at position 2; write '-'"):
        parse_input_bands("B2,,B3")
    assert parse_channel_list("B2, b8a, DSM:height") == ["S2:B02", "S2:B8A", "DSM:height"]


# -- classify: maps cell by cell ------------------------------------------------------------

@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """Ten UInt16 Sentinel-2 bands of DN (many exact zeros, no no-data value), the same data
    as a stack with contract band names, and a linear probe model reading DN x 1e-4."""
    folder = tmp_path_factory.mktemp("input_bands")
    rng = np.random.default_rng(7)
    s2 = rng.integers(1, 6000, size=(10, ROWS, COLS)).astype(np.uint16)
    s2[rng.random(s2.shape) < 0.1] = 0   # DN 0 is a value here, not no data
    s2[:, 12:16, 10:14] = 0             # all ten bands 0: still valid
    card = identity_card("s2probe", SO2SAT, PATCH, cell_size=10.0 * STRIDE,
                         scale=[1e-4] * 10, mean=[0.3] * 10, std=[0.17] * 10)
    model, weights, bias = linear_probe_model(folder / "s2probe.onnx", card, seed=3)
    named = write_stack(folder / "named.tif", s2, SO2SAT, data_type=gdal.GDT_UInt16)
    named_map = classify([named], model, str(folder / "named_lcz.tif")).output
    return {"folder": folder, "s2": s2, "card": card, "model": model, "weights": weights,
            "bias": bias, "named": named, "named_map": read(named_map)}


def l1c_scene(s2: np.ndarray, seed: int = 8) -> np.ndarray:
    """13 bands in Level-1C order: the ten of ``s2`` where they belong, B1, B9 and B10 noise."""
    rng = np.random.default_rng(seed)
    full = rng.integers(0, 6000, size=(13,) + s2.shape[1:]).astype(np.uint16)
    for k, name in enumerate(SO2SAT):
        full[[canonical_channel(b) for b in L1C].index(name)] = s2[k]
    return full


def test_preset_on_a_raster_without_names_gives_the_named_map(case, tmp_path):
    plain = write_stack(tmp_path / "gee.tif", case["s2"], [""] * 10, data_type=gdal.GDT_UInt16)
    feedback = RecordingFeedback()
    result = classify([plain], case["model"], str(tmp_path / "lcz.tif"), input_bands="so2sat",
                      feedback=feedback)
    np.testing.assert_array_equal(read(result.output), case["named_map"])
    # every cell classified, the zero pixels included: no no-data was introduced
    card = case["card"]
    probs, valid = reference_probabilities(
        case["s2"].astype(np.float64), np.ones((ROWS, COLS), bool), card, STRIDE,
        lambda p: p.reshape(-1) @ case["weights"] + case["bias"])
    assert valid.all() and result.classified_cells == valid.size
    np.testing.assert_array_equal(read(result.output), reference_classes(probs, valid))
    assert len(np.unique(case["named_map"])) > 5
    assert any("bands named by INPUT_BANDS (preset so2sat)" in line for line in feedback.infos)


def test_bare_sentinel2_ids_as_descriptions_need_no_input_bands(case, tmp_path):
    bare = ["B2", "B03", "b4", "B5 (705 nm)", "B06", "B7", "B08", "b8a", "B11_1610nm", "B12"]
    stack = write_stack(tmp_path / "bare.tif", case["s2"], bare, data_type=gdal.GDT_UInt16)
    result = classify([stack], case["model"], str(tmp_path / "lcz.tif"))
    np.testing.assert_array_equal(read(result.output), case["named_map"])


def test_thirteen_band_gee_file_picks_the_right_ten(case, tmp_path):
    full = l1c_scene(case["s2"])
    gee = write_stack(tmp_path / "gee13.tif", full, L1C, data_type=gdal.GDT_UInt16)
    feedback = RecordingFeedback()
    by_description = classify([gee], case["model"], str(tmp_path / "a.tif"), feedback=feedback)
    np.testing.assert_array_equal(read(by_description.output), case["named_map"])
    assert any("ignoring bands the model does not use: B1, B9, B10" in line
               for line in feedback.infos)
    plain = write_stack(tmp_path / "plain13.tif", full, [""] * 13, data_type=gdal.GDT_UInt16)
    by_preset = classify([plain], case["model"], str(tmp_path / "b.tif"),
                         input_bands="s2-l1c-13")
    np.testing.assert_array_equal(read(by_preset.output), case["named_map"])
    l2a = write_stack(tmp_path / "plain12.tif", np.delete(full, 10, axis=0), [""] * 12,
                      data_type=gdal.GDT_UInt16)
    by_l2a = classify([l2a], case["model"], str(tmp_path / "c.tif"), input_bands="S2-L2A")
    np.testing.assert_array_equal(read(by_l2a.output), case["named_map"])


def test_names_with_skipped_bands_and_other_order(case, tmp_path):
    """INPUT_BANDS as a list: bands in any order, '-' for bands to leave out."""
    order = [9, 0, 3, 1, 2, 4, 5, 6, 7, 8]
    data = np.concatenate([case["s2"][order], np.full((1, ROWS, COLS), 7, np.uint16)])
    stack = write_stack(tmp_path / "mixed.tif", data, ["x"] * 11, data_type=gdal.GDT_UInt16)
    names = ",".join([SO2SAT[k].replace("S2:", "") for k in order] + ["-"])
    result = classify([stack], case["model"], str(tmp_path / "lcz.tif"), input_bands=names)
    np.testing.assert_array_equal(read(result.output), case["named_map"])


def test_one_value_applies_to_every_date(case, tmp_path):
    second = case["s2"][:, ::-1, :].copy()
    named = [case["named"], write_stack(tmp_path / "n2.tif", second, SO2SAT,
                                        data_type=gdal.GDT_UInt16)]
    plain = [write_stack(tmp_path / f"p{i}.tif", d, [""] * 10, data_type=gdal.GDT_UInt16)
             for i, d in enumerate((case["s2"], second))]
    expected = classify(named, case["model"], str(tmp_path / "named.tif"))
    result = classify(plain, case["model"], str(tmp_path / "plain.tif"), input_bands="so2sat")
    np.testing.assert_array_equal(read(result.output), read(expected.output))


def test_wrong_band_count_is_refused_naming_both_counts(case, tmp_path):
    plain = write_stack(tmp_path / "gee.tif", case["s2"], [""] * 10, data_type=gdal.GDT_UInt16)
    out = tmp_path / "out"
    with pytest.raises(InputError) as info:
        classify([plain], case["model"], str(out / "lcz.tif"), input_bands="s2-l1c-13")
    message = str(info.value)
    assert re.search(r"INPUT_BANDS \(preset s2-l1c-13\) names 13 bands, but the input raster "
                     r".*gee.tif has 10 bands", message), message
    assert "The preset so2sat has 10 bands" in message
    with pytest.raises(InputError, match=r"names 3 bands, but .* has 10 bands"):
        classify([plain], case["model"], str(out / "lcz.tif"), input_bands="B2,B3,B4")
    with pytest.raises(InputError, match=r"\('so2sta'\) is not a preset and names 1 band, "
                                         r"but .* has 10 bands.*Presets: so2sat"):
        classify([plain], case["model"], str(out / "lcz.tif"), input_bands="so2sta")
    assert not out.exists() or files_in(out) == []


def test_unnamed_raster_without_input_bands_points_to_it(case, tmp_path):
    plain = write_stack(tmp_path / "gee.tif", case["s2"], [""] * 10, data_type=gdal.GDT_UInt16)
    with pytest.raises(InputError, match=r"Missing: S2:B02.*give INPUT_BANDS.*so2sat"):
        classify([plain], case["model"], str(tmp_path / "lcz.tif"))


def test_reflectance_instead_of_dn_is_warned_about(case, tmp_path):
    reflectance = (case["s2"] / 10000.0).astype(np.float32)
    stack = write_stack(tmp_path / "refl.tif", reflectance, [""] * 10)
    feedback = RecordingFeedback()
    classify([stack], case["model"], str(tmp_path / "lcz.tif"), input_bands="so2sat",
             feedback=feedback)
    assert any("looks like reflectance" in w for w in feedback.warnings), feedback.warnings
    quiet = RecordingFeedback()
    classify([case["named"]], case["model"], str(tmp_path / "dn.tif"), feedback=quiet)
    assert not any("reflectance" in w for w in quiet.warnings)


def test_command_line_takes_input_bands(case, tmp_path, capsys):
    plain = write_stack(tmp_path / "gee.tif", case["s2"], [""] * 10, data_type=gdal.GDT_UInt16)
    code = cli.main(["classify", "--input", plain, "--model", case["model"], "--output",
                     str(tmp_path / "lcz.tif"), "--device", "cpu", "--input-bands", "so2sat"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["classified_cells"] == case["named_map"].size
    np.testing.assert_array_equal(read(tmp_path / "lcz.tif"), case["named_map"])
    code = cli.main(["classify", "--input", plain, "--model", case["model"], "--output",
                     str(tmp_path / "x.tif"), "--input-bands", "l1c"])
    assert code == 2 and "names 13 bands" in capsys.readouterr().err


# -- buildstack and extractpatches -----------------------------------------------------------

@pytest.mark.parametrize("extension", [".vrt", ".tif"])
def test_buildstack_copies_bands_under_the_given_names(case, tmp_path, extension):
    full = l1c_scene(case["s2"])
    plain = write_stack(tmp_path / "plain13.tif", full, [""] * 13, data_type=gdal.GDT_UInt16)
    result = build_stack(case["model"], [plain], str(tmp_path / f"stack{extension}"),
                         input_bands="s2-l1c-13")
    ds = gdal.Open(result.output)
    assert [ds.GetRasterBand(i + 1).GetDescription() for i in range(ds.RasterCount)] == SO2SAT
    assert {ds.GetRasterBand(i + 1).GetNoDataValue() for i in range(10)} == {None}
    np.testing.assert_array_equal(ds.ReadAsArray(), case["s2"])
    ds = None
    again = classify([result.output], case["model"], str(tmp_path / "lcz.tif"))
    np.testing.assert_array_equal(read(again.output), case["named_map"])


def test_buildstack_input_bands_name_the_first_raster(case, tmp_path):
    """With ancillary rasters: the first raster is named by INPUT_BANDS, the others keep
    their descriptions; bare ids in a channel list are contract names too."""
    plain = write_stack(tmp_path / "plain.tif", case["s2"], [""] * 10, data_type=gdal.GDT_UInt16)
    height = np.random.default_rng(1).uniform(0, 30, (1, ROWS, COLS)).astype(np.float32)
    dsm = write_stack(tmp_path / "dsm.tif", height, ["DSM:height"])
    result = build_stack(None, [plain, dsm], str(tmp_path / "train.vrt"),
                         channels=["B4", "DSM:height", "b8a"], input_bands="so2sat")
    assert result.channels == ["S2:B04", "DSM:height", "S2:B8A"]
    ds = gdal.Open(result.output)
    assert [ds.GetRasterBand(i + 1).GetDescription() for i in range(3)] == result.channels
    np.testing.assert_array_equal(ds.GetRasterBand(3).ReadAsArray(), case["s2"][7])
    ds = None
    with pytest.raises(InputError, match=r"names 13 bands, but the input raster .*plain.tif "
                                         r"has 10 bands"):
        build_stack(case["model"], [plain], str(tmp_path / "x.vrt"), input_bands="l1c")
    with pytest.raises(InputError, match=r"Missing: S2:B02.*INPUT_BANDS"):
        build_stack(case["model"], [plain], str(tmp_path / "x.vrt"))


def test_extractpatches_records_contract_names(case, tmp_path):
    areas = write_polygons(tmp_path / "areas.gpkg", [("2", cell_square(1, 1, cell=40.0)),
                                                     ("A", cell_square(4, 4, cell=40.0))])
    plain = write_stack(tmp_path / "plain.tif", case["s2"], [""] * 10, data_type=gdal.GDT_UInt16)
    named = extract_patches(case["named"], areas, str(tmp_path / "named.h5"),
                            patch_size=PATCH, cell_size=40.0)
    given = extract_patches(plain, areas, str(tmp_path / "given.h5"), patch_size=PATCH,
                            cell_size=40.0, input_bands="so2sat")
    bare = write_stack(tmp_path / "bare.tif", case["s2"], [b[3:] for b in SO2SAT],
                       data_type=gdal.GDT_UInt16)
    from_bare = extract_patches(bare, areas, str(tmp_path / "bare.h5"), patch_size=PATCH,
                                cell_size=40.0)
    reference = patch_arrays(named.output)
    for result in (given, from_bare):
        arrays, info = patch_arrays(result.output)
        assert info.channels == SO2SAT and info.scale == [1e-4] * 10
        np.testing.assert_array_equal(arrays["patches"], reference[0]["patches"])
    skipping = extract_patches(plain, areas, str(tmp_path / "skip.h5"), patch_size=PATCH,
                               cell_size=40.0, input_bands="B2,B3,B4,-,-,-,B8,-,-,-")
    arrays, info = patch_arrays(skipping.output)
    assert info.channels == ["S2:B02", "S2:B03", "S2:B04", "S2:B08"]
    np.testing.assert_array_equal(arrays["patches"], reference[0]["patches"][:, [0, 1, 2, 6]])
    with pytest.raises(InputError, match="names 12 bands, but the input raster .* has 10"):
        extract_patches(plain, areas, str(tmp_path / "bad.h5"), patch_size=PATCH,
                        cell_size=40.0, input_bands="s2-l2a-12")
    with pytest.raises(InputError, match="have no description.*Give INPUT_BANDS"):
        extract_patches(plain, areas, str(tmp_path / "bad.h5"), patch_size=PATCH,
                        cell_size=40.0)


def patch_arrays(path):
    f, info = open_patch_file(str(path))
    with f:
        return {k: f[k][...] for k in f.keys()}, info


def test_band_channels_logs_renamed_descriptions(case, tmp_path):
    stack = write_stack(tmp_path / "s.tif", case["s2"][:3], ["B2", "S2:B03", "Band 3"],
                        data_type=gdal.GDT_UInt16)
    feedback = RecordingFeedback()
    ds = gdal.Open(stack)
    assert band_channels(ds, stack, None, feedback) == ["S2:B02", "S2:B03", "Band 3"]
    assert any("reading band descriptions B2 as S2:B02" in line for line in feedback.infos)


# -- processing.run --------------------------------------------------------------------------

@pytest.mark.qgis
def test_algorithms_take_input_bands_through_processing_run(processing, case, tmp_path):
    from qgis.core import QgsProcessingException
    full = l1c_scene(case["s2"])
    plain = write_stack(tmp_path / "plain13.tif", full, [""] * 13, data_type=gdal.GDT_UInt16)
    classified = processing.run("lcz:classify", {
        "INPUT": [plain], "MODEL": case["model"], "INPUT_BANDS": "s2-l1c-13",
        "OUTPUT": str(tmp_path / "lcz.tif")})
    np.testing.assert_array_equal(read(classified["OUTPUT"]), case["named_map"])
    with pytest.raises(QgsProcessingException, match="names 10 bands, but .* has 13 bands"):
        processing.run("lcz:classify", {"INPUT": [plain], "MODEL": case["model"],
                                        "INPUT_BANDS": "so2sat",
                                        "OUTPUT": str(tmp_path / "x.tif")})
    built = processing.run("lcz:buildstack", {
        "MODEL": case["model"], "INPUT": [plain], "INPUT_BANDS": "L1C",
        "OUTPUT": str(tmp_path / "stack.tif")})
    assert built["CHANNELS"] == ",".join(SO2SAT)
    ds = gdal.Open(built["OUTPUT"])
    assert [ds.GetRasterBand(i + 1).GetDescription() for i in range(ds.RasterCount)] == SO2SAT
    ds = None
    areas = write_polygons(tmp_path / "areas.gpkg", [("2", cell_square(1, 1, cell=40.0)),
                                                     ("A", cell_square(4, 4, cell=40.0))])
    extracted = processing.run("lcz:extractpatches", {
        "INPUT": plain, "TRAINING_AREAS": areas, "INPUT_BANDS": "s2-l1c-13",
        "PATCH_SIZE": PATCH, "CELL_SIZE": 40.0, "OUTPUT": str(tmp_path / "p.h5")})
    _, info = patch_arrays(extracted["OUTPUT"])
    assert info.channels == [canonical_channel(b) for b in L1C]


@pytest.mark.qgis_process
def test_classify_with_input_bands_through_qgis_process(qgis_process, case, tmp_path):
    plain = write_stack(tmp_path / "gee.tif", case["s2"], [""] * 10, data_type=gdal.GDT_UInt16)
    done, answer = qgis_process.run_json("lcz:classify", {
        "INPUT": plain, "MODEL": case["model"], "INPUT_BANDS": "so2sat",
        "OUTPUT": str(tmp_path / "lcz.tif")})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    np.testing.assert_array_equal(read(answer["results"]["OUTPUT"]), case["named_map"])
    done, _ = qgis_process.run_json("lcz:classify", {
        "INPUT": plain, "MODEL": case["model"], "INPUT_BANDS": "s2-l2a-12",
        "OUTPUT": str(tmp_path / "x.tif")})
    assert done.returncode != 0
    assert "names 12 bands, but the input raster" in done.stdout + done.stderr
