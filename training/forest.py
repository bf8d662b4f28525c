"""Random-forest baseline on per-patch features, exported to the same ONNX contract.

The WUDAPT LCZ Generator classifies training areas with a random forest on band statistics;
this is the same idea per patch, for users with few training samples. Features per channel
(physical units): mean, standard deviation, minimum and maximum over the patch and the mean of
its central half-size window, 5 x C numbers. They are computed by a small PyTorch module that
is exported in front of the skl2onnx forest, so the ONNX file takes the same N x C x P x P
patches as the CNNs and outputs class probabilities (``output_kind = probabilities``).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch

from lcz_qgis_plugin.core.commit import Commit
from lcz_qgis_plugin.core.model.card import ModelCard
from lcz_qgis_plugin.core.model.card_writer import write_model_card

from . import datasets as ds
from .export import INPUT_NAME, OPSET, ExportError


class PatchFeatures(torch.nn.Module):
    def forward(self, x):
        p = x.shape[-1]
        q = p // 4
        flat = x.flatten(2)
        mean = flat.mean(dim=2)
        std = torch.sqrt(torch.clamp((flat * flat).mean(dim=2) - mean * mean, min=0.0))
        centre = x[:, :, q:p - q, q:p - q].mean(dim=(2, 3))
        return torch.cat([mean, std, flat.amin(dim=2), flat.amax(dim=2), centre], dim=1)


def features(x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return PatchFeatures()(torch.from_numpy(np.ascontiguousarray(x))).numpy()


def train_forest(train: str, out: str, channels=None, trees: int = 100, max_samples: int = 0,
                 seed: int = 0, chunk: int = 2048) -> dict:
    from sklearn.ensemble import RandomForestClassifier

    try:
        source, rows = ds.open_source(train, channels)
    except ds.DataError as exc:
        raise ExportError(str(exc)) from None
    rows = np.arange(len(source)) if rows is None else np.sort(rows)
    if max_samples and len(rows) > max_samples:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_samples, replace=False))
    codes = source.codes[rows]
    if len(np.unique(codes)) < 2:
        raise ExportError(f"{train} holds only class(es) {sorted(set(codes.tolist()))}; a "
                          "classifier needs at least two.")
    x = np.concatenate([features(source.read(rows[i:i + chunk]))
                        for i in range(0, len(rows), chunk)])
    forest = RandomForestClassifier(n_estimators=trees, random_state=seed, n_jobs=-1)
    forest.fit(x, codes)
    n = len(source.channels)
    card = ModelCard(name="rf", channels=list(source.channels), patch_size=source.patch_size,
                     scale=list(source.card_scale), offset=list(source.card_offset),
                     mean=[0.0] * n, std=[1.0] * n, pixel_size=source.pixel_size,
                     cell_size=source.cell_size,
                     class_codes=[int(c) for c in forest.classes_],
                     output_kind="probabilities", version="0",
                     provenance={"train": train, "samples": int(len(rows)), "trees": trees,
                                 "features": "per channel mean, std, min, max, centre mean"})
    export_forest(forest, card, out)
    return {"path": out, "samples": int(len(rows)), "classes": card.class_codes}


def export_forest(forest, card: ModelCard, path: str, tolerance: float = 1e-4) -> str:
    import onnx
    from onnx import compose
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    n_features = 5 * card.n_channels
    example = torch.zeros(1, card.n_channels, card.patch_size, card.patch_size)
    buffer = io.BytesIO()  # the feature extractor never touches the disk
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(PatchFeatures(), example, buffer, input_names=[INPUT_NAME],
                          output_names=["features"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={INPUT_NAME: {0: "N"}, "features": {0: "N"}})
    front = onnx.load_from_string(buffer.getvalue())
    back = convert_sklearn(forest,
                           initial_types=[("rf_features", FloatTensorType([None, n_features]))],
                           options={id(forest): {"zipmap": False}},
                           target_opset={"": OPSET, "ai.onnx.ml": 3})
    version = max(front.ir_version, back.ir_version)
    front.ir_version = back.ir_version = version
    merged = compose.merge_models(front, back, io_map=[("features", "rf_features")],
                                  outputs=["probabilities"])
    with Commit(inputs=[card.provenance.get("train", "")]) as files:
        temp = files.reserve(path, "model")  # the previous model stays until parity holds
        files.save_with(path, lambda target: write_model_card(merged, card, target), "model")
        # parity with scikit-learn on random patches in physical units
        import onnxruntime as ort
        rng = np.random.default_rng(0)
        x = rng.random((8, card.n_channels, card.patch_size, card.patch_size)).astype(np.float32)
        got = ort.InferenceSession(temp, providers=["CPUExecutionProvider"]).run(
            None, {INPUT_NAME: x})[0]
        expected = forest.predict_proba(features(x))
        difference = float(np.abs(got - expected).max())
        if not difference <= tolerance:
            raise ExportError(f"the ONNX random forest differs from scikit-learn by "
                              f"{difference:.2e}; not written.")
    return path
