"""Fidelity of the ports: the authors' Keras MSMLA and the two published pretrained models,
loaded from their Keras h5 files, reproduce the Keras outputs; the converted ONNX files run
in the plugin's engine with the same results."""

import os

import numpy as np
import pytest
import torch
from lcz_testing import shared_data
from training_data import one_torch_thread  # noqa: F401

from lcz_qgis_plugin.core.inference.engine import Engine
from training.cli import main
from training.convert_keras import convert_keras
from training.keras_weights import KerasWeightsError, load_msmla, load_sen2lcz
from training.models import build_model
from training.summary import counts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "..", "shared", "data")
REFERENCE = os.path.join(DATA, "reference")
SEN2LCZ = os.path.join(DATA, "models", "sen2LCZ_drop_32_weights.best.hdf5")
RESNET20 = os.path.join(DATA, "models",
                        "S2_RESNET20_BS16_LR2e-4_IN32-32-10_PRO-52-0R12_2019-06-27.h5")


def need(path):
    """``path`` under ../shared/data, or a skip naming it (lcz_testing.shared_data)."""
    return shared_data(os.path.relpath(path, DATA))


def nchw(x_nhwc):
    return torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))


@pytest.mark.parametrize("name", ["msmla18", "msmla50"])
def test_msmla_reproduces_the_authors_keras_graph(name):
    weights = need(os.path.join(REFERENCE, f"{name}_keras_random_weights_13band_48px.h5"))
    reference = np.load(need(os.path.join(REFERENCE, f"{name}_keras_reference.npz")))
    model = load_msmla(build_model(name, channels=13), weights)
    with torch.no_grad():
        probs = torch.softmax(model(nchw(reference["x_nhwc"])), dim=1).numpy()
    assert probs.shape == (16, 17)
    np.testing.assert_allclose(probs, reference["probs"], rtol=0, atol=1e-5)
    # the inputs give distinct outputs: the comparison is not between constant vectors
    assert np.ptp(reference["probs"], axis=0).max() > 1e-2


def test_msmla_counts_match_the_keras_facts():
    import json
    with open(need(os.path.join(REFERENCE, "msmla_keras_facts.json"))) as f:
        facts = json.load(f)
    for name in ("msmla18", "msmla50"):
        c13 = counts(build_model(name, channels=13))
        assert c13["total"] == facts[name]["total"]
        assert c13["trainable"] == facts[name]["trainable"]
        assert c13["bn_statistics"] == facts[name]["non_trainable"]
        assert counts(build_model(name, channels=10))["total"] == facts[name]["total_10band"]


def test_summary_prints_the_counts(capsys):
    assert main(["summary", "--model", "msmla50", "--channels", "10", "--patch", "48"]) == 0
    out = capsys.readouterr().out
    assert "808,913" in out and "801,297" in out and "7,616" in out


@pytest.mark.parametrize("architecture,weights,key", [
    ("sen2lcz", SEN2LCZ, "sen2lcz_drop_probs"), ("resnet20", RESNET20, "s2_resnet20_probs")])
def test_convert_keras_reproduces_keras_and_runs_in_the_plugin(tmp_path, architecture, weights,
                                                               key):
    reference = np.load(need(os.path.join(REFERENCE, "keras_pretrained_reference.npz")))
    out = tmp_path / f"{architecture}.onnx"
    assert main(["convert-keras", "--weights", need(weights), "--out", str(out)]) == 0
    engine = Engine(str(out), device="cpu")
    card = engine.card
    assert card.name == architecture and card.output_kind == "probabilities"
    assert card.channels == ["S2:B02", "S2:B03", "S2:B04", "S2:B05", "S2:B06", "S2:B07",
                             "S2:B08", "S2:B8A", "S2:B11", "S2:B12"]
    assert card.scale == [1e-4] * 10 and card.offset == [0.0] * 10
    assert card.mean == [0.0] * 10 and card.std == [1.0] * 10
    assert (card.patch_size, card.pixel_size, card.cell_size) == (32, 10.0, 100.0)
    assert card.provenance["licence"] == "MIT"
    assert card.provenance["repository"].startswith("https://github.com/")
    assert len(card.provenance["weights_sha256"]) == 64
    # the So2Sat inputs are reflectance = DN * 1e-4, mean 0, std 1: they go in unchanged
    x = np.ascontiguousarray(reference["x_nhwc"].transpose(0, 3, 1, 2))
    np.testing.assert_allclose(engine.probabilities(x), reference[key], rtol=0, atol=1e-5)


