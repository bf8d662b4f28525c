"""Country-scale LCZ maps on a Dask cluster: the tile plan run tile by tile, resumable.

:func:`classify_tiles` cuts the scene into tiles (:mod:`.tile_plan`), hands the tiles still
to run to Dask distributed (a ``LocalCluster`` of worker processes on this machine by
default, or the scheduler of an existing cluster), and builds VRT mosaics once every tile is
finished:

* each worker loads the model once (:func:`worker_engine`) and runs its tiles through
  :func:`.classify.classify` with the tile's extent, into a scratch folder of its own; each
  output is then translated to a Cloud-Optimised GeoTIFF under ``<out>/tiles/`` through the
  commit protocol (:mod:`..commit`): a tile file is complete or absent, never half-written;
* the client records each finished tile, with the SHA-256 of its files, in the manifest;
* a worker lost mid-tile (its process killed) loses only that tile, which the scheduler runs
  again on another worker; a tile whose code fails is retried :data:`RETRIES` times, then
  reported, and the other tiles go on;
* a cancel (Ctrl+C, SIGTERM, the feedback's cancel) stops the cluster, keeps the finished
  tiles, removes the partial files of the tiles that were running, and ends with
  "cancelled; N of M tiles are finished; run the same command again to continue";
* at the end: ``lcz.vrt`` (the LCZ colour table, the class names, a ``.qml`` style) and,
  when asked for, ``probabilities.vrt`` and ``confidence.vrt``, each with external overviews
  (``.ovr``: the most frequent class for the map, the mean for the others).

Dask is imported inside the functions that use it, never when the plugin (or
``lcz_qgis_plugin.core``) loads.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field

from osgeo import gdal

from ..commit import Commit, GdalErrors, describe_os_error, scratch_folder, sweep_partials
from ..errors import Cancelled, InputError, LczError, OutputError
from ..feedback import Feedback
from ..style import category_names, class_map_qml, colour_table
from .tile_plan import (
    MOSAIC_NAMES,
    TILE_CELLS,
    TILE_PREFIX,
    TILES_FOLDER,
    Manifest,
    Tile,
    TilePlan,
    make_plan,
    plan_record,
    sha256_of,
    tile_count_text,
)

RETRIES = 2
"""Extra tries of a tile whose code failed (a worker lost mid-tile is handled by the
scheduler: the tile runs again elsewhere, up to ``distributed.scheduler.allowed-failures``)."""
MANIFEST_EVERY_S = 1.0
"""The manifest is rewritten at most this often while tiles finish (and always at the end)."""
POLL_S = 0.2
SCHEDULER_TIMEOUT_S = 30
OVERVIEW_MIN_CELLS = 64
COG_OPTIONS = ["COMPRESS=DEFLATE", "BIGTIFF=IF_SAFER"]
COG_BLOCK = 512
CANCELLED_TILES = ("cancelled; {done} of {total} tiles are finished; run the same command "
                   "again to continue")


@dataclass(frozen=True)
class TileJob:
    """What a worker needs for one tile; every path is absolute (workers have their own
    working directory, and on a cluster run on other machines)."""

    tile_id: str
    extent: tuple[float, float, float, float]
    folder: str
    files: dict[str, str]
    """Output kind -> the tile's file, relative to ``folder``."""
    inputs: tuple[str, ...]
    model: str
    cell_size: float
    device: str
    threads: int
    batch_size: int
    input_bands: object = None
    tile_size: int | None = None


@dataclass
class TilesResult:
    folder: str
    output: str
    probabilities: str | None
    confidence: str | None
    tiles: int
    tiles_run: int
    tiles_skipped: int
    cells: int
    """Cells of the output grid (classified or no-data)."""
    seconds: float
    run_seconds: float
    """Of ``seconds``: from the cluster's start to the last tile (0 when none ran)."""
    dashboard: str | None = None
    class_counts: dict[int, int] = field(default_factory=dict)

    @property
    def classified_cells(self) -> int:
        return sum(self.class_counts.values())


# --- on the workers ------------------------------------------------------------------------

_engines = threading.local()
_engine_lock = threading.Lock()
_engine_loads = 0
_swept_temp = False


def worker_engine(model: str, device: str, threads: int):
    """The worker's engine for ``model``, opened on its first tile and reused for the next
    ones. One per worker thread (an engine's runner is not shared across threads); the
    model's session itself is loaded once per process (:func:`.engine.cached_sessions`)."""
    global _engine_loads
    from .engine import Engine
    info = os.stat(model)
    key = (model, info.st_mtime_ns, info.st_size, device, threads)
    cache = getattr(_engines, "by_key", None)
    if cache is None:
        cache = _engines.by_key = {}
    if key not in cache:
        cache[key] = Engine(model, device, threads)
        with _engine_lock:
            _engine_loads += 1
    return cache[key]


