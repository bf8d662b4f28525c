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


def toy_scene(size: int = 96, block: int = 32, codes=TOY_CODES, inset: int = 3, seed: int = 0):
    """A simulated stack with clear class blocks: (DN (10, size, size), masks (size, size) of
    LCZ codes with 0 outside the training areas, polygon id per pixel (-1 outside)). Block
    (i, j) has class codes[(i + j) % 3], which raises band 2 k of all its pixels by 0.15
    reflectance; its training area is the block less ``inset`` pixels on every side."""
    rng = np.random.default_rng(seed)
    refl = 0.05 + 0.03 * rng.random((10, size, size), dtype=np.float32)
    masks = np.zeros((size, size), np.uint8)
    polygons = np.full((size, size), -1, np.int64)
    n = size // block
    for i in range(n):
        for j in range(n):
            k = (i + j) % len(codes)
            rows, cols = slice(i * block, (i + 1) * block), slice(j * block, (j + 1) * block)
            refl[(2 * k) % 10, rows, cols] += 0.15
            inner = (slice(i * block + inset, (i + 1) * block - inset),
                     slice(j * block + inset, (j + 1) * block - inset))
            masks[inner] = codes[k]
            polygons[inner] = i * n + j
    return np.round(refl * 10000).astype(np.float32), masks, polygons


def write_tile_file(path, tile: int = 32, size: int = 96, split: bool = True, seed: int = 0,
                    origin=(500000.0, 5000000.0), pixel: float = 10.0) -> str:
    """A tile file (patch-file schema 2, ``sample_kind`` "tiles") of :func:`toy_scene`,
    written by ``PatchWriter(..., masks=True)``: tiles on a grid of step
    tile / 2 from the scene's origin that hold a labelled pixel, ``masks`` (N, T, T) uint8
    (LCZ code, 0 = no label), ``labels`` the tile's most frequent label, ``centres`` the tile
    centre; with ``split``, polygons 1 and 5 are validation and a tile is written once per
    split of its labelled pixels, with only that split's pixels labelled."""
    dn, masks, polygons = toy_scene(size, seed=seed)
    split_of = np.where(np.isin(polygons, [1, 5]), 1, 0)
    rows = {name: [] for name in ("patches", "labels", "polygon_ids", "centres", "split",
                                  "masks")}
    for r in range(0, size - tile + 1, tile // 2):
        for c in range(0, size - tile + 1, tile // 2):
            window = (slice(r, r + tile), slice(c, c + tile))
            labelled = masks[window] > 0
            for part in sorted(set(split_of[window][labelled].tolist())):
                mask = np.where(labelled & (split_of[window] == part), masks[window], 0)
                rows["patches"].append(dn[(slice(None), *window)])
                rows["masks"].append(mask.astype(np.uint8))
                rows["labels"].append(np.bincount(mask[mask > 0]).argmax())
                polygon = polygons[window][mask > 0]
                rows["polygon_ids"].append(np.bincount(polygon).argmax())
                rows["centres"].append((origin[0] + (c + tile / 2) * pixel,
                                        origin[1] - (r + tile / 2) * pixel))
                rows["split"].append(part)
    info = PatchFileInfo(channels=S2_NAMES, patch_size=tile, pixel_size=pixel,
                         cell_size=100.0, scale=[1e-4] * 10, offset=[0.0] * 10,
                         crs="EPSG:32633", source={"tool": "tests"}, sample_kind="tiles",
                         grid_origin=list(origin))
    with PatchWriter(os.fspath(path), info, split=split, masks=True) as writer:
        writer.append(np.asarray(rows["patches"], np.float32),
                      np.asarray(rows["labels"], np.uint8),
                      np.asarray(rows["polygon_ids"], np.int64),
                      np.asarray(rows["centres"], np.float64),
                      split=np.asarray(rows["split"], np.uint8) if split else None,
                      masks=np.asarray(rows["masks"], np.uint8))
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
