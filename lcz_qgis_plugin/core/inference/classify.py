"""Classify Local Climate Zones: input stack(s) + ONNX model -> LCZ map (QGIS-free).

The scene is processed in strips of output cell rows. For each strip and each date stack the
pixels are read once (:mod:`.strips`), the valid cells are run through the model in batches,
the dates' probabilities are averaged per cell, and the strip's rows of every output are
written. Reading and cutting patches run ahead on a prefetch thread and writing runs behind
on a writer thread (:mod:`.threads`), so the engine does not wait for either; both talk to
the engine through bounded queues. The reader hands the engine typed events
(:class:`StripStarted`, :class:`Batch`, :class:`DateDone`, :class:`StripDone`). Memory
therefore depends on the strip and batch sizes, never on the scene size. Progress and
cancellation are checked per batch; outputs appear only when the whole run succeeded
(:class:`.PendingOutputs`).

:func:`classify` runs its steps in order: check the arguments, reserve the outputs (before the
model loads), open the inputs (engine, stacks, grid, strips), create the outputs, run the
scene (reader -> engine -> writer), finish (majority filter, commit), report.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from osgeo import gdal

from ..about import software_tag
from ..cellgrid import CellGrid, make_grid
from ..commit import GdalErrors
from ..errors import Cancelled, InputError
from ..feedback import Feedback
from ..lcz_classes import NODATA_CODE, lcz_class
from ..model.card import ModelCard
from ..outputs import PendingOutputs, check_output_path
from ..rasters import bounded_cache, require_files
from ..stacks import SOURCES, Stack, open_stacks, sources_of_all
from ..style import category_names, class_map_qml, colour_table
from .engine import GPU_PROVIDERS, Engine
from .majority import filter_band
from .strips import StripReader, describe_nodata
from .threads import Background, Inline, Prefetch

if TYPE_CHECKING:
    from .dense import DensePlan

FLOAT_NODATA = -9999.0
OUTPUT_NAMES = {"OUTPUT": "class map output", "OUTPUT_PROBABILITIES": "probabilities output",
                "OUTPUT_CONFIDENCE": "confidence output", "OUTPUT_FINE": "fine class map output"}
CONFIDENCE_BANDS = ("top-1 probability", "normalised entropy")
GPU_BATCH_HINT = 1024
PREFETCH_BYTES = 64 * 1024 * 1024
"""Batches read ahead of the engine: at most this much memory (and 2-8 batches)."""


@dataclass
class ClassifyResult:
    output: str
    probabilities: str | None
    confidence: str | None
    provider: str
    rows: int
    cols: int
    cell_size: float
    patches: int
    """Patches run through the model (valid cells x dates)."""
    seconds: float
    class_counts: dict[int, int] = field(default_factory=dict)
    fine: str | None = None
    """The fine class map (dense models' OUTPUT_FINE), when asked for."""
    tiles: int = 0
    """Dense models: tiles run through the model (all dates)."""
    pixels: int = 0
    """Dense models: input pixels run through the model (tiles x tile area)."""

    @property
    def classified_cells(self) -> int:
        return sum(self.class_counts.values())

    @property
    def patches_per_second(self) -> float:
        return self.patches / self.seconds if self.seconds > 0 else float("nan")

    @property
    def pixels_per_second(self) -> float:
        return self.pixels / self.seconds if self.seconds > 0 else float("nan")




def strip_rows_for(grid: CellGrid, channels: int, memory_mb: float) -> int:
    """Cell rows per strip so that one strip's buffers stay within ``memory_mb``."""
    width_px = (grid.cols - 1) * grid.stride + grid.patch
    bytes_per_pixel_row = width_px * (8 * channels + 6)  # raw + reflected copy, mask, integral
    pixel_rows = memory_mb * 1024 * 1024 / bytes_per_pixel_row
    rows = int((pixel_rows - grid.patch) // grid.stride) + 1
    return max(1, min(rows, grid.rows))


FIRST_STRIP_ROWS = 2


def strip_bounds(total_rows: int, max_rows: int) -> list[tuple[int, int]]:
    """Cell-row ranges of the strips: small at first, doubling up to ``max_rows``. The engine
    waits for the first strip (nothing is read ahead of it yet), so a first strip of the
    full size would idle the engine while a whole memory budget is read; later strips are
    read while the engine works on the previous one."""
    bounds, row, size = [], 0, max(1, min(FIRST_STRIP_ROWS, max_rows))
    while row < total_rows:
        bounds.append((row, min(row + size, total_rows)))
        row += size
        size = min(2 * size, max_rows)
    return bounds


# --- the events the reader hands to the engine, strip by strip and date by date -------------

@dataclass(frozen=True)
class StripStarted:
    """A strip of output cell rows ``row_a .. row_b - 1`` begins: its sums start at zero."""
    row_a: int
    row_b: int


@dataclass(frozen=True)
class Batch:
    """Patches ``N x C x P x P`` of valid cells (``rows``, ``cols`` within the strip) of one
    date; ``done`` of that date's ``total`` valid cells in the strip are then handed over.
    ``step`` counts (strip, date) pairs, for the progress bar."""
    step: int
    rows: np.ndarray
    cols: np.ndarray
    patches: np.ndarray
    done: int
    total: int


@dataclass(frozen=True)
class DateDone:
    """Every batch of one date in the strip was handed over. ``cell_valid``: the strip's
    cells this date classifies; ``blamed``: :meth:`.strips.Strip.nodata_channels`, None when
    the strip has no no-data cell."""
    step: int
    cell_valid: np.ndarray
    blamed: Counter | None


@dataclass(frozen=True)
class StripDone:
    """Every date of the strip starting at ``row_a`` was handed over: its rows can be written."""
    row_a: int


SceneEvent = StripStarted | Batch | DateDone | StripDone


@dataclass
class _Scene:
    """What a run works on once its inputs are open: the engine (with its model card), the
    date stacks, and the output grid cut into strips of at most ``strip_rows`` cell rows."""
    engine: Engine
    stacks: list[Stack]
    grid: CellGrid
    strip_rows: int
    strips: list[tuple[int, int]]
    dense: DensePlan | None = None
    """Dense models: the tiles (:mod:`.dense`); None for patch models."""

    @property
    def card(self) -> ModelCard:
        return self.engine.card


@dataclass
class _Tally:
    """What a run counts as it goes: patches run through the model, cells per class code
    (added to by the writer; read once it finished), no-data cells per channel responsible
    (summed over dates)."""
    patches: int = 0
    histogram: np.ndarray = field(default_factory=lambda: np.zeros(256, dtype=np.int64))
    blamed: Counter = field(default_factory=Counter)
    tiles: int = 0
    pixels: int = 0


def classify(inputs: list[str], model: str | Engine, output: str, *,
             probabilities_output: str | None = None, confidence_output: str | None = None,
             cell_size: float | None = None,
             extent: tuple[float, float, float, float] | None = None,
             device: str = "auto", batch_size: int = 64, majority_radius: int = 0,
             threads: int = 0, feedback: Feedback | None = None,
             max_nodata_fraction: float = 0.5, strip_memory_mb: float = 256,
             prefetch: bool = True, input_bands=None, fine_output: str | None = None,
             tile_size: int | None = None, allow_empty: bool = False) -> ClassifyResult:
    """Classify the input stack(s) into an LCZ map.

    ``inputs``: paths of one or more stacks of the same area and grid (several dates: their
    probabilities are averaged). ``model``: an .onnx path or an opened :class:`Engine`.
    ``extent`` is ``(xmin, ymin, xmax, ymax)`` in the stacks' CRS. ``cell_size`` in metres
    defaults to the model's. ``prefetch`` reads and writes on threads of their own, overlapping
    with inference (same result as ``False``, which runs every stage in turn).
    ``input_bands`` (INPUT_BANDS) names the bands of every input in order instead of their
    descriptions: a preset such as ``'so2sat'`` or comma-separated names, see
    :func:`.bandnames.parse_input_bands`. A dense model (``lcz.model_kind`` dense) is run
    in overlapping tiles of ``tile_size`` px (None: automatic, see :func:`.tiles.make_layout`)
    by :mod:`.dense`; ``fine_output`` (dense models only) is its per-pixel class map at the
    model's output resolution. ``allow_empty`` writes a map whose every cell is no-data
    (a tile of a tiled run over the sea) instead of refusing it. Raises
    :class:`~.errors.LczError` subclasses with messages meant for the user; nothing is left on
    disk after an error or a cancel.
    """
    started = time.perf_counter()
    feedback = feedback or Feedback()
    _check_arguments(batch_size, majority_radius, max_nodata_fraction)
    require_files(inputs)
    destinations, outputs = _reserve_outputs(inputs, model, {
        "OUTPUT": output, "OUTPUT_PROBABILITIES": probabilities_output,
        "OUTPUT_CONFIDENCE": confidence_output, "OUTPUT_FINE": fine_output})
    scene = _open_inputs(inputs, model, feedback, device=device, threads=threads,
                         batch_size=batch_size, cell_size=cell_size, extent=extent,
                         strip_memory_mb=strip_memory_mb, input_bands=input_bands,
                         tile_size=tile_size, fine="OUTPUT_FINE" in destinations)
    stages = contextlib.ExitStack()  # the reader and writer threads, closed before cleanup
    span = 90.0 if majority_radius else 100.0  # of the progress bar; the rest: the filter
    try:
        with bounded_cache():
            class_key = _create_outputs(outputs, destinations, scene, majority_radius)
            tally = _run_scene(scene, outputs, class_key, stages, feedback, span=span,
                               batch_size=batch_size, prefetch=prefetch,
                               max_nodata_fraction=max_nodata_fraction)
            _finish(scene, outputs, destinations, tally, feedback, span=span,
                    majority_radius=majority_radius, max_nodata_fraction=max_nodata_fraction,
                    allow_empty=allow_empty)
    except BaseException:
        stages.close()  # stop and join the threads before their outputs are deleted
        outputs.discard()
        raise
    return _report(scene, destinations, tally, time.perf_counter() - started, feedback)


# --- the steps of classify, in order ---------------------------------------------------------

def _check_arguments(batch_size: int, majority_radius: int, max_nodata_fraction: float) -> None:
    if batch_size < 1:
        raise InputError(f"BATCH_SIZE must be at least 1 (got {batch_size}).")
    if majority_radius < 0:
        raise InputError(f"MAJORITY_RADIUS must be 0 (off) or more (got {majority_radius}).")
    if not 0.0 <= max_nodata_fraction < 1.0:
        raise InputError("the allowed no-data fraction of a patch must be in [0, 1).")


def _reserve_outputs(inputs: list[str], model: str | Engine,
                     paths: dict[str, str | None]) -> tuple[dict[str, str], PendingOutputs]:
    """The destinations asked for, by output key, checked and reserved before any work (the
    commit protocol): a destination that is an input, another output or unwritable is refused
    before the model loads."""
    destinations = {key: check_output_path(path, OUTPUT_NAMES[key])
                    for key, path in paths.items() if path}
    model_path = model.model_path if isinstance(model, Engine) else model
    outputs = PendingOutputs(os.path.dirname(os.path.abspath(paths["OUTPUT"])),
                             inputs=list(inputs) + [model_path])
    for key, path in destinations.items():
        outputs.reserve(key, path, OUTPUT_NAMES[key])
    return destinations, outputs


def _open_inputs(inputs: list[str], model: str | Engine, feedback: Feedback, *, device: str,
                 threads: int, batch_size: int, cell_size: float | None, extent,
                 strip_memory_mb: float, input_bands, tile_size: int | None = None,
                 fine: bool = False) -> _Scene:
    """The engine, the date stacks matched to its card's channels, the output grid and its
    strips (sized to ``strip_memory_mb``; a dense model's: :func:`.dense.open_dense_scene`);
    says which engine runs and what the grid is."""
    if not isinstance(model, Engine):
        feedback.info(f"Loading the model {os.path.basename(model)} ...")
    engine = model if isinstance(model, Engine) else Engine(model, device, threads, feedback)
    card = engine.card
    feedback.info(f"Model: {card.describe()}; execution provider: {engine.provider}")
    if fine and not card.is_dense:
        raise InputError(
            f"OUTPUT_FINE (the fine class map) needs a dense model, but {card.name} is a patch "
            f"model (one class per cell); leave OUTPUT_FINE empty, or choose a dense model "
            f"(lcz.model_kind dense, e.g. trained with 'python -m training train --model "
            f"unet').")
    if engine.provider in GPU_PROVIDERS and batch_size < GPU_BATCH_HINT:
        feedback.info(f"BATCH_SIZE is {batch_size}: a GPU is only filled by batches of "
                      f"{GPU_BATCH_HINT}-4096 patches; raise it for speed.")
    stacks = open_stacks(list(inputs), card.channels, card.pixel_size, feedback,
                         input_bands=input_bands, scale=card.scale)
    if tile_size and not card.is_dense:
        feedback.warning(f"TILE_SIZE ({tile_size} px) applies to dense models only; "
                         f"{card.name} is a patch model, so it is not used.")
    if card.is_dense:
        from .dense import open_dense_scene  # imports this module: loaded on first use
        return open_dense_scene(engine, stacks, feedback, cell_size=cell_size, extent=extent,
                                tile_size=tile_size, batch_size=batch_size)
    first = stacks[0]
    grid = make_grid(first.geotransform, first.width, first.height,
                     cell_size if cell_size else card.cell_size, card.patch_size, extent)
    strip_rows = strip_rows_for(grid, card.n_channels, strip_memory_mb)
    strips = strip_bounds(grid.rows, strip_rows)
    feedback.info(f"Output grid: {grid.cols} x {grid.rows} cells of {grid.cell_size:g} m "
                  f"({grid.stride} px), {len(stacks)} date(s), {len(strips)} strip(s) of up "
                  f"to {strip_rows} cell rows, batches of {batch_size}.")
    return _Scene(engine, stacks, grid, strip_rows, strips)


def _map_metadata(scene: _Scene, majority_radius: int) -> dict[str, str]:
    """The provenance every output carries: software, model, engine, grid, inputs."""
    card, engine = scene.card, scene.engine
    return {
        "LCZ_SOFTWARE": software_tag(),
        "LCZ_MODEL_NAME": card.name,
        "LCZ_MODEL_VERSION": card.version,
        "LCZ_MODEL_FILE": os.path.basename(engine.model_path),
        "LCZ_EXECUTION_PROVIDER": engine.provider,
        "LCZ_CELL_SIZE": f"{scene.grid.cell_size:g}",
        "LCZ_PATCH_SIZE": str(card.patch_size),
        "LCZ_TEMPERATURE": f"{card.temperature:g}",
        "LCZ_INPUTS": ";".join(os.path.basename(s.path) for s in scene.stacks),
        SOURCES: sources_of_all((s.dataset, s.path) for s in scene.stacks),
        "LCZ_DATES_AVERAGED": str(len(scene.stacks)),
        "LCZ_MAJORITY_RADIUS": str(majority_radius),
        "LCZ_CREATED": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    } | ({} if scene.dense is None else {
        "LCZ_MODEL_KIND": "dense",
        "LCZ_TILE_SIZE": str(scene.dense.layout.tile),
        "LCZ_TILE_OVERLAP": str(scene.dense.layout.overlap),
    })


def _create_outputs(outputs: PendingOutputs, destinations: dict[str, str], scene: _Scene,
                    majority_radius: int) -> str:
    """Create every output under its temporary name; returns the key the strips' classes go
    to: the class map itself, or a scratch raster the majority filter reads."""
    card, grid = scene.card, scene.grid
    metadata = _map_metadata(scene, majority_radius)
    common = dict(width=grid.cols, height=grid.rows, geotransform=grid.geotransform,
                  projection=scene.stacks[0].projection, block_rows=scene.strip_rows)
    class_key = "RAW_CLASSES" if majority_radius else "OUTPUT"
    for key in dict.fromkeys([class_key, "OUTPUT"]):
        outputs.create(key, destinations["OUTPUT"] if key == "OUTPUT" else None,
                       bands=1, data_type=gdal.GDT_Byte, nodata=NODATA_CODE,
                       descriptions=["LCZ class"], metadata=metadata,
                       qml=class_map_qml(), colour_table=colour_table(),
                       category_names=category_names(), **common)
    if "OUTPUT_PROBABILITIES" in destinations:
        outputs.create("OUTPUT_PROBABILITIES", destinations["OUTPUT_PROBABILITIES"],
                       bands=card.n_classes, data_type=gdal.GDT_Float32,
                       nodata=FLOAT_NODATA, metadata=metadata,
                       descriptions=[lcz_class(c).name for c in card.class_codes],
                       **common)
        for number, code in enumerate(card.class_codes, start=1):
            outputs.set_band_metadata("OUTPUT_PROBABILITIES", number,
                                      {"LCZ_CODE": str(code),
                                       "LCZ_LABEL": lcz_class(code).label})
    if "OUTPUT_CONFIDENCE" in destinations:
        outputs.create("OUTPUT_CONFIDENCE", destinations["OUTPUT_CONFIDENCE"],
                       bands=2, data_type=gdal.GDT_Float32, nodata=FLOAT_NODATA,
                       descriptions=list(CONFIDENCE_BANDS), metadata=metadata,
                       **common)
    if "OUTPUT_FINE" in destinations:
        from .dense import create_fine_output
        create_fine_output(outputs, destinations["OUTPUT_FINE"], scene, metadata)
    return class_key


def _run_scene(scene: _Scene, outputs: PendingOutputs, class_key: str,
               stages: contextlib.ExitStack, feedback: Feedback, *, span: float,
               batch_size: int, prefetch: bool, max_nodata_fraction: float) -> _Tally:
    """Every strip and date through reader -> engine -> writer (the module's docstring): the
    reader and writer threads are entered into ``stages``, which the caller closes on error."""
    if scene.dense is not None:
        from .dense import run_dense_scene
        return run_dense_scene(scene, outputs, class_key, stages, feedback, span=span,
                               prefetch=prefetch, max_nodata_fraction=max_nodata_fraction)
    card = scene.card
    readers = [StripReader(stack, card, scene.grid, max_nodata_fraction)
               for stack in scene.stacks]
    batch_bytes = batch_size * card.n_channels * card.patch_size ** 2 * 4
    depth = int(min(8, max(2, PREFETCH_BYTES // batch_bytes)))
    source = _scene_events(readers, scene.strips, batch_size)
    if prefetch:
        source = stages.enter_context(Prefetch(source, depth, "lcz-read"))
        writer = Background(2, "lcz-write")
        stages.callback(writer.close)
    else:
        writer = Inline()
    engine_stage = _EngineStage(scene, outputs, class_key, writer, feedback, span)
    feedback.info(f"Classifying {len(scene.strips)} strip(s) ...")
    for event in source:
        _check_cancel(feedback)
        engine_stage.handle(event)
    writer.finish()
    stages.close()
    return engine_stage.tally


def _finish(scene: _Scene, outputs: PendingOutputs, destinations: dict[str, str],
            tally: _Tally, feedback: Feedback, *, span: float, majority_radius: int,
            max_nodata_fraction: float, allow_empty: bool = False) -> None:
    """Refuse a map without a classified cell (unless ``allow_empty``), run the majority
    filter pass over the written classes (the filtered map's counts replace the tally's), and
    put the outputs in place."""
    if tally.histogram[1:].sum() == 0 and not allow_empty:
        raise InputError(
            f"every cell of the output is no-data: the input stack(s) hold no valid "
            f"pixels in the classified area (or every patch is more than "
            f"{max_nodata_fraction:.0%} no-data; {describe_nodata(tally.blamed)}). Check the "
            f"stacks' no-data values and the EXTENT.")
    if majority_radius:
        feedback.info(f"Majority filter, radius {majority_radius} cell(s).")

        def on_block(done, total):
            _check_cancel(feedback)
            feedback.progress(span + (100.0 - span) * done / total)

        with GdalErrors() as errors:  # blocks leaving GDAL's cache are written here
            tally.histogram = filter_band(outputs.band("RAW_CLASSES"), outputs.band("OUTPUT"),
                                          majority_radius, scene.strip_rows, on_block)
        errors.raise_if_any(f"class map output {destinations['OUTPUT']}")
    outputs.commit(feedback)


def _report(scene: _Scene, destinations: dict[str, str], tally: _Tally, seconds: float,
            feedback: Feedback) -> ClassifyResult:
    """The result of a run that succeeded, and the log lines that sum it up."""
    grid, stacks, patches, engine = scene.grid, scene.stacks, tally.patches, scene.engine
    result = ClassifyResult(
        output=destinations["OUTPUT"],
        probabilities=destinations.get("OUTPUT_PROBABILITIES"),
        confidence=destinations.get("OUTPUT_CONFIDENCE"),
        provider=engine.provider, rows=grid.rows, cols=grid.cols, cell_size=grid.cell_size,
        patches=patches, seconds=seconds,
        class_counts={int(code): int(tally.histogram[code]) for code in range(1, 256)
                      if tally.histogram[code]},
        fine=destinations.get("OUTPUT_FINE"), tiles=tally.tiles, pixels=tally.pixels)
    if scene.dense is None:
        feedback.info(f"Classified {result.classified_cells} of {grid.rows * grid.cols} cells "
                      f"({patches} patches) in {seconds:.1f} s, "
                      f"{result.patches_per_second:.0f} patches/s on {engine.provider}.")
    else:
        feedback.info(f"Classified {result.classified_cells} of {grid.rows * grid.cols} cells "
                      f"from {result.tiles} tiles of {scene.dense.layout.tile} px in "
                      f"{seconds:.1f} s, {result.pixels_per_second / 1e6:.2f} million input "
                      f"pixels/s on {engine.provider}.")
    skipped = grid.rows * grid.cols * len(stacks) - patches
    if skipped:
        feedback.info(f"skipped {skipped} cell(s) whose "
                      f"{'patch' if scene.dense is None else 'cell'} is mostly no-data"
                      + (f" (counted per date, over {len(stacks)} dates)" if len(stacks) > 1
                         else "") + f": {describe_nodata(tally.blamed)}.")
    feedback.info("Cells per class: " + ", ".join(
        f"{lcz_class(code).letter}: {count}" for code, count in result.class_counts.items()))
    return result


# --- the three stages: reader (prefetch thread), engine (caller), writer (writer thread) -----

def _scene_events(readers: list[StripReader], strips: list[tuple[int, int]],
                  batch_size: int) -> Iterator[SceneEvent]:
    """The scene as a stream of events, strip by strip and date by date: :class:`StripStarted`,
    then per date a :class:`Batch` for each batch of valid cells and a :class:`DateDone`, then
    :class:`StripDone`. Runs on the prefetch thread: reading and gathering happen here."""
    for strip_index, (row_a, row_b) in enumerate(strips):
        yield StripStarted(row_a, row_b)
        for date_index, reader in enumerate(readers):
            step = strip_index * len(readers) + date_index
            strip = reader.read(row_a, row_b)
            rows, cols = np.nonzero(strip.cell_valid)
            for start in range(0, len(rows), batch_size):
                r, c = rows[start:start + batch_size], cols[start:start + batch_size]
                yield Batch(step, r, c, strip.gather(r, c), start + len(r), len(rows))
            blamed = None if strip.cell_valid.all() else strip.nodata_channels()
            yield DateDone(step, strip.cell_valid, blamed)
            del strip
        yield StripDone(row_a)


class _EngineStage:
    """The engine's stage, on the calling thread: adds each batch's probabilities into the
    strip's per-cell sums, counts the dates each cell was classified on, reports progress, and
    hands each finished strip to the writer (:meth:`_write_strip` runs on the writer thread)."""

    def __init__(self, scene: _Scene, outputs: PendingOutputs, class_key: str, writer,
                 feedback: Feedback, span: float):
        self.engine, self.outputs, self.class_key = scene.engine, outputs, class_key
        self.writer, self.feedback, self.span = writer, feedback, span
        self.cols, self.n_classes = scene.grid.cols, scene.card.n_classes
        self.codes = np.asarray(scene.card.class_codes, dtype=np.uint8)
        self.steps = len(scene.strips) * len(scene.stacks)
        self.tally = _Tally()
        self.prob_sum: np.ndarray | None = None  # the strip's rows x cols x K sums
        self.n_dates: np.ndarray | None = None   # the strip's rows x cols dates classified

    def handle(self, event: SceneEvent) -> None:
        match event:
            case Batch():
                self.prob_sum[event.rows, event.cols] += self.engine.probabilities(
                    event.patches)
                self.feedback.progress(
                    self.span * (event.step + event.done / event.total) / self.steps)
            case StripStarted():
                rows = event.row_b - event.row_a
                self.prob_sum = np.zeros((rows, self.cols, self.n_classes), np.float32)
                self.n_dates = np.zeros((rows, self.cols), np.int32)
            case DateDone():
                self.tally.blamed.update(event.blamed)
                self.n_dates += event.cell_valid
                self.tally.patches += int(event.cell_valid.sum())
                self.feedback.progress(self.span * (event.step + 1) / self.steps)
            case StripDone():
                self.writer.submit(self._write_strip, event.row_a, self.prob_sum,
                                   self.n_dates)
                self.prob_sum = self.n_dates = None

    def _write_strip(self, row_a: int, prob_sum: np.ndarray, n_dates: np.ndarray) -> None:
        """Classes (and probabilities, confidence) of the strip's cells, averaged over the
        dates; a cell no date classified is no-data."""
        valid = n_dates > 0
        probs = prob_sum / np.maximum(n_dates, 1)[..., None]
        classes = np.where(valid, self.codes[probs.argmax(axis=2)], NODATA_CODE)
        classes = classes.astype(np.uint8)
        self.outputs.write(self.class_key, classes, row_a)
        self.tally.histogram[:] += np.bincount(classes.ravel(), minlength=256)
        if "OUTPUT_PROBABILITIES" in self.outputs:
            planes = np.where(valid, probs.transpose(2, 0, 1), FLOAT_NODATA)
            self.outputs.write("OUTPUT_PROBABILITIES", planes.astype(np.float32), row_a)
        if "OUTPUT_CONFIDENCE" in self.outputs:
            self.outputs.write("OUTPUT_CONFIDENCE", confidence_planes(probs, valid), row_a)


def confidence_planes(probs: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Top-1 probability and entropy / ln(K) of ``rows x cols x K`` probabilities."""
    top = probs.max(axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(probs > 0, probs * np.log(probs), 0.0)
    entropy = -plogp.sum(axis=2) / np.log(probs.shape[2])
    planes = np.stack([top, np.clip(entropy, 0.0, 1.0)])
    return np.where(valid, planes, FLOAT_NODATA).astype(np.float32)


def _check_cancel(feedback: Feedback) -> None:
    if feedback.is_cancelled():
        raise Cancelled()
