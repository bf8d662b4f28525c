"""Tiny generated training data for the training-package tests: So2Sat-format h5 files and
lcz patch files with a separable toy problem (each class raises one band)."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from lcz_qgis_plugin.core.training_data.patch_file import PatchFileInfo, PatchWriter

TOY_CODES = (2, 8, 11)   # compact mid-rise, large low-rise, dense trees
S2_NAMES = ["S2:B02", "S2:B03", "S2:B04", "S2:B05", "S2:B06", "S2:B07", "S2:B08", "S2:B8A",
            "S2:B11", "S2:B12"]


def toy_patches(n: int, codes=TOY_CODES, patch: int = 16, bands: int = 10, seed: int = 0):
    """(patches N x P x P x bands reflectance, codes N): class i raises band 2i by 0.15."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(codes)[np.arange(n) % len(codes)]
    rng.shuffle(labels)
    x = 0.05 + 0.03 * rng.random((n, patch, patch, bands), dtype=np.float32)
    for i, code in enumerate(codes):
        x[labels == code, :, :, (2 * i) % bands] += 0.15
    return x.astype(np.float32), labels


def write_so2sat(path, n: int = 96, codes=TOY_CODES, patch: int = 16, seed: int = 0,
                 soft: bool = False, keys=("sen1", "sen2", "label")) -> str:
    """An So2Sat LCZ42-format h5 file: sen1 (N,P,P,8), sen2 (N,P,P,10), label (N,17)."""
    x, labels = toy_patches(n, codes, patch, 10, seed)
    label = np.zeros((n, 17), np.float32)
    label[np.arange(n), labels - 1] = 1.0
    if soft:  # votes: 0.75 on the true class, 0.25 on its neighbour code
        label *= 0.75
        label[np.arange(n), labels % 17] += 0.25
    rng = np.random.default_rng(seed + 1)
    with h5py.File(path, "w") as f:
        if "sen1" in keys:
            f.create_dataset("sen1", data=rng.normal(size=(n, patch, patch, 8)).astype(
                np.float32), chunks=(min(16, n), patch, patch, 8))
        if "sen2" in keys:
            f.create_dataset("sen2", data=x, chunks=(min(16, n), patch, patch, 10))
        if "label" in keys:
            f.create_dataset("label", data=label)
    return os.fspath(path)


def write_patch_file(path, n: int = 96, codes=TOY_CODES, patch: int = 16, seed: int = 0,
                     split: bool = True) -> str:
    """An lcz-patches file of the same toy problem, stored as Sentinel-2 DN (scale 1e-4)."""
    x, labels = toy_patches(n, codes, patch, 10, seed)
    dn = np.round(x.transpose(0, 3, 1, 2) * 10000).astype(np.float32)
    info = PatchFileInfo(channels=S2_NAMES, patch_size=patch, pixel_size=10.0, cell_size=100.0,
                         scale=[1e-4] * 10, offset=[0.0] * 10, crs="EPSG:32633",
                         source={"tool": "tests"})
    polygons = np.arange(n) // 4
    with PatchWriter(os.fspath(path), info, split=split) as writer:
        writer.append(dn, labels, polygons, np.zeros((n, 2)),
                      split=(polygons % 5 == 0).astype(np.uint8) if split else None)
    return os.fspath(path)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Training tests run torch on one thread: on a shared 2-core machine (CI, development)
    OpenMP threads competing with other processes make tiny models many times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
