"""Heights above ground from a surface model, on the reference grid (``lcz:preparedsm``).

The DSM (and the DTM, when given) are resampled with GDAL's warper (bilinear, no data
excluded) onto a *fine grid*: the reference grid subdivided ``k`` times, ``k`` = the reference
pixel size over the DSM's pixel size, rounded (at least 1). On that grid

- with a DTM: height = DSM - DTM;
- without a DTM: height = DSM - ground, where ground is a morphological opening of the DSM
  (minimum, then maximum, over a square window of ``ground_window`` metres, default 100 m):
  objects narrower than the window (buildings, trees) are removed while terrain slopes are
  kept. Buildings wider than the window are partly taken for ground; raise the window for
  large halls, lower it in steep terrain. Within one window of the DSM's edge the opening sees
  only part of the terrain, so on slopes the ground there is underestimated (heights too
  high by up to slope x window); use a DSM a window larger than the area you need.

Negative heights (interpolation noise, DTM above DSM) become 0. A fine pixel is no data when
the DSM (or the DTM) is. The ``k`` x ``k`` fine pixels of each reference pixel are then
aggregated, ignoring no data (all no data -> no data, -9999):

- ``mean`` (the automatic choice when k >= 2): mean height above ground of the pixel, i.e.
  the volume above ground per area, the quantity LCZ height and roughness describe;
- ``max``: the tallest object in the pixel;
- with k = 1 (DSM as coarse as the grid or coarser) there is nothing to aggregate and the
  bilinear resampling alone gives the values.

Work is done in blocks of reference rows (with a halo of one window for the opening), so
memory does not depend on the DSM's size.

Two checks warn (the run goes on) about inputs that give wrong heights without failing:

- a terrain model given as the DSM: a DEM/DTM has no buildings or trees, so its heights above
  ground are terrain residuals of a few decimetres. While the blocks are computed, the fine
  heights are counted in a histogram of 0.1 m bins (:class:`HeightHistogram`, a few kB); when
  at least ``TERRAIN_MIN_PIXELS`` are valid and their 90th percentile is below
  ``TERRAIN_HEIGHT`` (3 m), i.e. fewer than one pixel in ten is a roof or a crown 3 m above
  ground, the log says the input looks like a terrain model. Why the 90th and not the 99th
  percentile: without a DTM, the opening of a real DTM leaves narrow terrain features
  (embankments, hilltops) and the DSM's edges as residuals of several metres on a few per cent
  of the area (the Alexandria lidar DTM given as DSM: 90th percentile 1.4 m, 99th 6.3 m; its
  DSM: 8.7 m and 20.8 m, 45 % of the pixels 3 m or more above ground). A DSM of mostly open
  land (fewer than 10 % of its pixels in buildings or trees) is warned about too; the message
  says to ignore it then;
- a no-data value that is a plausible height (``PLAUSIBLE_HEIGHTS``, -500 to 9000 m; e.g. 0,
  which many DEMs use and which is also sea level): every pixel at exactly that height is
  dropped as no data, which the user can only fix in the file.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from osgeo import gdal, osr

from ..errors import InputError
from ..feedback import Feedback
from ..outputs import PendingOutputs, check_output_path
from ..rasters import FLOAT_NODATA, TILED, bounded_cache, check_cancel, open_raster, quiet_gdal
from .reference_grid import Grid, reference_grid, transform_bounds

AGGREGATIONS = ("auto", "mean", "max")
BAND = "DSM:height"
TERRAIN_PERCENTILE = 90
TERRAIN_HEIGHT = 3.0
"""Metres: fine heights whose ``TERRAIN_PERCENTILE`` is lower look like a terrain model's."""
TERRAIN_MIN_PIXELS = 1000
"""Valid fine pixels needed before the terrain check speaks."""
PLAUSIBLE_HEIGHTS = (-500.0, 9000.0)
"""Metres: a no-data value in this range may be a real height (0: sea level)."""


class HeightHistogram:
    """Counts of heights in 0.1 m bins up to 100 m (one bin above): percentiles of all fine
    heights of the run to 0.1 m, in constant memory."""

    BIN = 0.1
    BINS = 1000

    def __init__(self):
        self.counts = np.zeros(self.BINS + 1, np.int64)

    def add(self, heights: np.ndarray) -> None:
        """Count the valid (non-NaN, already >= 0) heights of one block."""
        valid = heights[~np.isnan(heights)]
        bins = np.minimum((valid / self.BIN).astype(np.int64), self.BINS)
        self.counts += np.bincount(bins, minlength=self.BINS + 1)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def percentile(self, q: float) -> float:
        """Upper edge of the bin holding the q-th percentile (inf above 100 m; NaN if empty)."""
        if self.total == 0:
            return math.nan
        index = int(np.searchsorted(np.cumsum(self.counts), q / 100.0 * self.total))
        return math.inf if index >= self.BINS else round((index + 1) * self.BIN, 1)


