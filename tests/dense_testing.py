"""Test helpers for dense models: exactly known fully convolutional ONNX models (per-pixel
linear maps, 5x5 convolutions, a pooling level, an output stride) with dense model cards,
and a plain numpy reference that maps a whole reflected scene without tiles."""

from __future__ import annotations

import os

import numpy as np
from lcz_testing import identity_card, softmax
from onnx import TensorProto, helper, numpy_helper

from lcz_qgis_plugin.core.model.card import ModelCard


def dense_card(name: str, channels: list[str], *, receptive_field: int, tile_multiple: int = 1,
               output_stride: int = 1, classes: list[int] | None = None,
               **overrides) -> ModelCard:
    values = dict(model_kind="dense", receptive_field=receptive_field,
                  tile_multiple=tile_multiple, output_stride=output_stride)
    if classes is not None:
        values["class_codes"] = classes
    values.update(overrides)
    return identity_card(name, channels, 64, **values)


def _save(nodes, inits, card: ModelCard, path) -> str:
    from lcz_testing import _save as save_model
    graph = helper.make_graph(
        nodes, card.name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", card.n_channels, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", card.n_classes, "h", "w"])],
        inits)
    return save_model(graph, card, path)


def conv_weights(card: ModelCard, kernel: int, seed: int, scale: float = 1.0):
    """Random (K, C, k, k) weights and (K,) biases giving logits of a few units."""
    rng = np.random.default_rng(seed)
    fan_in = card.n_channels * kernel * kernel
    weights = rng.normal(size=(card.n_classes, card.n_channels, kernel, kernel))
    weights = (weights * scale * 2.0 / np.sqrt(fan_in)).astype(np.float32)
    return weights, rng.normal(0, 0.5, card.n_classes).astype(np.float32)


def conv_model(path, card: ModelCard, kernel: int, seed: int = 0, scale: float = 1.0):
    """logits = conv(x, W, pad kernel//2) + b: a ``kernel`` x ``kernel`` convolution, zero
    padded at the tile's edge. Returns (path, W, b)."""
    weights, bias = conv_weights(card, kernel, seed, scale)
    half = kernel // 2
    nodes = [helper.make_node("Conv", ["x", "W", "b"], ["y"], pads=[half] * 4)]
    inits = [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")]
    return _save(nodes, inits, card, path), weights, bias


def pooled_model(path, card: ModelCard, seed: int = 0) -> str:
    """3x3 conv, 2x2 max pool, nearest 2x upsampling, 1x1 conv: the output depends on where
    the pooling grid lies, so tiles must start on multiples of 2 (tile multiple 2,
    receptive field 5)."""
    rng = np.random.default_rng(seed)
    width = 6
    w1 = (rng.normal(size=(width, card.n_channels, 3, 3)) / 3).astype(np.float32)
    w2 = (rng.normal(size=(card.n_classes, width, 1, 1)) * 1.5).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("MaxPool", ["c1"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Resize", ["p", "", "scales"], ["u"], mode="nearest"),
             helper.make_node("Conv", ["u", "w2"], ["y"])]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    return _save(nodes, inits, card, path)


def strided_model(path, card: ModelCard, seed: int = 0, stride: int = 0) -> str:
    """3x3 conv, s x s average pool (s = ``stride``, or the card's output stride), 1x1 conv:
    output pixel i covers input pixels s i .. s i + s - 1 and sees one more on each side
    (receptive field s + 2)."""
    rng = np.random.default_rng(seed)
    width, s = 5, stride or card.output_stride
    w1 = (rng.normal(size=(width, card.n_channels, 3, 3)) / 3).astype(np.float32)
    w2 = (rng.normal(size=(card.n_classes, width, 1, 1)) * 1.5).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("AveragePool", ["c1"], ["p"], kernel_shape=[s, s],
                              strides=[s, s]),
             helper.make_node("Conv", ["p", "w2"], ["y"])]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")]
    return _save(nodes, inits, card, path)


def conv_logits(x: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Plain numpy ``conv(x, W) + b`` with zero padding (``C x H x W`` -> ``K x H x W``)."""
    k = weights.shape[2]
    half = k // 2
    padded = np.pad(x, ((0, 0), (half, half), (half, half)))
    height, width = x.shape[1:]
    out = np.zeros((weights.shape[0], height, width))
    for dy in range(k):
        for dx in range(k):
            window = padded[:, dy:dy + height, dx:dx + width]
            out += np.einsum("kc,chw->khw", weights[:, :, dy, dx], window)
    return out + bias[:, None, None]


def onnx_logits(model: str, x: np.ndarray) -> np.ndarray:
    """The model itself on one whole image (``C x H x W``), with onnxruntime."""
    import onnxruntime
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x[None].astype(np.float32)})[0][0]


def reference_dense(scene: np.ndarray, valid: np.ndarray, card: ModelCard, stride: int,
                    logits_of, max_nodata_fraction: float = 0.5, pad: int = 64):
    """The convention written out plainly, without tiles: the whole scene reflected at its
    edges (``pad`` px, a multiple of the tile multiple), per-pixel probabilities from
    ``logits_of(image C x H x W) -> K x H/s x W/s``, then per cell of ``stride`` px the mean
    over its valid output pixels. Returns (cell probabilities rows x cols x K, cell validity,
    per-output-pixel probabilities of the cells' area, per-output-pixel validity)."""
    s = card.output_stride
    height, width = valid.shape
    norm = np.where(valid, card.normalise(scene), 0.0)
    image = np.pad(norm, ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
    pixels = softmax(np.moveaxis(logits_of(image), 0, -1) / card.temperature)
    rows = (height - 1 - stride // 2) // stride + 1
    cols = (width - 1 - stride // 2) // stride + 1
    big_valid = np.pad(valid, pad, mode="reflect")
    area = big_valid[pad:pad + rows * stride, pad:pad + cols * stride]
    out_valid = area.reshape(rows * stride // s, s, cols * stride // s, s).sum(axis=(1, 3))
    out_valid = 2 * out_valid >= s * s
    m, p = stride // s, pad // s
    probs = pixels[p:p + rows * m, p:p + cols * m]
    weighted = (probs * out_valid[..., None]).reshape(rows, m, cols, m, -1).sum(axis=(1, 3))
    counts = out_valid.reshape(rows, m, cols, m).sum(axis=(1, 3))
    nodata = (~area).reshape(rows, stride, cols, stride).sum(axis=(1, 3))
    centre = area[stride // 2::stride, stride // 2::stride]
    cell_valid = centre & (nodata <= max_nodata_fraction * stride * stride) & (counts > 0)
    cells = weighted / np.maximum(counts, 1)[..., None]
    return cells, cell_valid, probs, out_valid


def model_file(tmp_path, name: str) -> str:
    return os.fspath(tmp_path / f"{name}.onnx")