def engine_loads() -> tuple[int, int]:
    """(engines opened, model sessions loaded) in this worker process so far."""
    from .engine import cached_sessions
    return _engine_loads, cached_sessions()


def run_tile(job: TileJob) -> dict:
    """Classify one tile on this worker and commit its COG files; returns the manifest's
    record of the tile."""
    from .classify import classify
    started = time.perf_counter()
    engine = worker_engine(job.model, job.device, job.threads)
    _sweep_temp_once()
    scratch = scratch_folder(os.path.join(tempfile.gettempdir(), "lcz-tile"))
    try:
        produced = {kind: os.path.join(scratch, f"{kind}.tif") for kind in job.files}
        result = classify(list(job.inputs), engine, produced["classes"],
                          probabilities_output=produced.get("probabilities"),
                          confidence_output=produced.get("confidence"),
                          cell_size=job.cell_size, extent=job.extent,
                          batch_size=job.batch_size, input_bands=job.input_bands,
                          tile_size=job.tile_size, allow_empty=True)
        files = _commit_tile(job, produced)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"files": files, "cells": result.rows * result.cols,
            "class_counts": {str(code): n for code, n in result.class_counts.items()},
            "patches": result.patches, "provider": engine.provider,
            "worker": f"{socket.gethostname()}:{os.getpid()}",
            "seconds": round(time.perf_counter() - started, 3)}


def _sweep_temp_once() -> None:
    """Scratch folders that killed workers of this host left in the temporary folder."""
    global _swept_temp
    if not _swept_temp:
        _swept_temp = True
        sweep_partials(tempfile.gettempdir())


def _commit_tile(job: TileJob, produced: dict[str, str]) -> dict:
    """Each output of the tile as a COG under its final name, all in place together."""
    files = {}
    with Commit(list(job.inputs) + [job.model]) as commit:
        for kind, source in produced.items():
            final = os.path.join(job.folder, job.files[kind])
            temp = commit.reserve(final, f"{kind} tile {job.tile_id}",
                                  stale_sidecars=[final + ".aux.xml"])
            write_cog(source, temp, kind, final)
            files[kind] = {"name": job.files[kind], "bytes": os.path.getsize(temp),
                           "sha256": sha256_of(temp)}
    return files


def write_cog(source: str, destination: str, kind: str, final: str) -> None:
    """``source`` as a Cloud-Optimised GeoTIFF (deflate; the floats with a predictor; inner
    overviews for tiles larger than a block; blocks of 512 cells, or of the tile's size
    rounded up to 16 when smaller: a block is compressed whole, padding included). No
    ``.aux.xml``: the file is the whole tile, so that its checksum covers everything (the
    class names live in the mosaic)."""
    ds = gdal.Open(source)
    size = max(ds.RasterXSize, ds.RasterYSize)
    ds = None
    options = COG_OPTIONS + [f"BLOCKSIZE={min(COG_BLOCK, -(-size // 16) * 16)}"]
    if kind == "classes":
        options.append("OVERVIEW_RESAMPLING=MODE")
    else:
        options += ["PREDICTOR=YES", "OVERVIEW_RESAMPLING=AVERAGE"]
    gdal.SetThreadLocalConfigOption("GDAL_PAM_ENABLED", "NO")
    try:
        with GdalErrors() as errors:
            ds = gdal.Translate(destination, source, format="COG", creationOptions=options)
            written = ds is not None
            ds = None  # closes: the file is complete here
    finally:
        gdal.SetThreadLocalConfigOption("GDAL_PAM_ENABLED", None)
    errors.raise_if_any(f"{kind} tile {final}")
    if not written:
        raise OutputError(f"writing the {kind} tile {final} failed: "
                          f"{gdal.GetLastErrorMsg() or 'GDAL refused it'}.")


# --- the client ------------------------------------------------------------------------------