def warn_if_terrain(histogram: HeightHistogram, feedback: Feedback) -> bool:
    """Warn when nearly all heights are near zero: a DEM/DTM given as the surface model."""
    low = histogram.percentile(TERRAIN_PERCENTILE)
    if histogram.total < TERRAIN_MIN_PIXELS or not low < TERRAIN_HEIGHT:
        return False
    feedback.warning(
        f"{TERRAIN_PERCENTILE} % of the heights above ground are below {low:.1f} m: the "
        f"surface model looks "
        f"like a terrain model (DEM/DTM, bare ground) rather than a DSM with buildings and "
        f"trees, so the heights are only terrain residuals near zero. Give the surface model "
        f"(first-return lidar, photogrammetric DSM) as DSM and the terrain model as DTM. If "
        f"nine tenths of the area really hold no buildings or trees taller than "
        f"{TERRAIN_HEIGHT:g} m (open land), ignore this.")
    return True


def warn_if_nodata_is_a_height(ds: gdal.Dataset, what: str, path: str,
                               feedback: Feedback) -> bool:
    """Warn when the raster's no-data value could be a real height (0 = sea level)."""
    nodata = ds.GetRasterBand(1).GetNoDataValue()
    if nodata is None or not PLAUSIBLE_HEIGHTS[0] <= nodata <= PLAUSIBLE_HEIGHTS[1]:
        return False
    sea = " (sea level)" if nodata == 0 else ""
    feedback.warning(
        f"the {what} {os.path.basename(path)} has the no-data value {nodata:g}, which is also "
        f"a plausible height: every pixel at exactly {nodata:g} m{sea} is treated as no data "
        f"and has no height. If the file has no gaps, remove the no-data value (gdal_edit.py "
        f"-unsetnodata {os.path.basename(path)}); otherwise have the {what} written with a "
        f"no-data value no height can take, such as -9999.")
    return True


def _pixel_in_grid_units(ds: gdal.Dataset, grid: Grid) -> float:
    """The raster's pixel size expressed in the grid's CRS units (metres)."""
    x0, px, _, y0, _, py = ds.GetGeoTransform()
    srs = osr.SpatialReference(wkt=ds.GetProjection())
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    if srs.IsSame(grid.srs):
        return abs(px)
    bounds = (x0, y0 + ds.RasterYSize * py, x0 + ds.RasterXSize * px, y0)
    xmin, _, xmax, _ = transform_bounds(bounds, ds.GetProjection(), grid.srs)
    return (xmax - xmin) / ds.RasterXSize


def _fine_source(path: str, what: str, fine: Grid, feedback: Feedback) -> gdal.Dataset:
    ds = open_raster(path, what)
    if not ds.GetProjection():
        raise InputError(f"the {what} {path} has no CRS; assign one (Raster > Projections > "
                         f"Assign Projection) first.")
    warn_if_nodata_is_a_height(ds, what, path, feedback)
    nodata = ds.GetRasterBand(1).GetNoDataValue()
    options = dict(format="VRT", outputBounds=fine.bounds, xRes=fine.pixel, yRes=fine.pixel,
                   dstSRS=fine.wkt, resampleAlg="bilinear", outputType=gdal.GDT_Float32,
                   dstNodata=FLOAT_NODATA)
    if nodata is not None:
        options["srcNodata"] = nodata
    with quiet_gdal():
        warped = gdal.Warp("", ds, **options)
    if warped is None:
        raise InputError(f"the {what} {path} cannot be resampled onto the reference grid: "
                         f"{gdal.GetLastErrorMsg()}.")
    return warped


def _read(ds: gdal.Dataset, x: int, y: int, w: int, h: int, what: str) -> np.ndarray:
    with quiet_gdal():
        data = ds.GetRasterBand(1).ReadAsArray(x, y, w, h)
    if data is None:
        raise InputError(f"reading the {what} failed: {gdal.GetLastErrorMsg()}. Is the file "
                         f"complete?")
    data = data.astype(np.float32)
    data[data == FLOAT_NODATA] = np.nan
    return data


def _running(values: np.ndarray, window: int, reduce, fill: float) -> np.ndarray:
    """Separable running min/max over ``window`` x ``window`` with ``fill`` outside."""
    half = window // 2
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (half, half)
        padded = np.pad(values, pad, constant_values=fill)
        values = reduce(sliding_window_view(padded, window, axis=axis), axis=-1)
    return values


