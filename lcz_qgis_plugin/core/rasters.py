"""GDAL helpers every stage shares: opening a raster with a readable error, checking that it
is georeferenced in metres, reading in blocks under a bounded cache, quiet GDAL errors and the
cancel check. Output formats every stage writes: tiled, compressed GeoTIFF (:data:`TILED`),
-9999 as the Float32 no-data value."""

from __future__ import annotations

import contextlib
import os

from osgeo import gdal, osr

from .errors import Cancelled, InputError
from .feedback import Feedback

TILED = ["TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256", "COMPRESS=DEFLATE", "ZLEVEL=6",
         "INTERLEAVE=BAND", "BIGTIFF=IF_SAFER"]
FLOAT_NODATA = -9999.0
CACHE_BYTES = 256 * 2**20


REPROJECT_HINT = ("Reproject it to a projected CRS in metres, e.g. its UTM zone: in QGIS "
                  "Raster > Projections > Warp (Reproject) with a 10 m output resolution, or "
                  "'gdalwarp -t_srs EPSG:32633 -tr 10 10 -r bilinear in.tif out.tif'.")


def require_files(paths, what: str = "input raster") -> None:
    """Refuse a missing input before any slow work (a model to load, an engine to choose)."""
    for path in paths:
        if isinstance(path, str) and not os.path.exists(path) and not path.startswith("/vsi"):
            raise InputError(f"the {what} {path} does not exist.")


def open_raster(path: str, what: str = "input raster") -> gdal.Dataset:
    require_files([path], what)
    gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        gdal.ErrorReset()
        ds = gdal.Open(path, gdal.GA_ReadOnly)
        reason = gdal.GetLastErrorMsg()
    finally:
        gdal.PopErrorHandler()
    if ds is None:
        raise InputError(f"GDAL cannot open the {what} {path}: {reason or 'unknown format'}. "
                         f"Check that it is a raster file GDAL can read (GeoTIFF, VRT ...).")
    return ds


def check_georeferencing(ds: gdal.Dataset, path: str) -> None:
    """Refuse rasters the cell lattice cannot handle: no CRS, degrees, rotation, non-square."""
    wkt = ds.GetProjection()
    if not wkt:
        raise InputError(f"the input raster {path} has no coordinate reference system. "
                         f"Assign one (Raster > Projections > Assign Projection) before "
                         f"classifying.")
    srs = osr.SpatialReference()
    srs.ImportFromWkt(wkt)
    if srs.IsGeographic():
        raise InputError(f"the input raster {path} is in a geographic CRS (degrees), but "
                         f"patches and cells are measured in metres. {REPROJECT_HINT}")
    if abs(srs.GetLinearUnits() - 1.0) > 1e-9:
        raise InputError(f"the input raster {path} uses {srs.GetLinearUnitsName()} as units; "
                         f"cells and patches are measured in metres. {REPROJECT_HINT}")
    x0, px, rx, y0, ry, py = ds.GetGeoTransform()
    if rx != 0 or ry != 0 or px <= 0 or py >= 0:
        raise InputError(f"the input raster {path} is rotated or not north-up "
                         f"(geotransform {ds.GetGeoTransform()}). Warp it to a north-up grid "
                         f"with gdalwarp.")
    if abs(px + py) > 1e-6 * px:
        raise InputError(f"the input raster {path} has non-square pixels ({px:g} x {-py:g}). "
                         f"Resample it to square pixels with gdalwarp -tr.")


def row_blocks(height: int, rows: int):
    """(first row, number of rows) of each block of ``rows`` rows."""
    for row in range(0, height, rows):
        yield row, min(rows, height - row)


def check_cancel(feedback: Feedback) -> None:
    if feedback.is_cancelled():
        raise Cancelled()


@contextlib.contextmanager
def bounded_cache(limit: int = CACHE_BYTES):
    """Cap GDAL's block cache (5 % of RAM by default) so peak memory does not depend on the
    machine or the scene size; restored afterwards."""
    old = gdal.GetCacheMax()
    gdal.SetCacheMax(min(old, limit))
    try:
        yield
    finally:
        gdal.SetCacheMax(old)


@contextlib.contextmanager
def quiet_gdal():
    """GDAL errors are turned into :class:`InputError` by the caller; keep them off stderr."""
    gdal.PushErrorHandler("CPLQuietErrorHandler")
    gdal.ErrorReset()
    try:
        yield
    finally:
        gdal.PopErrorHandler()
