"""Training package pieces the plugin depends on: MSMLA sizes and the ONNX export."""

import numpy as np
import pytest
import torch
from lcz_testing import identity_card, read, write_stack

from lcz_qgis_plugin.core.inference.classify import classify
from lcz_qgis_plugin.core.inference.engine import Engine
from training.export import ExportError, export_onnx
from training.models import build_model
from training.models.msmla import count_parameters


@pytest.mark.parametrize("name,channels,expected", [
    ("msmla18", 10, 181_867), ("msmla50", 10, 808_913),   # the authors' README numbers
    ("msmla18", 13, 183_979), ("msmla50", 13, 811_025),   # the authors' Keras graph, 13 bands
])
def test_msmla_parameter_counts_match_the_authors(name, channels, expected):
    model = build_model(name, channels=channels)
    assert count_parameters(model) == expected


@pytest.mark.parametrize("cbam", ["faithful", "paper"])
def test_msmla_runs_on_any_patch_size(cbam):
    model = build_model("msmla18", channels=4, cbam=cbam).eval()
    for size in (32, 48, 33):
        assert model(torch.zeros(2, 4, size, size)).shape == (2, 17)


def test_exported_model_runs_in_lcz_classify(tmp_path):
    torch.manual_seed(0)
    names = [f"S2:B{b}" for b in ("02", "03", "04", "08")]
    model = build_model("msmla18", channels=4).eval()
    card = identity_card("msmla18", names, 32, scale=[1e-4] * 4, mean=[0.1] * 4,
                         std=[0.05] * 4)
    path = export_onnx(model, card, tmp_path / "msmla18.onnx")
    engine = Engine(path, device="cpu")
    assert engine.card == card
    rng = np.random.default_rng(0)
    dn = rng.integers(200, 3000, size=(4, 60, 70)).astype(np.uint16)
    from osgeo import gdal
    stack = write_stack(tmp_path / "s.tif", dn, names, data_type=gdal.GDT_UInt16)
    result = classify([stack], engine, str(tmp_path / "lcz.tif"),
                      probabilities_output=str(tmp_path / "p.tif"))
    # the cell (2, 3): patch rows/cols 2*10+5-16 = 9 .. 40 and 3*10+5-16 = 19 .. 50
    patch = (dn[:, 9:41, 19:51].astype(np.float32) * 1e-4 - 0.1) / 0.05
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(patch[None])), dim=1)[0].numpy()
    np.testing.assert_allclose(read(result.probabilities)[:, 2, 3], expected, atol=1e-4)


def test_export_refuses_and_deletes_a_file_without_parity(tmp_path):
    model = build_model("msmla18", channels=2)
    card = identity_card("msmla18", ["a", "b"], 16)
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_onnx(model, card, tmp_path / "m.onnx", parity_tolerance=-1.0)
    assert not (tmp_path / "m.onnx").exists()


def test_a_failed_parity_check_keeps_the_model_already_there(tmp_path):
    """Issue 12: the new file is checked under its temporary name; the good model at the
    destination stays byte for byte, and nothing partial is left beside it."""
    torch.manual_seed(0)
    card = identity_card("msmla18", ["a", "b"], 16)
    good = export_onnx(build_model("msmla18", channels=2), card, tmp_path / "m.onnx")
    before = (tmp_path / "m.onnx").read_bytes()
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_onnx(build_model("msmla18", channels=2), card, good, parity_tolerance=-1.0)
    assert (tmp_path / "m.onnx").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    assert Engine(good, device="cpu").card == card
