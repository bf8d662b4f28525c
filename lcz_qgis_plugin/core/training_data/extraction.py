"""Extract training patches: training-area polygons + input stack -> patch file (QGIS-free).

Which cells: the stack's cell lattice (:func:`.grid.make_grid`, the same lattice
``lcz:classify`` uses), and of it every cell whose *centre* lies inside a training polygon.
Each sampled cell gives one ``patch x patch`` pixel patch centred on the cell centre, read
and edge-reflected exactly as at inference (:class:`.patches.StripReader`), so a model sees
the same kind of patch in training and in use. Cells whose patch is mostly no-data (the
classifier's rule) are skipped. A cell claimed by polygons of two different classes is
dropped; claimed twice by one class, it is used once.

Stored values are the stack's own (raw) values. Each channel gets a ``scale`` and ``offset``
(physical value = raw * scale + offset) that a model's preprocessing starts from: the band's
own GDAL scale/offset when it has one, otherwise 1e-4 and 0 for ``S2:*`` channels
(Sentinel-2 DN with the processing-baseline offset already removed, as So2Sat) and 1 and 0
for everything else.

Sampling: ``max_per_polygon`` and then ``max_per_class`` patches, drawn at random with
``seed``. Hold-out split by whole polygons, so that neighbouring, overlapping patches never
sit on both sides of a split, but sized in patches: per class, polygons go to validation and
then test until each holds about ``validation_fraction`` / ``test_fraction`` of the class's
patches (:func:`split_polygons`; at least one validation polygon once a class has two, one
test polygon once it has three, always one left for training).

Memory: the stack is read in strips of cell rows holding selected cells (about
``strip_memory_mb``), never whole.

Tiles with per-pixel label masks for dense models (``samples="tiles"``) are written by
:mod:`.tiles`, which shares this module's steps (stack, areas, split, summary, commit).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field

import numpy as np
from osgeo import ogr

from ..about import software_tag
from ..areas import LabelledAreas, read_areas
from ..cellgrid import CellGrid, make_grid
from ..channels import PRESETS, band_channels, default_scale, parse_input_bands
from ..commit import Commit
from ..errors import Cancelled, InputError
from ..feedback import Feedback, describe_files
from ..inference.classify import strip_rows_for
from ..inference.strips import StripReader, describe_nodata
from ..lcz_classes import LCZ_CODES, lcz_class
from ..model.card import ModelCard
from ..rasters import bounded_cache, check_georeferencing, open_raster
from ..stacks import Stack
from .patch_file import SPLITS, PatchFileInfo, PatchWriter

PATCH_EXTENSIONS = (".h5", ".hdf5")


@dataclass
class ExtractResult:
    output: str
    patches: int
    counts: dict[int, dict[str, int]]
    """Patches (tiles: labelled pixels, each counted once) per LCZ code and split name."""
    polygons: dict[int, int]
    """Polygons that gave patches (tiles: labelled pixels), per LCZ code."""
    summary: dict = field(default_factory=dict)
    summary_path: str | None = None


def channel_scaling(stack: Stack, channels: list[str]) -> tuple[list[float], list[float]]:
    """Per channel (scale, offset): the band's GDAL scale/offset, else the defaults
    (:func:`.channels.default_scale`, offset 0)."""
    scales, offsets = [], []
    for number, name in zip(stack.bands, channels):
        band = stack.dataset.GetRasterBand(number)
        scale, offset = band.GetScale(), band.GetOffset()
        if scale not in (None, 1.0) or offset not in (None, 0.0):
            scales.append(float(1.0 if scale is None else scale))
            offsets.append(float(0.0 if offset is None else offset))
        else:
            scales.append(default_scale(name))
            offsets.append(0.0)
    return scales, offsets


def open_stack_channels(path: str, input_bands=None,
                        feedback: Feedback | None = None) -> tuple[Stack, list[str]]:
    """Open a stack whose band names give its channels; every named band is a channel.

    Names come from ``input_bands`` (INPUT_BANDS; ``-`` leaves a band out) or else from the
    band descriptions, both read under :func:`.bandnames.canonical_channel`, so the patch
    file records contract names (``S2:B02``, not ``B2``)."""
    ds = open_raster(path, "input stack")
    check_georeferencing(ds, path)
    input_bands = parse_input_bands(input_bands)
    named = band_channels(ds, path, input_bands, feedback)
    unnamed = [str(i) for i, n in enumerate(named, start=1) if not n]
    if unnamed and input_bands is None:
        raise InputError(f"bands {', '.join(unnamed)} of the input stack {path} have no "
                         f"description, so the patch file could not say which channel is "
                         f"which. Give INPUT_BANDS (the bands' names in order, or a preset: "
                         f"{', '.join(p.name for p in PRESETS)}), build the stack with "
                         f"lcz:buildstack, or set each band's description (S2:B02, "
                         f"OSM:building_fraction, DSM:height ...).")
    bands = [i for i, n in enumerate(named, start=1) if n]
    names = [n for n in named if n]
    if not names:
        raise InputError(f"INPUT_BANDS skips every band of the input stack {path}; name at "
                         f"least one band.")
    duplicates = sorted(n for n, k in Counter(names).items() if k > 1)
    if duplicates:
        raise InputError(f"the input stack {path} has several bands read as "
                         f"{', '.join(duplicates)} (B2, B02 and S2:B02 name the same band); "
                         f"band names must be unique.")
    nodata = [ds.GetRasterBand(b).GetNoDataValue() for b in bands]
    return Stack(path=path, dataset=ds, bands=bands, nodata=nodata), names


def cells_in_areas(areas: LabelledAreas, grid: CellGrid):
    """({polygon id: [(row, col), ...]}, areas outside the raster, areas too small to hold
    a cell centre): the cells whose centre lies inside each area."""
    cell = grid.cell_size
    ox, oy = grid.origin_x, grid.origin_y
    width_m, height_m = grid.raster_width * grid.pixel_size, grid.raster_height * grid.pixel_size
    found: dict[int, list[tuple[int, int]]] = {}
    outside, too_small = [], []
    point = ogr.Geometry(ogr.wkbPoint)
    for area in areas.areas:
        minx, maxx, miny, maxy = area.geometry.GetEnvelope()
        if maxx <= ox or minx >= ox + width_m or maxy <= oy - height_m or miny >= oy:
            outside.append(area)
            continue
        c_a = max(0, math.ceil((minx - ox) / cell - 0.5))
        c_b = min(grid.cols - 1, math.floor((maxx - ox) / cell - 0.5))
        r_a = max(0, math.ceil((oy - maxy) / cell - 0.5))
        r_b = min(grid.rows - 1, math.floor((oy - miny) / cell - 0.5))
        cells = []
        for r in range(r_a, r_b + 1):
            for c in range(c_a, c_b + 1):
                point.SetPoint_2D(0, ox + (c + 0.5) * cell, oy - (r + 0.5) * cell)
                if area.geometry.Contains(point):
                    cells.append((r, c))
        if cells:
            found[area.polygon_id] = cells
        else:
            too_small.append(area)
    return found, outside, too_small


def _describe(areas, limit: int = 15) -> str:
    text = ", ".join(f"{a.polygon_id} ('{a.label}')" for a in areas[:limit])
    return text + (f" and {len(areas) - limit} more" if len(areas) > limit else "")


def split_polygons(by_class: dict[int, list[int]], validation: float, test: float,
                   rng: np.random.Generator, feedback: Feedback,
                   patches: dict[int, int] | None = None,
                   unit: str = "patches") -> dict[int, int]:
    """Split code (0 train, 1 validation, 2 test) per polygon id, chosen per class.

    Whole polygons only (neighbouring, overlapping patches never straddle a split), but aimed
    at *patches*: per class, validation and then test take polygons until their patch count
    (``patches``: per polygon id; 1 each when not given) is as close as a greedy choice gets
    to ``validation`` / ``test`` times the class's patches (see :func:`_hold_out`). Counting
    polygons instead gave one class 6 of 300 patches for validation and another 51 of 106.
    Minimum per class: one validation polygon once the class has two polygons, one test
    polygon once it has three; at least one polygon always stays in training. ``unit`` names
    what ``patches`` counts in the warnings (tiles count labelled pixels).
    """
    patches = patches or {}
    split, short, far = {}, [], []
    for code in sorted(by_class):
        ids = sorted(by_class[code])
        order = [ids[i] for i in rng.permutation(len(ids))]
        sizes = np.array([patches.get(pid, 1) for pid in order], np.int64)
        free = np.ones(len(order), bool)
        total = int(sizes.sum())
        letter = lcz_class(code).letter
        for name, fraction, minimum in (("validation", validation, 2), ("test", test, 3)):
            if fraction <= 0:
                continue
            keep = 2 if name == "validation" and test > 0 and len(order) >= 3 else 1
            taken = _hold_out(sizes, free, fraction * total, len(order) >= minimum, keep)
            for k in taken:
                split[order[k]] = SPLITS[name]
            held = int(sizes[taken].sum())
            if not taken:
                short.append(f"{letter} ({len(order)})")
            elif abs(held - fraction * total) > max(0.1 * total, 1.0):
                far.append(f"{letter} {name} {held} of {total} {unit} "
                           f"({100.0 * held / total:.0f} %)")
        for k in np.flatnonzero(free):
            split[order[k]] = SPLITS["train"]
    if short:
        feedback.warning(
            "too few polygons to hold out validation/test areas for class(es) "
            f"{', '.join(dict.fromkeys(short))} (polygons in brackets); their "
            f"{unit} stay in the training split. Digitise more, separate training areas for "
            "these classes.")
    if far:
        feedback.warning(
            f"whole polygons could not bring the hold-out near {100 * validation:g} % "
            f"validation / {100 * test:g} % test for: {'; '.join(far)}. The polygons of these "
            "classes are too few or too unequal in size; digitise more, similar-sized areas.")
    return split


def _hold_out(sizes: np.ndarray, free: np.ndarray, target: float, at_least_one: bool,
              keep: int) -> list[int]:
    """Greedy: take the free polygon (index into ``sizes``) that brings the held-out patch
    count closest to ``target`` while that improves it (ties: the first in the random order),
    leaving at least ``keep`` polygons free; with ``at_least_one``, the first is taken even if
    it does not improve. Marks the taken ones not free; returns their indices."""
    taken, held = [], 0
    while free.sum() > keep:
        candidates = np.flatnonzero(free)
        distance = np.abs(held + sizes[candidates] - target)
        best = candidates[int(np.argmin(distance))]
        if distance.min() >= abs(held - target) and (taken or not at_least_one):
            break
        taken.append(int(best))
        free[best] = False
        held += int(sizes[best])
    return taken


def extract_patches(stack_path: str, areas: LabelledAreas | str, output: str, *,
                    class_field: str | None = None, layer: str | None = None,
                    patch_size: int = 48, cell_size: float = 100.0,
                    max_per_polygon: int = 0, max_per_class: int = 0,
                    validation_fraction: float = 0.0, test_fraction: float = 0.0,
                    seed: int = 0, summary_output: str | None = None,
                    feedback: Feedback | None = None, max_nodata_fraction: float = 0.5,
                    strip_memory_mb: float = 256, input_bands=None,
                    ignore_unknown_labels: bool = False, samples: str = "patches",
                    tile_size: int = 128) -> ExtractResult:
    """Write the patch file ``output`` (.h5) from an input stack and training areas.

    ``areas``: a :class:`LabelledAreas` or the path of a vector file (``class_field`` and
    ``layer`` then choose what to read, see :func:`.areas.read_areas`;
    ``ignore_unknown_labels`` skips polygons whose label is no LCZ class). ``input_bands``
    (INPUT_BANDS) names the stack's bands instead of their descriptions. Raises
    :class:`~.errors.LczError` subclasses with messages meant for the user; a failed or
    cancelled run leaves no patch file.

    ``samples="tiles"`` writes ``tile_size`` px tiles with per-pixel label masks for dense
    models instead (:func:`.tiles.extract_tiles`; ``patch_size`` and
    ``max_nodata_fraction`` do not apply).
    """
    if samples != "patches":
        return _extract_tiles(**{k: v for k, v in locals().items()
                                 if k not in ("patch_size", "max_nodata_fraction")})
    feedback = feedback or Feedback()
    output = os.fspath(output)
    sampling = _Sampling(seed=seed, max_per_polygon=max_per_polygon,
                         max_per_class=max_per_class, validation_fraction=validation_fraction,
                         test_fraction=test_fraction)
    _check_arguments(output, patch_size, sampling)
    files = Commit(inputs=[stack_path, areas if isinstance(areas, str) else areas.source])
    files.reserve(output, "patch file")
    if summary_output:
        files.reserve(summary_output, "summary")
    feedback.info(f"Reading the input stack {os.path.basename(stack_path)}"
                  + (f" and the training areas {describe_files([areas])}"
                     if isinstance(areas, str) else "") + " ...")
    stack, channels = open_stack_channels(stack_path, input_bands, feedback)
    grid = make_grid(stack.geotransform, stack.width, stack.height, cell_size, patch_size)
    if isinstance(areas, str):
        areas = read_areas(areas, class_field, layer, feedback,
                           ignore_unknown_labels=ignore_unknown_labels)
    source_name = areas.source
    areas = areas.in_crs(stack.projection, feedback)
    feedback.info(f"{len(areas.areas)} training areas, input stack {stack.width} x "
                  f"{stack.height} px with {len(channels)} channels, {grid.rows} x "
                  f"{grid.cols} cells of {grid.cell_size:g} m, {patch_size} px patches.")
    cells = _cells_to_extract(areas, grid, source_name, stack_path, sampling, feedback)
    info = _patch_file_info(stack, channels, grid, patch_size, source_name, areas.class_field,
                            sampling)
    reader = _identity_reader(stack, channels, grid, patch_size, max_nodata_fraction)
    strip_rows = strip_rows_for(grid, len(channels), strip_memory_mb)
    feedback.info(f"Extracting the patches of {len(cells.selected)} cells, in strips of up to "
                  f"{strip_rows} cell rows ...")
    with bounded_cache(), files:
        counts, invalid, blamed = _write_patch_file(output, info, reader, cells, strip_rows,
                                                    files, feedback)
        summary = summarise(output, counts, feedback)
        summary.update({
            "polygons_outside_raster": [a.polygon_id for a in cells.outside],
            "polygons_without_cells": [a.polygon_id for a in cells.too_small],
            "cells_in_conflicting_polygons": len(cells.conflicts), "cells_mostly_nodata": invalid,
            "cells_mostly_nodata_by_channel": dict(blamed),
            "channels": channels, "scale": info.scale, "offset": info.offset,
            "notes": areas.notes})
        if summary_output:
            files.write_text(summary_output, json.dumps(summary, indent=2), "summary")
        feedback.info(files.saving_line())
    return ExtractResult(
        output=output, patches=summary["patches"],
        counts={code: {k: v for k, v in c.items() if v} for code, c in counts.items()},
        polygons={code: len(pids) for code, pids in counts.polygons.items()},
        summary=summary, summary_path=summary_output)


def _extract_tiles(samples: str, **arguments) -> ExtractResult:
    """The tile mode of :func:`extract_patches`; refuses an unknown ``samples``."""
    if samples != "tiles":
        raise InputError(f"SAMPLES must be 'patches' (one per cell, for patch models) or "
                         f"'tiles' (with a per-pixel label mask, for dense models), not "
                         f"{samples!r}.")
    from .tiles import extract_tiles  # imports this module
    return extract_tiles(**arguments)


@dataclass
class _Sampling:
    """The user's sampling and hold-out settings, recorded in the patch file as given."""

    seed: int
    max_per_polygon: int
    max_per_class: int
    validation_fraction: float
    test_fraction: float

    @property
    def with_split(self) -> bool:
        return self.validation_fraction > 0 or self.test_fraction > 0


