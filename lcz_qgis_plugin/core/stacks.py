"""Input stacks: opening them with GDAL and checking that a model can read them.

A stack is any GDAL raster whose band descriptions name its channels (``S2:B02``,
``OSM:building_fraction``, ``DSM:height`` ...). Channels are matched by name, not position,
so a stack may hold its bands in any order and may carry bands the model does not use.
Bare Sentinel-2 ids (``B2``, ``B02``) count as ``S2:B02``, and INPUT_BANDS can name the bands
of a raster that has no descriptions (:mod:`.bandnames`). Several stacks (dates of the same
area) must share one grid.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from osgeo import gdal, osr

from .channels import PRESETS, InputBands, band_channels, band_descriptions, parse_input_bands
from .errors import InputError
from .feedback import Feedback
from .rasters import check_georeferencing, open_raster


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


def match_channels(ds: gdal.Dataset, channels: list[str], path: str,
                   feedback: Feedback | None = None,
                   input_bands: InputBands | None = None) -> list[int]:
    """Band numbers holding the model's channels, in the model's order.

    Band names come from ``input_bands`` when given, else from the band descriptions, both
    read under :func:`.bandnames.canonical_channel` (``B2`` is ``S2:B02``). Refuses a stack
    that lacks any channel, naming the missing ones and the bands it has that the model does
    not know. Extra bands are allowed (the model reads only its own) and are listed in the log.
    """
    names = band_channels(ds, path, input_bands, feedback)
    by_name: dict[str, int] = {}
    for number, name in enumerate(names, start=1):
        if name and name in by_name and name in channels:
            raise InputError(f"the input raster {path} has two bands read as '{name}' "
                             f"(bands {by_name[name]} and {number}; B2, B02 and S2:B02 name "
                             f"the same band); band names must be unique.")
        if name:
            by_name.setdefault(name, number)
    missing = [c for c in channels if c not in by_name]
    shown = names if input_bands else band_descriptions(ds)  # as the user wrote them
    extra = [shown[i - 1] or f"band {i} ({'skipped' if input_bands else 'no description'})"
             for i, n in enumerate(names, start=1) if n not in channels]
    if missing:
        raise InputError(
            f"the input raster {path} does not provide the channels the model needs. "
            f"Missing: {', '.join(missing)}. The raster's bands not used by the model: "
            f"{', '.join(extra) if extra else 'none'}. Band names must equal the model's "
            f"channel names ({', '.join(channels)}); bare Sentinel-2 ids such as B2 or B02 "
            f"count as S2:B02. For a raster without band names (an Earth Engine or "
            f"Copernicus Browser export) give INPUT_BANDS: the bands' names in order, or a "
            f"preset ({', '.join(p.name for p in PRESETS)}). Or build the stack with "
            f"lcz:buildstack, or rename the bands (the <Description> of each band in a VRT, "
            f"or band.SetDescription() in GDAL's Python).")
    if extra and feedback is not None:
        feedback.info(f"{os.path.basename(path)}: ignoring bands the model does not use: "
                      f"{', '.join(extra)}")
    return [by_name[c] for c in channels]


def open_stacks(paths: list[str], channels: list[str], pixel_size: float,
                feedback: Feedback | None = None, input_bands=None,
                scale: list[float] | None = None) -> list[Stack]:
    """Open and check the date stacks of one area; they must share CRS and grid.

    ``input_bands`` (INPUT_BANDS: a preset, names, or ``None`` for the band descriptions,
    see :func:`.bandnames.parse_input_bands`) names the bands of every stack alike. With the
    model's ``scale``, Sentinel-2 channels that look like reflectance already are warned about.
    """
    if not paths:
        raise InputError("no input raster given; choose at least one input stack.")
    input_bands = parse_input_bands(input_bands)
    stacks = []
    for path in paths:
        ds = open_raster(path)
        check_georeferencing(ds, path)
        bands = match_channels(ds, channels, path, feedback, input_bands)
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
    if scale is not None and feedback is not None:
        warn_if_reflectance(first, channels, scale, feedback)
    return stacks


REFLECTANCE_MAX = 1.5
"""Sentinel-2 values at most this large are reflectance (0-1), not DN x 10000."""
SAMPLE_PX = 256


def warn_if_reflectance(stack: Stack, channels: list[str], scale: list[float],
                        feedback: Feedback) -> None:
    """Warn when the model reads Sentinel-2 channels as DN x 1e-4 but the stack holds
    reflectance already (an Earth Engine export divided by 10000): every value would be ten
    thousand times too small and the map meaningless. Looks at one window at the centre of
    the stack only, so the check costs a block read per band."""
    picked = [i for i, (name, s) in enumerate(zip(channels, scale))
              if name.startswith("S2:") and s <= 2e-4]
    if not picked:
        return
    size = min(SAMPLE_PX, stack.width), min(SAMPLE_PX, stack.height)
    x0, y0 = (stack.width - size[0]) // 2, (stack.height - size[1]) // 2
    peak = None
    for i in picked:
        data = stack.dataset.GetRasterBand(stack.bands[i]).ReadAsArray(x0, y0, *size)
        if data is None:
            return
        data = data.astype(np.float64)
        valid = np.isfinite(data)
        if stack.nodata[i] is not None:
            valid &= data != stack.nodata[i]
        if valid.any():
            peak = max(peak or 0.0, float(np.abs(data[valid]).max()))
    if peak is not None and 0.0 < peak <= REFLECTANCE_MAX:
        feedback.warning(
            f"{os.path.basename(stack.path)}: the Sentinel-2 bands hold values up to "
            f"{peak:.3g} (centre of the raster), which looks like reflectance (0-1), but the "
            f"model reads them as DN x 10000 (scale {min(scale[i] for i in picked):g}); if so, "
            f"the map is meaningless. Export the bands as DN (in Earth Engine without dividing "
            f"by 10000), or multiply them by 10000 (Raster calculator) before classifying.")


SOURCES = "LCZ_SOURCES"
"""Metadata item of a model input stack and of a map: the user's files it was made from."""

_RECORDED_INPUTS = ("LCZ_SENTINEL2_INPUTS", "LCZ_OSM_SOURCE", "LCZ_DSM")
_NOT_FILES = {"band rasters", "vector layers"}


def sources_of(dataset: gdal.Dataset, path: str) -> list[str]:
    """The names of the user's files a raster was made from, as the preprocessing outputs
    record them (the Sentinel-2 products, the OpenStreetMap extract, the DSM and DTM, or a
    model input stack's own list); a raster that records none stands for itself. A map made
    from a temporary stack (a graphical model's) names these instead of the stack."""
    metadata = dataset.GetMetadata() or {}
    if metadata.get(SOURCES):
        return metadata[SOURCES].split(";")
    names = [value for key in _RECORDED_INPUTS for value in metadata.get(key, "").split(";")]
    ground = metadata.get("LCZ_GROUND", "")
    if ground.startswith("DTM "):
        names.append(ground[len("DTM "):])
    names = [os.path.basename(name) for name in names if name and name not in _NOT_FILES]
    return list(dict.fromkeys(names)) or [os.path.basename(path)]


def sources_of_all(rasters) -> str:
    """:func:`sources_of` of several (dataset, path) pairs, once each, as one metadata value."""
    names = [name for dataset, path in rasters for name in sources_of(dataset, path)]
    return ";".join(dict.fromkeys(names))
