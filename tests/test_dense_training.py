"""Dense LCZ models in the training package (issue 14): the U-Net, its receptive field, the
per-pixel losses, training on a tile file through the command line, export with dynamic
height and width, the dense model card, evaluation per pixel and per cell, calibration, and
the clear refusals when the data and the model are of different kinds."""

import csv
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch.nn import functional as F
from training_data import one_torch_thread, write_patch_file, write_tile_file  # noqa: F401

from lcz_qgis_plugin.core.model.card import DENSE_SCHEMA_VERSION
from lcz_qgis_plugin.core.model.card_file import read_model_card
from training import datasets as ds
from training.cli import main
from training.config import make_config
from training.dense_evaluation import cell_probabilities
from training.models import build_model, model_kind
from training.models.unet import UNet, receptive_field
from training.precision import bfloat16_runs_here
from training.train import load_checkpoint, model_from_checkpoint, open_data, pixel_loss

TILE = 32
DEPTH, WIDTH = 2, 4
FAST = ["--bn-momentum", "0.5", "--batch-size", "8", "--no-progress", "--device", "cpu",
        "--threads", "1"]
UNET = ["--model", "unet", "--depth", str(DEPTH), "--width", str(WIDTH)]


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    """A tile file of clear class blocks, a tiny U-Net trained on it for a few epochs through
    ``python -m training train``, and its export."""
    folder = tmp_path_factory.mktemp("dense")
    tiles = write_tile_file(folder / "tiles.h5", tile=TILE)
    run = folder / "run"
    torch.manual_seed(0)
    assert main(["train", *UNET, "--train", tiles + "#train", "--val", tiles + "#validation",
                 "--epochs", "4", "--lr", "0.01", "--class-weights", "--out", str(run),
                 *FAST]) == 0
    onnx_path = str(folder / "unet.onnx")
    assert main(["export", "--checkpoint", str(run / "best.pt"), "--out", onnx_path]) == 0
    return {"folder": folder, "tiles": tiles, "run": run, "onnx": onnx_path}


def one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