@dataclass
class _Cells:
    """The cells that become patches, and what was left out (for the log and summary)."""

    selected: list[tuple[int, int, int]]
    """(row, col, polygon id) of each cell to extract."""
    code_of: dict[int, int]
    """LCZ code per polygon id."""
    split_of: dict[int, int] | None
    """Split code per polygon id; None without a hold-out split."""
    conflicts: set
    outside: list
    too_small: list


def _check_arguments(output: str, patch_size: int, sampling: _Sampling) -> None:
    """Refuse a wrong file name, patch size or split fractions before any file is read."""
    if not output.lower().endswith(PATCH_EXTENSIONS):
        raise InputError(f"the patch file {output} must end in .h5 (HDF5).")
    if patch_size < 1:
        raise InputError(f"the patch size must be at least 1 pixel, not {patch_size}.")
    validation_fraction, test_fraction = sampling.validation_fraction, sampling.test_fraction
    if not 0 <= validation_fraction < 1 or not 0 <= test_fraction < 1 or \
            validation_fraction + test_fraction >= 1:
        raise InputError(f"validation ({validation_fraction}) and test ({test_fraction}) "
                         f"fractions must be in [0, 1) and leave some areas for training.")


def _find_cells(areas: LabelledAreas, grid: CellGrid, source_name: str, stack_path: str,
                feedback: Feedback):
    """:func:`cells_in_areas`, with a warning for the areas that give no cell and an error
    when none gives any."""
    found, outside, too_small = cells_in_areas(areas, grid)
    if outside:
        feedback.warning(f"{len(outside)} training area(s) lie outside the input raster and "
                         f"are skipped: polygon {_describe(outside)}.")
    if too_small:
        feedback.warning(f"{len(too_small)} training area(s) hold no cell centre "
                         f"({grid.cell_size:g} m cells) and are skipped: polygon "
                         f"{_describe(too_small)}. Enlarge them or use smaller cells.")
    if not found:
        raise InputError(
            f"none of the {len(areas.areas)} training areas of {source_name} contains a cell "
            f"centre of the input raster {stack_path}"
            + (f" ({len(outside)} lie entirely outside it)" if outside else "")
            + ". Check that polygons and raster cover the same place (and that the polygons' "
              "CRS is declared correctly).")
    return found, outside, too_small


