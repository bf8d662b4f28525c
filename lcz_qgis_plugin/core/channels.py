"""Which model channel a raster band holds: band descriptions and user band names.

One rule, used wherever channels are matched by name (``lcz:classify``, ``lcz:buildstack``,
``lcz:extractpatches``):

* A bare Sentinel-2 band id is read as the contract's channel name ``S2:Bxx``. Earth Engine,
  the Copernicus Browser, SNAP and most tools name bands ``B2``, ``B02``, ``b8a`` ..., the
  contract names them ``S2:B02`` ... ``S2:B8A`` ... ``S2:B12``. Accepted: the ids B1-B12 and
  B8A in any case, with or without a leading zero, optionally prefixed with ``S2``/
  ``Sentinel-2`` (``S2:B2``, ``S2_B02``, ``Sentinel-2 B4``) and optionally followed by the
  band's wavelength or resolution (``B2 (490 nm)``, ``B02_490nm``, ``B4 - 665nm``,
  ``B02_10m``). Prefixes of other sensors (``SR_B2`` of Landsat) are not Sentinel-2 and
  stay as they are.
* Every other name stays as it is (``OSM:building_fraction``, ``DSM:height``, ``Band 1``).

``INPUT_BANDS`` (:func:`parse_input_bands`) names the bands of a raster in order when its
descriptions are missing or wrong: comma-separated names under the same rule, ``-`` for a
band to skip, or a preset for the common layouts (:data:`PRESETS`). It replaces the file's
descriptions; the values are read as they are.

The Sentinel-2 band lists (:data:`S2_ALL`, :data:`SO2SAT_BANDS`, :data:`SO2SAT_CHANNELS`)
and the default scale of a channel (:func:`default_scale`) live here too, once, for
preprocessing, patch extraction, the training package and the tools.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from osgeo import gdal

from .errors import InputError
from .feedback import Feedback

S2_ALL = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10",
          "B11", "B12")
"""The 13 bands of Level-1C in the products' order (B8A after B08)."""
SO2SAT_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
"""The ten bands of So2Sat LCZ42 (its ``sen2``), in its order: the 10 m and 20 m bands."""

S2_DN_SCALE = 1e-4
"""Default scale of ``S2:*`` channels: a stack holds Sentinel-2 reflectance x 10000 (DN with
the processing-baseline offset removed, as :mod:`.preprocess.sentinel2` writes it), models
read reflectance (as So2Sat stores it), so value = DN * 1e-4 + 0."""

SKIP = "-"

_S2_ID = re.compile(
    r"(?:(?:S2|SENTINEL[-_ ]?2)[AB]?\s*[:_\-. ]\s*)?"   # optional S2: / S2_ / Sentinel-2 prefix
    r"B(0?[1-9]|1[0-2]|8A)"                             # the band id
    r"(?:\s*[-_(\[,:/ ]\s*(?:\d{3,4}(?:\.\d+)?\s*nm|[1-6]0\s*m)\s*[)\]]?)?",  # wavelength/res.
    re.IGNORECASE)


def s2_band(name: str) -> str | None:
    """``'B2'``, ``'b02'``, ``'S2_B8a'``, ``'B4 - 665nm'`` -> ``'B02'``/``'B8A'``/``'B04'``;
    ``None`` for anything that is not a Sentinel-2 band id."""
    match = _S2_ID.fullmatch(name.strip())
    if not match:
        return None
    number = match.group(1).upper()
    return "B8A" if number == "8A" else f"B{int(number):02d}"


def canonical_channel(name: str) -> str:
    """The contract's channel name for a band description or a user's band name: bare
    Sentinel-2 ids become ``S2:Bxx``; everything else is returned stripped but unchanged."""
    band = s2_band(name)
    return s2_channel(band) if band else name.strip()


def s2_channel(band: str) -> str:
    """The contract's channel name of a Sentinel-2 band id: ``B02`` -> ``S2:B02``."""
    return f"S2:{band}"


def _s2(*bands: str) -> tuple[str, ...]:
    return tuple(s2_channel(b) for b in bands)


SO2SAT_CHANNELS = _s2(*SO2SAT_BANDS)
"""``S2:B02`` ... ``S2:B8A``, ``S2:B11``, ``S2:B12``: the channels of an So2Sat-style model."""


def default_scale(channel: str) -> float:
    """Scale of a channel whose raster says none (offset 0): :data:`S2_DN_SCALE` for
    Sentinel-2 (``S2:*``), 1 for everything else."""
    return S2_DN_SCALE if channel.upper().startswith("S2:") else 1.0


@dataclass(frozen=True)
class Preset:
    name: str
    channels: tuple[str, ...]
    what: str


