"""``convert-keras``: published Keras weights → PyTorch → plugin-ready ONNX.

Two pretrained So2Sat LCZ42 models are supported (download links in docs/training.md, section
"Pretrained models"):

- ``sen2lcz``: Sen2LCZ-Net-MF (Qiu et al. 2020), ``sen2LCZ_drop_32_weights.best.hdf5`` from
  github.com/ChunpingQiu/benchmark-on-So2SatLCZ42-dataset-a-simple-tour (MIT);
- ``resnet20``: the So2Sat ResNet v2 depth 20, ``S2_RESNET20_..._2019-06-27.h5`` from
  github.com/zhu-xlab/So2Sat-LCZ-Classification-Demo (MIT).

Both take 32 x 32 patches of the ten So2Sat Sentinel-2 bands as reflectance, i.e. a stack in
DN scaled by 1e-4, with no further normalisation (mean 0, std 1), at 10 m pixels and 100 m
cells, and end in a softmax: the ONNX output is probabilities. The model card records where
the weights came from and the SHA-256 of the converted file.
"""

from __future__ import annotations

import os

import torch

from lcz_qgis_plugin.core.channels import SO2SAT_CHANNELS, default_scale
from lcz_qgis_plugin.core.commit import Commit
from lcz_qgis_plugin.core.model.card import ModelCard

from .export import export_onnx
from .keras_weights import KerasWeightsError, load_resnet20, load_sen2lcz, read_keras_h5, sha256
from .models import build_model

SOURCES = {
    "sen2lcz": {"repository": "https://github.com/ChunpingQiu/benchmark-on-So2SatLCZ42-dataset-a-simple-tour",
                "file": "results/_32_weights.best.hdf5", "licence": "MIT",
                "reference": "Qiu et al. 2020, Sen2LCZ-Net-MF, So2Sat LCZ42 test OA 0.6937, "
                             "kappa 0.6644"},
    "resnet20": {"repository": "https://github.com/zhu-xlab/So2Sat-LCZ-Classification-Demo",
                 "file": "Modules/3_classification/model/S2_RESNET20_BS16_LR2e-4_IN32-32-10_"
                         "PRO-52-0R12_2019-06-27.h5",
                 "licence": "MIT", "reference": "So2Sat LCZ42 ResNet v2 (depth 20)"},
}
LOADERS = {"sen2lcz": load_sen2lcz, "resnet20": load_resnet20}


def detect_architecture(path: str) -> str:
    """sen2lcz has four Dense heads, the ResNet one Dense layer."""
    layers = read_keras_h5(path)
    denses = [n for n in layers if n.startswith("dense")]
    if len(denses) == 4:
        return "sen2lcz"
    if len(denses) == 1 and any(n.startswith("conv2d") for n in layers):
        return "resnet20"
    raise KerasWeightsError(f"{path} is neither Sen2LCZ-Net-MF nor the So2Sat ResNet20 "
                            f"(found {len(denses)} Dense layers); name --model explicitly.")


def keras_to_torch(path: str, architecture: str | None = None):
    architecture = architecture or detect_architecture(path)
    if architecture not in LOADERS:
        raise KerasWeightsError(f"unknown architecture {architecture!r}; choose "
                                f"{', '.join(LOADERS)}")
    model = build_model(architecture, channels=len(SO2SAT_CHANNELS))
    return architecture, LOADERS[architecture](model, path)


def pretrained_card(architecture: str, weights_path: str) -> ModelCard:
    n = len(SO2SAT_CHANNELS)
    provenance = dict(SOURCES[architecture], dataset="So2Sat LCZ42 (sen2)",
                      weights_sha256=sha256(weights_path),
                      converted_from=os.path.basename(weights_path),
                      converter="python -m training convert-keras")
    return ModelCard(name=architecture, channels=list(SO2SAT_CHANNELS), patch_size=32,
                     scale=[default_scale(c) for c in SO2SAT_CHANNELS], offset=[0.0] * n,
                     mean=[0.0] * n, std=[1.0] * n,
                     pixel_size=10.0, cell_size=100.0, output_kind="probabilities",
                     version="so2sat-pretrained", provenance=provenance)


def convert_keras(weights_path: str, out: str, architecture: str | None = None,
                  torch_out: str | None = None) -> tuple[str, ModelCard]:
    """Both outputs (the ONNX model, and the PyTorch weights with ``torch_out``) are written
    under temporary names and moved into place together once the ONNX parity check passed
    (:mod:`lcz_qgis_plugin.core.commit`): a failure leaves the previous files as they were."""
    architecture, model = keras_to_torch(weights_path, architecture)
    card = pretrained_card(architecture, weights_path)
    payload = {"architecture": architecture, "state_dict": model.state_dict()}
    with Commit(inputs=[weights_path]) as files:
        if torch_out:
            files.save_with(torch_out, lambda temp: torch.save(payload, temp),
                            "PyTorch weights", errors=(RuntimeError,))
        export_onnx(model, card, out, parity_tolerance=1e-5, files=files)
    return os.fspath(out), card
