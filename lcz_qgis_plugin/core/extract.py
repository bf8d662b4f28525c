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
``seed``. Hold-out split by polygon: per class, a random ``validation_fraction`` and
``test_fraction`` of its polygons (at least one each once a class has three polygons, and
always at least one left for training) go to validation and test, so that neighbouring,
overlapping patches never sit on both sides of a split.

Memory: the stack is read in strips of cell rows holding selected cells (about
``strip_memory_mb``), never whole.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np
from osgeo import ogr

from .about import software_tag
from .areas import LabelledAreas, read_areas
from .classify import bounded_gdal_cache, strip_rows_for
from .contract import ModelCard
from .errors import Cancelled, InputError, OutputError
from .feedback import Feedback
from .grid import CellGrid, make_grid
from .h5import import import_h5py
from .lcz_classes import LCZ_CODES, lcz_class
from .patches import StripReader
from .patchfile import SPLITS, PatchFileInfo, PatchWriter
from .stacks import Stack, check_georeferencing, open_raster

PATCH_EXTENSIONS = (".h5", ".hdf5")
S2_SCALE = 1e-4


@dataclass
class ExtractResult:
    output: str
    patches: int
    counts: dict[int, dict[str, int]]
    """Patches per LCZ code and split name."""
    polygons: dict[int, int]
    """Polygons that gave patches, per LCZ code."""
    summary: dict = field(default_factory=dict)
    summary_path: str | None = None


def channel_scaling(stack: Stack, channels: list[str]) -> tuple[list[float], list[float]]:
    """Per channel (scale, offset): the band's GDAL scale/offset, else the defaults."""
    scales, offsets = [], []
    for number, name in zip(stack.bands, channels):
        band = stack.dataset.GetRasterBand(number)
        scale, offset = band.GetScale(), band.GetOffset()
        if scale not in (None, 1.0) or offset not in (None, 0.0):
            scales.append(float(1.0 if scale is None else scale))
            offsets.append(float(0.0 if offset is None else offset))
        elif name.upper().startswith("S2:"):
            scales.append(S2_SCALE)
            offsets.append(0.0)
        else:
            scales.append(1.0)
            offsets.append(0.0)
    return scales, offsets


def open_stack_channels(path: str) -> tuple[Stack, list[str]]:
    """Open a stack whose band descriptions name its channels; all bands are channels."""
    ds = open_raster(path, "input stack")
    check_georeferencing(ds, path)
    names = [ds.GetRasterBand(i).GetDescription().strip() for i in range(1, ds.RasterCount + 1)]
    unnamed = [str(i) for i, n in enumerate(names, start=1) if not n]
    if unnamed:
        raise InputError(f"bands {', '.join(unnamed)} of the input stack {path} have no "
                         f"description, so the patch file could not say which channel is "
                         f"which. Build the stack with lcz:buildstack, or set each band's "
                         f"description (S2:B02, OSM:building_fraction, DSM:height ...).")
    duplicates = sorted(n for n, k in Counter(names).items() if k > 1)
    if duplicates:
        raise InputError(f"the input stack {path} has several bands named "
                         f"{', '.join(duplicates)}; band descriptions must be unique.")
    bands = list(range(1, ds.RasterCount + 1))
    nodata = [ds.GetRasterBand(b).GetNoDataValue() for b in bands]
    return Stack(path=path, dataset=ds, bands=bands, nodata=nodata), names


def cells_in_areas(areas: LabelledAreas, grid: CellGrid) -> tuple[dict[int, list[tuple[int, int]]], list, list]:
    """Cells (row, col) whose centre lies in each area; plus the areas outside the raster
    and those too small to hold a cell centre."""
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
                   rng: np.random.Generator, feedback: Feedback) -> dict[int, int]:
    """Split code (0 train, 1 validation, 2 test) per polygon id, chosen per class."""
    split = {}
    short = []
    for code in sorted(by_class):
        ids = sorted(by_class[code])
        order = [ids[i] for i in rng.permutation(len(ids))]
        n = len(order)
        n_val = int(round(n * validation))
        n_test = int(round(n * test))
        if validation > 0 and n_val == 0 and n >= 3:
            n_val = 1
        if test > 0 and n_test == 0 and n >= 3:
            n_test = 1
        while n_val + n_test > n - 1 and n_test > 0:
            n_test -= 1
        while n_val + n_test > n - 1 and n_val > 0:
            n_val -= 1
        if (validation > 0 and n_val == 0) or (test > 0 and n_test == 0):
            short.append(f"{lcz_class(code).letter} ({n})")
        for k, pid in enumerate(order):
            split[pid] = (SPLITS["validation"] if k < n_val else
                          SPLITS["test"] if k < n_val + n_test else SPLITS["train"])
    if short:
        feedback.warning(
            "too few polygons to hold out validation/test areas for class(es) "
            f"{', '.join(short)} (polygons in brackets); all their patches are in the "
            "training split. Digitise more, separate training areas for these classes.")
    return split


