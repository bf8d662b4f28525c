"""Metrics of a dense model on a tile file: per labelled pixel, and per output cell.

A dense model scores every pixel of a tile, and tiles overlap (a tile file steps by half a
tile), so a labelled pixel is seen by up to four tiles. The tiles are laid into one pixel
frame by their centres (``centres``: x, y of each tile's centre in the file's CRS, on the
grid of ``pixel_size``); a pixel's probabilities are the mean over the tiles that saw it
(``softmax(z / T)`` with the card's temperature, as ``lcz:classify`` blends overlapping
tiles). Tiles of different splits are kept apart (a pixel is labelled in one split only).

Two sets of the usual LCZ figures (:mod:`lcz_qgis_plugin.core.assessment.metrics`) follow:

per labelled pixel
    every pixel whose mask holds an LCZ code, once;
per output cell (the headline, comparable with a patch model's per-patch figures)
    blocks of ``cell_size / pixel_size`` pixels (10 x 10 at 10 m for 100 m cells) on the
    frame's grid, counted when at least half of their pixels are labelled: the cell's
    probabilities are the mean over its labelled pixels, its reference the most frequent
    label among them (ties: the lower code). The blocks are the stack's own cells, laid from
    the stack's origin (the tile file's ``grid_origin``), as ``lcz:classify`` lays them; a
    file without it starts them at the top-left corner of the tiles' union.

Where tiles do not lie on one pixel grid (or two tiles of a split claim one place), each tile
is measured on its own (laid side by side), and a note says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lcz_qgis_plugin.core.assessment.metrics import (
    accuracy_scores,
    calibration,
    confusion_matrix,
)
from lcz_qgis_plugin.core.lcz_classes import LCZ_CODES
from lcz_qgis_plugin.core.model.card import ModelCard, softmax

from . import datasets as ds
from .evaluate import EvaluationError

PIXELS_PER_BATCH = 2 ** 18
"""Pixels of tiles run per batch (16 tiles of 128 px): bounds the model's activations."""
MAX_CALIBRATION_PIXELS = 500_000


class TileError(EvaluationError):
    """Tiles that cannot be evaluated; the message says why and what to give instead."""


@dataclass
class PixelScores:
    """The model's scores on every labelled pixel of every tile (a pixel seen by several
    tiles appears once per tile)."""

    pixel: np.ndarray        # int64 (n,): position in the frame, row * frame_width + col
    codes: np.ndarray        # int64 (n,): the mask's LCZ code
    z: np.ndarray            # float32 (n, K): logits, or log-probabilities
    frame_width: int         # pixels per row of the frame
    cell: int                # output cell edge in pixels
    tiles: int
    note: str | None = None


def open_tiles(card: ModelCard, data: str, limit: int = 0):
    """(source, sorted rows) of the tile file ``data`` (path or path#split) for ``card``."""
    try:
        source, rows = ds.open_source(data, card.channels)
    except ds.DataError as exc:
        raise TileError(str(exc)) from None
    path = data.partition("#")[0]
    if source.sample_kind != "tiles" or not source.has_masks:
        raise TileError(f"{card.name} is a dense model: it is evaluated on tiles with label "
                        f"masks, and {path} holds patches. Extract tiles (lcz:extractpatches "
                        f"with SAMPLES tiles) of the test areas and evaluate on that file.")
    if source.patch_size % card.tile_multiple:
        raise TileError(f"{path} holds tiles of {source.patch_size} px; {card.name} takes "
                        f"multiples of {card.tile_multiple} px. Extract tiles of a multiple "
                        f"of {card.tile_multiple} px.")
    rows = np.arange(len(source)) if rows is None else np.sort(np.asarray(rows))
    rows = rows[:limit] if limit else rows
    if not len(rows):
        raise TileError(f"{data} holds no tile to evaluate on.")
    return source, rows