def classify_tiles(inputs: list[str], model: str, out: str, *, probabilities: bool = False,
                   confidence: bool = False, cell_size: float | None = None,
                   extent: tuple[float, float, float, float] | None = None,
                   tile_cells: int = TILE_CELLS, workers: int = 2, threads_per_worker: int = 1,
                   scheduler: str | None = None, device: str = "auto", threads: int = 0,
                   batch_size: int = 64, input_bands=None, tile_size: int | None = None,
                   restart: bool = False, feedback: Feedback | None = None,
                   progress_bar: bool = True, dashboard_address: str = ":8787") -> TilesResult:
    """Classify the input stack(s) tile by tile on Dask into the folder ``out``.

    The arguments are those of :func:`.classify.classify`, plus: ``probabilities`` and
    ``confidence`` (write those mosaics too), ``tile_cells`` (tile edge in cells),
    ``workers`` and ``threads_per_worker`` (the local cluster), ``scheduler`` (the address of
    an existing cluster's scheduler, e.g. ``tcp://host:8786``; then ``workers`` is not used),
    ``threads`` (engine threads per tile; 0: this machine's cores shared among the local
    workers, or each worker machine's cores on a cluster), ``restart`` (classify every tile
    again even when ``out`` holds a run of another plan). A run in a folder holding an
    unfinished run of the same plan continues it. Raises :class:`~..errors.LczError`
    subclasses with messages meant for the user; :class:`~..errors.Cancelled` after a cancel.
    """
    started = time.perf_counter()
    feedback = feedback or Feedback()
    inputs = [os.path.abspath(os.fspath(p)) for p in inputs]
    model, out = os.path.abspath(os.fspath(model)), os.path.abspath(os.fspath(out))
    _check_arguments(workers, threads_per_worker, batch_size, threads)
    outputs = ["classes"] + ["probabilities"] * probabilities + ["confidence"] * confidence
    plan, _ = make_plan(inputs, model, cell_size=cell_size, extent=extent,
                        tile_cells=tile_cells, input_bands=input_bands, tile_size=tile_size,
                        feedback=feedback)
    _prepare_folder(out)
    tiles = plan.tiles()
    record = plan_record(inputs, model, plan, outputs=outputs, input_bands=input_bands,
                         tile_size=tile_size)
    manifest = Manifest.open(out, record, tiles, restart)
    pending = manifest.check_finished(tiles, feedback)
    feedback.info(f"Tile plan: {tile_count_text(plan)}; {len(tiles) - len(pending)} "
                  f"finished before, {len(pending)} to run. Manifest: {manifest.path}")
    manifest.save()
    cluster = _ClusterSettings(scheduler, workers, threads_per_worker, threads,
                               dashboard_address)
    engine_threads = cluster.engine_threads() if pending else 0
    common = dict(folder=out, inputs=tuple(inputs), model=model, cell_size=plan.grid.cell_size,
                  device=device, threads=engine_threads, batch_size=batch_size,
                  input_bands=input_bands, tile_size=tile_size)
    jobs = [TileJob(tile_id=tile.id, extent=plan.classify_extent(tile),
                    files={kind: tile.file_name(kind) for kind in outputs}, **common)
            for tile in pending]
    run_started = time.perf_counter()
    dashboard = None
    if jobs:
        try:
            dashboard = _run_jobs(jobs, cluster, manifest, len(tiles), feedback, progress_bar)
        except (Cancelled, KeyboardInterrupt):
            raise Cancelled(CANCELLED_TILES.format(done=manifest.finished(),
                                                   total=len(tiles))) from None
    run_seconds = time.perf_counter() - run_started if jobs else 0.0
    mosaics = build_mosaics(out, plan, tiles, outputs, manifest, feedback)
    counts = _class_counts(manifest)
    return TilesResult(folder=out, output=mosaics["classes"],
                       probabilities=mosaics.get("probabilities"),
                       confidence=mosaics.get("confidence"), tiles=len(tiles),
                       tiles_run=len(jobs), tiles_skipped=len(tiles) - len(jobs),
                       cells=plan.grid.rows * plan.grid.cols,
                       seconds=time.perf_counter() - started, run_seconds=run_seconds,
                       dashboard=dashboard, class_counts=counts)


def _check_arguments(workers: int, threads_per_worker: int, batch_size: int,
                     threads: int) -> None:
    if workers < 1:
        raise InputError(f"--workers must be at least 1 (got {workers}).")
    if threads_per_worker < 1:
        raise InputError(f"--threads-per-worker must be at least 1 (got {threads_per_worker}).")
    if batch_size < 1:
        raise InputError(f"BATCH_SIZE must be at least 1 (got {batch_size}).")
    if threads < 0:
        raise InputError(f"--threads must be 0 (automatic) or more (got {threads}).")


