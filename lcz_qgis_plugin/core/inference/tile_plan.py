"""The tile plan of a country-scale map, and the manifest that makes its run resumable.

A large scene (a VRT mosaic of many Sentinel-2 tiles and ancillary rasters, or several date
stacks of one grid) is cut into tiles of ``tile_cells`` x ``tile_cells`` whole output cells
on the scene's cell grid (:func:`..cellgrid.make_grid`). Each tile is classified on its own
by :func:`.classify.classify` with the tile's cell-aligned EXTENT: classify reads the real
pixels beyond an extent (half a patch for a patch model, the tiles' overlap for a dense model,
whose tiles stay anchored at the raster's first pixel) and reflects only at the raster's
edge, so every cell of a tile equals the same cell of a whole-scene run. The pixels a tile
reads beyond its cells are its *halo*.

The manifest (``manifest.json`` in the output folder, written through the commit protocol)
records the plan's parameters (the input files with their size and modification time, the
model's SHA-256, the cell size, extent, tile size, the outputs asked for, the software) and
each tile's state; a finished tile carries the SHA-256 of each of its files. A run in a
folder that already holds a manifest continues it: the tiles whose files exist and match
their checksums are skipped. A manifest of another plan (an input, the model or a parameter
changed) is refused unless the run is told to restart.

Nothing here imports Dask: the runner is :mod:`.classify_tiles`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

from ..about import software_tag
from ..cellgrid import CellGrid, make_grid
from ..commit import Commit, input_files
from ..errors import InputError, LczError
from ..feedback import Feedback
from ..model.card import ModelCard
from ..model.card_file import check_model_file
from ..stacks import open_stacks

TILE_CELLS = 512
"""Default tile edge in cells: 262,144 cells (26 km at 100 m) per tile, about 140 tiles for a
country of 36 million cells; the halo then adds about 1 % to the pixels read."""
MAX_TILE_CELLS = 8192
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "lcz-tiles/1"
TILES_FOLDER = "tiles"
OUTPUT_KINDS = ("classes", "probabilities", "confidence")
TILE_PREFIX = {"classes": "lcz", "probabilities": "probabilities", "confidence": "confidence"}
MOSAIC_NAMES = {"classes": "lcz.vrt", "probabilities": "probabilities.vrt",
                "confidence": "confidence.vrt"}
DONE, PENDING, FAILED = "done", "pending", "failed"


@dataclass(frozen=True)
class Tile:
    """Tile ``(row, col)`` of the plan: cells ``cell_row .. cell_row + rows - 1`` and
    ``cell_col .. cell_col + cols - 1`` of the scene's grid (not of the raster's lattice)."""

    row: int
    col: int
    cell_row: int
    cell_col: int
    rows: int
    cols: int

    @property
    def id(self) -> str:
        return f"r{self.row:04d}_c{self.col:04d}"

    @property
    def cells(self) -> int:
        return self.rows * self.cols

    def file_name(self, kind: str) -> str:
        """The tile's file of output ``kind``, relative to the output folder."""
        return f"{TILES_FOLDER}/{TILE_PREFIX[kind]}_{self.id}.tif"