def ground_estimate(dsm: np.ndarray, window: int) -> np.ndarray:
    """Morphological opening (min then max over ``window`` px) of ``dsm``; NaN = no data."""
    eroded = _running(np.where(np.isnan(dsm), np.inf, dsm), window, np.min, np.inf)
    eroded[np.isinf(eroded)] = -np.inf
    opened = _running(eroded, window, np.max, -np.inf)
    opened[np.isinf(opened)] = np.nan
    return opened


def aggregate(height: np.ndarray, k: int, how: str) -> np.ndarray:
    """k x k blocks of ``height`` (NaN = no data) -> mean or max ignoring NaN; all NaN -> NaN."""
    if k == 1:
        return height
    rows, cols = height.shape[0] // k, height.shape[1] // k
    blocks = height[:rows * k, :cols * k].reshape(rows, k, cols, k)
    valid = ~np.isnan(blocks)
    count = valid.sum(axis=(1, 3))
    if how == "max":
        out = np.where(valid, blocks, -np.inf).max(axis=(1, 3))
    else:
        out = np.where(valid, blocks, 0.0).sum(axis=(1, 3), dtype=np.float64) / np.maximum(count, 1)
    return np.where(count > 0, out, np.nan).astype(np.float32)


@dataclass
class DsmResult:
    output: str
    factor: int
    aggregation: str
    ground: str
    width: int
    height: int
    percentiles: dict = field(default_factory=dict)
    """{50, 90, 99: percentile of the fine heights above ground in metres (0.1 m bins)}."""


def prepare_dsm(dsm: str, reference: str, output: str, *, dtm: str | None = None,
                aggregation: str = "auto", ground_window: float = 100.0,
                block_rows: int = 64, feedback: Feedback | None = None) -> DsmResult:
    """Write ``DSM:height`` (metres above ground) on the grid of ``reference``."""
    feedback = feedback or Feedback()
    output = check_output_path(output, "height raster")
    if aggregation not in AGGREGATIONS:
        raise InputError(f"unknown aggregation '{aggregation}'; use one of "
                         f"{', '.join(AGGREGATIONS)}.")
    grid = reference_grid(reference)
    feedback.info(f"Reading the DSM {os.path.basename(dsm)}"
                  + (f" and the DTM {os.path.basename(dtm)}" if dtm else "") + " ...")
    plan = _plan_heights(dsm, dtm, reference, grid, aggregation, ground_window, feedback)
    pending = PendingOutputs(os.path.dirname(os.path.abspath(output)),
                             inputs=[dsm, reference] + ([dtm] if dtm else []))
    pending.reserve("dsm", output, "height raster")
    try:
        with bounded_cache():
            histogram = _write_heights(pending, output, plan, block_rows, feedback)
        pending.commit(feedback)
    except BaseException:
        pending.discard()
        raise
    percentiles = _report_percentiles(histogram, feedback)
    warn_if_terrain(histogram, feedback)
    return DsmResult(output=output, factor=plan.k, aggregation=plan.how, ground=plan.ground,
                     width=grid.width, height=grid.height, percentiles=percentiles)


@dataclass
class _HeightPlan:
    """How the surface model becomes heights on the grid, decided before any pixel is read."""

    dsm: str
    dtm: str | None
    grid: Grid
    fine: Grid
    """The grid subdivided ``k`` times, near the DSM's own pixel size."""
    k: int
    how: str
    """Aggregation of the k x k fine pixels: ``mean``, ``max`` or ``none`` (k = 1)."""
    window: int
    """Fine pixels across the opening that estimates the ground (0 with a DTM)."""
    ground: str


def _check_overlap(source: gdal.Dataset, grid: Grid, dsm: str, reference: str) -> None:
    """A DSM away from the reference raster would give a raster of no data only."""
    src_box = transform_bounds(
        (lambda g, w, h: (g[0], g[3] + h * g[5], g[0] + w * g[1], g[3]))(
            source.GetGeoTransform(), source.RasterXSize, source.RasterYSize),
        source.GetProjection(), grid.srs)
    ref_box = grid.bounds
    if (src_box[0] >= ref_box[2] or src_box[2] <= ref_box[0] or src_box[1] >= ref_box[3]
            or src_box[3] <= ref_box[1]):
        raise InputError(f"the DSM {dsm} does not overlap the reference raster {reference}. "
                         f"Choose a DSM of the same area (CRSs are reprojected automatically).")


