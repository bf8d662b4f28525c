"""Extract training tiles with a per-pixel label mask, for dense models (QGIS-free).

The tile mode of ``lcz:extractpatches`` (``extract_patches(..., samples="tiles")``).

Which tiles: ``tile x tile`` pixel tiles on a regular grid anchored at the stack's origin,
``tile // 2`` pixels apart (so every pixel lies in up to four tiles, and in one tile away from
the tile's border), as many rows and columns as it takes to reach the raster's last pixel. A
tile is written when at least one of its pixels is labelled. The last row and column of tiles
may reach up to ``tile // 2 - 1`` pixels past the raster edge: those pixels are filled by
reflection at the edge, as the classifier fills patches (values only: they are never labelled).

Masks: the training areas are rasterised at pixel centres (:class:`AreaRasterizer`, GDAL's
rasterizer without ALL_TOUCHED): a pixel whose centre lies in an area gets the area's LCZ code;
in areas of two different classes it gets 0 (no label, as a cell claimed by two classes is
dropped in patch mode); in several areas of one class it belongs to the one with the lowest
id. Pixels that are no-data in any channel (NaN, infinite or the band's no-data value) get 0
and keep their stored value.

Split: the polygons are split into train / validation / test by the patch mode's rule
(:func:`.extraction.split_polygons`), sized in labelled pixels. A tile holding pixels of
several splits is written once per split, each copy labelling only that split's pixels, so no
labelled pixel ever appears in two splits (the unlabelled context around it may).

Two passes: the first rasterises the areas over the whole raster (no stack values read) to
count each polygon's pixels for the split and to report unused polygons; the second reads the
stack one row of tiles at a time (in windows of whole tiles within ``strip_memory_mb``), and
only where some tile holds a labelled pixel.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from osgeo import gdal, ogr, osr

from ..areas import Area, LabelledAreas, read_areas
from ..cellgrid import make_grid
from ..commit import Commit
from ..errors import Cancelled, InputError
from ..feedback import Feedback
from ..rasters import bounded_cache
from ..stacks import Stack
from .extraction import (
    PATCH_EXTENSIONS,
    ClassCounts,
    ExtractResult,
    _describe,
    _patch_file_info,
    _Sampling,
    open_stack_channels,
    split_polygons,
    summarise,
)
from .patch_file import SPLITS, PatchFileInfo, PatchWriter, json_number

TILE_MIN, TILE_MAX = 16, 1024
SPLIT_NAMES = {v: k for k, v in SPLITS.items()}
LABELS_PASS = 10.0
"""Share of the progress bar for the first pass (rasterising the areas)."""
BATCH_TILES = 16
"""Tiles appended to the file at once."""


@dataclass(frozen=True)
class TileGrid:
    """Tiles of ``size`` px every ``step`` px from the stack's origin: ``rows x cols`` of
    them, the last row and column reaching the raster's last pixel."""

    size: int
    step: int
    rows: int
    cols: int
    width: int
    height: int
    origin_x: float
    origin_y: float
    pixel_size: float

    def centre(self, row: int, col: int) -> tuple[float, float]:
        """x, y of the centre of tile (row, col) in the stack's CRS."""
        half = self.size / 2.0
        return (self.origin_x + (col * self.step + half) * self.pixel_size,
                self.origin_y - (row * self.step + half) * self.pixel_size)


def tile_grid(stack: Stack, tile_size: int) -> TileGrid:
    """The tile grid of ``stack``; refuses a tile larger than the stack."""
    if tile_size > stack.width or tile_size > stack.height:
        raise InputError(
            f"the input stack {stack.path} is {stack.width} x {stack.height} pixels, smaller "
            f"than one {tile_size} x {tile_size} pixel tile. Choose a TILE_SIZE of at most "
            f"{min(stack.width, stack.height)} pixels, or a larger stack.")
    step = tile_size // 2
    x0, px, _, y0, _, _ = stack.geotransform
    return TileGrid(size=tile_size, step=step,
                    rows=math.ceil((stack.height - tile_size) / step) + 1,
                    cols=math.ceil((stack.width - tile_size) / step) + 1,
                    width=stack.width, height=stack.height, origin_x=x0, origin_y=y0,
                    pixel_size=px)


