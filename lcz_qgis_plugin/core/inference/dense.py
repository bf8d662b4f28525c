"""Classify with a dense model: overlapping tiles in, blended per-pixel probabilities, cells out.

A dense (fully convolutional) model predicts class scores for every pixel of a tile. The
scene is cut into overlapping tiles (:mod:`.tiles`: where they lie, how their pixels are
weighted); the tiles are taken row of tiles by row of tiles, date by date, a few tiles per
engine batch. Each tile's per-pixel probabilities are weighted by the blending window (and by
the pixels' validity) and summed straight into the output cells: sum(w p) and sum(w) per cell
and date. Because the window's weights add up to one at every pixel, a cell's probabilities,
sum(w p) / sum(w), are the mean over the cell's valid pixels of the blended per-pixel
probabilities. The dates are averaged per cell as for patch models, and the LCZ map, the
probabilities and the confidence are written exactly as for patch models
(:class:`.classify._EngineStage`). The optional fine map (OUTPUT_FINE) is the per-pixel argmax
of the blended probabilities (averaged over the dates where the pixel is valid), at the
model's output resolution.

Validity: a pixel is no data when any model channel is (as for patches). A cell is no data
when its centre pixel is, or when more than ``max_nodata_fraction`` of its pixels are; a
model output pixel (``s x s`` input pixels) counts as valid when at least half of its pixels
are. The no-data pixels of each cell are counted over the tiles' cores, which tile the plane,
so every pixel is counted once.

Streaming: the reader (prefetch thread) reads, for each batch, only the window of its tiles
(reflected at the raster's edges), normalises it and counts its cores' no-data pixels; the
engine (calling thread) runs the batch; the writer thread turns the raw output into weighted
sums and writes the cell rows (and fine rows) that no later tile can change. Memory therefore
depends on the tile size, the batch and the scene's width in cells, never on its height; the
fine map adds its band of rows still being blended (``K x (core + overlap) x width`` floats).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from osgeo import gdal

from ..cellgrid import CellGrid, make_grid
from ..errors import InputError
from ..feedback import Feedback
from ..lcz_classes import NODATA_CODE
from ..outputs import PendingOutputs
from ..stacks import Stack
from ..style import category_names, class_map_qml, colour_table
from .classify import PREFETCH_BYTES, _check_cancel, _EngineStage, _Scene, _Tally
from .engine import Engine, to_pixel_probabilities
from .strips import StripReader
from .threads import Background, Inline, Prefetch
from .tiles import TileLayout, cell_sums, make_layout, reflect, tiles_per_batch


@dataclass(frozen=True)
class DensePlan:
    """The tiles of a run over the output grid. Output pixels (``out_``) are input pixels /
    the model's output stride; ``per_cell`` output pixels make one cell's edge."""

    layout: TileLayout
    grid: CellGrid
    tiles_per_batch: int

    @property
    def per_cell(self) -> int:
        return self.grid.stride // self.layout.stride

    @property
    def out_rows(self) -> tuple[int, int]:
        return self.grid.row0 * self.per_cell, (self.grid.row0 + self.grid.rows) * self.per_cell

    @property
    def out_cols(self) -> tuple[int, int]:
        return self.grid.col0 * self.per_cell, (self.grid.col0 + self.grid.cols) * self.per_cell

    @property
    def tile_rows(self) -> range:
        return self.layout.tiles_for(*self.out_rows)

    @property
    def tile_cols(self) -> range:
        return self.layout.tiles_for(*self.out_cols)

    def cells_final_after(self, index: int) -> int:
        """Cell rows (of the output) that no tile after tile row ``index`` changes."""
        if index == self.tile_rows[-1]:
            return self.grid.rows
        final = self.layout.final_before(index) // self.per_cell - self.grid.row0
        return int(np.clip(final, 0, self.grid.rows))

    def strips(self) -> list[tuple[int, int]]:
        """The cell rows written after each row of tiles (rows of tiles that complete no cell
        row are left out)."""
        bounds, done = [], 0
        for index in self.tile_rows:
            upto = self.cells_final_after(index)
            if upto > done:
                bounds.append((done, upto))
                done = upto
        return bounds


def open_dense_scene(engine: Engine, stacks: list[Stack], feedback: Feedback, *,
                     cell_size: float | None, extent, tile_size: int | None,
                     batch_size: int) -> _Scene:
    """The scene of a dense model: the tile layout (refusing tile sizes that cannot work),
    the output grid (refusing cells that are not whole output pixels of the model)."""
    card = engine.card
    layout = make_layout(card, tile_size)
    first = stacks[0]
    grid = make_grid(first.geotransform, first.width, first.height,
                     cell_size if cell_size else card.cell_size, 1, extent)
    if grid.stride % layout.stride:
        out_pixel = grid.pixel_size * layout.stride
        below = max(1, grid.stride // layout.stride) * out_pixel
        raise InputError(
            f"the cell size {grid.cell_size:g} m is not a whole multiple of this dense model's "
            f"output pixel ({out_pixel:g} m: {layout.stride} input pixels of "
            f"{grid.pixel_size:g} m), so cells would cut output pixels. Use {below:g} m or "
            f"{below + out_pixel:g} m, or leave CELL_SIZE empty to use the model's default.")
    engine.use_tile_size(layout.tile)
    plan = DensePlan(layout, grid, tiles_per_batch(batch_size))
    strips = plan.strips()
    strip_rows = max(b - a for a, b in strips)
    feedback.info(
        f"Output grid: {grid.cols} x {grid.rows} cells of {grid.cell_size:g} m "
        f"({grid.stride} px), {len(stacks)} date(s); dense model: {layout.describe()}, "
        f"{len(plan.tile_rows)} x {len(plan.tile_cols)} tiles, {plan.tiles_per_batch} "
        f"per batch.")
    return _Scene(engine, stacks, grid, strip_rows, strips, dense=plan)


def create_fine_output(outputs: PendingOutputs, destination: str, scene: _Scene,
                       metadata: dict[str, str]) -> None:
    """The fine class map: the cells' area at the model's output resolution."""
    plan, grid = scene.dense, scene.grid
    (top, bottom), (left, right) = plan.out_rows, plan.out_cols
    pixel = grid.pixel_size * plan.layout.stride
    geotransform = (grid.origin_x + left * pixel, pixel, 0.0,
                    grid.origin_y - top * pixel, 0.0, -pixel)
    outputs.create("OUTPUT_FINE", destination, width=right - left, height=bottom - top,
                   bands=1, data_type=gdal.GDT_Byte, nodata=NODATA_CODE,
                   geotransform=geotransform, projection=scene.stacks[0].projection,
                   block_rows=plan.layout.out_step, descriptions=["LCZ class"],
                   metadata=dict(metadata, LCZ_PIXEL_SIZE=f"{pixel:g}"),
                   qml=class_map_qml(), colour_table=colour_table(),
                   category_names=category_names())


# --- what the reader hands to the engine ------------------------------------------------------

@dataclass(frozen=True)
class CoreCounts:
    """No-data pixels per cell within the cores of one batch's tiles: ``nodata`` pixels and
    no-data ``centre`` pixels (0 or 1) of cells ``row, col`` (output grid) onwards, and the
    same for each channel on its own (only channels with no data in the window)."""
    row: int
    col: int
    nodata: np.ndarray
    centre: np.ndarray
    channels: dict[str, tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class TileBatch:
    """Normalised tiles ``N x C x T x T`` of one date: tile row ``row``, tile columns
    ``cols`` (:class:`.tiles.TileLayout` indices); ``valid``: their output pixels' validity
    ``N x L x L`` (0 or 1); ``done`` of ``total`` batches of this (tile row, date) ``step``
    handed over."""
    step: int
    date: int
    row: int
    cols: tuple[int, ...]
    tiles: np.ndarray
    valid: np.ndarray
    counts: CoreCounts | None
    done: int
    total: int


@dataclass(frozen=True)
class TileRowDone:
    """Every date of tile row ``index`` was handed over; ``steps`` (tile row, date) pairs
    are done."""
    index: int
    steps: int


class TileReader(StripReader):
    """Reads the normalised windows of one date stack's tiles, reflected at the raster's
    edges (as patches are), with their cores' no-data counts."""

    def __init__(self, stack: Stack, card, plan: DensePlan, max_nodata_fraction: float):
        super().__init__(stack, card, plan.grid, max_nodata_fraction)
        self.plan = plan

    def window(self, y0: int, y1: int, x0: int, x1: int):
        """(pixels C x H x W, valid H x W, no-data masks) of input pixels ``[y0, y1) x
        [x0, x1)``, reflected where they lie outside the raster."""
        grid = self.grid
        rows = reflect(np.arange(y0, y1), grid.raster_height)
        cols = reflect(np.arange(x0, x1), grid.raster_width)
        ra, ca = int(rows.min()), int(cols.min())
        height, width = int(rows.max()) + 1 - ra, int(cols.max()) + 1 - ca
        raw, valid, masks = self._read_normalised(ca, ra, width, height)
        if height != y1 - y0 or width != x1 - x0 or rows[0] != ra or cols[0] != ca:
            index = np.ix_(rows - ra, cols - ca)
            raw = raw[(slice(None),) + index]
            valid = valid[index]
            masks = [(names, mask[index]) for names, mask in masks]
        return raw, valid, masks

    def batch(self, row: int, cols: list[int]) -> tuple[np.ndarray, np.ndarray, CoreCounts]:
        """Tiles of tile row ``row`` and tile columns ``cols`` (consecutive): the tiles, their
        output pixels' validity and their cores' no-data counts."""
        layout = self.plan.layout
        top, left = layout.origin(row), layout.origin(cols[0])
        pixels, valid, masks = self.window(top, top + layout.tile, left,
                                           layout.origin(cols[-1]) + layout.tile)
        starts = [layout.origin(j) - left for j in cols]
        tiles = np.stack([pixels[:, :, x:x + layout.tile] for x in starts])
        out_valid = _output_validity(valid, layout.stride)
        size, s = layout.out_tile, layout.stride
        valid_tiles = np.stack([out_valid[:, x // s:x // s + size] for x in starts])
        core = (slice(layout.overlap, layout.overlap + layout.step),
                slice(layout.overlap, layout.overlap + len(cols) * layout.step))
        counts = _core_counts(self.plan.grid, valid, masks, core, top, left)
        return tiles, valid_tiles, counts


def _output_validity(valid: np.ndarray, stride: int) -> np.ndarray:
    """1 where an output pixel (``stride`` x ``stride`` input pixels) is at least half
    valid, else 0 (float32)."""
    if stride == 1:
        return valid.astype(np.float32)
    height, width = valid.shape
    counts = valid.reshape(height // stride, stride, width // stride, stride).sum(axis=(1, 3))
    return (2 * counts >= stride * stride).astype(np.float32)


def _core_counts(grid: CellGrid, valid: np.ndarray, masks, core: tuple[slice, slice],
                 top: int, left: int) -> CoreCounts | None:
    """The no-data counts of the cells over the window's ``core`` (window rows, columns),
    limited to the output grid's pixels; None when they do not meet."""
    s = grid.stride
    y_a = max(top + core[0].start, grid.row0 * s)
    y_b = min(top + core[0].stop, (grid.row0 + grid.rows) * s)
    x_a = max(left + core[1].start, grid.col0 * s)
    x_b = min(left + core[1].stop, (grid.col0 + grid.cols) * s)
    if y_a >= y_b or x_a >= x_b:
        return None
    region = (slice(y_a - top, y_b - top), slice(x_a - left, x_b - left))

    def counted(nodata: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
        sums, row, col = cell_sums(nodata, y_a, x_a, s, np.int32)
        centres_y = np.arange(row, row + sums.shape[0]) * s + s // 2 - y_a
        centres_x = np.arange(col, col + sums.shape[1]) * s + s // 2 - x_a
        inside_y = (centres_y >= 0) & (centres_y < nodata.shape[0])
        inside_x = (centres_x >= 0) & (centres_x < nodata.shape[1])
        centre = np.zeros(sums.shape, np.int32)
        centre[np.ix_(inside_y, inside_x)] = nodata[np.ix_(centres_y[inside_y],
                                                           centres_x[inside_x])]
        return sums, centre, row, col

    nodata, centre, row, col = counted(~valid[region])
    channels = {}
    for names, mask in masks:
        sums_centre = counted(mask[region])[:2]
        channels.update((name, sums_centre) for name in names)
    return CoreCounts(row - grid.row0, col - grid.col0, nodata, centre, channels)


def _dense_events(readers: list[TileReader], plan: DensePlan) -> Iterator:
    """The scene as events, row of tiles by row of tiles and date by date: a
    :class:`TileBatch` per batch of tiles, then :class:`TileRowDone` per row of tiles. Runs
    on the prefetch thread: reading, normalising and counting happen here."""
    cols = list(plan.tile_cols)
    groups = [cols[i:i + plan.tiles_per_batch]
              for i in range(0, len(cols), plan.tiles_per_batch)]
    for row_number, row in enumerate(plan.tile_rows):
        for date, reader in enumerate(readers):
            step = row_number * len(readers) + date
            for done, group in enumerate(groups, start=1):
                tiles, valid, counts = reader.batch(row, group)
                yield TileBatch(step, date, row, tuple(group), tiles, valid, counts, done,
                                len(groups))
        yield TileRowDone(row, (row_number + 1) * len(readers))


# --- the engine stage and the sums it keeps ---------------------------------------------------

def _windows(layout: TileLayout, tiles: range):
    """The blending window of each tile along one axis (:meth:`.TileLayout.weights`)."""
    shapes = {(first, last): layout.weights(first, last)
              for first in (False, True) for last in (False, True)}
    return lambda index: shapes[index == tiles[0], index == tiles[-1]]


class _CellRow:
    """One output cell row's sums, per date: sum(w p) (``dates x cols x K``), sum(w), no-data
    pixels and no-data centre pixels, and those of each channel on its own."""

    def __init__(self, dates: int, cols: int, classes: int):
        self.weighted = np.zeros((dates, cols, classes))
        self.weights = np.zeros((dates, cols))
        self.nodata = np.zeros((dates, cols), np.int64)
        self.centre = np.zeros((dates, cols), np.int64)
        self.channels: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def channel(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in self.channels:
            self.channels[name] = (np.zeros_like(self.nodata), np.zeros_like(self.centre))
        return self.channels[name]


class _FineBand:
    """sum(w p) and sum(w) per output pixel for the rows that rows of tiles still add to:
    one core's height plus the blending reach below it, shifted up after each row of tiles.
    Kept as class planes ``K x rows x cols``, the probabilities' own layout."""

    def __init__(self, plan: DensePlan, classes: int):
        layout = plan.layout
        self.step = layout.out_step
        height = layout.out_step + 2 * layout.reach
        self.top = plan.tile_rows[0] * layout.out_step - layout.reach  # output pixel row
        self.left = plan.out_cols[0]
        width = plan.out_cols[1] - plan.out_cols[0]
        self.weighted = np.zeros((classes, height, width), np.float32)
        self.weights = np.zeros((height, width), np.float32)

    def add(self, top: int, left: int, weighted: np.ndarray, weights: np.ndarray) -> None:
        """Add ``weighted`` (K x rows x cols) and ``weights`` from output pixel ``top, left``."""
        y, x = top - self.top, left - self.left
        height, width = weights.shape
        self.weighted[:, y:y + height, x:x + width] += weighted
        self.weights[y:y + height, x:x + width] += weights

    def pop(self) -> tuple[int, np.ndarray, np.ndarray]:
        """(first output pixel row, sum(w p) ``K x rows x cols``, sum(w)) of the rows now
        final; the band moves down by one core."""
        step, top = self.step, self.top
        rows = self.weighted[:, :step].copy(), self.weights[:step].copy()
        self.weighted[:, :-step] = self.weighted[:, step:]
        self.weights[:-step] = self.weights[step:]
        self.weighted[:, -step:] = 0.0
        self.weights[-step:] = 0.0
        self.top += step
        return (top,) + rows


class _DenseStage(_EngineStage):
    """The engine's stage for a dense model: runs each batch of tiles on the calling thread
    and hands the raw output to the writer thread, which adds it into the cells' (and fine
    map's) sums and writes the rows no later tile changes (:meth:`_write_strip`)."""

    def __init__(self, scene: _Scene, outputs: PendingOutputs, class_key: str, writer,
                 feedback: Feedback, span: float, max_nodata_fraction: float):
        super().__init__(scene, outputs, class_key, writer, feedback, span)
        self.plan, self.card = scene.dense, scene.card
        self.dates = len(scene.stacks)
        self.steps = len(self.plan.tile_rows) * self.dates
        self.windows = (_windows(self.plan.layout, self.plan.tile_rows),
                        _windows(self.plan.layout, self.plan.tile_cols))
        self.limit = max_nodata_fraction * scene.grid.stride ** 2
        self.cells: dict[int, _CellRow] = {}
        self.cells_done = 0
        self.fine = (_FineBand(self.plan, self.n_classes) if "OUTPUT_FINE" in outputs
                     else None)
        self.tiles = 0

    def handle(self, event) -> None:
        match event:
            case TileBatch():
                raw = self.engine.run(event.tiles)
                self.tiles += len(event.tiles)
                self.writer.submit(self._add_batch, event, raw)
                self.feedback.progress(
                    self.span * (event.step + event.done / event.total) / self.steps)
            case TileRowDone():
                self.writer.submit(self._finish_tile_row, event.index)
                self.feedback.progress(self.span * event.steps / self.steps)

    # on the writer thread ---------------------------------------------------------------------

    def _add_batch(self, batch: TileBatch, raw: np.ndarray) -> None:
        layout = self.plan.layout
        probs = to_pixel_probabilities(raw, self.card, layout.out_tile)
        top = layout.origin(batch.row) // layout.stride
        across = self.windows[0](batch.row)[:, None]
        for tile, col in enumerate(batch.cols):
            weights = across * self.windows[1](col)[None, :] * batch.valid[tile]
            self._add_tile(batch.date, top, layout.origin(col) // layout.stride,
                           probs[tile], weights)
        if batch.counts is not None:
            self._add_counts(batch.date, batch.counts)

    def _row(self, row: int) -> _CellRow:
        if row not in self.cells:
            self.cells[row] = _CellRow(self.dates, self.cols, self.n_classes)
        return self.cells[row]

    def _add_tile(self, date: int, top: int, left: int, probs: np.ndarray,
                  weights: np.ndarray) -> None:
        """Add one tile's weighted probabilities (``L x L x K``, first output pixel at
        ``top, left``) to the cells (and the fine map) its weighted part covers; summed as
        class planes, the probabilities' own layout."""
        plan, size, border = self.plan, self.plan.layout.out_tile, self.plan.layout.border
        (first_row, end_row), (first_col, end_col) = plan.out_rows, plan.out_cols
        y_a, y_b = max(top + border, first_row), min(top + size - border, end_row)
        x_a, x_b = max(left + border, first_col), min(left + size - border, end_col)
        if y_a >= y_b or x_a >= x_b:
            return
        part = (slice(y_a - top, y_b - top), slice(x_a - left, x_b - left))
        weights = weights[part]
        weighted = np.moveaxis(probs, -1, 0)[(slice(None),) + part] * weights
        sums, row, col = cell_sums(weighted, y_a, x_a, plan.per_cell)
        sums = sums.transpose(1, 2, 0)  # cell rows x cols x K
        weight_sums = cell_sums(weights, y_a, x_a, plan.per_cell, np.float64)[0]
        row, col = row - plan.grid.row0, col - plan.grid.col0
        columns = slice(col, col + sums.shape[1])
        for i in range(sums.shape[0]):
            cells = self._row(row + i)
            cells.weighted[date, columns] += sums[i]
            cells.weights[date, columns] += weight_sums[i]
        if self.fine is not None:
            self.fine.add(y_a, x_a, weighted, weights)

    def _add_counts(self, date: int, counts: CoreCounts) -> None:
        columns = slice(counts.col, counts.col + counts.nodata.shape[1])
        for i in range(counts.nodata.shape[0]):
            cells = self._row(counts.row + i)
            cells.nodata[date, columns] += counts.nodata[i]
            cells.centre[date, columns] += counts.centre[i]
            for name, (nodata, centre) in counts.channels.items():
                channel = cells.channel(name)
                channel[0][date, columns] += nodata[i]
                channel[1][date, columns] += centre[i]

    def _finish_tile_row(self, index: int) -> None:
        """Write the fine rows and the cell rows that tile row ``index`` completed."""
        if self.fine is not None:
            self._write_fine(*self.fine.pop())
        upto = self.plan.cells_final_after(index)
        if upto > self.cells_done:
            self._write_cells(self.cells_done, upto)
            self.cells_done = upto

    def _write_cells(self, row_a: int, row_b: int) -> None:
        """Cell rows ``row_a .. row_b - 1``: each date's probabilities where the cell is
        valid that date, averaged over those dates, written as for patch models."""
        rows = [self.cells.pop(row, None) or _CellRow(self.dates, self.cols, self.n_classes)
                for row in range(row_a, row_b)]
        weighted = np.stack([r.weighted for r in rows], axis=1)  # dates x rows x cols x K
        weights = np.stack([r.weights for r in rows], axis=1)
        nodata = np.stack([r.nodata for r in rows], axis=1)
        centre = np.stack([r.centre for r in rows], axis=1)
        valid = (centre == 0) & (nodata <= self.limit) & (weights > 0)
        probs = weighted / np.where(weights > 0, weights, 1.0)[..., None]
        prob_sum = (probs * valid[..., None]).sum(axis=0).astype(np.float32)
        self.tally.patches += int(valid.sum())
        self.tally.blamed.update(self._blame(rows, valid))
        self._write_strip(row_a, prob_sum, valid.sum(axis=0).astype(np.int32))

    def _blame(self, rows: list[_CellRow], valid: np.ndarray) -> Counter:
        """How many no-data cells (counted per date) each channel makes no data on its own;
        ``""``: cells only several channels together make no data (as
        :meth:`.strips.Strip.nodata_channels`)."""
        invalid = ~valid
        blamed = Counter()
        if not invalid.any():
            return blamed
        explained = np.zeros_like(invalid)
        for name in self.card.channels:
            if not any(name in r.channels for r in rows):
                continue
            nodata = np.stack([r.channel(name)[0] for r in rows], axis=1)
            centre = np.stack([r.channel(name)[1] for r in rows], axis=1)
            alone = invalid & ((centre > 0) | (nodata > self.limit))
            explained |= alone
            blamed[name] += int(alone.sum())
        blamed[""] += int((invalid & ~explained).sum())
        return +blamed

    def _write_fine(self, top: int, weighted: np.ndarray, weights: np.ndarray) -> None:
        """The fine map's rows from output pixel row ``top``: the argmax of the blended
        probabilities; no data where no date is valid and outside the raster."""
        first, end = self.plan.out_rows
        a, b = max(top, first), min(top + len(weights), end)
        if a >= b:
            return
        weighted, weights = weighted[:, a - top:b - top], weights[a - top:b - top]
        classes = np.where(weights > 0, self.codes[weighted.argmax(axis=0)], NODATA_CODE)
        grid, stride = self.plan.grid, self.plan.layout.stride
        rows_out = np.arange(a, b) * stride >= grid.raster_height
        cols_out = np.arange(*self.plan.out_cols) * stride >= grid.raster_width
        classes[rows_out] = NODATA_CODE
        classes[:, cols_out] = NODATA_CODE
        self.outputs.write("OUTPUT_FINE", classes.astype(np.uint8), a - first)


def run_dense_scene(scene: _Scene, outputs: PendingOutputs, class_key: str,
                    stages: contextlib.ExitStack, feedback: Feedback, *, span: float,
                    prefetch: bool, max_nodata_fraction: float) -> _Tally:
    """Every row of tiles and date through reader -> engine -> writer (the module's
    docstring); the threads are entered into ``stages``, which the caller closes on error."""
    plan = scene.dense
    readers = [TileReader(stack, scene.card, plan, max_nodata_fraction)
               for stack in scene.stacks]
    source = _dense_events(readers, plan)
    if prefetch:
        batch_bytes = plan.tiles_per_batch * scene.card.n_channels * plan.layout.tile ** 2 * 4
        depth = int(min(4, max(2, PREFETCH_BYTES // batch_bytes)))
        source = stages.enter_context(Prefetch(source, depth, "lcz-read"))
        writer = Background(2, "lcz-write")
        stages.callback(writer.close)
    else:
        writer = Inline()
    stage = _DenseStage(scene, outputs, class_key, writer, feedback, span, max_nodata_fraction)
    for event in source:
        _check_cancel(feedback)
        stage.handle(event)
    writer.finish()
    stages.close()
    stage.tally.tiles = stage.tiles
    stage.tally.pixels = stage.tiles * plan.layout.tile ** 2
    return stage.tally
