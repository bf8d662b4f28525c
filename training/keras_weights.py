"""Read Keras h5 weight files and load them into the PyTorch ports, layer by layer.

Two h5 layouts exist: a whole-model save (weights under ``model_weights``) and a weights-only
save (layer groups at the root). Both name each layer group and list its variables in the
``layer_names`` / ``weight_names`` attributes, in the order Keras wrote them.

Layout conversions (Keras → PyTorch): convolution kernels HWIO → OIHW, Dense kernels (in,
out) → (out, in), BatchNormalization gamma / beta / moving_mean / moving_variance → weight /
bias / running_mean / running_var (eps 1e-3 is set by the ports). Inputs NHWC → NCHW.

Padding: Keras 'same' with stride 2 pads an even input asymmetrically (the extra row and
column at the bottom/right), unlike PyTorch's symmetric ``padding=k//2``. In MSMLA, Sen2LCZ-Net
and the So2Sat ResNet every strided convolution is 1x1, which needs no padding, so the two
frameworks agree (also for odd patch sizes: both give ceil(n/2)); the reference tests confirm
it to 1e-5. A port with a strided 3x3 convolution would need an explicit ``F.pad``.

Layers are matched by *role*, never by guessing from shapes alone: MSMLA's residual layers
carry the authors' names (``res2a_branch2a``...), and the auto-numbered layers (``conv2d_N``,
``dense_N``) are taken in creation order, i.e. by their number, as the authors' Keras graph
creates them (the real-data tests check this against the authors' own layer list). Every
assignment checks the
shape, so a file of another architecture fails with a message naming the layer.
"""

from __future__ import annotations

import hashlib
import os
import re

import numpy as np
import torch
from torch import nn


class KerasWeightsError(ValueError):
    """A Keras weight file that does not fit the architecture it is loaded into."""