def tile_origins(source, rows: np.ndarray, cell: int) -> tuple[np.ndarray, int, str | None]:
    """(top-left (row, col) of each tile in one pixel frame, the frame's width, a note or
    None): from the tile centres; the splits' frames one below the other; tiles side by side
    where the centres do not place them on one grid."""
    tile, pixel = source.patch_size, source.pixel_size
    centres = source.centres(rows)
    origin = getattr(getattr(source, "info", None), "grid_origin", None)
    if origin is not None:  # the stack's own pixel grid: cells lie where lcz:classify lays them
        col = (centres[:, 0] - origin[0]) / pixel - tile / 2
        row = (origin[1] - centres[:, 1]) / pixel - tile / 2
    else:
        col = (centres[:, 0] - centres[:, 0].min()) / pixel
        row = (centres[:, 1].max() - centres[:, 1]) / pixel
    split = (np.zeros(len(rows), np.int64) if getattr(source, "split", None) is None
             else source.split[rows].astype(np.int64))
    on_grid = np.allclose(col, np.round(col), atol=0.01) and \
        np.allclose(row, np.round(row), atol=0.01)
    col, row = np.round(col).astype(np.int64), np.round(row).astype(np.int64)
    places = np.stack([split, row, col], axis=1)
    if not on_grid or len(np.unique(places, axis=0)) < len(rows):
        step = -(-tile // cell) * cell
        origins = np.stack([np.zeros(len(rows), np.int64), np.arange(len(rows)) * step], 1)
        return origins, max(step * len(rows), 1), (
            "the tile centres do not place the tiles on one pixel grid, so each tile was "
            "measured on its own (pixels seen by overlapping tiles count once per tile)")
    height = -(-(int(row.max()) + tile) // cell) * cell + cell
    width = -(-(int(col.max()) + tile) // cell) * cell
    return np.stack([row + split * height, col], axis=1), width, None


def predict_tiles(predictor, data: str, batch_size: int = 256, limit: int = 0) -> PixelScores:
    """Scores of the model of ``predictor`` on every labelled pixel of the tiles of ``data``."""
    card = predictor.card
    source, rows = open_tiles(card, data, limit)
    cell = max(1, int(round(card.cell_size / card.pixel_size)))
    origins, width, note = tile_origins(source, rows, cell)
    tile = source.patch_size
    step = max(1, min(batch_size, PIXELS_PER_BATCH // (tile * tile)))
    pixels, codes, scores = [], [], []
    for start in range(0, len(rows), step):
        batch = rows[start:start + step]
        z = card.scores(predictor.raw(card.standardise(source.read(batch))))
        s = card.output_stride  # an output pixel scores each of its s x s pixels
        z = z if s == 1 else z.repeat(s, axis=2).repeat(s, axis=3)
        masks = source.masks(batch)
        t, i, j = np.nonzero(masks)
        here = origins[start:start + step]
        pixels.append((here[t, 0] + i) * width + here[t, 1] + j)
        codes.append(masks[t, i, j].astype(np.int64))
        scores.append(z.transpose(0, 2, 3, 1)[t, i, j].astype(np.float32))
    if not pixels or not sum(len(p) for p in pixels):
        raise TileError(f"{data} holds no labelled pixel to evaluate on.")
    return PixelScores(np.concatenate(pixels), np.concatenate(codes),
                       np.concatenate(scores), width, cell, len(rows), note)


def _groups(keys: np.ndarray):
    """(order that sorts ``keys``, start of each run of equal keys in that order, the keys)."""
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    return order, starts, ordered[starts]


def pixel_probabilities(scores: PixelScores, temperature: float):
    """(pixel positions, reference code per pixel, probabilities (m, K) per pixel): each
    labelled pixel once, its probabilities the mean over the tiles that saw it."""
    order, starts, pixels = _groups(scores.pixel)
    p = softmax(scores.z[order].astype(np.float64), temperature)
    counts = np.diff(np.r_[starts, len(order)])[:, None]
    return pixels, scores.codes[order][starts], np.add.reduceat(p, starts, axis=0) / counts


def cell_probabilities(pixels: np.ndarray, codes: np.ndarray, p: np.ndarray,
                       frame_width: int, cell: int):
    """(reference code per cell, probabilities per cell) of the cells at least half of whose
    pixels are labelled: the mean of their pixels' probabilities, their most frequent label."""
    row, col = np.divmod(pixels, frame_width)
    keys = (row // cell) * (frame_width // cell + 1) + col // cell
    order, starts, _ = _groups(keys)
    counts = np.diff(np.r_[starts, len(order)])
    sums = np.add.reduceat(p[order], starts, axis=0)
    votes = np.zeros((len(starts), max(LCZ_CODES) + 1), np.int64)
    np.add.at(votes, (np.repeat(np.arange(len(starts)), counts), codes[order]), 1)
    keep = counts * 2 >= cell * cell
    return votes[keep].argmax(axis=1), sums[keep] / counts[keep, None]


def _figures(reference: np.ndarray, p: np.ndarray, card: ModelCard, bins: int):
    """(the LCZ figures with ECE and MCE, confusion matrix, calibration) of probabilities
    ``p`` against reference codes."""
    codes = np.asarray(card.class_codes)
    predicted = codes[p.argmax(axis=1)]
    cm = confusion_matrix(reference, predicted)
    cal = calibration(p.max(axis=1), predicted == reference, bins)
    return {**accuracy_scores(cm), "ece": cal["ece"], "mce": cal["mce"]}, cm, cal


def dense_report(predictor, data: str, bins: int = 15, batch_size: int = 256,
                 limit: int = 0) -> tuple[dict, np.ndarray, dict]:
    """(report, cell confusion matrix, cell calibration): the per-cell figures at the top
    (the headline), the per-pixel ones under ``pixels``."""
    card = predictor.card
    scores = predict_tiles(predictor, data, batch_size, limit)
    pixels, codes, p = pixel_probabilities(scores, card.temperature)
    cell_codes, cell_p = cell_probabilities(pixels, codes, p, scores.frame_width, scores.cell)
    if not len(cell_codes):
        raise TileError(f"{data}: no {scores.cell} x {scores.cell} px cell has at least half "
                        f"of its pixels labelled, so no cell can be evaluated; evaluate on "
                        f"larger test areas.")
    pixel_figures, pixel_cm, pixel_cal = _figures(codes, p, card, bins)
    figures, cm, cal = _figures(cell_codes, cell_p, card, bins)
    report = {"model_kind": "dense", "unit": "cells", "tiles": scores.tiles,
              "cell_pixels": scores.cell, **figures, "calibration": cal,
              "confusion_matrix": cm.tolist(),
              "pixels": {**pixel_figures, "calibration": pixel_cal,
                         "confusion_matrix": pixel_cm.tolist()}}
    if scores.note:
        report["note"] = scores.note
    return report, cm, cal


def calibration_pixels(predictor, data: str, batch_size: int = 256, seed: int = 0):
    """(reference codes, scores z in float64) of labelled pixels of ``data``, every tile's
    view of a pixel counted (the model's logits per pixel, as classify gets them); at most
    :data:`MAX_CALIBRATION_PIXELS`, drawn at random."""
    scores = predict_tiles(predictor, data, batch_size)
    pick = np.arange(len(scores.codes))
    if len(pick) > MAX_CALIBRATION_PIXELS:
        pick = np.sort(np.random.default_rng(seed).choice(pick, MAX_CALIBRATION_PIXELS,
                                                          replace=False))
    return scores.codes[pick], scores.z[pick].astype(np.float64)