def _prepare_folder(out: str) -> None:
    """Create the output folder and its tiles folder; remove what killed runs left there."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise InputError(f"the output folder {out} is a file; give a folder (it is created "
                         f"when missing).")
    try:
        os.makedirs(os.path.join(out, TILES_FOLDER), exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output folder {out}: "
                          f"{describe_os_error(exc)}.") from None
    for folder in (out, os.path.join(out, TILES_FOLDER)):
        sweep_partials(folder)


def _class_counts(manifest: Manifest) -> dict[int, int]:
    counts: dict[int, int] = {}
    for record in manifest.tiles.values():
        for code, n in record.get("class_counts", {}).items():
            counts[int(code)] = counts.get(int(code), 0) + int(n)
    return dict(sorted(counts.items()))


# --- the cluster -----------------------------------------------------------------------------

@dataclass(frozen=True)
class _ClusterSettings:
    scheduler: str | None
    workers: int
    threads_per_worker: int
    threads: int
    dashboard_address: str

    def engine_threads(self) -> int:
        """Engine threads per tile: as asked, else this machine's cores shared among the
        local cluster's tiles at a time (0 on a cluster: each worker's own cores)."""
        if self.threads or self.scheduler:
            return self.threads
        from .engine import physical_cores
        return max(1, physical_cores() // (self.workers * self.threads_per_worker))


def _import_distributed():
    try:
        import distributed
    except ImportError:
        raise LczError("classify-tiles runs on Dask, which is not installed in this Python: "
                       "install it with 'python -m pip install dask distributed' (the "
                       "versions of the plugin's requirements.txt).") from None
    return distributed


@contextlib.contextmanager
def dask_client(settings: _ClusterSettings, tiles_folder: str):
    """A Dask client: of a new local cluster, or of the scheduler at ``settings.scheduler``.
    The local cluster is closed on the way out, whatever happened, and the partial files of
    the tiles its workers were writing are then removed (their processes are gone)."""
    distributed = _import_distributed()
    cluster = None
    if settings.scheduler:
        try:
            client = distributed.Client(settings.scheduler, timeout=SCHEDULER_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            raise LczError(f"cannot reach the Dask scheduler at {settings.scheduler}: {exc}. "
                           f"Check the address and that the scheduler runs, or leave "
                           f"--scheduler out to run on this machine.") from None
    else:
        cluster = _local_cluster(distributed, settings)
        client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
            sweep_partials(tiles_folder)
            sweep_partials(tempfile.gettempdir())  # the workers' scratch folders


def _local_cluster(distributed, settings: _ClusterSettings):
    """A cluster of worker processes on this machine. The workers are started with SIGINT
    ignored: Ctrl+C in a terminal reaches every process of the group, and the client alone
    should decide what a cancel does (stop the workers, keep the finished tiles)."""
    ignore = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if ignore else None
    try:
        return distributed.LocalCluster(
            n_workers=settings.workers, threads_per_worker=settings.threads_per_worker,
            processes=True, dashboard_address=settings.dashboard_address,
            silence_logs=logging.ERROR)
    finally:
        if ignore:
            signal.signal(signal.SIGINT, previous)


def dashboard_line(client, local: bool) -> tuple[str | None, str]:
    """The dashboard's address and the line that says it (Dask serves no dashboard
    without bokeh: say so rather than print an address that shows nothing)."""
    link = client.dashboard_link
    if local and importlib.util.find_spec("bokeh") is None:
        return None, ("Dask dashboard: not available (it needs the bokeh package: "
                      "python -m pip install bokeh); progress is shown here.")
    return link, f"Dask dashboard: {link}"


def _check_workers_see(client, paths: list[str]) -> None:
    """On a cluster every worker must reach the inputs, the model and the output folder
    under the same paths."""
    for path in paths:
        seen = client.run(os.path.exists, path)
        blind = sorted(worker for worker, ok in seen.items() if not ok)
        if blind:
            raise InputError(f"the Dask worker(s) {', '.join(blind[:3])} cannot see {path}. "
                             f"The inputs, the model and the output folder must be on a "
                             f"file system every worker mounts at the same path (a shared "
                             f"or network file system).")


def _run_jobs(jobs: list[TileJob], settings: _ClusterSettings, manifest: Manifest,
              total: int, feedback: Feedback, progress_bar: bool) -> str | None:
    """Run the tiles on the cluster, recording each in the manifest as it finishes; raises
    when some failed (after the others finished). Returns the dashboard's address."""
    threads = jobs[0].threads
    token = uuid.uuid4().hex[:8]
    with dask_client(settings, os.path.join(jobs[0].folder, TILES_FOLDER)) as client:
        link, line = dashboard_line(client, settings.scheduler is None)
        feedback.info(line)
        if settings.scheduler:
            _check_workers_see(client, [*jobs[0].inputs, jobs[0].model, jobs[0].folder])
        workers = len(client.scheduler_info()["workers"])
        feedback.info(f"Running {len(jobs)} tile(s) on {workers} Dask worker(s)"
                      + (f", {threads} engine thread(s) per tile" if threads else "") + ".")
        futures = {client.submit(run_tile, job, key=f"lcz-tile-{job.tile_id}-{token}",
                                 retries=RETRIES, pure=False): job for job in jobs}
        try:
            failures = _collect(futures, manifest, total, feedback, progress_bar)
        except BaseException:
            client.cancel(list(futures), force=True)
            raise
    if failures:
        raise _failure(failures, manifest.finished(), total)
    return link


