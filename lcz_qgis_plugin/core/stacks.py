"""Input stacks: opening them with GDAL and checking that a model can read them.

A stack is any GDAL raster whose band descriptions name its channels (``S2:B02``,
``OSM:building_fraction``, ``DSM:height`` ...). Channels are matched by name, not position,
so a stack may hold its bands in any order and may carry bands the model does not use.
Several stacks (dates of the same area) must share one grid.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from osgeo import gdal, osr

from .errors import InputError
from .feedback import Feedback

REPROJECT_HINT = ("Reproject it to a projected CRS in metres, e.g. its UTM zone: in QGIS "
                  "Raster > Projections > Warp (Reproject) with a 10 m output resolution, or "
                  "'gdalwarp -t_srs EPSG:32633 -tr 10 10 -r bilinear in.tif out.tif'.")


@dataclass
class Stack:
    """An opened input stack and how its bands map to the model's channels."""

    path: str
    dataset: gdal.Dataset
    bands: list[int]
    """1-based band numbers, in the model's channel order."""
    nodata: list[float | None]
    """No-data value of each of those bands."""

    @property
    def width(self) -> int:
        return self.dataset.RasterXSize

    @property
    def height(self) -> int:
        return self.dataset.RasterYSize

    @property
    def geotransform(self):
        return self.dataset.GetGeoTransform()

    @property
    def projection(self) -> str:
        return self.dataset.GetProjection()


def open_raster(path: str, what: str = "input raster") -> gdal.Dataset:
    if not os.path.exists(path) and not path.startswith("/vsi"):
        raise InputError(f"the {what} {path} does not exist.")
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


def match_channels(ds: gdal.Dataset, channels: list[str], path: str,
                   feedback: Feedback | None = None) -> list[int]:
    """Band numbers holding the model's channels, in the model's order.

    Refuses a stack that lacks any channel, naming the missing ones and the bands it has that
    the model does not know. Extra bands are allowed (the model reads only its own) and are
    listed in the log.
    """
    descriptions = [ds.GetRasterBand(i).GetDescription().strip()
                    for i in range(1, ds.RasterCount + 1)]
    by_name: dict[str, int] = {}
    for number, name in enumerate(descriptions, start=1):
        if name and name in by_name and name in channels:
            raise InputError(f"the input raster {path} has two bands described as '{name}' "
                             f"(bands {by_name[name]} and {number}); band names must be unique.")
        by_name.setdefault(name, number)
    missing = [c for c in channels if c not in by_name]
    extra = [d or f"band {i} (no description)" for i, d in enumerate(descriptions, start=1)
             if d not in channels]
    if missing:
        raise InputError(
            f"the input raster {path} does not provide the channels the model needs. "
            f"Missing: {', '.join(missing)}. The raster's bands not used by the model: "
            f"{', '.join(extra) if extra else 'none'}. Band descriptions must equal the "
            f"model's channel names ({', '.join(channels)}); build the stack with "
            f"lcz:buildstack, or rename the bands (the <Description> of each band in a "
            f"VRT, or band.SetDescription() in GDAL's Python).")
    if extra and feedback is not None:
        feedback.info(f"{os.path.basename(path)}: ignoring bands the model does not use: "
                      f"{', '.join(extra)}")
    return [by_name[c] for c in channels]


def open_stacks(paths: list[str], channels: list[str], pixel_size: float,
                feedback: Feedback | None = None) -> list[Stack]:
    """Open and check the date stacks of one area; they must share CRS and grid."""
    if not paths:
        raise InputError("no input raster given; choose at least one input stack.")
    stacks = []
    for path in paths:
        ds = open_raster(path)
        check_georeferencing(ds, path)
        bands = match_channels(ds, channels, path, feedback)
        nodata = [ds.GetRasterBand(b).GetNoDataValue() for b in bands]
        stacks.append(Stack(path=path, dataset=ds, bands=bands, nodata=nodata))
    first = stacks[0]
    px = first.geotransform[1]
    if abs(px - pixel_size) > 0.01 * pixel_size:
        raise InputError(f"the input raster {first.path} has {px:g} m pixels, but the model was "
                         f"trained on {pixel_size:g} m pixels. Resample the stack to "
                         f"{pixel_size:g} m (gdalwarp -tr {pixel_size:g} {pixel_size:g}).")
    ref_srs = osr.SpatialReference(wkt=first.projection)
    for other in stacks[1:]:
        problems = []
        if not ref_srs.IsSame(osr.SpatialReference(wkt=other.projection)):
            problems.append("a different CRS")
        if (other.width, other.height) != (first.width, first.height):
            problems.append(f"{other.width} x {other.height} pixels instead of "
                            f"{first.width} x {first.height}")
        if any(abs(a - b) > 1e-6 * max(1.0, abs(a))
               for a, b in zip(other.geotransform, first.geotransform)):
            problems.append(f"geotransform {other.geotransform} instead of {first.geotransform}")
        if problems:
            raise InputError(
                f"the date stacks are not on one grid: {other.path} has "
                f"{'; '.join(problems)} compared with {first.path}. Several inputs are "
                f"treated as dates of the same area and must align pixel for pixel; warp them "
                f"onto one grid (gdalwarp -te ... -tr ... with the first stack's extent) or "
                f"classify them separately.")
    return stacks