def _text(value) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def read_keras_h5(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
    """Layer name → its weight arrays in Keras' order, from a Keras h5 file."""
    import h5py

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise KerasWeightsError(f"Keras weight file not found: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise KerasWeightsError(f"{path} is not a readable HDF5 file ({exc}).") from None
    with f:
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" not in root.attrs:
            raise KerasWeightsError(f"{path} is not a Keras weight file (no 'layer_names' "
                                    "attribute).")
        layers = {}
        for layer in root.attrs["layer_names"]:
            layer = _text(layer)
            group = root[layer]
            names = [_text(n) for n in group.attrs.get("weight_names", [])]
            if names:
                layers[layer] = [np.asarray(group[n], dtype=np.float32) for n in names]
        return layers


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def numbered(layers: dict, prefix: str) -> list[str]:
    """Auto-numbered Keras layers (``prefix``, ``prefix_1``, ...) in creation order."""
    pattern = re.compile(rf"^{re.escape(prefix)}(?:_(\d+))?$")
    found = [(int(m.group(1) or 0), name) for name in layers
             if (m := pattern.match(name))]
    return [name for _, name in sorted(found)]


# -- assigning one layer -----------------------------------------------------------------------
def _copy(target: torch.Tensor, value: np.ndarray, what: str) -> None:
    if tuple(target.shape) != tuple(value.shape):
        raise KerasWeightsError(f"{what}: the Keras file holds shape {tuple(value.shape)}, "
                                f"the PyTorch model expects {tuple(target.shape)}; the file "
                                "belongs to another architecture or channel count.")
    with torch.no_grad():
        target.copy_(torch.from_numpy(np.ascontiguousarray(value)))


def _weights(layers: dict, name: str) -> list[np.ndarray]:
    try:
        return layers[name]
    except KeyError:
        raise KerasWeightsError(f"the Keras file has no layer '{name}'; it does not hold "
                                "this architecture.") from None


def load_conv(conv: nn.Conv2d, layers: dict, name: str) -> None:
    values = _weights(layers, name)
    _copy(conv.weight, values[0].transpose(3, 2, 0, 1), f"{name} kernel")
    if conv.bias is not None:
        if len(values) < 2:
            raise KerasWeightsError(f"{name}: the Keras layer has no bias.")
        _copy(conv.bias, values[1], f"{name} bias")
    elif len(values) > 1:
        raise KerasWeightsError(f"{name}: the Keras layer has a bias the port lacks.")


def load_dense(linear: nn.Linear, layers: dict, name: str) -> None:
    kernel, bias = _weights(layers, name)
    _copy(linear.weight, kernel.T, f"{name} kernel")
    _copy(linear.bias, bias, f"{name} bias")


def load_bn(bn: nn.BatchNorm2d, layers: dict, name: str) -> None:
    values = _weights(layers, name)
    if len(values) != 4:
        raise KerasWeightsError(f"{name}: expected gamma, beta, moving mean and variance; "
                                f"found {len(values)} arrays (scale/center switched off?).")
    for target, value, what in zip((bn.weight, bn.bias, bn.running_mean, bn.running_var),
                                    values, ("gamma", "beta", "moving_mean", "moving_variance")):
        _copy(target, value, f"{name} {what}")


def _check_all_used(layers: dict, used: set, path: str) -> None:
    left = sorted(set(layers) - used)
    if left:
        raise KerasWeightsError(f"{path}: layers {', '.join(left[:5])} were not used; the file "
                                "holds a different architecture.")


# -- MSMLA (the authors' Keras graph) -----------------------------------------------------------
def load_msmla(model, path: str | os.PathLike):
    """Load the authors' Keras MSMLA weights (h5) into :class:`training.models.msmla.MSMLA`.

    Residual layers by their names (``res{stage}{block}_branch2{a,b,c}`` / ``branch1``, ``bn...``);
    the auto-numbered layers by creation order: ``conv2d``..``conv2d_2`` are the stem (5x5,
    3x3, 1x1), ``conv2d_3``.. the CBAM spatial convolutions of the taps in order; the Dense
    layers are created, in forward order, by the CBAM taps (W1, W2, W3; the dead max-pool
    branch creates one more Dense that holds no weights and is absent from the file) and the
    SE units (squeeze, excite). ``fc17`` is the classifier.
    """
    from .models.msmla import CBAM

    if not getattr(model, "faithful", True):
        raise KerasWeightsError("the authors' weights fit only cbam='faithful'.")
    layers = read_keras_h5(path)
    used = set()

    def take(kind, module, name):
        kind(module, layers, name)
        used.add(name)

    convs = numbered(layers, "conv2d")
    if len(convs) != 3 + len(model.taps):
        raise KerasWeightsError(f"{path}: expected {3 + len(model.taps)} auto-numbered conv "
                                f"layers, found {len(convs)}.")
    for conv, name in zip(model.stem, convs[:3]):
        take(load_conv, conv, name)
    for tap, name in zip(model.taps, convs[3:]):
        take(load_conv, tap.spatial, name)

    dense_modules = []  # forward (= creation) order

    def cbam(tap: CBAM):
        dense_modules.extend([tap.fc1, tap.fc2, tap.fc3])

    cbam(model.taps[0])
    for s, blocks in enumerate(model.stages):
        for i, block in enumerate(blocks):
            prefix = f"{s + 2}{chr(ord('a') + i)}"
            parts = ["a", "b", "c"] if hasattr(block, "conv_c") else ["a", "b"]
            for part in parts:
                take(load_conv, getattr(block, f"conv_{part}"), f"res{prefix}_branch2{part}")
                take(load_bn, getattr(block, f"bn_{part}"), f"bn{prefix}_branch2{part}")
            dense_modules.extend([block.se.squeeze, block.se.excite])
            if not isinstance(block.shortcut, nn.Identity):
                take(load_conv, block.shortcut[0], f"res{prefix}_branch1")
                take(load_bn, block.shortcut[1], f"bn{prefix}_branch1")
            if i == 0:
                cbam(model.taps[s + 1])
    denses = numbered(layers, "dense")
    if len(denses) != len(dense_modules):
        raise KerasWeightsError(f"{path}: expected {len(dense_modules)} Dense layers for this "
                                f"MSMLA, found {len(denses)}.")
    for module, name in zip(dense_modules, denses):
        take(load_dense, module, name)
    take(load_dense, model.classifier, "fc17")
    _check_all_used(layers, used, os.fspath(path))
    return model.eval()


# -- Sen2LCZ-Net-MF (Qiu et al. 2020) ------------------------------------------------------------
def load_sen2lcz(model, path: str | os.PathLike):
    """Load the Keras weights of Sen2LCZ-Net-MF into :class:`training.models.sen2lcz.Sen2LczNet`.

    Convolutions and BatchNorms in creation order. The four Dense heads are taken in the
    order the file lists them, which follows the inputs of the final Average layer
    ([block 4, merge 1, merge 2, merge 3]); two heads have the same shape, so only this order
    tells them apart.
    """
    layers = read_keras_h5(path)
    used = set()
    convs, bns = numbered(layers, "conv2d"), numbered(layers, "batch_normalization")
    ours = [(conv, bn) for block in model.blocks for conv, bn in zip(block.convs, block.bns)]
    if len(convs) != len(ours) or len(bns) != len(ours):
        raise KerasWeightsError(f"{path}: expected {len(ours)} convolution + BatchNorm layers, "
                                f"found {len(convs)} + {len(bns)}; not a Sen2LCZ-Net-MF file.")
    for (conv, bn), cname, bname in zip(ours, convs, bns):
        load_conv(conv, layers, cname)
        load_bn(bn, layers, bname)
        used.update((cname, bname))
    denses = [name for name in layers if name.startswith("dense")]  # file (= Average) order
    heads = [model.final_head] + list(model.merge_heads)
    if len(denses) != len(heads):
        raise KerasWeightsError(f"{path}: expected {len(heads)} Dense heads, found {len(denses)}.")
    for head, name in zip(heads, denses):
        load_dense(head, layers, name)
        used.add(name)
    _check_all_used(layers, used, os.fspath(path))
    return model.eval()


# -- So2Sat ResNet20 v2 --------------------------------------------------------------------------
def load_resnet20(model, path: str | os.PathLike):
    """Load the So2Sat ResNet v2 (depth 20) weights into :class:`training.models.resnet20.ResNetV2`.

    Convolutions in creation order, except that in a block with a projection shortcut the
    Keras code creates the three residual convolutions first and the shortcut after them, so
    the shortcut is the higher-numbered of the two same-shape 1x1 convolutions.
    """
    layers = read_keras_h5(path)
    used = set()
    convs, bns = numbered(layers, "conv2d"), numbered(layers, "batch_normalization")
    conv_modules = [model.stem]
    bn_modules = [model.stem_bn]
    for block in model.blocks:
        conv_modules += [block.conv_a, block.conv_b, block.conv_c]
        bn_modules += [bn for bn in (block.bn_a, block.bn_b, block.bn_c) if bn is not None]
        if block.shortcut is not None:
            conv_modules.append(block.shortcut)
    bn_modules.append(model.final_bn)
    if len(convs) != len(conv_modules) or len(bns) != len(bn_modules):
        raise KerasWeightsError(f"{path}: expected {len(conv_modules)} convolutions and "
                                f"{len(bn_modules)} BatchNorms, found {len(convs)} and "
                                f"{len(bns)}; not a So2Sat ResNet20 v2 file.")
    for module, name in zip(conv_modules, convs):
        load_conv(module, layers, name)
        used.add(name)
    for module, name in zip(bn_modules, bns):
        load_bn(module, layers, name)
        used.add(name)
    denses = numbered(layers, "dense")
    if len(denses) != 1:
        raise KerasWeightsError(f"{path}: expected one Dense layer, found {len(denses)}.")
    load_dense(model.classifier, layers, denses[0])
    used.add(denses[0])
    _check_all_used(layers, used, os.fspath(path))
    return model.eval()