def _collect(futures: dict, manifest: Manifest, total: int, feedback: Feedback,
             progress_bar: bool) -> dict[str, BaseException]:
    """Wait for the tiles, in the order they finish: record each finished one (the manifest
    is saved at most every :data:`MANIFEST_EVERY_S` and at the end), keep the failures, check
    for a cancel between waits."""
    from distributed import as_completed
    waiting = as_completed(list(futures), with_results=False)
    bar = _progress(total, manifest.finished(), feedback, progress_bar)
    failures: dict[str, BaseException] = {}
    saved = time.monotonic()
    try:
        while not waiting.is_empty():
            if feedback.is_cancelled():
                raise Cancelled()
            if not waiting.has_ready():
                time.sleep(POLL_S)
                continue
            for future in waiting.next_batch(block=False):
                job = futures[future]
                if future.status == "finished":
                    manifest.finish(job.tile_id, future.result())
                else:
                    failures[job.tile_id] = future.exception()
                    manifest.fail(job.tile_id, _reason(failures[job.tile_id]))
                future.release()
                bar.update(1)
            if time.monotonic() - saved >= MANIFEST_EVERY_S:
                manifest.save()
                saved = time.monotonic()
    finally:
        bar.close()
        manifest.save()
    return failures


class _FeedbackBar:
    """Progress through :meth:`Feedback.progress` where there is no tqdm bar."""

    def __init__(self, feedback: Feedback, total: int, done: int):
        self.feedback, self.total, self.done = feedback, total, done

    def update(self, n: int) -> None:
        self.done += n
        self.feedback.progress(100.0 * self.done / self.total)

    def close(self) -> None:
        pass


def _progress(total: int, done: int, feedback: Feedback, progress_bar: bool):
    if progress_bar and importlib.util.find_spec("tqdm") is not None:
        from tqdm import tqdm
        return tqdm(total=total, initial=done, unit="tile", desc="tiles", file=sys.stderr,
                    mininterval=1.0, dynamic_ncols=True)
    return _FeedbackBar(feedback, total, done)


def _failure(failures: dict[str, BaseException], done: int, total: int) -> LczError:
    """One error for the tiles that failed, led by the first one's reason."""
    tile_id, exc = next(iter(failures.items()))
    reason = _reason(exc)
    others = (f" ({len(failures) - 1} more tile(s) failed: "
              f"{', '.join(list(failures)[1:6])}{' ...' if len(failures) > 6 else ''})"
              if len(failures) > 1 else "")
    return LczError(f"tile {tile_id} failed: {reason}{others}. {done} of {total} tiles are "
                    f"finished; fix the problem and run the same command again to run the "
                    f"rest.")


def _reason(exc: BaseException) -> str:
    name = type(exc).__name__
    if name == "KilledWorker":
        return ("it stopped the worker running it several times (out of memory, or a "
                "crash); give the workers more memory or use smaller tiles (--tile-cells)")
    if isinstance(exc, ImportError) and "lcz_qgis_plugin" in str(exc):
        return ("the Dask workers cannot import lcz_qgis_plugin: install the plugin's core "
                "into the workers' Python (or put its folder on their PYTHONPATH)")
    text = " ".join(str(exc).split()).rstrip(".")
    return text if isinstance(exc, LczError) else f"{name}: {text}"


# --- the mosaics -----------------------------------------------------------------------------

def overview_levels(rows: int, cols: int) -> list[int]:
    """2, 4, 8 ... while the overview keeps at least :data:`OVERVIEW_MIN_CELLS` cells along
    its longer side."""
    levels, level = [], 2
    while max(rows, cols) // level >= OVERVIEW_MIN_CELLS:
        levels.append(level)
        level *= 2
    return levels