# -- the architecture -----------------------------------------------------------------------------
def seen_columns(depth: int, size: int, stride: int = 1) -> torch.Tensor:
    """Which outputs of the middle row each input pixel of that row reaches, found on the
    network itself: all weights 1, BatchNorm the identity and zero input, so an output is
    above 0 exactly when the one input pixel set to 1 reaches it (ReLU, max-pool and the
    bilinear upsampling pass any positive value on). Tiles ``size`` wide and a few rows high
    (a path to an output of the same row needs no vertical room). Returns [input column,
    output column] (output columns every ``stride`` input columns)."""
    model = UNet(1, 1, depth=depth, width=1, output_stride=stride).double().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.fill_(1.0)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, torch.nn.BatchNorm2d):
                module.reset_parameters()
        height = 4 * model.tile_multiple
        x = torch.zeros(size, 1, height, size, dtype=torch.float64)
        x[torch.arange(size), 0, height // 2, torch.arange(size)] = 1.0
        return model(x)[:, 0, height // 2 // stride, :] > 0


@pytest.mark.parametrize("depth, stride", [(1, 1), (2, 1), (3, 1), (2, 2), (3, 4), (3, 8)])
def test_receptive_field_is_what_one_output_pixel_sees(depth, stride):
    """The card's receptive field of an output pixel covering ``stride`` x ``stride`` input
    pixels: those pixels plus the farthest reach beyond them on either side, twice."""
    rf, m = receptive_field(depth, stride), 2 ** depth
    size = -(-(rf + 4 * m) // m) * m  # room on both sides of the middle outputs
    seen = seen_columns(depth, size, stride)
    reach = 0
    middle = size // 2 // stride
    for q in range(middle - m // stride, middle + m // stride):  # every pooling position
        columns = torch.nonzero(seen[:, q]).flatten()
        assert 0 < columns.min() and columns.max() < size - 1  # not cut by the edges
        reach = max(reach, q * stride - int(columns.min()),
                    int(columns.max()) - (q * stride + stride - 1))
    assert stride + 2 * reach == rf
    assert UNet(13, 17, depth=depth, output_stride=stride).receptive_field == rf


def test_unet_output_stride_gives_one_score_per_block_and_trains_on_every_pixel(tmp_path):
    """--output-stride 4: logits N x K x H/4 x W/4, a lighter decoder, refused strides named;
    trained through the command line (each output pixel against every labelled pixel it
    covers) and exported with the stride in the card, which onnxruntime honours."""
    model = UNet(5, 3, depth=3, width=4, output_stride=4).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 5, 48, 80)).shape == (2, 3, 12, 20)
    assert sum(p.numel() for p in model.parameters()) < \
        sum(p.numel() for p in UNet(5, 3, depth=3, width=4).parameters())
    with pytest.raises(ValueError, match="--output-stride 1, 2, 4, 8"):
        UNet(5, 3, depth=3, output_stride=3)
    tiles = write_tile_file(tmp_path / "tiles.h5", tile=TILE)
    run = tmp_path / "run"
    assert main(["train", *UNET, "--output-stride", "2", "--train", tiles + "#train",
                 "--val", tiles + "#validation", "--epochs", "2", "--lr", "0.01",
                 "--out", str(run), *FAST]) == 0
    onnx_path = str(tmp_path / "unet_s2.onnx")
    assert main(["export", "--checkpoint", str(run / "best.pt"), "--out", onnx_path]) == 0
    card = read_model_card(onnx_path)
    assert (card.output_stride, card.receptive_field) == (2, receptive_field(DEPTH, 2))
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    out = session.run(None, {"patches": np.zeros((1, card.n_channels, 32, 48), np.float32)})
    assert out[0].shape == (1, card.n_classes, 16, 24)
    assert main(["evaluate", "--model", onnx_path, "--data", tiles + "#validation",
                 "--out", str(tmp_path / "eval")]) == 0


def test_output_stride_beyond_the_depth_is_refused_before_reading(tmp_path, capsys):
    assert main(["train", *UNET, "--output-stride", "8", "--train",
                 str(tmp_path / "missing.h5"), "--out", str(tmp_path / "run"), *FAST]) == 2
    err = one_line_error(capsys)
    assert "--output-stride 8" in err and "1, 2, 4" in err


def test_unet_predicts_every_pixel_of_any_tile_multiple():
    model = build_model("unet", channels=5, classes=3, depth=3, width=4).eval()
    assert model_kind("unet") == "dense" and model_kind("msmla18") == "patch"
    assert model.tile_multiple == 8 and model.output_stride == 1
    with torch.no_grad():
        assert model(torch.zeros(2, 5, 48, 80)).shape == (2, 3, 48, 80)
    with pytest.raises(ValueError, match="--depth"):
        UNet(5, 3, depth=0)


def test_summary_prints_the_unet_counts_and_receptive_field(capsys):
    assert main(["summary", "--model", "unet", "--channels", "13", "--patch", "128"]) == 0
    out = capsys.readouterr().out
    assert "trainable parameters" in out and "(1, 17, 128, 128)" in out
    assert f"{receptive_field(3)} px" in out and "tile multiple                      8 px" in out
    assert main(["summary", "--model", "unet", "--patch", "100"]) == 2
    assert "multiple of 8 px" in one_line_error(capsys)


# -- the losses -----------------------------------------------------------------------------------
def test_unlabelled_pixels_add_no_loss_and_no_gradient():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    nothing = torch.full((2, 4, 4), ds.IGNORE)
    for kind in ("ce", "focal"):
        loss = pixel_loss(logits, nothing, torch.tensor([1.0, 2.0, 3.0]), kind)
        loss.backward()
        assert float(loss.detach()) == 0.0 and not logits.grad.any()
        logits.grad = None
    target = nothing.clone()
    target[0, 1, 2] = 1
    pixel_loss(logits, target).backward()
    grad = logits.grad.abs().sum(dim=1)
    assert grad[0, 1, 2] > 0 and float(grad.sum() - grad[0, 1, 2]) == 0.0


def test_mask_zero_becomes_the_ignored_index():
    lookup = ds.label_lookup([2, 8, 11])
    assert lookup[[0, 2, 8, 11, 5]].tolist() == [ds.IGNORE, 0, 1, 2, ds.IGNORE]


def test_weighted_cross_entropy_is_torchs_and_focal_at_gamma_0_is_it():
    torch.manual_seed(1)
    logits = torch.randn(3, 4, 6, 5)
    target = torch.randint(0, 4, (3, 6, 5))
    target[0, :2] = ds.IGNORE
    weights = torch.tensor([0.5, 1.0, 2.0, 4.0])
    ce = pixel_loss(logits, target, weights, "ce")
    torch.testing.assert_close(ce, F.cross_entropy(logits, target, weight=weights,
                                                   ignore_index=ds.IGNORE))
    torch.testing.assert_close(pixel_loss(logits, target, weights, "focal", gamma=0.0), ce)
    assert pixel_loss(logits, target, weights, "focal", gamma=2.0) < ce


def test_class_weights_are_the_inverse_labelled_pixel_frequency(tmp_path):
    tiles = write_tile_file(tmp_path / "tiles.h5", tile=TILE)
    config = make_config(overrides={"model": "unet", "train": tiles + "#train",
                                    "val": tiles + "#validation", "class_weights": True})
    data = open_data(config)
    source, _ = ds.open_source(tiles + "#train")
    masks = source.masks(data.train_split.rows)
    counts = np.array([(masks == c).sum() for c in data.classes], np.float64)
    assert data.classes == [2, 8, 11]
    np.testing.assert_allclose(data.weights, counts.sum() / (3 * counts), rtol=1e-6)


def test_dense_defaults_give_small_batches_and_quick_batchnorm():
    dense = make_config(overrides={"model": "unet"})
    assert (dense.batch_size, dense.bn_momentum, dense.depth, dense.width) == (4, 0.9, 3, 16)
    assert (dense.loss, dense.focal_gamma) == ("ce", 2.0)
    chosen = make_config({"bn_momentum": 0.5}, {"model": "unet", "batch_size": 16})
    assert (chosen.batch_size, chosen.bn_momentum) == (16, 0.5)
    patch = make_config(overrides={"model": "msmla18"})
    assert (patch.batch_size, patch.bn_momentum) == (32, 0.99)


def test_focal_loss_trains_through_the_command_line(dense, tmp_path, capsys):
    out = tmp_path / "focal"
    assert main(["train", *UNET, "--train", dense["tiles"] + "#train", "--val",
                 dense["tiles"] + "#validation", "--epochs", "1", "--loss", "focal",
                 "--focal-gamma", "1.5", "--out", str(out), *FAST]) == 0
    payload = load_checkpoint(str(out / "best.pt"))
    assert payload["config"]["loss"] == "focal" and payload["config"]["focal_gamma"] == 1.5
    assert main(["train", *UNET, "--train", dense["tiles"] + "#train", "--val",
                 dense["tiles"] + "#validation", "--loss", "focal", "--focal-gamma", "-1",
                 "--out", str(out), *FAST]) == 2
    assert "--focal-gamma -1" in one_line_error(capsys)


def test_augmentation_turns_a_tile_and_its_mask_together():
    torch.manual_seed(3)
    x = torch.randn(16, 2, 8, 8)
    masks = (x[:, 0] > 0).long()
    turned, turned_masks = ds.flip_rotate(x, masks=masks)
    assert torch.equal(turned_masks, (turned[:, 0] > 0).long())
    assert not torch.equal(turned, x)


# -- training, export, card -----------------------------------------------------------------------
def test_unet_learns_the_blocks_of_a_tile_file(dense):
    with open(dense["run"] / "log.csv") as f:
        log = list(csv.DictReader(f))
    losses = [float(r["train_loss"]) for r in log]
    assert len(log) == 4 and losses[-1] < 0.6 * losses[0]
    assert float(log[-1]["train_oa"]) > 0.9
    payload = load_checkpoint(str(dense["run"] / "best.pt"))
    assert payload["model"] == "unet" and payload["model_options"] == {
        "depth": DEPTH, "width": WIDTH, "output_stride": 1}
    assert payload["patch_size"] == TILE and payload["class_codes"] == [2, 8, 11]


def test_exported_card_is_dense_with_the_architectures_facts(dense):
    card = read_model_card(dense["onnx"])
    assert card.model_kind == "dense" and card.is_dense
    assert card.schema_version == DENSE_SCHEMA_VERSION == 2
    assert card.output_stride == 1 and card.tile_multiple == 2 ** DEPTH
    assert card.receptive_field == receptive_field(DEPTH)
    assert card.patch_size == TILE and card.class_codes == [2, 8, 11]
    assert card.scale == [1e-4] * 10 and "int8" not in card.precision_checks


@pytest.mark.parametrize("height, width", [(64, 64), (48, 80), (16, 8)])
def test_onnx_export_matches_torch_on_tiles_of_any_multiple(dense, height, width):
    model = model_from_checkpoint(load_checkpoint(str(dense["run"] / "best.pt")))
    x = np.random.default_rng(height).normal(size=(2, 10, height, width)).astype(np.float32)
    session = ort.InferenceSession(dense["onnx"], providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert got.shape == (2, 3, height, width)
    np.testing.assert_allclose(got, expected, atol=1e-4)


# -- evaluation and calibration -------------------------------------------------------------------
def test_evaluate_gives_cell_figures_with_pixel_figures_beside(dense, capsys):
    out = dense["folder"] / "eval"
    assert main(["evaluate", "--model", dense["onnx"], "--data",
                 dense["tiles"] + "#validation", "--out", str(out), "--name", "unet"]) == 0
    with open(out / "report.json") as f:
        report = json.load(f)
    # validation: polygons 1 and 5, 26 x 26 labelled pixels each, each pixel counted once
    assert report["pixels"]["samples"] == 2 * 26 * 26
    assert report["unit"] == "cells" and report["cell_pixels"] == 10
    assert 0 < report["samples"] < report["pixels"]["samples"]
    assert report["samples"] == sum(map(sum, report["confusion_matrix"]))
    assert report["oa"] >= 0.9 and report["pixels"]["oa"] >= 0.9
    for name in ("confusion_matrix.csv", "confusion_matrix_pixels.csv", "reliability.png"):
        assert (out / name).stat().st_size > 0
    assert f"| unet | {report['samples']} |" in capsys.readouterr().out


def test_cells_average_their_labelled_pixels():
    # a frame 4 px wide, cells of 2 x 2 px; cell (0, 0) has 3 labelled pixels, cell (0, 1) one
    pixels = np.array([0, 1, 4, 2])
    codes = np.array([2, 2, 8, 8])
    p = np.array([[0.9, 0.1], [0.7, 0.3], [0.2, 0.8], [0.0, 1.0]])
    reference, cell_p = cell_probabilities(pixels, codes, p, frame_width=4, cell=2)
    assert reference.tolist() == [2]  # the other cell has too few labelled pixels
    np.testing.assert_allclose(cell_p, [[0.6, 0.4]])


def test_evaluate_a_checkpoint_as_its_export(dense):
    out = dense["folder"] / "eval_pt"
    assert main(["evaluate", "--model", str(dense["run"] / "best.pt"), "--data",
                 dense["tiles"] + "#validation", "--out", str(out)]) == 0
    with open(out / "report.json") as f:
        from_checkpoint = json.load(f)
    with open(dense["folder"] / "eval" / "report.json") as f:
        exported = json.load(f)
    assert from_checkpoint["confusion_matrix"] == exported["confusion_matrix"]


def test_calibrate_fits_a_temperature_on_pixel_logits(dense, tmp_path, capsys):
    out = str(tmp_path / "calibrated.onnx")
    assert main(["calibrate", "--model", dense["onnx"], "--data",
                 dense["tiles"] + "#validation", "--out", out]) == 0
    card = read_model_card(out)
    summary = card.provenance["calibration"]
    assert card.temperature == pytest.approx(summary["temperature"]) and card.temperature != 1
    assert summary["unit"] == "pixels" and summary["samples"] >= 2 * 26 * 26
    assert card.is_dense and card.receptive_field == receptive_field(DEPTH)
    assert "pixels; written" in capsys.readouterr().out


# -- the bfloat16 check, per 100 m cell ------------------------------------------------------------
NO_BF16 = bfloat16_runs_here()


@pytest.mark.skipif(NO_BF16 is not None, reason=f"the bfloat16 check cannot run here: {NO_BF16}")
def test_export_records_a_bfloat16_check_per_cell_and_no_int8(dense, tmp_path):
    """The export's check on the run's validation tiles: 13 cells of 10 x 10 px (1,352
    labelled pixels; the cells evaluate counts), recorded but too few for the Automatic
    device; no int8 variant."""
    card = read_model_card(dense["onnx"])
    check = card.precision_checks["bfloat16"]
    assert main(["evaluate", "--model", dense["onnx"], "--data",
                 dense["tiles"] + "#validation", "--out", str(tmp_path / "e")]) == 0
    with open(tmp_path / "e" / "report.json") as f:
        cells = json.load(f)["samples"]
    assert check["unit"] == "cells" and check["cells"] == check["patches"] == cells == 13
    assert check["pixels"] == 2 * 26 * 26 and check["data"] == "tiles.h5"
    assert 0.9 <= check["same_class"] <= 1 and 0.9 <= check["pixel_same_class"] <= 1
    assert "bfloat16" in check["engine"] and "float32" in check["reference"]
    assert not card.passes_precision_check("bfloat16") and "int8" not in card.precision_checks
    assert not list(dense["folder"].glob("*.int8.onnx"))


@pytest.mark.skipif(NO_BF16 is not None, reason=f"the bfloat16 check cannot run here: {NO_BF16}")
def test_a_passed_dense_bfloat16_check_makes_bfloat16_an_automatic_candidate(
        dense, tmp_path, capsys, monkeypatch):
    """check-precision on a larger tile file (430 labelled cells): the same-map rule of patch
    models, counted per cell as evaluate counts them; the Automatic device then considers
    OpenVINO bf16 for the dense model (and still refuses it for the export's 13 cells)."""
    from lcz_qgis_plugin.core.inference import engine_choice
    from lcz_qgis_plugin.core.inference.engine import OPENVINO_BF16, Engine, clear_engine_cache
    monkeypatch.setenv(engine_choice.CACHE_ENV, str(tmp_path / "cache"))
    clear_engine_cache()
    more = write_tile_file(tmp_path / "more.h5", tile=TILE, size=256, seed=1)
    out = str(tmp_path / "checked.onnx")
    assert main(["check-precision", "--model", dense["onnx"], "--data", more,
                 "--out", out]) == 0
    printed = capsys.readouterr().out
    assert "int8 check not made: int8 is checked on patch models only" in printed
    assert main(["evaluate", "--model", out, "--data", more, "--out", str(tmp_path / "e")]) == 0
    with open(tmp_path / "e" / "report.json") as f:
        cells = json.load(f)["samples"]
    card = read_model_card(out)
    check = card.precision_checks["bfloat16"]
    assert check["cells"] == check["patches"] == cells == 430 and check["unit"] == "cells"
    assert check["pixels"] == 64 * 26 * 26 and check["same_class"] >= 0.995
    assert card.passes_precision_check("bfloat16") and "int8" not in card.precision_checks
    engine = Engine(out, device="cpu")
    loaders, notes = engine._automatic_candidates(card)
    assert "openvino-bf16" in loaders
    automatic = Engine(out, device="auto")
    if engine_choice.cpu_has_amx():  # settled by the CPU: bfloat16 only
        assert automatic.provider == OPENVINO_BF16
    else:  # measured against both float32 engines, on tiles
        (entry,) = json.loads((tmp_path / "cache" / engine_choice.CACHE_FILE).read_text()
                              )["choices"].values()
        assert set(entry["rates"]) == {"cpu", "openvino", "openvino-bf16"}
    _, notes = engine._automatic_candidates(read_model_card(dense["onnx"]))
    assert "bf16: its check covered only 13 cells (200 needed)" in notes
    clear_engine_cache()


# -- refusals -------------------------------------------------------------------------------------
def test_models_refuse_data_of_the_other_kind(dense, tmp_path, capsys):
    tiles = dense["tiles"]
    patches = write_patch_file(tmp_path / "patches.h5", n=48, patch=8)
    out = str(tmp_path / "run")
    assert main(["train", "--train", tiles + "#train", "--val", tiles + "#validation",
                 "--out", out, *FAST]) == 2
    assert "is a tile file" in one_line_error(capsys)
    assert main(["train", *UNET, "--train", patches + "#train", "--val",
                 patches + "#validation", "--out", out, *FAST]) == 2
    assert "is a dense model" in one_line_error(capsys)
    assert main(["train", *UNET, "--train", tiles, "--val-fraction", "0.2", "--out", out,
                 *FAST]) == 2
    assert "holds tiles, which overlap" in one_line_error(capsys)
    assert main(["train", "--model", "unet", "--depth", "6", "--train", tiles + "#train",
                 "--val", tiles + "#validation", "--out", out, *FAST]) == 2
    assert "not a multiple of 64" in one_line_error(capsys)
    assert main(["evaluate", "--model", dense["onnx"], "--data", patches, "--out",
                 str(tmp_path / "e")]) == 2
    assert "evaluated on tiles" in one_line_error(capsys)
    assert main(["check-precision", "--model", dense["onnx"], "--data", tiles,
                 "--precisions", "int8"]) == 2
    assert "is a dense model: int8 is checked on patch models only" in one_line_error(capsys)
    if bfloat16_runs_here() is None:
        assert main(["check-precision", "--model", dense["onnx"], "--data", patches,
                     "--out", str(tmp_path / "c.onnx")]) == 2
        assert "is a dense model: it is evaluated on tiles" in one_line_error(capsys)
    assert main(["train", "--train", patches, "--val-fraction", "0.2", "--epochs", "1",
                 "--out", out, *FAST]) == 0
    capsys.readouterr()
    assert main(["export", "--checkpoint", out + "/best.pt", "--out", out + "/m.onnx",
                 "--no-precision-check"]) == 0
    assert main(["evaluate", "--model", out + "/m.onnx", "--data", tiles, "--out",
                 str(tmp_path / "e")]) == 2
    assert "is a patch model: evaluate it on patches" in one_line_error(capsys)


def test_a_dense_run_resumes_from_its_last_checkpoint(dense, tmp_path):
    run = tmp_path / "run"
    common = [*UNET, "--train", dense["tiles"] + "#train", "--val",
              dense["tiles"] + "#validation", "--out", str(run), *FAST]
    assert main(["train", *common, "--epochs", "1"]) == 0
    assert main(["train", "--resume", str(run / "last.pt"), "--epochs", "2"]) == 0
    payload = load_checkpoint(str(run / "last.pt"))
    assert payload["epoch"] == 1 and payload["model_options"] == {
        "depth": DEPTH, "width": WIDTH, "output_stride": 1}
    assert [row["epoch"] for row in payload["history"]] == [1, 2]