def extract_patches(stack_path: str, areas: LabelledAreas | str, output: str, *,
                    class_field: str | None = None, layer: str | None = None,
                    patch_size: int = 48, cell_size: float = 100.0,
                    max_per_polygon: int = 0, max_per_class: int = 0,
                    validation_fraction: float = 0.0, test_fraction: float = 0.0,
                    seed: int = 0, summary_output: str | None = None,
                    feedback: Feedback | None = None, max_nodata_fraction: float = 0.5,
                    strip_memory_mb: float = 256) -> ExtractResult:
    """Write the patch file ``output`` (.h5) from an input stack and training areas.

    ``areas``: a :class:`LabelledAreas` or the path of a vector file (``class_field`` and
    ``layer`` then choose what to read, see :func:`.areas.read_areas`). Raises
    :class:`~.errors.LczError` subclasses with messages meant for the user; a failed or
    cancelled run leaves no patch file.
    """
    feedback = feedback or Feedback()
    output = os.fspath(output)
    if not output.lower().endswith(PATCH_EXTENSIONS):
        raise InputError(f"the patch file {output} must end in .h5 (HDF5).")
    if patch_size < 1:
        raise InputError(f"the patch size must be at least 1 pixel, not {patch_size}.")
    if not 0 <= validation_fraction < 1 or not 0 <= test_fraction < 1 or \
            validation_fraction + test_fraction >= 1:
        raise InputError(f"validation ({validation_fraction}) and test ({test_fraction}) "
                         f"fractions must be in [0, 1) and leave some areas for training.")
    stack, channels = open_stack_channels(stack_path)
    grid = make_grid(stack.geotransform, stack.width, stack.height, cell_size, patch_size)
    if isinstance(areas, str):
        areas = read_areas(areas, class_field, layer, feedback)
    source_name = areas.source
    areas = areas.in_crs(stack.projection, feedback)
    feedback.info(f"{len(areas.areas)} training areas, input stack {stack.width} x "
                  f"{stack.height} px with {len(channels)} channels, {grid.rows} x "
                  f"{grid.cols} cells of {grid.cell_size:g} m, {patch_size} px patches.")

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
    code_of = {a.polygon_id: a.code for a in areas.areas}

    # one owner per cell; cells claimed by two classes are dropped
    owners: dict[tuple[int, int], set[int]] = defaultdict(set)
    for pid in sorted(found):
        for cell in found[pid]:
            owners[cell].add(pid)
    conflicts = {cell for cell, pids in owners.items()
                 if len({code_of[p] for p in pids}) > 1}
    if conflicts:
        feedback.warning(f"{len(conflicts)} cell(s) lie in overlapping training areas of "
                         f"different classes and are not used. Fix the overlapping polygons.")
    rng = np.random.default_rng(seed)
    per_polygon: dict[int, list[tuple[int, int]]] = {}
    for pid in sorted(found):
        cells = [c for c in found[pid] if c not in conflicts and min(owners[c]) == pid]
        if max_per_polygon and len(cells) > max_per_polygon:
            keep = np.sort(rng.choice(len(cells), max_per_polygon, replace=False))
            cells = [cells[k] for k in keep]
        if cells:
            per_polygon[pid] = cells
    by_class: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
    for pid, cells in per_polygon.items():
        by_class[code_of[pid]].extend((r, c, pid) for r, c in cells)
    selected: list[tuple[int, int, int]] = []
    for code in sorted(by_class):
        items = by_class[code]
        if max_per_class and len(items) > max_per_class:
            keep = np.sort(rng.choice(len(items), max_per_class, replace=False))
            items = [items[k] for k in keep]
        selected.extend(items)
    with_split = validation_fraction > 0 or test_fraction > 0
    polygons_of_class: dict[int, list[int]] = defaultdict(list)
    for pid in sorted({pid for _, _, pid in selected}):
        polygons_of_class[code_of[pid]].append(pid)
    split_of = (split_polygons(polygons_of_class, validation_fraction, test_fraction, rng,
                               feedback) if with_split else {})

    scale, offset = channel_scaling(stack, channels)
    info = PatchFileInfo(
        channels=channels, patch_size=patch_size, pixel_size=grid.pixel_size,
        cell_size=grid.cell_size, scale=scale, offset=offset, crs=stack.projection,
        source={"input_stack": os.path.abspath(stack_path), "training_areas": source_name,
                "class_field": areas.class_field, "software": software_tag(),
                "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "seed": seed, "max_per_polygon": max_per_polygon,
                "max_per_class": max_per_class, "validation_fraction": validation_fraction,
                "test_fraction": test_fraction})
    identity = ModelCard(name="identity", channels=channels, patch_size=patch_size,
                         scale=[1.0] * len(channels), offset=[0.0] * len(channels),
                         mean=[0.0] * len(channels), std=[1.0] * len(channels),
                         pixel_size=grid.pixel_size, cell_size=grid.cell_size)
    reader = StripReader(stack, identity, grid, max_nodata_fraction)
    strip_rows = strip_rows_for(grid, len(channels), strip_memory_mb)
    by_row: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for r, c, pid in selected:
        by_row[r].append((c, pid))
    rows = sorted(by_row)
    counts: dict[int, Counter] = defaultdict(Counter)
    used_polygons: dict[int, set] = defaultdict(set)
    invalid = 0
    folder = os.path.dirname(os.path.abspath(output))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the folder {folder} for the patch file: {exc}") from None
    try:
        import_h5py()  # before PatchWriter imports it: inside QGIS it needs care
    except ImportError:
        pass  # PatchWriter explains how to install it
    done = 0
    with bounded_gdal_cache(), PatchWriter(output, info, split=with_split) as writer:
        k = 0
        while k < len(rows):
            if feedback.is_cancelled():
                raise Cancelled("Extraction cancelled; no patch file was written.")
            row_a = rows[k]
            row_b = min(grid.rows, row_a + strip_rows)
            strip = reader.read(row_a, row_b)
            cell_rows, cell_cols, pids = [], [], []
            while k < len(rows) and rows[k] < row_b:
                for c, pid in sorted(by_row[rows[k]]):
                    if strip.cell_valid[rows[k] - row_a, c]:
                        cell_rows.append(rows[k] - row_a)
                        cell_cols.append(c)
                        pids.append(pid)
                    else:
                        invalid += 1
                    done += 1
                k += 1
            if pids:
                r_idx, c_idx = np.array(cell_rows), np.array(cell_cols)
                patches = strip.gather(r_idx, c_idx)
                labels = np.array([code_of[p] for p in pids], np.uint8)
                centres = np.column_stack([
                    grid.origin_x + (c_idx + 0.5) * grid.cell_size,
                    grid.origin_y - (r_idx + row_a + 0.5) * grid.cell_size])
                splits = np.array([split_of.get(p, 0) for p in pids], np.uint8)
                writer.append(patches, labels, np.array(pids, np.int64), centres,
                              split=splits if with_split else None)
                for p, s in zip(pids, splits):
                    name = {v: n for n, v in SPLITS.items()}[int(s)]
                    counts[code_of[p]][name] += 1
                    used_polygons[code_of[p]].add(p)
            feedback.progress(100.0 * done / max(1, len(selected)))
        if writer.count == 0:
            raise InputError("every cell inside the training areas is no-data in the input "
                             "stack, so no patch could be extracted. Check the stack's "
                             "no-data values and coverage.")
    if invalid:
        feedback.warning(f"skipped {invalid} cell(s) whose patch is mostly no-data.")

    total = sum(sum(c.values()) for c in counts.values())
    table = {str(code): {"letter": lcz_class(code).letter, "name": lcz_class(code).name,
                         "polygons": len(used_polygons[code]),
                         "train": counts[code]["train"],
                         "validation": counts[code]["validation"],
                         "test": counts[code]["test"], "total": sum(counts[code].values())}
             for code in LCZ_CODES if counts[code]}
    missing = [lcz_class(c).letter for c in LCZ_CODES if not counts[c]]
    feedback.info(f"Wrote {total} patches to {output}:")
    feedback.info("  LCZ  class                    polygons  train  valid.  test  total")
    for code, row in table.items():
        feedback.info(f"  {row['letter']:>3}  {row['name']:<24} {row['polygons']:>8} "
                      f"{row['train']:>6} {row['validation']:>7} {row['test']:>5} "
                      f"{row['total']:>6}")
    if missing:
        feedback.info(f"  classes without patches: {', '.join(missing)}")
    summary = {"patch_file": os.path.abspath(output), "patches": total, "classes": table,
               "classes_without_patches": missing,
               "polygons_outside_raster": [a.polygon_id for a in outside],
               "polygons_without_cells": [a.polygon_id for a in too_small],
               "cells_in_conflicting_polygons": len(conflicts),
               "cells_mostly_nodata": invalid, "channels": channels, "scale": scale,
               "offset": offset, "notes": areas.notes}
    if summary_output:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(summary_output)), exist_ok=True)
            with open(summary_output, "w", encoding="utf-8") as f:
                json.dump(summary, f, indent=2)
        except OSError as exc:
            raise OutputError(f"cannot write the summary {summary_output}: {exc}") from None
    return ExtractResult(output=output, patches=total,
                         counts={code: dict(c) for code, c in counts.items() if c},
                         polygons={code: len(p) for code, p in used_polygons.items()},
                         summary=summary, summary_path=summary_output)
