"""The int8 variant's calibration (training/precision.py): any number of calibration patches,
written through the commit protocol. Real onnxruntime quantization of a real small CNN."""

import numpy as np
import onnx
import pytest
from lcz_testing import channel_names, conv_probe_model, identity_card

from lcz_qgis_plugin.core.inference.engine import Engine
from training.precision import calibration_batch, quantize_int8


@pytest.mark.parametrize("count,batch,expected", [
    (256, 16, 16), (37, 16, 1), (48, 16, 16), (36, 16, 12), (5, 16, 5), (1, 16, 1)])
def test_calibration_batches_are_all_the_same_size(count, batch, expected):
    assert calibration_batch(count, batch) == expected


@pytest.mark.parametrize("count", [37, 20])
def test_int8_calibration_on_a_count_that_is_not_a_multiple_of_the_batch(tmp_path, count):
    """Issue 17: 37 (or 20) patches in batches of 16 left a last batch of 5 (or 4), and
    onnxruntime's percentile calibrator failed with "inhomogeneous shape"."""
    card = identity_card("cnn", channel_names(3), 8, cell_size=40.0)
    model = conv_probe_model(tmp_path / "cnn.onnx", card, seed=2)
    patches = np.random.default_rng(0).normal(size=(count, 3, 8, 8)).astype(np.float32)
    variant = quantize_int8(model, patches, str(tmp_path / "cnn.int8.onnx"))
    graph = onnx.load(variant).graph
    assert any(node.op_type == "QuantizeLinear" for node in graph.node)
    engine = Engine(variant, device="cpu")
    assert engine.card.provenance["int8_calibration"] == f"{count} patches"
    assert engine.run(patches[:3]).shape[0] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cnn.int8.onnx", "cnn.onnx"]