def check_tile_arguments(output: str, tile_size: int, sampling: _Sampling) -> None:
    """Refuse a wrong file name, tile size, sampling cap or split before any file is read."""
    if not output.lower().endswith(PATCH_EXTENSIONS):
        raise InputError(f"the patch file {output} must end in .h5 (HDF5).")
    if not isinstance(tile_size, (int, np.integer)) or not TILE_MIN <= tile_size <= TILE_MAX:
        raise InputError(f"the tile size must be a whole number of pixels from {TILE_MIN} to "
                         f"{TILE_MAX}, not {tile_size}; 128 suits most dense models.")
    if sampling.max_per_polygon or sampling.max_per_class:
        raise InputError("MAX_PER_POLYGON and MAX_PER_CLASS limit patches; tiles keep every "
                         "labelled pixel. Set both to 0 for tiles, or extract patches.")
    v, t = sampling.validation_fraction, sampling.test_fraction
    if not 0 <= v < 1 or not 0 <= t < 1 or v + t >= 1:
        raise InputError(f"validation ({v}) and test ({t}) fractions must be in [0, 1) and "
                         f"leave some areas for training.")


class AreaRasterizer:
    """The training areas burnt at pixel centres onto any window of the stack's pixel grid.

    Areas are numbered 1 ... n in the order of their polygon ids (0 = none); :attr:`ids` and
    :attr:`codes` give each number's polygon id and LCZ code. One in-memory layer per class
    holds its areas in descending id order, so where areas of one class overlap, the one with
    the lowest id is burnt last and owns the pixel."""

    def __init__(self, areas: list[Area], geotransform, width: int, height: int,
                 crs_wkt: str = ""):
        ordered = sorted(areas, key=lambda a: a.polygon_id)
        self.ids = np.array([0] + [a.polygon_id for a in ordered], np.int64)
        self.codes = np.array([0] + [a.code for a in ordered], np.uint8)
        self.geotransform, self.width, self.height = geotransform, width, height
        self.crs_wkt = crs_wkt
        srs = osr.SpatialReference(wkt=crs_wkt) if crs_wkt else None
        if srs is not None:  # the areas are in the stack's CRS already: nothing to transform
            srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        self._source = ogr.GetDriverByName("Memory").CreateDataSource("training_areas")
        self.layers = []
        for code in sorted(set(self.codes[1:].tolist())):
            layer = self._source.CreateLayer(f"lcz_{code}", srs, ogr.wkbUnknown)
            layer.CreateField(ogr.FieldDefn("area", ogr.OFTInteger))
            for index in range(len(ordered), 0, -1):
                if self.codes[index] == code:
                    feature = ogr.Feature(layer.GetLayerDefn())
                    feature.SetField("area", index)
                    geometry = ordered[index - 1].geometry
                    feature.SetGeometry(geometry.GetLinearGeometry()
                                        if geometry.HasCurveGeometry() else geometry)
                    layer.CreateFeature(feature)
            self.layers.append((code, layer))

    def label(self, y0: int, y1: int, x0: int, x1: int):
        """(LCZ code uint8, area number int32, in areas of different classes bool) of every
        pixel of rows ``y0 .. y1 - 1`` and columns ``x0 .. x1 - 1``; pixels outside the
        raster are 0 / 0 / False. Conflicting pixels get code and number 0."""
        shape = (y1 - y0, x1 - x0)
        codes, owner = np.zeros(shape, np.uint8), np.zeros(shape, np.int32)
        conflict = np.zeros(shape, bool)
        ry0, ry1 = max(y0, 0), min(y1, self.height)
        rx0, rx1 = max(x0, 0), min(x1, self.width)
        if ry1 <= ry0 or rx1 <= rx0:
            return codes, owner, conflict
        ox, px, _, oy, _, py = self.geotransform
        target = gdal.GetDriverByName("MEM").Create("", rx1 - rx0, ry1 - ry0, 1, gdal.GDT_Int32)
        target.SetGeoTransform((ox + rx0 * px, px, 0.0, oy + ry0 * py, 0.0, py))
        if self.crs_wkt:
            target.SetProjection(self.crs_wkt)
        band = target.GetRasterBand(1)
        inside = (slice(ry0 - y0, ry1 - y0), slice(rx0 - x0, rx1 - x0))
        code_view, owner_view, conflict_view = codes[inside], owner[inside], conflict[inside]
        for code, layer in self.layers:
            band.Fill(0)
            if gdal.RasterizeLayer(target, [1], layer, options=["ATTRIBUTE=area"]) != 0:
                raise InputError(f"GDAL could not rasterise the training areas: "
                                 f"{gdal.GetLastErrorMsg()}. Check their geometries (Vector "
                                 f"> Geometry Tools > Check Validity) and fix or drop the "
                                 f"broken ones.")
            burnt = band.ReadAsArray()
            hit = burnt > 0
            conflict_view |= hit & (code_view > 0)
            first = hit & (code_view == 0)
            code_view[first] = code
            owner_view[first] = burnt[first]
        codes[conflict] = 0
        owner[conflict] = 0
        return codes, owner, conflict