def _plan_heights(dsm: str, dtm: str | None, reference: str, grid: Grid, aggregation: str,
                  ground_window: float, feedback: Feedback) -> _HeightPlan:
    """Check the DSM, choose the fine grid (``k``), the aggregation and the ground, and say
    so in the log."""
    source = open_raster(dsm, "DSM")
    if not source.GetProjection():
        raise InputError(f"the DSM {dsm} has no CRS; assign one (Raster > Projections > "
                         f"Assign Projection) first.")
    _check_overlap(source, grid, dsm, reference)
    source_pixel = _pixel_in_grid_units(source, grid)
    k = max(1, int(round(grid.pixel / source_pixel)))
    how = ("mean" if k > 1 else "none") if aggregation == "auto" else aggregation
    if k == 1 and aggregation != "auto":
        feedback.info(f"the DSM ({source_pixel:g} m) is not finer than the grid "
                      f"({grid.pixel:g} m): no aggregation, bilinear resampling only.")
    fine = Grid(grid.x0, grid.y0, grid.pixel / k, grid.width * k, grid.height * k, grid.wkt)
    window = 0
    if dtm is None:
        window = max(3, int(math.ceil(ground_window / fine.pixel)) | 1)
        ground = f"opening of the DSM over {window * fine.pixel:g} m"
    else:
        ground = f"DTM {os.path.basename(dtm)}"
    feedback.info(f"DSM pixel {source_pixel:g} m, grid {grid.pixel:g} m: {k} x {k} fine pixels "
                  f"per pixel, aggregation {how}; ground: {ground}.")
    return _HeightPlan(dsm=dsm, dtm=dtm, grid=grid, fine=fine, k=k, how=how, window=window,
                       ground=ground)


def _create_raster(pending: PendingOutputs, output: str, plan: _HeightPlan) -> None:
    """Create the temporary GeoTIFF of ``DSM:height`` with the choices as metadata."""
    grid = plan.grid
    pending.create("dsm", output, width=grid.width, height=grid.height, bands=1,
                   data_type=gdal.GDT_Float32, geotransform=grid.geotransform,
                   projection=grid.wkt, block_rows=256, nodata=FLOAT_NODATA,
                   descriptions=[BAND],
                   metadata={"LCZ_DSM": plan.dsm, "LCZ_GROUND": plan.ground,
                             "LCZ_AGGREGATION": plan.how, "LCZ_FINE_PIXELS": str(plan.k)},
                   creation_options=TILED + ["PREDICTOR=3"])


def _write_heights(pending: PendingOutputs, output: str, plan: _HeightPlan, block_rows: int,
                   feedback: Feedback) -> HeightHistogram:
    """Resample the DSM (and DTM), create the raster and fill it in blocks of rows, so
    memory does not depend on the DSM's size; returns the histogram of the fine heights."""
    surface = _fine_source(plan.dsm, "DSM", plan.fine, feedback)
    terrain = _fine_source(plan.dtm, "DTM", plan.fine, feedback) if plan.dtm else None
    _create_raster(pending, output, plan)
    histogram = HeightHistogram()
    starts = list(range(0, plan.grid.height, block_rows))
    feedback.info(f"Computing heights above ground in {len(starts)} block(s) of up to "
                  f"{block_rows} rows ...")
    for number, row0 in enumerate(starts):
        check_cancel(feedback)
        rows = min(block_rows, plan.grid.height - row0)
        height = _block_heights(surface, terrain, plan, row0, rows)
        histogram.add(height)
        result = aggregate(height, plan.k, "max" if plan.how == "max" else "mean")
        pending.write("dsm", np.where(np.isnan(result), FLOAT_NODATA, result)
                      .astype(np.float32), row0)
        feedback.progress(100.0 * (number + 1) / len(starts))
    return histogram


def _block_heights(surface: gdal.Dataset, terrain: gdal.Dataset | None, plan: _HeightPlan,
                   row0: int, rows: int) -> np.ndarray:
    """Fine heights above ground (>= 0, NaN = no data) of the reference rows ``row0`` ...;
    read with a halo of one opening window so the ground estimate sees past the block."""
    k, halo = plan.k, plan.window
    top, bottom = row0 * k, (row0 + rows) * k
    y_a, y_b = max(0, top - halo), min(plan.fine.height, bottom + halo)
    values = _read(surface, 0, y_a, plan.fine.width, y_b - y_a, "DSM")
    if terrain is not None:
        base = _read(terrain, 0, y_a, plan.fine.width, y_b - y_a, "DTM")
    else:
        base = ground_estimate(values, plan.window)
    height = values - base
    height = height[top - y_a:top - y_a + rows * k]
    return np.where(np.isnan(height), np.nan, np.maximum(height, 0.0))


def _report_percentiles(histogram: HeightHistogram, feedback: Feedback) -> dict:
    """Log the 50th, 90th and 99th percentile of the fine heights (a quick plausibility
    check for the user) and return them."""
    percentiles = {q: histogram.percentile(q) for q in (50, TERRAIN_PERCENTILE, 99)}
    if histogram.total:
        feedback.info(f"heights above ground of the {histogram.total} valid fine pixels: "
                      + ", ".join(f"{q}th percentile "
                                  f"{'over 100' if math.isinf(v) else f'{v:.1f}'} m"
                                  for q, v in percentiles.items()) + ".")
    return percentiles
