"""Where a dense model's tiles lie, and how much each of their pixels counts.

A dense model predicts every pixel of a tile, but a pixel near the tile's edge sees part of
its receptive field cut off (the model pads there with zeros), so its prediction is not the
one the same pixel gets inside a larger tile. Tiles therefore overlap: each tile of ``tile``
input pixels keeps a core of ``tile - 2 * overlap`` pixels, and its neighbours reach
``overlap`` pixels into it, with ``overlap`` at least half the receptive field (rounded up to
the model's tile multiple). Tile ``k`` along an axis starts at input pixel
``k * step - overlap`` (``step`` = the core's edge), counted from the raster's first pixel,
so tile origins are multiples of the tile multiple: every tile sees the same pooling grid,
whatever the tile size or the extent.

Blending, per axis (the 2-D weight is the product, so the tiles' weights still add up to
one): in output pixels, the ``border`` pixels at a tile's edge whose receptive field leaves
the tile weigh 0; the rest of the overlap, which the neighbour also predicts, ramps linearly
from near 0 to near 1, mirrored on the neighbour, so the two weights add up to exactly one
there; the middle weighs 1. The ramp is never 0 inside the part a tile keeps, and a pixel's
blended prediction changes smoothly from one tile's to the next: no seam. For a model whose
receptive field is given right, every kept prediction equals the one the whole scene would
give, and the blend only smooths rounding; for one that sees further than its card says, it
hides the step a hard cut would leave. The tiles of a run are those whose cores cover the
pixels it maps; its first and last tile along each axis have no ramp on their outer side (no
neighbour there, and their cores reach the run's edge).

Everything here is plain arithmetic on integers and small arrays; the scene loop is
:mod:`.dense`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..model.card import ModelCard

DEFAULT_TILE = 256
"""Tile edge in input pixels when none is asked for, raised for models that need more
overlap: to :data:`DEFAULT_OVERLAPS` times the overlap, so that at least half of every tile's
pixels are kept (a core of 5 overlaps: (5/7)^2 = 51 %)."""
DEFAULT_OVERLAPS = 7
MAX_TILE = 4096
PATCHES_PER_TILE = 16
"""BATCH_SIZE counts patches; a dense batch holds BATCH_SIZE / 16 tiles (at least one), so
that the default 64 runs 4 tiles of 256 px per call and the GPU hint 1024 runs 64."""


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class TileLayout:
    """The tiles of a dense model along each axis (see the module's docstring).

    ``tile``, ``overlap`` and ``step`` are in input pixels; ``border`` and the ``out_``
    properties in output pixels (input pixels / ``stride``)."""

    tile: int
    overlap: int
    stride: int
    border: int
    multiple: int

    @property
    def step(self) -> int:
        return self.tile - 2 * self.overlap

    @property
    def out_tile(self) -> int:
        return self.tile // self.stride

    @property
    def out_overlap(self) -> int:
        return self.overlap // self.stride

    @property
    def out_step(self) -> int:
        return self.step // self.stride

    @property
    def reach(self) -> int:
        """Output pixels past its core where a tile still weighs more than 0."""
        return self.out_overlap - self.border

    def origin(self, index: int) -> int:
        """Input pixel where tile ``index`` starts (may be negative: reflected pixels)."""
        return index * self.step - self.overlap

    def weights(self, first: bool = False, last: bool = False) -> np.ndarray:
        """The 1-D blending window over a tile's output pixels (float32). The ``first`` and
        ``last`` tile of a run have no neighbour before (after) them: no ramp there, so the
        weights still add up to one over the pixels the run maps."""
        size, border, reach = self.out_tile, self.border, self.reach
        window = np.ones(size, np.float64)
        ramp = (np.arange(2 * reach) + 0.5) / (2 * reach) if reach else np.zeros(0)
        if not first:
            window[:border] = 0.0
            window[border:border + 2 * reach] = ramp
        if not last:
            window[size - border - 2 * reach:size - border] = 1.0 - ramp
            window[size - border:] = 0.0
        return window.astype(np.float32)

    def tiles_for(self, first: int, end: int) -> range:
        """Indices of the tiles whose cores cover output pixels ``first .. end - 1``."""
        return range(first // self.out_step, -(-end // self.out_step))

    def final_before(self, index: int) -> int:
        """Output pixels before this one have every weight once tile ``index`` is done."""
        return (index + 1) * self.out_step - self.reach

    def describe(self) -> str:
        return (f"tiles of {self.tile} px overlapping by {self.overlap} px on each side "
                f"(cores of {self.step} px)")


def minimum_tile(overlap: int, border_px: int, multiple: int) -> int:
    """The smallest tile that keeps a core of one tile multiple and whose two ramps do not
    cross: ``tile - 2 * overlap >= multiple`` and ``tile >= 4 * overlap - 2 * border``."""
    return round_up(max(2 * overlap + multiple, 4 * overlap - 2 * border_px), multiple)


def make_layout(card: ModelCard, tile_size: int | None = None) -> TileLayout:
    """The tile layout of a dense model for ``tile_size`` (None or 0: the default, 256 px or
    7 overlaps, whichever is larger); refuses tile sizes that cannot work."""
    multiple, stride = card.tile_multiple, card.output_stride
    field = card.receptive_field
    overlap = round_up(math.ceil(field / 2), multiple)
    border = max(0, -(-(field - stride) // (2 * stride)))
    smallest = minimum_tile(overlap, border * stride, multiple)
    if not tile_size:
        tile = max(round_up(DEFAULT_TILE, multiple),
                   round_up(DEFAULT_OVERLAPS * overlap, multiple), smallest)
    else:
        tile = int(tile_size)
        if tile != tile_size or tile % multiple:
            lower = max(multiple, tile // multiple * multiple)
            raise InputError(
                f"the tile size {tile} px is not a multiple of the model's tile multiple "
                f"{multiple} px (its pooling levels need tiles of whole multiples); use "
                f"{lower} or {lower + multiple} px, or leave TILE_SIZE at 0 (automatic).")
        if tile < smallest:
            raise InputError(
                f"the tile size {tile} px is too small for this model: its receptive field of "
                f"{field} px needs tiles overlapping by {overlap} px on each side, so tiles of "
                f"at least {smallest} px (larger tiles waste less on overlaps); use a larger "
                f"TILE_SIZE, or leave it at 0 (automatic).")
    if tile > MAX_TILE:
        raise InputError(f"the tile size {tile} px is larger than {MAX_TILE} px, which would "
                         f"hold gigabytes per tile; use a smaller TILE_SIZE (256-1024).")
    return TileLayout(tile=tile, overlap=overlap, stride=stride, border=border,
                      multiple=multiple)


def tiles_per_batch(batch_size: int) -> int:
    return max(1, batch_size // PATCHES_PER_TILE)


def reflect(indices: np.ndarray, size: int) -> np.ndarray:
    """Raster indices of pixels ``indices`` of the raster reflected at its edges without
    repeating the edge pixel (numpy's ``reflect`` padding, to any depth)."""
    if size == 1:
        return np.zeros_like(indices)
    period = 2 * (size - 1)
    folded = np.mod(indices, period)
    return np.where(folded >= size, period - folded, folded)


def block_sums(values: np.ndarray, first: int, size: int, axis: int,
               dtype=None) -> tuple[np.ndarray, int]:
    """Sums of ``values`` along ``axis`` over blocks of ``size`` on the lattice anchored at
    0, where the first element along ``axis`` sits at position ``first``; returns the sums
    and the index of the first block (partial blocks at both ends are summed as they are)."""
    positions = np.arange(first, first + values.shape[axis]) // size
    starts = np.flatnonzero(np.diff(positions, prepend=positions[0] - 1))
    return np.add.reduceat(values, starts, axis=axis, dtype=dtype), int(positions[0])


def cell_sums(values: np.ndarray, top: int, left: int, size: int,
              dtype=None) -> tuple[np.ndarray, int, int]:
    """Sums of ``values`` (``H x W``, or ``K x H x W`` planes, first pixel at ``(top,
    left)``) over cells of ``size`` x ``size`` pixels anchored at pixel 0; returns the sums
    and the first cell's (row, column)."""
    rows, row = block_sums(values, top, size, values.ndim - 2, dtype)
    sums, col = block_sums(rows, left, size, values.ndim - 1, dtype)
    return sums, row, col