@dataclass
class _Areas:
    """Pass 1: the training areas as numbered by the rasterizer, their pixels and split."""

    rasterizer: AreaRasterizer
    pixels: np.ndarray
    """Labelled pixels (centre inside, no conflict) per area number."""
    split: np.ndarray | None
    """Split code per area number; None without a hold-out split."""
    conflicts: int
    outside: list
    without_pixels: list


def _count_pixels(rasterizer: AreaRasterizer, budget: int, feedback: Feedback):
    """Labelled pixels per area number and pixels in areas of different classes, over the
    whole raster in strips of rows (no stack values are read)."""
    width, height = rasterizer.width, rasterizer.height
    rows = max(1, budget // (16 * width))
    pixels = np.zeros(len(rasterizer.ids), np.int64)
    conflicts = 0
    for y in range(0, height, rows):
        if feedback.is_cancelled():
            raise Cancelled()
        _, owner, conflict = rasterizer.label(y, min(height, y + rows), 0, width)
        pixels += np.bincount(owner.ravel(), minlength=len(pixels))
        conflicts += int(conflict.sum())
        feedback.progress(LABELS_PASS * min(height, y + rows) / height)
    pixels[0] = 0
    return pixels, conflicts


def _label_areas(areas: LabelledAreas, stack: Stack, sampling: _Sampling, source_name: str,
                 budget: int, feedback: Feedback) -> _Areas:
    """Pass 1: number the areas, count their pixels, warn about the unused ones, and split
    them into train / validation / test by whole polygons sized in pixels."""
    rasterizer = AreaRasterizer(areas.areas, stack.geotransform, stack.width, stack.height,
                                stack.projection)
    pixels, conflicts = _count_pixels(rasterizer, budget, feedback)
    ox, px, _, oy, _, _ = stack.geotransform
    xmax, ymin = ox + stack.width * px, oy - stack.height * px
    number = {int(pid): k for k, pid in enumerate(rasterizer.ids) if k}
    outside, without = [], []
    for area in areas.areas:
        minx, maxx, miny, maxy = area.geometry.GetEnvelope()
        if maxx <= ox or minx >= xmax or maxy <= ymin or miny >= oy:
            outside.append(area)
        elif not pixels[number[area.polygon_id]]:
            without.append(area)
    _warn_unused(outside, without, conflicts, px, feedback)
    if not pixels.any():
        raise InputError(
            f"none of the {len(areas.areas)} training areas of {source_name} contains a pixel "
            f"centre of the input stack {stack.path}"
            + (f" ({len(outside)} lie entirely outside it)" if outside else "")
            + ". Check that polygons and raster cover the same place (and that the polygons' "
              "CRS is declared correctly).")
    split = None
    if sampling.with_split:
        by_class: dict[int, list[int]] = {}
        for k in np.flatnonzero(pixels):
            by_class.setdefault(int(rasterizer.codes[k]), []).append(int(rasterizer.ids[k]))
        chosen = split_polygons(
            by_class, sampling.validation_fraction, sampling.test_fraction,
            np.random.default_rng(sampling.seed), feedback,
            {int(rasterizer.ids[k]): int(pixels[k]) for k in np.flatnonzero(pixels)},
            unit="pixels")
        split = np.array([chosen.get(int(pid), 0) for pid in rasterizer.ids], np.uint8)
    return _Areas(rasterizer=rasterizer, pixels=pixels, split=split, conflicts=conflicts,
                  outside=outside, without_pixels=without)


def _warn_unused(outside, without, conflicts: int, pixel: float, feedback: Feedback) -> None:
    if outside:
        feedback.warning(f"{len(outside)} training area(s) lie outside the input raster and "
                         f"are skipped: polygon {_describe(outside)}.")
    if without:
        feedback.warning(f"{len(without)} training area(s) hold no pixel centre of their own "
                         f"({pixel:g} m pixels; too small, or covered by other areas) and are "
                         f"skipped: polygon {_describe(without)}.")
    if conflicts:
        feedback.warning(f"{conflicts} pixel(s) lie in overlapping training areas of different "
                         f"classes and are left unlabelled. Fix the overlapping polygons.")


class _WindowReader:
    """Raw stack values of any window of whole tiles, reflected past the raster edges, with
    the pixels that are valid in every channel."""

    def __init__(self, stack: Stack):
        self.stack = stack

    def read(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        stack = self.stack
        ry0, ry1 = max(y0, 0), min(y1, stack.height)
        rx0, rx1 = max(x0, 0), min(x1, stack.width)
        raw = stack.dataset.ReadAsArray(rx0, ry0, rx1 - rx0, ry1 - ry0, band_list=stack.bands,
                                        buf_type=gdal.GDT_Float32)
        if raw is None:
            raise InputError(f"GDAL could not read rows {ry0}-{ry1} of {stack.path}: "
                             f"{gdal.GetLastErrorMsg()}. The file may be damaged or "
                             f"incomplete; check it with gdalinfo -checksum.")
        raw = raw.reshape(len(stack.bands), ry1 - ry0, rx1 - rx0)
        valid = np.isfinite(raw).all(axis=0)
        for band, nodata in enumerate(stack.nodata):
            if nodata is not None:
                valid &= raw[band] != np.float32(nodata)
        pad = ((ry0 - y0, y1 - ry1), (rx0 - x0, x1 - rx1))
        if any(p for pair in pad for p in pair):
            raw = np.pad(raw, ((0, 0),) + pad, mode="reflect")
            valid = np.pad(valid, pad, mode="reflect")
        return raw, valid


@dataclass
class _Tally:
    """What the second pass wrote: labelled pixels per class and split (each pixel once),
    tiles per split, labelled pixels lost to no-data."""

    counts: ClassCounts = field(default_factory=ClassCounts)
    tiles: Counter = field(default_factory=Counter)
    nodata_pixels: int = 0


@dataclass
class _Window:
    """One window of whole tiles: tile row ``row``, tile columns ``first .. last - 1``, its
    pixel columns starting at ``x0``, labels with no-data already removed."""

    row: int
    first: int
    last: int
    x0: int
    values: np.ndarray
    codes: np.ndarray
    owner: np.ndarray


def _tile_columns_per_window(grid: TileGrid, channels: int, budget: int) -> int:
    """Tile columns read at once so that a window (values, their reflected copy, labels)
    stays within ``budget`` bytes."""
    width = budget // (grid.size * (8 * channels + 16))
    return max(1, (width - grid.size) // grid.step + 1)


def _read_window(reader: _WindowReader, areas: _Areas, grid: TileGrid, row: int, first: int,
                 last: int, tally: _Tally) -> _Window | None:
    """Labels and values of tile row ``row``, columns ``first .. last - 1``; None when no
    tile there holds a labelled pixel. Counts the labelled pixels of the window's own part
    of the raster (rows and columns no earlier window covers) into ``tally``."""
    t, s = grid.size, grid.step
    y0, x0 = row * s, first * s
    codes, owner, _ = areas.rasterizer.label(y0, y0 + t, x0, (last - 1) * s + t)
    labelled = [j for j in range(first, last)
                if codes[:, (j - first) * s:(j - first) * s + t].any()]
    if not labelled:
        return None
    xa, xb = labelled[0] * s, labelled[-1] * s + t  # every labelled pixel lies in between
    codes, owner = codes[:, xa - x0:xb - x0], owner[:, xa - x0:xb - x0]
    values, valid = reader.read(y0, y0 + t, xa, xb)
    own_rows = slice(0, grid.height - y0 if row == grid.rows - 1 else s)
    own_cols = slice(0, (grid.width if last == grid.cols else last * s) - xa)
    lost = (codes > 0) & ~valid
    tally.nodata_pixels += int(lost[own_rows, own_cols].sum())
    codes[~valid], owner[~valid] = 0, 0
    _count(tally, areas, codes[own_rows, own_cols], owner[own_rows, own_cols])
    return _Window(row=row, first=labelled[0], last=labelled[-1] + 1, x0=xa, values=values,
                   codes=codes, owner=owner)


def _count(tally: _Tally, areas: _Areas, codes: np.ndarray, owner: np.ndarray) -> None:
    """Add labelled pixels per class and split, and the polygons they belong to."""
    numbers = owner[codes > 0]
    if not len(numbers):
        return
    splits = areas.split[numbers] if areas.split is not None else np.zeros_like(numbers)
    for (number, split), n in Counter(zip(numbers.tolist(), splits.tolist())).items():
        code = int(areas.rasterizer.codes[number])
        tally.counts[code][SPLIT_NAMES[int(split)]] += n
        tally.counts.polygons[code].add(int(areas.rasterizer.ids[number]))


def _window_tiles(window: _Window, areas: _Areas, grid: TileGrid):
    """(values, mask, label, polygon id, centre, split) of each tile of the window and each
    split whose pixels it holds."""
    t, s = grid.size, grid.step
    ids_of = areas.rasterizer.ids
    for j in range(window.first, window.last):
        cols = slice(j * s - window.x0, j * s - window.x0 + t)
        codes, owner = window.codes[:, cols], window.owner[:, cols]
        labelled = codes > 0
        if not labelled.any():
            continue
        split_of_pixel = (areas.split[owner] if areas.split is not None
                          else np.zeros(owner.shape, np.uint8))
        values = np.ascontiguousarray(window.values[:, :, cols])
        for split in np.unique(split_of_pixel[labelled]):
            mine = labelled & (split_of_pixel == split)
            mask = np.where(mine, codes, 0).astype(np.uint8)
            label = int(np.argmax(np.bincount(mask[mine])))
            number = int(np.argmax(np.bincount(owner[mine])))
            yield (values, mask, label, int(ids_of[number]), grid.centre(window.row, j),
                   int(split))


def write_tiles(writer: PatchWriter, reader: _WindowReader, grid: TileGrid, areas: _Areas,
                columns: int, feedback: Feedback) -> _Tally:
    """Pass 2: read each row of tiles in windows of ``columns`` tile columns and append the
    tiles holding labelled pixels; cancel and progress per row of tiles."""
    tally, batch = _Tally(), []
    for row in range(grid.rows):
        if feedback.is_cancelled():
            raise Cancelled()
        for first in range(0, grid.cols, columns):
            window = _read_window(reader, areas, grid, row, first,
                                  min(grid.cols, first + columns), tally)
            if window is None:
                continue
            for tile in _window_tiles(window, areas, grid):
                batch.append(tile)
                tally.tiles[SPLIT_NAMES[tile[5]]] += 1
                if len(batch) >= BATCH_TILES:
                    _append(writer, batch, areas.split is not None)
        _append(writer, batch, areas.split is not None)
        feedback.progress(LABELS_PASS + (100.0 - LABELS_PASS) * (row + 1) / grid.rows)
    return tally


def _append(writer: PatchWriter, batch: list, with_split: bool) -> None:
    """Append the batched tiles and empty the batch."""
    if not batch:
        return
    values, masks, labels, ids, centres, splits = zip(*batch)
    writer.append(np.stack(values), np.array(labels, np.uint8), np.array(ids, np.int64),
                  np.array(centres, np.float64),
                  split=np.array(splits, np.uint8) if with_split else None,
                  masks=np.stack(masks))
    batch.clear()


def extract_tiles(stack_path: str, areas: LabelledAreas | str, output: str, *,
                  class_field: str | None = None, layer: str | None = None,
                  tile_size: int = 128, cell_size: float = 100.0,
                  validation_fraction: float = 0.0, test_fraction: float = 0.0,
                  seed: int = 0, summary_output: str | None = None,
                  feedback: Feedback | None = None, strip_memory_mb: float = 256,
                  input_bands=None, ignore_unknown_labels: bool = False,
                  max_per_polygon: int = 0, max_per_class: int = 0) -> ExtractResult:
    """Write the tile file ``output`` (.h5, patch schema version 2 with masks) from an input
    stack and training areas; the arguments mean what they mean for
    :func:`.extraction.extract_patches`. ``cell_size`` is the output cell the model's maps
    will have (recorded for per-cell scores; it must be a whole multiple of the pixel size).
    A failed or cancelled run leaves no file."""
    feedback = feedback or Feedback()
    output = os.fspath(output)
    sampling = _Sampling(seed=seed, max_per_polygon=max_per_polygon,
                         max_per_class=max_per_class, validation_fraction=validation_fraction,
                         test_fraction=test_fraction)
    check_tile_arguments(output, tile_size, sampling)
    files = Commit(inputs=[stack_path, areas if isinstance(areas, str) else areas.source])
    files.reserve(output, "patch file")
    if summary_output:
        files.reserve(summary_output, "summary")
    feedback.info(f"Reading the input stack {os.path.basename(stack_path)}"
                  + (f" and the training areas {os.path.basename(areas)}"
                     if isinstance(areas, str) else "") + " ...")
    stack, channels = open_stack_channels(stack_path, input_bands, feedback)
    grid = tile_grid(stack, tile_size)
    cells = make_grid(stack.geotransform, stack.width, stack.height, cell_size, 1)
    if isinstance(areas, str):
        areas = read_areas(areas, class_field, layer, feedback,
                           ignore_unknown_labels=ignore_unknown_labels)
    source_name = areas.source
    areas = areas.in_crs(stack.projection, feedback)
    feedback.info(f"{len(areas.areas)} training areas, input stack {stack.width} x "
                  f"{stack.height} px with {len(channels)} channels, {grid.rows} x {grid.cols} "
                  f"tiles of {tile_size} px every {grid.step} px.")
    budget = int(strip_memory_mb * 2 ** 20)
    feedback.info("Labelling the pixels inside the training areas ...")
    labelled = _label_areas(areas, stack, sampling, source_name, budget, feedback)
    info = _tile_file_info(stack, channels, cells, grid, source_name, areas.class_field,
                           sampling)
    with bounded_cache(), files:
        feedback.info("Writing the tiles over the training areas ...")
        tally = _write_tile_file(output, info, stack, grid, labelled, budget, files, feedback)
        summary = _tile_summary(output, tally, labelled, grid, info, feedback)
        summary["notes"] = areas.notes
        if summary_output:
            files.write_text(summary_output, json.dumps(summary, indent=2), "summary")
        feedback.info(files.saving_line())
    return ExtractResult(
        output=output, patches=summary["tiles"],
        counts={code: {k: v for k, v in c.items() if v} for code, c in tally.counts.items()},
        polygons={code: len(pids) for code, pids in tally.counts.polygons.items()},
        summary=summary, summary_path=summary_output)


def _tile_file_info(stack: Stack, channels: list[str], cells, grid: TileGrid, source_name: str,
                    class_field: str | None, sampling: _Sampling) -> PatchFileInfo:
    """The patch file description of :func:`.extraction._patch_file_info`, for tiles."""
    info = _patch_file_info(stack, channels, cells, grid.size, source_name, class_field,
                            sampling)
    info.source.update(samples="tiles", tile_size=grid.size, tile_step=grid.step)
    return dataclasses.replace(info, sample_kind="tiles", nodata=list(stack.nodata),
                               grid_origin=[grid.origin_x, grid.origin_y])


def _write_tile_file(output: str, info: PatchFileInfo, stack: Stack, grid: TileGrid,
                     areas: _Areas, budget: int, files: Commit, feedback: Feedback) -> _Tally:
    """Write the tiles under the file's temporary name in ``files``; chunks of whole tiles
    of about 1 MiB, so that training reads random tiles without decompressing others."""
    channels = len(info.channels)
    chunk = max(1, min(64, 2 ** 20 // (4 * channels * grid.size * grid.size)))
    with PatchWriter(output, info, split=areas.split is not None, chunk_patches=chunk,
                     commit=files, masks=True) as writer:
        tally = write_tiles(writer, _WindowReader(stack), grid, areas,
                            _tile_columns_per_window(grid, channels, budget), feedback)
        if writer.count == 0:
            raise InputError("every pixel inside the training areas is no-data in the input "
                             "stack, so no tile could be extracted. Check the stack's no-data "
                             "values and coverage.")
    if tally.nodata_pixels:
        feedback.warning(f"{tally.nodata_pixels} pixel(s) inside the training areas are "
                         f"no-data in the input stack and are left unlabelled.")
    return tally


def _tile_summary(output: str, tally: _Tally, areas: _Areas, grid: TileGrid,
                  info: PatchFileInfo, feedback: Feedback) -> dict:
    """Labelled pixels per class and split (logged as a table), tiles, and what was left
    out (JSON-ready)."""
    tiles = sum(tally.tiles.values())
    summary = summarise(output, tally.counts, feedback, unit="labelled_pixels",
                        title=f"Wrote {tiles} tiles of {grid.size} px to {output}; labelled "
                              f"pixels per class and split (each pixel counted once):")
    summary.update({
        "sample_kind": "tiles", "tiles": tiles, "tile_size": grid.size,
        "tile_step": grid.step, "tiles_per_split": dict(tally.tiles),
        "polygons_outside_raster": [a.polygon_id for a in areas.outside],
        "polygons_without_pixels": [a.polygon_id for a in areas.without_pixels],
        "pixels_in_conflicting_polygons": areas.conflicts,
        "labelled_pixels_nodata": tally.nodata_pixels,
        "channels": info.channels, "scale": info.scale, "offset": info.offset,
        "nodata": [json_number(v) for v in info.nodata]})
    return summary