def test_a_weight_file_of_another_architecture_is_refused_by_name():
    need(SEN2LCZ)
    with pytest.raises(KerasWeightsError, match="res2a_branch2a|conv layers|Dense"):
        load_msmla(build_model("msmla18", channels=10), SEN2LCZ)
    msmla = need(os.path.join(REFERENCE, "msmla18_keras_random_weights_13band_48px.h5"))
    with pytest.raises(KerasWeightsError, match="not a Sen2LCZ-Net-MF file"):
        load_sen2lcz(build_model("sen2lcz", channels=10), msmla)


def test_convert_keras_cli_refuses_an_unknown_file_in_one_line(tmp_path, capsys):
    msmla = need(os.path.join(REFERENCE, "msmla18_keras_random_weights_13band_48px.h5"))
    assert main(["convert-keras", "--weights", msmla, "--out", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "x.onnx").exists()


def test_calibrating_a_probability_model_scales_its_log_probabilities(tmp_path):
    """Sen2LCZ-Net outputs averaged softmaxes: T is fitted on log p, and the plugin's engine
    then returns softmax(log p / T) (DESIGN section 7)."""
    import h5py

    reference = np.load(need(os.path.join(REFERENCE, "keras_pretrained_reference.npz")))
    model = str(tmp_path / "sen2lcz.onnx")
    convert_keras(need(SEN2LCZ), model)
    x = reference["x_nhwc"]
    labels = np.zeros((len(x), 17), np.float32)   # the model's own answers: all correct
    labels[np.arange(len(x)), reference["sen2lcz_drop_probs"].argmax(axis=1)] = 1
    data = tmp_path / "val.h5"
    with h5py.File(data, "w") as f:
        f["sen2"], f["label"] = x, labels
    out = str(tmp_path / "calibrated.onnx")
    assert main(["calibrate", "--model", model, "--data", str(data), "--out", out]) == 0
    engine = Engine(out, device="cpu")
    t = engine.card.temperature
    assert t < 1  # always right: calibration sharpens
    log_p = np.log(reference["sen2lcz_drop_probs"].astype(np.float64))
    expected = np.exp(log_p / t) / np.exp(log_p / t).sum(axis=1, keepdims=True)
    got = engine.probabilities(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_convert_keras_onto_a_full_disk_keeps_the_previous_files(tmp_path):
    """Issue 12: the ONNX model and the PyTorch weights go in place together, after the
    parity check; a full disk leaves the previous ones byte for byte and nothing partial."""
    import subprocess
    import sys

    from faults import (
        assert_one_clear_error,
        assert_unchanged,
        file_size_limit,
        partials,
        snapshot,
    )
    weights = need(SEN2LCZ)
    out, torch_out = tmp_path / "sen2lcz.onnx", tmp_path / "sen2lcz.pt"
    out.write_bytes(b"the previous model " * 1000)
    torch_out.write_bytes(b"the previous weights " * 1000)
    before = snapshot(tmp_path)
    done = subprocess.run([sys.executable, "-m", "training", "convert-keras", "--weights",
                           weights, "--out", str(out), "--torch-out", str(torch_out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          preexec_fn=file_size_limit(64 * 1024))
    assert_one_clear_error(done, "sen2lcz", "free some space", "Nothing was replaced")
    assert_unchanged(before, tmp_path)
    assert not partials(tmp_path)