def build_mosaics(out: str, plan: TilePlan, tiles: list[Tile], outputs: list[str],
                  manifest: Manifest, feedback: Feedback) -> dict[str, str]:
    """The VRT mosaic of each output over every tile, with overviews, all put in place
    together; then tile files and mosaics of an earlier plan are removed."""
    mosaics = {kind: os.path.join(out, MOSAIC_NAMES[kind]) for kind in outputs}
    levels = overview_levels(plan.grid.rows, plan.grid.cols)
    with Commit() as commit:
        for kind, final in mosaics.items():
            sources = [os.path.join(out, tile.file_name(kind)) for tile in tiles]
            _mosaic(commit, final, sources, kind, levels, len(tiles))
    feedback.info("Mosaics: " + ", ".join(mosaics.values())
                  + (f" (overviews 1/{levels[-1]} to 1/2)" if levels else ""))
    _remove_stale(out, {t.file_name(k) for t in tiles for k in outputs}, outputs, feedback)
    return mosaics


def _mosaic(commit: Commit, final: str, sources: list[str], kind: str, levels: list[int],
            tiles: int) -> None:
    """One VRT over the tiles, described as classify describes its output, with external
    overviews (and, for the class map, the QGIS style)."""
    style = os.path.splitext(final)[0] + ".qml"
    temp = commit.reserve(final, f"{kind} mosaic",
                          stale_sidecars=[final + ".aux.xml", final + ".ovr", style])
    with GdalErrors() as errors:
        vrt = gdal.BuildVRT(temp, sources)
        if vrt is not None:
            _describe(vrt, sources[0], kind, tiles)
        vrt = None  # written here
    errors.raise_if_any(f"{kind} mosaic {final}")
    if levels:
        resampling = "MODE" if kind == "classes" else "AVERAGE"
        gdal.SetThreadLocalConfigOption("COMPRESS_OVERVIEW", "DEFLATE")
        try:
            with GdalErrors() as errors:
                ds = gdal.Open(temp)
                ds.BuildOverviews(resampling, levels)
                ds = None
        finally:
            gdal.SetThreadLocalConfigOption("COMPRESS_OVERVIEW", None)
        errors.raise_if_any(f"overviews of the {kind} mosaic {final}")
        os.replace(temp + ".ovr", commit.sidecar(final, final + ".ovr"))
    if kind == "classes":
        commit.write_sidecar_text(final, style, class_map_qml())


def _describe(vrt, first_tile: str, kind: str, tiles: int) -> None:
    """The first tile's metadata and band descriptions on the mosaic; for the class map the
    LCZ colour table and class names (BuildVRT keeps neither names nor descriptions)."""
    tile = gdal.Open(first_tile)
    vrt.SetMetadata(dict(tile.GetMetadata(), LCZ_TILES=str(tiles)))
    for number in range(1, vrt.RasterCount + 1):
        band, source = vrt.GetRasterBand(number), tile.GetRasterBand(number)
        band.SetDescription(source.GetDescription())
        band.SetMetadata(source.GetMetadata())
        if source.GetNoDataValue() is not None:
            band.SetNoDataValue(source.GetNoDataValue())
        if kind == "classes":
            band.SetColorTable(colour_table())
            band.SetColorInterpretation(gdal.GCI_PaletteIndex)
            band.SetCategoryNames(category_names())


_TILE_FILE = re.compile(r"^(" + "|".join(TILE_PREFIX.values()) + r")_r\d{4,}_c\d{4,}\.tif$")


def _remove_stale(out: str, current: set[str], outputs: list[str], feedback: Feedback) -> None:
    """Tile files of an earlier plan (after --restart with other tiles or outputs), and
    mosaics of outputs this run does not make, which would show them."""
    folder = os.path.join(out, TILES_FOLDER)
    stale = [name for name in os.listdir(folder) if _TILE_FILE.match(name)
             and f"{TILES_FOLDER}/{name}" not in current]
    for kind, name in MOSAIC_NAMES.items():
        if kind not in outputs:
            base = os.path.join(out, name)
            stale += [p for p in (base, base + ".ovr") if os.path.exists(p)]
    for name in stale:
        with contextlib.suppress(OSError):
            os.remove(os.path.join(folder, name))
    if stale:
        feedback.info(f"Removed {len(stale)} file(s) of an earlier plan.")