def _cells_to_extract(areas: LabelledAreas, grid: CellGrid, source_name: str,
                      stack_path: str, sampling: _Sampling, feedback: Feedback) -> _Cells:
    """The cells whose centre lies in a training area, sampled (``max_per_polygon``,
    ``max_per_class``) and split into train / validation / test by whole polygons."""
    found, outside, too_small = _find_cells(areas, grid, source_name, stack_path, feedback)
    code_of = {a.polygon_id: a.code for a in areas.areas}
    rng = np.random.default_rng(sampling.seed)
    selected, conflicts = sample_cells(found, code_of, sampling.max_per_polygon,
                                       sampling.max_per_class, rng, feedback)
    split_of = None
    if sampling.with_split:
        polygons_of_class: dict[int, list[int]] = defaultdict(list)
        for pid in sorted({pid for _, _, pid in selected}):
            polygons_of_class[code_of[pid]].append(pid)
        split_of = split_polygons(polygons_of_class, sampling.validation_fraction,
                                  sampling.test_fraction, rng, feedback,
                                  Counter(pid for _, _, pid in selected))
    return _Cells(selected=selected, code_of=code_of, split_of=split_of, conflicts=conflicts,
                  outside=outside, too_small=too_small)


def _patch_file_info(stack: Stack, channels: list[str], grid: CellGrid, patch_size: int,
                     source_name: str, class_field: str | None,
                     sampling: _Sampling) -> PatchFileInfo:
    """The patch file's description: channels with their scaling, geometry, provenance."""
    scale, offset = channel_scaling(stack, channels)
    return PatchFileInfo(
        channels=channels, patch_size=patch_size, pixel_size=grid.pixel_size,
        cell_size=grid.cell_size, scale=scale, offset=offset, crs=stack.projection,
        source={"input_stack": os.path.abspath(stack.path), "training_areas": source_name,
                "class_field": class_field, "software": software_tag(),
                "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                **asdict(sampling)})


def _identity_reader(stack: Stack, channels: list[str], grid: CellGrid, patch_size: int,
                     max_nodata_fraction: float) -> StripReader:
    """The classifier's strip reader with identity scaling: raw values, and patches cut,
    reflected and judged for no-data exactly as at inference."""
    n = len(channels)
    identity = ModelCard(name="identity", channels=channels, patch_size=patch_size,
                         scale=[1.0] * n, offset=[0.0] * n, mean=[0.0] * n, std=[1.0] * n,
                         pixel_size=grid.pixel_size, cell_size=grid.cell_size)
    return StripReader(stack, identity, grid, max_nodata_fraction)


def _write_patch_file(output: str, info: PatchFileInfo, reader: StripReader, cells: _Cells,
                      strip_rows: int, files: Commit, feedback: Feedback):
    """Write the patches under the patch file's temporary name in ``files``; returns the
    counts, the cells skipped as mostly no-data and the channels to blame."""
    with PatchWriter(output, info, split=cells.split_of is not None, commit=files) as writer:
        counts, invalid, blamed = write_patches(
            writer, reader, cells.selected, cells.code_of, cells.split_of, strip_rows, feedback)
        if writer.count == 0:
            raise InputError("every cell inside the training areas is no-data in the "
                             "input stack, so no patch could be extracted. Check the "
                             "stack's no-data values and coverage.")
    if invalid:
        feedback.warning(f"skipped {invalid} cell(s) whose patch is mostly no-data: "
                         f"{describe_nodata(blamed)}.")
    return counts, invalid, blamed


def sample_cells(found: dict[int, list[tuple[int, int]]], code_of: dict[int, int],
                 max_per_polygon: int, max_per_class: int, rng: np.random.Generator,
                 feedback: Feedback) -> tuple[list[tuple[int, int, int]], set]:
    """(row, col, polygon id) of the cells to extract, and the cells dropped because
    polygons of different classes claim them. A cell claimed by several polygons of one
    class goes to the polygon with the lowest id."""
    owners: dict[tuple[int, int], set[int]] = defaultdict(set)
    for pid in sorted(found):
        for cell in found[pid]:
            owners[cell].add(pid)
    conflicts = {cell for cell, pids in owners.items() if len({code_of[p] for p in pids}) > 1}
    if conflicts:
        feedback.warning(f"{len(conflicts)} cell(s) lie in overlapping training areas of "
                         f"different classes and are not used. Fix the overlapping polygons.")
    by_class: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
    for pid in sorted(found):
        cells = [c for c in found[pid] if c not in conflicts and min(owners[c]) == pid]
        if max_per_polygon and len(cells) > max_per_polygon:
            cells = [cells[k] for k in np.sort(rng.choice(len(cells), max_per_polygon,
                                                          replace=False))]
        by_class[code_of[pid]].extend((r, c, pid) for r, c in cells)
    selected = []
    for code in sorted(by_class):
        items = by_class[code]
        if max_per_class and len(items) > max_per_class:
            items = [items[k] for k in np.sort(rng.choice(len(items), max_per_class,
                                                          replace=False))]
        selected.extend(items)
    return selected, conflicts


class ClassCounts(defaultdict):
    """Patches per LCZ code and split name, and the polygons that gave them."""

    def __init__(self):
        super().__init__(Counter)
        self.polygons: dict[int, set] = defaultdict(set)


def write_patches(writer: PatchWriter, reader: StripReader, selected, code_of, split_of,
                  strip_rows: int, feedback: Feedback) -> tuple[ClassCounts, int, Counter]:
    """Read the strips holding selected cells and append their patches; returns the counts,
    the number of cells skipped as mostly no-data and the channels that made them so
    (:meth:`.patches.Strip.nodata_channels`)."""
    grid = reader.grid
    split_names = {v: k for k, v in SPLITS.items()}
    by_row: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for r, c, pid in selected:
        by_row[r].append((c, pid))
    rows = sorted(by_row)
    counts, invalid, done, k = ClassCounts(), 0, 0, 0
    blamed = Counter()
    while k < len(rows):
        if feedback.is_cancelled():
            raise Cancelled()
        row_a = rows[k]
        row_b = min(grid.rows, row_a + strip_rows)
        strip = reader.read(row_a, row_b)
        cell_rows, cell_cols, pids, skipped = [], [], [], []
        while k < len(rows) and rows[k] < row_b:
            for c, pid in sorted(by_row[rows[k]]):
                if strip.cell_valid[rows[k] - row_a, c]:
                    cell_rows.append(rows[k] - row_a)
                    cell_cols.append(c)
                    pids.append(pid)
                else:
                    invalid += 1
                    skipped.append((rows[k] - row_a, c))
                done += 1
            k += 1
        if skipped:
            blamed.update(strip.nodata_channels(*np.array(skipped).T))
        if pids:
            r_idx, c_idx = np.array(cell_rows), np.array(cell_cols)
            centres = np.column_stack([
                grid.origin_x + (grid.col0 + c_idx + 0.5) * grid.cell_size,
                grid.origin_y - (grid.row0 + row_a + r_idx + 0.5) * grid.cell_size])
            splits = np.array([(split_of or {}).get(p, 0) for p in pids], np.uint8)
            writer.append(strip.gather(r_idx, c_idx),
                          np.array([code_of[p] for p in pids], np.uint8),
                          np.array(pids, np.int64), centres,
                          split=splits if split_of is not None else None)
            for pid, split in zip(pids, splits):
                counts[code_of[pid]][split_names[int(split)]] += 1
                counts.polygons[code_of[pid]].add(pid)
        feedback.progress(100.0 * done / max(1, len(selected)))
    return counts, invalid, blamed


def summarise(output: str, counts: ClassCounts, feedback: Feedback, unit: str = "patches",
              title: str | None = None) -> dict:
    """Patches (or, for tiles, ``unit`` "labelled_pixels") per class and split: logged as a
    table under ``title`` and returned (JSON-ready)."""
    table = {}
    for code in LCZ_CODES:
        if code in counts and sum(counts[code].values()):
            lcz, row = lcz_class(code), counts[code]
            table[str(code)] = {"letter": lcz.letter, "name": lcz.name,
                                "polygons": len(counts.polygons[code]),
                                "train": row["train"], "validation": row["validation"],
                                "test": row["test"], "total": sum(row.values())}
    total = sum(row["total"] for row in table.values())
    missing = [lcz_class(c).letter for c in LCZ_CODES if str(c) not in table]
    feedback.info(title or f"Wrote {total} patches to {output}:")
    feedback.table(_table_lines(table.values()))
    if missing:
        feedback.info(f"  classes without {unit.replace('_', ' ')}: {', '.join(missing)}")
    return {"patch_file": os.path.abspath(output), unit: total, "classes": table,
            f"classes_without_{unit}": missing}


def _table_lines(rows) -> list[str]:
    """The per-class table of :func:`summarise`, every column as wide as its widest entry;
    with a split, each held-out count is followed by its share of the class's patches."""
    rows = list(rows)
    held_out = any(row["validation"] or row["test"] for row in rows)

    def share(row, key):
        text = str(row[key])
        return f"{text} ({100.0 * row[key] / row['total']:.0f} %)" if held_out else text

    columns = [("LCZ", ">", lambda r: r["letter"]), ("class", "<", lambda r: r["name"]),
               ("polygons", ">", lambda r: str(r["polygons"])),
               ("train", ">", lambda r: str(r["train"])),
               ("validation", ">", lambda r: share(r, "validation")),
               ("test", ">", lambda r: share(r, "test")),
               ("total", ">", lambda r: str(r["total"]))]
    cells = [[get(row) for _, _, get in columns] for row in rows]
    widths = [max([len(title)] + [len(line[i]) for line in cells])
              for i, (title, _, _) in enumerate(columns)]

    def line(values):
        return "  " + "  ".join(f"{v:{align}{w}}" for v, (_, align, _), w
                                in zip(values, columns, widths)).rstrip()

    return [line([title for title, _, _ in columns])] + [line(values) for values in cells]