PRESETS = (
    Preset("so2sat", SO2SAT_CHANNELS,
           "So2Sat LCZ42 ten bands: B2, B3, B4, B5, B6, B7, B8, B8A, B11, B12"),
    Preset("s2-l1c-13", _s2(*S2_ALL),
           "Sentinel-2 Level-1C, 13 bands: B1 ... B8, B8A, B9, B10, B11, B12"),
    Preset("s2-l2a-12", _s2(*(b for b in S2_ALL if b != "B10")),
           "Sentinel-2 Level-2A, 12 bands: B1 ... B8, B8A, B9, B11, B12 (no B10)"),
)
_ALIASES = {
    "so2sat": ("so2sat", "lcz42", "so2sat-lcz42", "so2sat10", "s2-10"),
    "s2-l1c-13": ("s2-l1c-13", "s2-l1c", "l1c", "l1c-13", "s2-13"),
    "s2-l2a-12": ("s2-l2a-12", "s2-l2a", "l2a", "l2a-12", "s2-12"),
}


def _key(text: str) -> str:
    return re.sub(r"[\s_\-/.]", "", text.lower())


_PRESET_BY_KEY = {_key(alias): preset for preset in PRESETS
                  for alias in _ALIASES[preset.name]}


def presets_help() -> str:
    """One line per preset for help texts and messages."""
    return "; ".join(f"{p.name} ({p.what}; also "
                     f"{', '.join(a for a in _ALIASES[p.name] if a != p.name)})"
                     for p in PRESETS)


@dataclass(frozen=True)
class InputBands:
    """A raster's band names given by the user: one per band, ``None`` for a skipped one."""

    names: tuple[str | None, ...]
    label: str
    """How the user gave them, for messages: ``preset 'so2sat'`` or ``'B2,B3,...'``."""

    def check_count(self, count: int, path: str) -> None:
        """Refuse a raster whose band count differs from the number of names."""
        if count == len(self.names):
            return
        fitting = [p.name for p in PRESETS if len(p.channels) == count]
        hint = (f" The preset {fitting[0]} has {count} bands; check that it matches the "
                f"file's band order." if fitting else "")
        names = ("is not a preset and names 1 band" if len(self.names) == 1
                 else f"names {len(self.names)} bands")
        raise InputError(
            f"INPUT_BANDS ({self.label}) {names}, but the input raster "
            f"{path} has {count} bands. Give one name per band of the raster, in its order "
            f"('-' skips a band), or a preset with {count} bands.{hint} Presets: "
            f"{presets_help()}.")


def parse_input_bands(value) -> InputBands | None:
    """``INPUT_BANDS`` as given (a preset name, comma-separated names, a list of names, or
    empty) -> :class:`InputBands`, or ``None`` when empty (band descriptions are used)."""
    if value is None or isinstance(value, InputBands):
        return value
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        preset = _PRESET_BY_KEY.get(_key(text))
        if preset is not None:
            return InputBands(preset.channels, f"preset {preset.name}")
        items = re.split(r"[,;\n]", text)
        label = f"'{text}'" if len(text) <= 80 else f"'{text[:77]}...'"
    else:
        items = ["-" if v is None else str(v) for v in value]
        if not items:
            return None
        label = f"'{','.join(items)}'"
    names: list[str | None] = []
    for position, item in enumerate(items, start=1):
        item = item.strip()
        if not item:
            raise InputError(f"INPUT_BANDS ({label}) has an empty name at position {position}; "
                             f"write '-' for a band to skip.")
        names.append(None if item == SKIP else canonical_channel(item))
    named = [n for n in names if n]
    repeated = sorted({n for n in named if named.count(n) > 1})
    if repeated:
        raise InputError(f"INPUT_BANDS ({label}) names {', '.join(repeated)} more than once "
                         f"(B2 and B02 are the same band); give each band once, '-' for bands "
                         f"to skip.")
    return InputBands(tuple(names), label)


def band_descriptions(ds: gdal.Dataset) -> list[str]:
    """The bands' descriptions as the file holds them (stripped; '' when none)."""
    return [ds.GetRasterBand(i).GetDescription().strip() for i in range(1, ds.RasterCount + 1)]


def band_channels(ds: gdal.Dataset, path: str, input_bands: InputBands | None = None,
                  feedback: Feedback | None = None) -> list[str | None]:
    """The channel name of each band of ``ds`` (``None``: no description, or skipped): from
    ``input_bands`` when given (its length must equal the band count), otherwise from the
    band descriptions read under :func:`canonical_channel`. Logs what was renamed."""
    if input_bands is not None:
        input_bands.check_count(ds.RasterCount, path)
        if feedback is not None:
            feedback.info(f"{path}: bands named by INPUT_BANDS ({input_bands.label}), band "
                          f"descriptions ignored: " + ", ".join(
                              f"{i} {n or 'skipped'}"
                              for i, n in enumerate(input_bands.names, start=1)))
        return list(input_bands.names)
    descriptions = band_descriptions(ds)
    names = [canonical_channel(d) if d else None for d in descriptions]
    renamed = [f"{d} as {n}" for d, n in zip(descriptions, names) if d and n != d]
    if renamed and feedback is not None:
        feedback.info(f"{path}: reading band descriptions {', '.join(renamed)}.")
    return names
