"""The output cell grid and where each cell's patch lies in the input raster.

Cells sit on a lattice anchored at the input raster's origin: with ``stride`` pixels per cell
(100 m cells on 10 m pixels: stride 10), cell (i, j) covers pixel rows ``i*stride`` to
``(i+1)*stride - 1``. A cell is part of the output when its centre pixel lies in the raster,
so the last row/column of cells may reach up to half a cell past the raster edge.

Each cell gets one patch of ``patch`` x ``patch`` pixels centred on the cell centre: its first
pixel is ``i*stride + stride//2 - patch//2``. For a stride and patch of the same parity
(10 and 32, 10 and 48) the patch is centred exactly; otherwise it sits half a pixel towards
the top left. The *centre pixel* of a cell is ``i*stride + stride//2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import InputError


@dataclass(frozen=True)
class CellGrid:
    """Output cells ``rows x cols`` starting at cell ``(row0, col0)`` of the raster lattice."""

    origin_x: float
    origin_y: float
    pixel_size: float
    stride: int
    patch: int
    row0: int
    col0: int
    rows: int
    cols: int
    raster_width: int
    raster_height: int

    @property
    def cell_size(self) -> float:
        return self.pixel_size * self.stride

    @property
    def offset(self) -> int:
        """Pixel offset of a patch's first pixel from its cell's first pixel (often < 0)."""
        return self.stride // 2 - self.patch // 2

    @property
    def geotransform(self) -> tuple[float, float, float, float, float, float]:
        return (self.origin_x + self.col0 * self.cell_size, self.cell_size, 0.0,
                self.origin_y - self.row0 * self.cell_size, 0.0, -self.cell_size)

    def pixel_window(self, row_a: int, row_b: int) -> tuple[int, int, int, int]:
        """Pixel rows [y0, y1) and columns [x0, x1) holding the patches of cell rows
        ``row_a`` to ``row_b - 1`` of the output (may extend past the raster)."""
        y0 = (self.row0 + row_a) * self.stride + self.offset
        y1 = (self.row0 + row_b - 1) * self.stride + self.offset + self.patch
        x0 = self.col0 * self.stride + self.offset
        x1 = (self.col0 + self.cols - 1) * self.stride + self.offset + self.patch
        return y0, y1, x0, x1


def lattice_size(raster_size: int, stride: int) -> int:
    """Number of cells along one axis whose centre pixel lies inside the raster."""
    return (raster_size - 1 - stride // 2) // stride + 1


def make_grid(geotransform, width: int, height: int, cell_size: float, patch: int,
              extent: tuple[float, float, float, float] | None = None) -> CellGrid:
    """Build the output grid, refusing cell sizes and extents that cannot work.

    ``extent`` is ``(xmin, ymin, xmax, ymax)`` in the raster's CRS; every cell that overlaps it
    is kept (the extent is snapped outwards to the cell lattice).
    """
    x0, px, rx, y0, ry, py = geotransform
    pixel = px
    ratio = cell_size / pixel
    stride = round(ratio)
    if stride < 1 or abs(ratio - stride) > 1e-6 * max(1.0, ratio):
        below = max(1, math.floor(ratio)) * pixel
        above = max(1, math.ceil(ratio)) * pixel
        raise InputError(
            f"the cell size {cell_size:g} m is not a whole multiple of the input pixel size "
            f"{pixel:g} m, so cells would not line up with pixels. Use {below:g} m or "
            f"{above:g} m, or leave CELL_SIZE empty to use the model's default.")
    if width < patch or height < patch:
        raise InputError(
            f"the input raster is {width} x {height} pixels, smaller than one {patch} x {patch} "
            f"pixel patch of this model. Use a larger area (at least {patch * pixel:g} m on "
            f"each side).")
    rows_all, cols_all = lattice_size(height, stride), lattice_size(width, stride)
    row0, col0, rows, cols = 0, 0, rows_all, cols_all
    if extent is not None:
        exmin, eymin, exmax, eymax = extent
        if not (exmax > exmin and eymax > eymin):
            raise InputError(f"the extent {extent} is empty; give xmin < xmax and ymin < ymax.")
        cell = pixel * stride
        c_a = math.floor((exmin - x0) / cell + 1e-9)
        c_b = math.ceil((exmax - x0) / cell - 1e-9)
        r_a = math.floor((y0 - eymax) / cell + 1e-9)
        r_b = math.ceil((y0 - eymin) / cell - 1e-9)
        col0, row0 = max(c_a, 0), max(r_a, 0)
        cols, rows = min(c_b, cols_all) - col0, min(r_b, rows_all) - row0
        if cols <= 0 or rows <= 0:
            rx1, ry1 = x0 + width * pixel, y0 - height * pixel
            raise InputError(
                f"the extent ({exmin:.1f}, {eymin:.1f}, {exmax:.1f}, {eymax:.1f}) does not "
                f"overlap the input raster ({x0:.1f}, {ry1:.1f}, {rx1:.1f}, {y0:.1f}) in the "
                f"raster's CRS. Choose an extent inside the raster, or leave EXTENT empty.")
    return CellGrid(origin_x=x0, origin_y=y0, pixel_size=pixel, stride=stride, patch=patch,
                    row0=row0, col0=col0, rows=rows, cols=cols,
                    raster_width=width, raster_height=height)