@dataclass(frozen=True)
class TilePlan:
    """The scene's output grid cut into tiles of ``tile_cells`` cells; ``halo``: input pixels
    beyond its cells on each side that its cells depend on (half a patch beyond the cell, or
    a dense model's tile overlap)."""

    grid: CellGrid
    tile_cells: int
    halo: int

    @property
    def tile_rows(self) -> int:
        return -(-self.grid.rows // self.tile_cells)

    @property
    def tile_cols(self) -> int:
        return -(-self.grid.cols // self.tile_cells)

    def tiles(self) -> list[Tile]:
        """Every tile, row by row; the last row and column of tiles may be narrower."""
        n, grid = self.tile_cells, self.grid
        return [Tile(i, j, i * n, j * n, min(n, grid.rows - i * n), min(n, grid.cols - j * n))
                for i in range(self.tile_rows) for j in range(self.tile_cols)]

    def bounds(self, tile: Tile) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) of the tile's cells in the scene's CRS."""
        grid, cell = self.grid, self.grid.cell_size
        xmin = grid.origin_x + (grid.col0 + tile.cell_col) * cell
        ymax = grid.origin_y - (grid.row0 + tile.cell_row) * cell
        return xmin, ymax - tile.rows * cell, xmin + tile.cols * cell, ymax

    def classify_extent(self, tile: Tile) -> tuple[float, float, float, float]:
        """The EXTENT that gives classify exactly the tile's cells: the bounds drawn in by a
        quarter cell, so that no rounding of the coordinates adds a row or column."""
        xmin, ymin, xmax, ymax = self.bounds(tile)
        inset = self.grid.cell_size / 4
        return xmin + inset, ymin + inset, xmax - inset, ymax - inset

    def pixel_window(self, tile: Tile) -> tuple[int, int, int, int]:
        """Input pixels (x0, y0, x1, y1) the tile's cells depend on, its halo included; may
        reach past the raster's edge, where pixels are reflected. (A dense model reads
        whole tiles of its own around them, anchored at the raster's first pixel; only the
        halo changes the cells.)"""
        s = self.grid.stride
        x0 = (self.grid.col0 + tile.cell_col) * s - self.halo
        y0 = (self.grid.row0 + tile.cell_row) * s - self.halo
        return x0, y0, x0 + tile.cols * s + 2 * self.halo, y0 + tile.rows * s + 2 * self.halo


def make_plan(inputs: list[str], model: str, *, cell_size: float | None = None,
              extent: tuple[float, float, float, float] | None = None,
              tile_cells: int = TILE_CELLS, input_bands=None, tile_size: int | None = None,
              feedback: Feedback | None = None) -> tuple[TilePlan, ModelCard]:
    """The plan of a run, after the checks classify makes before any work: the model's card,
    the stacks (channels, grid, pixel size), the cell size and extent, a dense model's tile
    size (``tile_size``, its own tiles in pixels: not the plan's)."""
    if not isinstance(tile_cells, int) or not 1 <= tile_cells <= MAX_TILE_CELLS:
        raise InputError(f"the tile size is {tile_cells} cells; give a whole number from 1 to "
                         f"{MAX_TILE_CELLS} (the default {TILE_CELLS} suits most runs).")
    card = check_model_file(model)
    stacks = open_stacks(list(inputs), card.channels, card.pixel_size, feedback,
                         input_bands=input_bands, scale=card.scale)
    first = stacks[0]
    cell = cell_size if cell_size else card.cell_size
    if card.is_dense:
        from .tiles import make_layout
        layout = make_layout(card, tile_size)
        grid = make_grid(first.geotransform, first.width, first.height, cell, 1, extent)
        if grid.stride % layout.stride:
            raise InputError(f"the cell size {grid.cell_size:g} m is not a whole multiple of "
                             f"this dense model's output pixel "
                             f"({grid.pixel_size * layout.stride:g} m); choose one that is, "
                             f"or leave the cell size empty to use the model's default.")
        halo = layout.overlap
    else:
        grid = make_grid(first.geotransform, first.width, first.height, cell,
                         card.patch_size, extent)
        patch, stride = card.patch_size, grid.stride
        halo = max(0, patch // 2 - stride // 2, patch - patch // 2 - (stride - stride // 2))
    return TilePlan(grid, tile_cells, halo), card


# --- the manifest --------------------------------------------------------------------------

def sha256_of(path: str, chunk: int = 4 * 2**20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _input_record(path: str) -> dict:
    """An input and every file behind it (the sources of a VRT), with size and time."""
    files = []
    for name in input_files(path):
        try:
            info = os.stat(name)
        except OSError:
            continue
        files.append({"path": os.path.abspath(name), "bytes": info.st_size,
                      "mtime_ns": info.st_mtime_ns})
    return {"path": os.path.abspath(path), "files": files}


def plan_record(inputs: list[str], model: str, plan: TilePlan, *, outputs: list[str],
                input_bands=None, tile_size: int | None = None) -> dict:
    """What a run's tiles depend on: a resumed run must have the same record. The cell size
    and extent enter through the grid they make (so the same grid given another way, e.g.
    the model's default cell size written out, resumes)."""
    grid = plan.grid
    return {
        "inputs": [_input_record(path) for path in inputs],
        "model": {"path": os.path.abspath(model), "sha256": sha256_of(model)},
        "cell_size": grid.cell_size,
        "input_bands": input_bands if input_bands is None else str(input_bands),
        "grid": {"geotransform": list(grid.geotransform), "rows": grid.rows,
                 "cols": grid.cols},
        "tile_cells": plan.tile_cells,
        "dense_tile_size": tile_size or None,
        "halo_pixels": plan.halo,
        "outputs": list(outputs),
        "software": software_tag(),
    }


def _changes(old: dict, new: dict) -> list[str]:
    """What differs between two plan records, in words."""
    changed = []
    old_inputs = {i["path"]: i for i in old.get("inputs", [])}
    for item in new["inputs"]:
        before = old_inputs.get(item["path"])
        if before is None:
            changed.append(f"the input {item['path']} is new")
        elif before["files"] != item["files"]:
            changed.append(f"the input {item['path']} (or a file it reads) changed")
    gone = set(old_inputs) - {i["path"] for i in new["inputs"]}
    changed += [f"the input {path} is no longer given" for path in sorted(gone)]
    if old.get("model", {}).get("sha256") != new["model"]["sha256"]:
        changed.append("the model file (its SHA-256) changed")
    labels = {"cell_size": "the cell size", "input_bands": "the input band names",
              "grid": "the output grid",
              "tile_cells": "the tile size", "dense_tile_size": "the dense model's tile size",
              "halo_pixels": "the tiles' halo",
              "outputs": "the outputs asked for", "software": "the software version"}
    changed += [f"{label} ({old.get(key)} before, {new[key]} now)"
                for key, label in labels.items() if old.get(key) != new[key]]
    return changed


class Manifest:
    """The run's plan record and every tile's state, kept in ``<folder>/manifest.json``."""

    def __init__(self, folder: str, plan: dict, tiles: dict[str, dict]):
        self.folder, self.plan, self.tiles = folder, plan, tiles

    @property
    def path(self) -> str:
        return os.path.join(self.folder, MANIFEST)

    @classmethod
    def open(cls, folder: str, plan: dict, tiles: list[Tile], restart: bool = False
             ) -> Manifest:
        """The folder's manifest when it records the same plan; a new one when there is none
        or ``restart``. Refuses another plan's manifest, naming what changed."""
        path = os.path.join(folder, MANIFEST)
        fresh = cls(folder, plan, {t.id: _pending(t) for t in tiles})
        if restart or not os.path.exists(path):
            return fresh
        old = _read_manifest(path)
        changes = _changes(old.get("plan", {}), plan)
        if changes:
            raise InputError(f"the output folder {folder} holds a tiled run of another plan: "
                             f"{'; '.join(changes)}. Its tiles cannot be mixed with this "
                             f"run's. Give --restart to classify every tile again, or choose "
                             f"another output folder.")
        known = old.get("tiles", {})
        fresh.tiles.update({t.id: known[t.id] for t in tiles if isinstance(known.get(t.id), dict)})
        return fresh

    def check_finished(self, tiles: list[Tile], feedback: Feedback) -> list[Tile]:
        """The tiles still to run: those not finished, and finished ones whose files are
        missing or changed since (their checksum no longer matches)."""
        pending = []
        for tile in tiles:
            record = self.tiles[tile.id]
            if record.get("state") != DONE:
                pending.append(tile)
                continue
            problem = self._file_problem(record)
            if problem:
                feedback.warning(f"tile {tile.id}: {problem}; it runs again.")
                self.tiles[tile.id] = _pending(tile)
                pending.append(tile)
        return pending

    def _file_problem(self, record: dict) -> str | None:
        for kind in self.plan["outputs"]:
            entry = record.get("files", {}).get(kind)
            if entry is None:
                return f"its {kind} file is not recorded"
            path = os.path.join(self.folder, entry["name"])
            if not os.path.isfile(path):
                return f"{entry['name']} is missing"
            if os.path.getsize(path) != entry["bytes"] or sha256_of(path) != entry["sha256"]:
                return f"{entry['name']} changed since it was written (checksum)"
        return None

    def finish(self, tile_id: str, record: dict) -> None:
        """Tile ``tile_id`` is finished: its files (name, bytes, SHA-256) and what it
        counted."""
        self.tiles[tile_id] = dict(self.tiles[tile_id], **record, state=DONE)
        self.tiles[tile_id].pop("error", None)

    def fail(self, tile_id: str, reason: str) -> None:
        """Tile ``tile_id`` failed (it runs again next time)."""
        self.tiles[tile_id] = dict(self.tiles[tile_id], state=FAILED, error=reason)

    def finished(self) -> int:
        return sum(1 for r in self.tiles.values() if r.get("state") == DONE)

    def save(self) -> None:
        """Write the manifest through the commit protocol: the old one or the new one,
        never a mixture."""
        lines = ",\n".join(f"  {json.dumps(tile_id)}: {json.dumps(record)}"
                            for tile_id, record in self.tiles.items())
        text = (f'{{"format": {json.dumps(MANIFEST_FORMAT)},\n"plan": '
                f'{json.dumps(self.plan, indent=1)},\n"tiles": {{\n{lines}\n}}}}\n')
        with Commit() as commit:
            commit.write_text(self.path, text, "tile manifest")


def _pending(tile: Tile) -> dict:
    return {"state": PENDING, "cell_row": tile.cell_row, "cell_col": tile.cell_col,
            "rows": tile.rows, "cols": tile.cols}


def _read_manifest(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise LczError(f"the tile manifest {path} cannot be read ({exc}). Give --restart to "
                       f"classify every tile again, or choose another output folder.") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise LczError(f"{path} is not a tile manifest of this version ({MANIFEST_FORMAT}). "
                       f"Give --restart to classify every tile again, or choose another "
                       f"output folder.")
    return data


def tile_count_text(plan: TilePlan) -> str:
    grid = plan.grid
    return (f"{grid.cols} x {grid.rows} cells of {grid.cell_size:g} m in "
            f"{plan.tile_cols} x {plan.tile_rows} tiles of up to {plan.tile_cells} x "
            f"{plan.tile_cells} cells (halo {plan.halo} px, "
            f"{_halo_overhead(plan):.1%} more pixels read)")


def _halo_overhead(plan: TilePlan) -> float:
    side = min(plan.tile_cells, max(plan.grid.rows, plan.grid.cols)) * plan.grid.stride
    return ((side + 2 * plan.halo) / side) ** 2 - 1 if side else 0.0


