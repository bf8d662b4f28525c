"""Reading strips of an input stack and cutting them into per-cell patches without copying.

A strip is the block of pixel rows that holds the patches of a run of output cell rows (see
:meth:`CellGrid.pixel_window`). It is read once, scaled and normalised once (patches overlap
by (patch / stride)^2, 10-23x for the usual sizes, so normalising the strip is that much
cheaper than normalising patches), and reflected at the raster edges. The patches are then
strided views into the strip; only the cells of one batch are gathered into the contiguous
``N x C x P x P`` array the engine needs.

No-data: a pixel is no-data when any model channel is no-data (or NaN) there. Such pixels
enter the model as 0 after normalisation, i.e. the channel mean. A cell is no-data when its
centre pixel is, or when more than ``max_nodata_fraction`` of its patch is. Which channel
made a cell no-data is worked out only when asked (:meth:`Strip.nodata_channels`): a channel
is named when its own no-data would skip the cell. Channels with the same no-data pixels
(the bands of one Sentinel-2 stack) are checked together, so that costs one pass per distinct
mask, and nothing at all for strips without no-data.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from osgeo import gdal

from ..cellgrid import CellGrid
from ..errors import InputError
from ..model.card import ModelCard
from ..stacks import Stack


class Strip:
    """Normalised pixels ``C x H x W`` of one strip, with its cells' patches and validity.

    ``nodata_masks``: ``(channel names, H x W no-data mask)`` for each distinct no-data mask
    of the strip's channels (channels without no-data are left out)."""

    def __init__(self, pixels: np.ndarray, valid: np.ndarray, grid: CellGrid,
                 max_nodata_fraction: float,
                 nodata_masks: list[tuple[list[str], np.ndarray]] | None = None):
        self.pixels = pixels
        self.grid, self.max_nodata_fraction = grid, max_nodata_fraction
        self.nodata_masks = nodata_masks or []
        s, p = grid.stride, grid.patch
        windows = sliding_window_view(pixels, (p, p), axis=(1, 2))[:, ::s, ::s]
        self.windows = windows.transpose(1, 2, 0, 3, 4)  # rows x cols x C x P x P, a view
        self.cell_valid = self._cells_valid(valid)

    def _cells_valid(self, valid: np.ndarray) -> np.ndarray:
        s, p = self.grid.stride, self.grid.patch
        rows, cols = self.windows.shape[:2]
        centre = valid[p // 2::s, p // 2::s][:rows, :cols]
        counts = window_sums(valid, p, s)[:rows, :cols]
        return centre & (counts >= (1.0 - self.max_nodata_fraction) * p * p)

    def gather(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Contiguous float32 batch ``N x C x P x P`` of the given cells."""
        return np.ascontiguousarray(self.windows[rows, cols])

    def nodata_channels(self, rows: np.ndarray | None = None,
                        cols: np.ndarray | None = None) -> Counter:
        """How many of the given no-data cells (default: all of the strip's) each channel
        makes no-data on its own; cells that only the no-data of several channels together
        makes no-data count under ``""``."""
        if rows is None:
            rows, cols = np.nonzero(~self.cell_valid)
        blamed = Counter()
        if len(rows) == 0:
            return blamed
        explained = np.zeros(len(rows), bool)
        for names, mask in self.nodata_masks:
            alone = ~self._cells_valid(~mask)[rows, cols]
            explained |= alone
            for name in names:
                blamed[name] += int(alone.sum())
        blamed[""] += int((~explained).sum())
        return +blamed  # drops zero counts


def describe_nodata(blamed: Counter) -> str:
    """``no-data in OSM:building_height (395 cells), 10 channels S2:B02 ... S2:B12 (3
    cells)``: channels with equal counts are named together, the largest count first."""
    groups: dict[int, list[str]] = {}
    for name, count in blamed.items():
        if name:
            groups.setdefault(count, []).append(name)
    parts = []
    for count in sorted(groups, reverse=True):
        names = groups[count]
        label = (", ".join(names) if len(names) <= 4 else
                 f"{len(names)} channels {names[0]} ... {names[-1]}")
        parts.append(f"{label} ({count} cell{'s' if count != 1 else ''})")
    if blamed.get(""):
        parts.append(f"several channels together ({blamed['']} cell"
                     f"{'s' if blamed[''] != 1 else ''})")
    return "no-data in " + ", ".join(parts) if parts else ""


def window_sums(mask: np.ndarray, size: int, step: int) -> np.ndarray:
    """Number of true pixels in every ``size x size`` window, windows ``step`` apart."""
    height, width = mask.shape
    integral = np.zeros((height + 1, width + 1), dtype=np.int32)
    np.cumsum(np.cumsum(mask, axis=0, dtype=np.int32), axis=1, out=integral[1:, 1:])
    n_rows, n_cols = (height - size) // step + 1, (width - size) // step + 1
    first = slice(0, (n_rows - 1) * step + 1, step), slice(0, (n_cols - 1) * step + 1, step)
    last = (slice(size, size + (n_rows - 1) * step + 1, step),
            slice(size, size + (n_cols - 1) * step + 1, step))
    return (integral[last[0], last[1]] - integral[first[0], last[1]]
            - integral[last[0], first[1]] + integral[first[0], first[1]])


class StripReader:
    """Reads normalised strips of one date stack for a given output grid."""

    def __init__(self, stack: Stack, card: ModelCard, grid: CellGrid,
                 max_nodata_fraction: float = 0.5):
        self.stack, self.grid = stack, grid
        self.channels = list(card.channels)
        self.max_nodata_fraction = max_nodata_fraction
        gain, bias = card.gain_and_bias()  # the card's normalisation as one multiply-add
        self.gain, self.bias = gain[:, None, None], bias[:, None, None]

    def read(self, row_a: int, row_b: int) -> Strip:
        """The strip holding the patches of output cell rows ``row_a .. row_b - 1``."""
        grid = self.grid
        y0, y1, x0, x1 = grid.pixel_window(row_a, row_b)
        ry0, ry1 = max(y0, 0), min(y1, grid.raster_height)
        rx0, rx1 = max(x0, 0), min(x1, grid.raster_width)
        raw, valid, masks = self._read_normalised(rx0, ry0, rx1 - rx0, ry1 - ry0)
        pad = ((ry0 - y0, y1 - ry1), (rx0 - x0, x1 - rx1))
        if any(p for pair in pad for p in pair):
            raw = np.pad(raw, ((0, 0),) + pad, mode="reflect")
            valid = np.pad(valid, pad, mode="reflect")
            masks = [(names, np.pad(mask, pad, mode="reflect")) for names, mask in masks]
        return Strip(raw, valid, grid, self.max_nodata_fraction, masks)

    def _read_normalised(self, x: int, y: int, width: int, height: int):
        """(pixels C x H x W normalised by the card, valid H x W, no-data masks) of the
        raster window at column ``x``, row ``y``; no-data pixels are set to 0."""
        raw = self.stack.dataset.ReadAsArray(x, y, width, height, band_list=self.stack.bands,
                                             buf_type=gdal.GDT_Float32)
        if raw is None:
            raise InputError(f"GDAL could not read rows {y}-{y + height} of "
                             f"{self.stack.path}: {gdal.GetLastErrorMsg()}. The file may be "
                             f"damaged or incomplete; check it with gdalinfo -checksum.")
        raw = raw.reshape(len(self.stack.bands), height, width)
        masks = self._nodata_masks(raw)
        valid = np.ones(raw.shape[1:], bool)
        for _, mask in masks:
            valid &= ~mask
        raw *= self.gain
        raw += self.bias
        raw[:, ~valid] = 0.0
        return raw, valid, masks

    def _nodata_masks(self, raw: np.ndarray) -> list[tuple[list[str], np.ndarray]]:
        """The distinct no-data masks of the channels (NaN, infinite or the band's no-data
        value), each with the channels that have it."""
        masks: list[tuple[list[str], np.ndarray]] = []
        for band, nodata in enumerate(self.stack.nodata):
            mask = ~np.isfinite(raw[band])
            if nodata is not None:
                mask |= raw[band] == np.float32(nodata)
            if not mask.any():
                continue
            for names, known in masks:
                if np.array_equal(known, mask):
                    names.append(self.channels[band])
                    break
            else:
                masks.append(([self.channels[band]], mask))
        return masks
