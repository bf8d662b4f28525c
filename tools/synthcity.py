"""A synthetic city: a SIMULATED scene with known Local Climate Zones, for demos and tests.

Nothing here is measured. The generator draws a city of 100 m cells grouped into districts
of one LCZ class each, renders it at 2 m (buildings with heights, streets, paved ground,
trees, grass, soil, sand, water), and derives from that one rendering every input a real
project would collect:

``lcz_truth.tif``
    the known class of every 100 m cell (Byte, codes 1-17, WUDAPT colour table and legend).
``S2B_MSIL2A_<date>..._T33UVP_<date>.SAFE/``
    a Sentinel-2 Level-2A *SAFE-like* product: ``MTD_MSIL2A.xml`` (real element names:
    ``Product_Info/PRODUCT_START_TIME``, ``PROCESSING_BASELINE``,
    ``BOA_QUANTIFICATION_VALUE``, ``BOA_ADD_OFFSET_VALUES_LIST/BOA_ADD_OFFSET band_id=``) and
    ``GRANULE/<id>/IMG_DATA/R10m|R20m/T33UVP_<datetime>_<band>_<res>.jp2`` written losslessly
    with GDAL's JP2OpenJPEG driver. B02, B03, B04, B08 at 10 m; B05, B06, B07, B8A, B11, B12
    (and B02-B04 again, and the scene classification SCL) at 20 m. DN = reflectance * 10000
    + 1000 (processing baseline >= 04.00 offset, BOA_ADD_OFFSET = -1000). Constant AOT and
    WVP, clear-sky cloud/snow masks and ``MTD_TL.xml`` geocoding make it complete enough for
    GDAL's SENTINEL2 driver. The product is only a few km wide (a real tile is 109.8 km) and
    has no angles and no clouds.
``city.osm``
    OpenStreetMap XML in WGS 84 (GDAL's OSM driver reads it): buildings (``building=*``
    with ``height=*``, ``building:levels=*`` or neither, a few missing as in real OSM),
    streets (``highway=*`` with ``width=*``), water (``natural=water``), land use
    (``landuse=forest|grass``, ``leisure=park``, ``natural=scrub|sand``, ``amenity=parking``).
``dsm.tif``, ``dtm.tif``
    surface and terrain heights at 2 m (Float32, no-data -9999): gentle terrain, buildings,
    tree canopies.
``training_areas.gpkg``, ``training_areas.kml``
    WUDAPT-style training areas: polygons inside districts, class in the field ``lcz`` (mixed
    codings: ``3``, ``A``, ``104`` ...) of the GeoPackage, and as the placemark name (``1`` ...
    ``10``, ``A`` ... ``G``) in the KML.
``synthcity.json``
    the seed, size, grid and file names.

Reflectances are linear mixtures, per 10 m pixel, of approximate material spectra (the
:data:`SPECTRA` table: smoothed, textbook-like shapes, not measurements of any library),
with per-roof brightness, texture and sensor noise; no atmosphere, shadows or adjacency.

Some classes are built to differ **only in the ancillary layers**, so that a demo shows what
OSM and the DSM add to Sentinel-2: compact high-, mid- and low-rise (1, 2, 3) share roofs,
streets and fractions and differ only in building height; so do open high-, mid- and
low-rise (4, 5, 6); large low-rise (8) and heavy industry (10) differ only in height; bare
rock or paved (E) is rendered as 8's flat concrete roofs laid on the ground (same spectra,
no height, no OSM buildings).

Usage::

    python -m tools.synthcity --out city1 --seed 1 --size-km 3

Everything is drawn from ``numpy.random.default_rng(seed)``: the same seed gives the same
city, another seed an independent layout. A 3 x 3 km city takes a few seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

import numpy as np
from osgeo import gdal, ogr, osr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from lcz_qgis_plugin.core.channels import S2_ALL, SO2SAT_BANDS  # noqa: E402
from lcz_qgis_plugin.core.lcz_classes import lcz_class  # noqa: E402
from lcz_qgis_plugin.core.style import category_names, class_map_qml, colour_table  # noqa: E402

EPSG = 32633
ORIGIN = (440000.0, 5340000.0)
"""Top-left corner in UTM 33N (Upper Austria, inside tile 33UVP's area)."""
TILE = "T33UVP"
CELL = 100.0
FINE = 2.0
"""Rendering and DSM/DTM pixel size in metres."""
PX = int(CELL / FINE)
BOA_ADD_OFFSET = -1000
QUANTIFICATION = 10000

BANDS = SO2SAT_BANDS
"""The So2Sat LCZ42 band order."""
BAND_ID = {band: number for number, band in enumerate(S2_ALL)}
"""``band_id`` of each band in ``MTD_MSIL2A.xml`` (Spectral_Information bandId): its
position in the products' band order."""
NATIVE_RESOLUTION = {"B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20,
                     "B08": 10, "B8A": 20, "B09": 60, "B10": 60, "B11": 20, "B12": 20}
RES10 = ("B02", "B03", "B04", "B08")
RES20 = ("B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B11", "B12")

# Approximate surface reflectance of B02 B03 B04 B05 B06 B07 B08 B8A B11 B12 (smoothed,
# textbook-like shapes for a simulation; not taken from a spectral library).
SPECTRA = {
    "water":    (.060, .050, .030, .020, .015, .012, .010, .010, .005, .003),
    "tree":     (.030, .050, .030, .080, .250, .320, .350, .360, .160, .070),
    "grass":    (.040, .080, .050, .120, .300, .360, .380, .390, .240, .120),
    "shrub":    (.040, .070, .060, .110, .220, .270, .290, .300, .220, .120),
    "soil":     (.100, .130, .170, .200, .230, .250, .270, .280, .330, .280),
    "sand":     (.180, .220, .270, .300, .320, .330, .340, .350, .400, .350),
    "asphalt":  (.070, .080, .090, .100, .110, .110, .120, .120, .140, .130),
    "concrete": (.200, .220, .240, .250, .260, .270, .280, .280, .310, .280),
    "tile":     (.080, .100, .180, .220, .250, .270, .280, .290, .330, .270),
    "bitumen":  (.060, .070, .070, .080, .080, .090, .090, .090, .100, .090),
    "metal":    (.250, .270, .280, .290, .300, .300, .310, .310, .320, .300),
}
MATERIALS = tuple(SPECTRA)
M = {name: i for i, name in enumerate(MATERIALS)}
VEGETATION = ("tree", "grass", "shrub")


@dataclass(frozen=True)
class Recipe:
    """How the cells of one LCZ class are rendered."""

    building_fraction: float = 0.0
    """Share of the cell covered by buildings."""
    heights: tuple[float, float] = (0.0, 0.0)
    lots: tuple[int, int] = (1, 1)
    """Lots per block side (one building per lot), drawn per cell."""
    roofs: dict = field(default_factory=dict)
    paved: float = 0.0
    """Share of the open ground (not building, not street) that is paved."""
    paving: dict = field(default_factory=lambda: {"asphalt": 1.0})
    cover: dict = field(default_factory=lambda: {"grass": 1.0})
    """Mix of the unpaved open ground."""
    street: float = 0.0
    """Width in metres of the streets along the cell's edges (0: none)."""
    canopy: tuple[float, float] = (6.0, 15.0)
    flat: bool = False
    """Buildings laid flat on the ground (paved lots shaped like roofs): LCZ E."""
    building_tag: str = "yes"


_CITY_ROOFS = {"tile": .35, "bitumen": .35, "concrete": .30}
_COMPACT = dict(building_fraction=.50, lots=(2, 3), roofs=_CITY_ROOFS, paved=.75,
                paving={"asphalt": .6, "concrete": .4}, cover={"grass": .5, "tree": .5},
                street=14.0)
_OPEN = dict(building_fraction=.20, lots=(1, 2), roofs=_CITY_ROOFS, paved=.30,
             paving={"asphalt": .6, "concrete": .4}, cover={"grass": .55, "tree": .45},
             street=12.0)
_LARGE = dict(building_fraction=.45, lots=(1, 2), roofs={"concrete": .7, "metal": .3},
              paved=.85, paving={"asphalt": .7, "concrete": .3}, cover={"grass": 1.0},
              street=16.0)

RECIPES: dict[int, Recipe] = {
    1: Recipe(heights=(30, 70), building_tag="apartments", **_COMPACT),
    2: Recipe(heights=(12, 25), building_tag="apartments", **_COMPACT),
    3: Recipe(heights=(4, 9), building_tag="terrace", **_COMPACT),
    4: Recipe(heights=(30, 70), building_tag="apartments", **_OPEN),
    5: Recipe(heights=(12, 25), building_tag="apartments", **_OPEN),
    6: Recipe(heights=(4, 9), building_tag="house", **_OPEN),
    7: Recipe(building_fraction=.60, heights=(2.5, 4), lots=(5, 7),
              roofs={"metal": .7, "bitumen": .3}, paved=.1, cover={"soil": .8, "grass": .2},
              street=6.0, building_tag="hut"),
    8: Recipe(heights=(5, 9), building_tag="warehouse", **_LARGE),
    9: Recipe(building_fraction=.08, heights=(4, 9), lots=(2, 3),
              roofs={"tile": .6, "bitumen": .4}, paved=.1, cover={"grass": .6, "tree": .4},
              street=6.0, building_tag="house"),
    10: Recipe(heights=(14, 28), building_tag="industrial", **_LARGE),
    11: Recipe(cover={"tree": .92, "grass": .08}, canopy=(12, 25)),
    12: Recipe(cover={"tree": .45, "grass": .45, "soil": .10}, canopy=(6, 15)),
    13: Recipe(cover={"shrub": .70, "grass": .20, "soil": .10}, canopy=(1, 3)),
    14: Recipe(cover={"grass": .90, "soil": .10}),
    15: Recipe(heights=(0, 0), flat=True, **_LARGE),
    16: Recipe(cover={"soil": .60, "sand": .40}),
    17: Recipe(cover={"water": 1.0}),
}
"""Rendering recipe per LCZ code. 1/2/3, 4/5/6 and 8/10 differ only in building height;
15 (E) is 8 without height."""

URBANITY = {1: 0, 2: 1, 4: 1.5, 3: 2, 10: 2.5, 8: 3, 5: 3, 15: 3.5, 6: 4, 7: 4, 9: 5,
            12: 6, 14: 6, 11: 6.5, 13: 7, 16: 7, 17: 6}
"""Rank from city centre to countryside; districts of lower rank sit nearer the centre."""

OSM_AREA_TAGS = {11: {"landuse": "forest"}, 12: {"leisure": "park"},
                 13: {"natural": "scrub"}, 14: {"landuse": "grass"},
                 16: {"natural": "sand"}, 17: {"natural": "water", "water": "pond"}}


@dataclass
class City:
    """A generated city: paths of its files and its truth."""

    folder: str
    seed: int
    cells: np.ndarray
    """LCZ code per 100 m cell (rows x cols)."""
    truth: str
    safe: str
    osm: str
    dsm: str
    dtm: str
    training_areas: str
    training_areas_kml: str
    safe_zip: str | None = None
    geotransform_10m: tuple = ()

    def band_path(self, band: str, resolution: int = 0) -> str:
        """The JP2 of ``band`` (10 m when it exists, else 20 m; or as asked)."""
        res = resolution or (10 if band in RES10 else 20)
        granule = os.path.join(self.safe, "GRANULE")
        folder = os.path.join(granule, os.listdir(granule)[0], "IMG_DATA", f"R{res}m")
        name = [n for n in os.listdir(folder) if n.endswith(f"_{band}_{res}m.jp2")]
        return os.path.join(folder, name[0])


# -- small numpy helpers -------------------------------------------------------------------

def block_mean(a: np.ndarray, k: int) -> np.ndarray:
    """Mean over non-overlapping k x k blocks of the last two axes."""
    *lead, h, w = a.shape
    return a.reshape(*lead, h // k, k, w // k, k).mean(axis=(-3, -1))


def box_blur(a: np.ndarray, r: int) -> np.ndarray:
    """Mean over (2r+1)^2 windows (edges clamped), separable, via cumulative sums."""
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r + 1, r)
        c = np.cumsum(np.pad(a, pad, mode="edge"), axis=axis)
        n = a.shape[axis]
        a = (np.take(c, np.arange(2 * r + 1, 2 * r + 1 + n), axis=axis)
             - np.take(c, np.arange(0, n), axis=axis)) / (2 * r + 1)
    return a


def smooth_noise(rng, shape, scale_px: int) -> np.ndarray:
    """Zero-mean, unit-variance noise with features about ``scale_px`` pixels across."""
    h, w = shape
    coarse = rng.standard_normal((h // scale_px + 2, w // scale_px + 2))
    fine = np.repeat(np.repeat(coarse, scale_px, axis=0), scale_px, axis=1)[:h, :w]
    fine = box_blur(fine, max(1, scale_px // 2))
    return (fine - fine.mean()) / (fine.std() + 1e-12)


def pick(rng, mix: dict) -> str:
    names = list(mix)
    p = np.array([mix[n] for n in names], float)
    return names[rng.choice(len(names), p=p / p.sum())]


# -- layout ---------------------------------------------------------------------------------

def draw_districts(rng, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(LCZ code per cell, district id per cell): Voronoi districts of about 9 cells, urban
    classes towards the centre."""
    count = max(4, round(n * n / 9))
    seeds = rng.uniform(0, n, size=(count, 2))
    rr, cc = np.mgrid[0:n, 0:n] + 0.5
    d = ((rr[..., None] - seeds[:, 0]) ** 2 + (cc[..., None] - seeds[:, 1]) ** 2)
    district = d.argmin(axis=-1)
    codes = list(range(1, 18))
    if count >= 2 * len(codes):
        chosen = codes * 2 + list(rng.choice(codes, size=count - 2 * len(codes)))
    elif count >= len(codes):
        chosen = codes + list(rng.choice(codes, size=count - len(codes)))
    else:
        chosen = list(rng.choice(codes, size=count, replace=False))
    rank = np.array([URBANITY[int(c)] for c in chosen]) + rng.normal(0, 1.5, size=count)
    order_classes = np.array(chosen)[np.argsort(rank)]
    centre = np.array([n / 2, n / 2]) + rng.normal(0, n / 10, size=2)
    radius = np.hypot(*(seeds - centre).T) + rng.normal(0, n / 12, size=count)
    seed_class = np.empty(count, int)
    seed_class[np.argsort(radius)] = order_classes
    return seed_class[district].astype(np.uint8), district


# -- rendering ------------------------------------------------------------------------------

@dataclass
class Building:
    x0: int
    y0: int
    x1: int
    y1: int
    """Footprint in fine pixels [x0, x1) x [y0, y1)."""
    height: float
    tag: str


def street_widths(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Widths (m) of the streets on the vertical (rows x cols+1) and horizontal (rows+1 x cols)
    cell edges: the wider of the two neighbours' streets."""
    width = np.array([RECIPES[int(c)].street for c in cells.ravel()]).reshape(cells.shape)
    padded_v = np.pad(width, ((0, 0), (1, 1)))
    padded_h = np.pad(width, ((1, 1), (0, 0)))
    return (np.maximum(padded_v[:, :-1], padded_v[:, 1:]),
            np.maximum(padded_h[:-1], padded_h[1:]))


def render(rng, cells: np.ndarray):
    """Material, height above ground, brightness and building list at 2 m."""
    n = cells.shape[0]
    size = n * PX
    material = np.full((size, size), M["grass"], np.uint8)
    height = np.zeros((size, size), np.float32)
    bright = (1.0 + 0.04 * smooth_noise(rng, (size, size), 3)).astype(np.float32)
    ground_noise = smooth_noise(rng, (size, size), 6)
    canopy_noise = smooth_noise(rng, (size, size), 4)
    occupied = np.zeros((size, size), bool)
    vertical, horizontal = street_widths(cells)
    for i in range(n):
        for j in range(n + 1):
            half = int(round(vertical[i, j] / FINE / 2))
            if half:
                xa, xb = max(0, j * PX - half), min(size, j * PX + half)
                material[i * PX:(i + 1) * PX, xa:xb] = M["asphalt"]
                occupied[i * PX:(i + 1) * PX, xa:xb] = True
    for i in range(n + 1):
        for j in range(n):
            half = int(round(horizontal[i, j] / FINE / 2))
            if half:
                ya, yb = max(0, i * PX - half), min(size, i * PX + half)
                material[ya:yb, j * PX:(j + 1) * PX] = M["asphalt"]
                occupied[ya:yb, j * PX:(j + 1) * PX] = True
    buildings: list[Building] = []
    for i in range(n):
        for j in range(n):
            recipe = RECIPES[int(cells[i, j])]
            y0, x0 = i * PX, j * PX
            inset = int(round(max(vertical[i, j], vertical[i, j + 1], horizontal[i, j],
                                  horizontal[i + 1, j]) / FINE / 2))
            block = PX - 2 * inset
            if recipe.building_fraction > 0:
                lots = int(rng.integers(recipe.lots[0], recipe.lots[1] + 1))
                lot = block / lots
                cover = min(0.9, recipe.building_fraction * PX * PX / (block * block))
                side = lot * math.sqrt(cover)
                for a in range(lots):
                    for b in range(lots):
                        w = int(round(min(lot, side * rng.uniform(0.85, 1.15))))
                        h = int(round(min(lot, side * rng.uniform(0.85, 1.15))))
                        if w < 2 or h < 2:
                            continue
                        bx = x0 + inset + int(b * lot + rng.uniform(0, max(0.0, lot - w)))
                        by = y0 + inset + int(a * lot + rng.uniform(0, max(0.0, lot - h)))
                        roof = M["concrete"] if recipe.flat else M[pick(rng, recipe.roofs)]
                        material[by:by + h, bx:bx + w] = roof
                        occupied[by:by + h, bx:bx + w] = True
                        bright[by:by + h, bx:bx + w] *= rng.uniform(0.85, 1.15)
                        if not recipe.flat:
                            z = float(np.round(rng.uniform(*recipe.heights), 1))
                            height[by:by + h, bx:bx + w] = z
                            buildings.append(Building(bx, by, bx + w, by + h, z,
                                                      recipe.building_tag))
            # open ground: paved first, then the cover mix, by rank of a smooth noise field
            window = (slice(y0, y0 + PX), slice(x0, x0 + PX))
            free = ~occupied[window]
            values = ground_noise[window][free]
            order = np.argsort(values, kind="stable")
            shares = [(m, recipe.paved * s) for m, s in _normalised(recipe.paving)] + \
                     [(m, (1 - recipe.paved) * s) for m, s in _normalised(recipe.cover)]
            labels = np.empty(values.size, np.uint8)
            start = 0
            for k, (name, share) in enumerate(shares):
                stop = values.size if k == len(shares) - 1 else \
                    min(values.size, start + int(round(share * values.size)))
                labels[order[start:stop]] = M[name]
                start = stop
            sub = material[window]
            sub[free] = labels
            lo, hi = recipe.canopy
            veg = free & np.isin(sub, [M["tree"], M["shrub"]])
            canopy = (lo + hi) / 2 + (hi - lo) / 4 * canopy_noise[window]
            height[window][veg] = np.clip(canopy, lo, hi)[veg]
    return material, height, bright, buildings


def _normalised(mix: dict):
    total = sum(mix.values())
    return [(name, share / total) for name, share in mix.items()]


def terrain(rng, size: int) -> np.ndarray:
    """Gentle terrain (m): a 0.3 % slope and low hills of a few metres."""
    yy, xx = np.mgrid[0:size, 0:size] * FINE
    hills = smooth_noise(rng, (size, size), 200)
    tilt = rng.uniform(-0.003, 0.003, size=2)
    return (300.0 + tilt[0] * xx + tilt[1] * yy + 4.0 * hills).astype(np.float32)


def reflectance_10m(rng, material, bright) -> np.ndarray:
    """Bands x rows x cols reflectance at 10 m: per-pixel mixture of material spectra."""
    k = int(10 / FINE)
    spectra = np.array([SPECTRA[m] for m in MATERIALS], np.float32)
    fractions = np.stack([block_mean(((material == i) * bright).astype(np.float32), k)
                          for i in range(len(MATERIALS))])
    refl = np.einsum("mb,mhw->bhw", spectra, fractions)
    return refl


def add_noise(rng, refl: np.ndarray) -> np.ndarray:
    refl = refl * rng.normal(1.0, 0.01, size=refl.shape) + rng.normal(0, 0.003, size=refl.shape)
    return np.clip(refl, 0.0, 1.0).astype(np.float32)


def to_dn(refl: np.ndarray) -> np.ndarray:
    return np.clip(np.round(refl * QUANTIFICATION) - BOA_ADD_OFFSET, 1, 32767).astype(np.uint16)


# -- writers --------------------------------------------------------------------------------

def utm() -> osr.SpatialReference:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(EPSG)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def wgs84() -> osr.SpatialReference:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(4326)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def write_tiff(path, data: np.ndarray, pixel: float, data_type, nodata=None, **band_extra):
    data = data[None] if data.ndim == 2 else data
    options = ["COMPRESS=DEFLATE", "TILED=YES"]
    if data_type == gdal.GDT_Float32:
        options.append("PREDICTOR=3")
    ds = gdal.GetDriverByName("GTiff").Create(path, data.shape[2], data.shape[1], data.shape[0],
                                              data_type, options=options)
    ds.SetGeoTransform((ORIGIN[0], pixel, 0.0, ORIGIN[1], 0.0, -pixel))
    ds.SetProjection(utm().ExportToWkt())
    for b in range(data.shape[0]):
        band = ds.GetRasterBand(b + 1)
        if nodata is not None:
            band.SetNoDataValue(nodata)
        if "colour_table" in band_extra:
            band.SetColorTable(band_extra["colour_table"])
            band.SetColorInterpretation(gdal.GCI_PaletteIndex)
            band.SetCategoryNames(band_extra["categories"])
        band.WriteArray(data[b])
    ds = None


def write_jp2(path, dn: np.ndarray, pixel: float):
    """Lossless JPEG 2000 (reversible 5/3 wavelet) with GeoJP2/GMLJP2 georeferencing."""
    mem = gdal.GetDriverByName("MEM").Create("", dn.shape[1], dn.shape[0], 1, gdal.GDT_UInt16)
    mem.SetGeoTransform((ORIGIN[0], pixel, 0.0, ORIGIN[1], 0.0, -pixel))
    mem.SetProjection(utm().ExportToWkt())
    mem.GetRasterBand(1).WriteArray(dn)
    mem.GetRasterBand(1).SetNoDataValue(0)
    gdal.GetDriverByName("JP2OpenJPEG").CreateCopy(
        path, mem, options=["QUALITY=100", "REVERSIBLE=YES", "YCBCR420=NO", "RESOLUTIONS=3"])
    aux = path + ".aux.xml"
    if os.path.exists(aux):
        os.remove(aux)


def product_names(seed: int, date: _dt.date) -> tuple[str, str, str]:
    """(SAFE folder name, granule id, band file prefix) in the real L2A naming pattern."""
    stamp = date.strftime("%Y%m%d")
    sensing = f"{stamp}T100031"
    orbit = 30000 + seed % 5000
    safe = f"S2B_MSIL2A_{sensing}_N0509_R122_{TILE}_{stamp}T130421.SAFE"
    granule = f"L2A_{TILE}_A{orbit:06d}_{stamp}T100725"
    return safe, granule, f"{TILE}_{sensing}"


def mtd_msil2a(safe: str, granule: str, prefix: str, date: _dt.date) -> str:
    stamp = date.strftime("%Y-%m-%d")
    images = []
    for res, bands in ((10, RES10), (20, RES20 + ("SCL", "AOT", "WVP"))):
        for band in bands:
            images.append(f"              <IMAGE_FILE>GRANULE/{granule}/IMG_DATA/R{res}m/"
                          f"{prefix}_{band}_{res}m</IMAGE_FILE>")
    offsets = "\n".join(f'        <BOA_ADD_OFFSET band_id="{i}">{BOA_ADD_OFFSET}</BOA_ADD_OFFSET>'
                        for i in range(13))
    spectral = "\n".join(
        f'        <Spectral_Information bandId="{i}" physicalBand="{name.replace("B0", "B")}">'
        f'<RESOLUTION>{NATIVE_RESOLUTION[name]}</RESOLUTION></Spectral_Information>'
        for name, i in BAND_ID.items())
    images_xml = "\n".join(images)
    band_list = "\n".join(f"          <BAND_NAME>{b.replace('B0', 'B')}</BAND_NAME>"
                          for b in BANDS)
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- SIMULATED product written by tools/synthcity.py (lcz project): a synthetic city, not a measurement. -->
<n1:Level-2A_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <n1:General_Info>
    <Product_Info>
      <PRODUCT_START_TIME>{stamp}T10:00:31.024Z</PRODUCT_START_TIME>
      <PRODUCT_STOP_TIME>{stamp}T10:00:31.024Z</PRODUCT_STOP_TIME>
      <PRODUCT_URI>{safe}</PRODUCT_URI>
      <PROCESSING_LEVEL>Level-2A</PROCESSING_LEVEL>
      <PRODUCT_TYPE>S2MSI2A</PRODUCT_TYPE>
      <PROCESSING_BASELINE>05.09</PROCESSING_BASELINE>
      <GENERATION_TIME>{stamp}T13:04:21.000000Z</GENERATION_TIME>
      <Datatake datatakeIdentifier="GS2B_{date.strftime('%Y%m%d')}T100031_000000_N05.09">
        <SPACECRAFT_NAME>Sentinel-2B</SPACECRAFT_NAME>
        <DATATAKE_TYPE>INS-NOBS</DATATAKE_TYPE>
        <DATATAKE_SENSING_START>{stamp}T10:00:31.024Z</DATATAKE_SENSING_START>
        <SENSING_ORBIT_NUMBER>122</SENSING_ORBIT_NUMBER>
        <SENSING_ORBIT_DIRECTION>DESCENDING</SENSING_ORBIT_DIRECTION>
      </Datatake>
      <Query_Options completeSingleTile="true">
        <PRODUCT_FORMAT>SAFE_COMPACT</PRODUCT_FORMAT>
        <Band_List>
{band_list}
        </Band_List>
      </Query_Options>
      <Product_Organisation>
        <Granule_List>
          <Granule datastripIdentifier="S2B_OPER_MSI_L2A_DS_SYNT_{date.strftime('%Y%m%d')}T130421_N05.09" granuleIdentifier="{granule}" imageFormat="JPEG2000">
{images_xml}
          </Granule>
        </Granule_List>
      </Product_Organisation>
    </Product_Info>
    <Product_Image_Characteristics>
      <Special_Values>
        <SPECIAL_VALUE_TEXT>NODATA</SPECIAL_VALUE_TEXT>
        <SPECIAL_VALUE_INDEX>0</SPECIAL_VALUE_INDEX>
      </Special_Values>
      <Special_Values>
        <SPECIAL_VALUE_TEXT>SATURATED</SPECIAL_VALUE_TEXT>
        <SPECIAL_VALUE_INDEX>65535</SPECIAL_VALUE_INDEX>
      </Special_Values>
      <QUANTIFICATION_VALUES_LIST>
        <BOA_QUANTIFICATION_VALUE unit="none">{QUANTIFICATION}</BOA_QUANTIFICATION_VALUE>
        <AOT_QUANTIFICATION_VALUE unit="none">1000.0</AOT_QUANTIFICATION_VALUE>
        <WVP_QUANTIFICATION_VALUE unit="cm">1000.0</WVP_QUANTIFICATION_VALUE>
      </QUANTIFICATION_VALUES_LIST>
      <BOA_ADD_OFFSET_VALUES_LIST>
{offsets}
      </BOA_ADD_OFFSET_VALUES_LIST>
      <Spectral_Information_List>
{spectral}
      </Spectral_Information_List>
    </Product_Image_Characteristics>
  </n1:General_Info>
</n1:Level-2A_User_Product>
"""


def mtd_tl(granule: str, size10: int) -> str:
    sizes = "\n".join(
        f'        <Size resolution="{r}"><NROWS>{size10 * 10 // r}</NROWS>'
        f'<NCOLS>{size10 * 10 // r}</NCOLS></Size>' for r in (10, 20, 60))
    positions = "\n".join(
        f'        <Geoposition resolution="{r}"><ULX>{ORIGIN[0]:.0f}</ULX><ULY>{ORIGIN[1]:.0f}'
        f'</ULY><XDIM>{r}</XDIM><YDIM>-{r}</YDIM></Geoposition>' for r in (10, 20, 60))
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- SIMULATED tile metadata (tools/synthcity.py): geocoding only. -->
<n1:Level-2A_Tile_ID xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/S2_PDI_Level-2A_Tile_Metadata.xsd">
  <n1:General_Info>
    <TILE_ID>{granule}</TILE_ID>
  </n1:General_Info>
  <n1:Geometric_Info>
    <Tile_Geocoding>
      <HORIZONTAL_CS_NAME>WGS84 / UTM zone 33N</HORIZONTAL_CS_NAME>
      <HORIZONTAL_CS_CODE>EPSG:{EPSG}</HORIZONTAL_CS_CODE>
{sizes}
{positions}
    </Tile_Geocoding>
  </n1:Geometric_Info>
</n1:Level-2A_Tile_ID>
"""


def write_safe(rng, folder: str, seed: int, material, bright) -> str:
    date = _dt.date(2023, 5, 1) + _dt.timedelta(days=seed % 120)
    safe_name, granule, prefix = product_names(seed, date)
    safe = os.path.join(folder, safe_name)
    img = os.path.join(safe, "GRANULE", granule, "IMG_DATA")
    for res in (10, 20):
        os.makedirs(os.path.join(img, f"R{res}m"), exist_ok=True)
    refl10 = reflectance_10m(rng, material, bright)
    refl20 = block_mean(refl10, 2)
    for band in RES10:
        dn = to_dn(add_noise(rng, refl10[BANDS.index(band)]))
        write_jp2(os.path.join(img, "R10m", f"{prefix}_{band}_10m.jp2"), dn, 10.0)
    for band in RES20:
        dn = to_dn(add_noise(rng, refl20[BANDS.index(band)]))
        write_jp2(os.path.join(img, "R20m", f"{prefix}_{band}_20m.jp2"), dn, 20.0)
    k = int(20 / FINE)
    water = block_mean((material == M["water"]).astype(np.float32), k)
    veg = block_mean(np.isin(material, [M[v] for v in VEGETATION]).astype(np.float32), k)
    scl = np.where(water > 0.5, 6, np.where(veg > 0.5, 4, 5)).astype(np.uint16)
    write_jp2(os.path.join(img, "R20m", f"{prefix}_SCL_20m.jp2"), scl, 20.0)
    # constant atmosphere (AOT 0.15, water vapour 2 cm) and clear-sky masks, so that GDAL's
    # SENTINEL2 driver finds every file it expects
    write_jp2(os.path.join(img, "R20m", f"{prefix}_AOT_20m.jp2"), np.full_like(scl, 150), 20.0)
    write_jp2(os.path.join(img, "R20m", f"{prefix}_WVP_20m.jp2"), np.full_like(scl, 2000), 20.0)
    qi = os.path.join(safe, "GRANULE", granule, "QI_DATA")
    os.makedirs(qi, exist_ok=True)
    for mask in ("CLDPRB", "SNWPRB"):
        write_jp2(os.path.join(qi, f"MSK_{mask}_20m.jp2"), np.zeros_like(scl), 20.0)
    with open(os.path.join(safe, "MTD_MSIL2A.xml"), "w", encoding="utf-8") as f:
        f.write(mtd_msil2a(safe_name, granule, prefix, date))
    with open(os.path.join(safe, "GRANULE", granule, "MTD_TL.xml"), "w", encoding="utf-8") as f:
        f.write(mtd_tl(granule, refl10.shape[1]))
    return safe


class OsmWriter:
    """Collects nodes and ways in UTM and writes OSM XML with WGS 84 coordinates."""

    def __init__(self):
        self.xy: list[tuple[float, float]] = []
        self.ways: list[tuple[list[int], dict]] = []

    def node(self, x: float, y: float) -> int:
        self.xy.append((x, y))
        return len(self.xy)  # ids from 1

    def way(self, points, tags: dict, closed: bool = False) -> None:
        ids = [self.node(x, y) for x, y in points]
        if closed:
            ids.append(ids[0])
        self.ways.append((ids, tags))

    def rectangle(self, xa, ya, xb, yb, tags: dict) -> None:
        self.way([(xa, ya), (xb, ya), (xb, yb), (xa, yb)], tags, closed=True)

    def write(self, path: str) -> None:
        xy = np.array(self.xy, dtype=np.float64).reshape(-1, 2)
        transform = osr.CoordinateTransformation(utm(), wgs84())
        lonlat = np.array(transform.TransformPoints(xy))[:, :2] if len(xy) else xy
        lon_min, lat_min = lonlat.min(axis=0)
        lon_max, lat_max = lonlat.max(axis=0)
        with open(path, "w", encoding="utf-8") as f:
            f.write("<?xml version='1.0' encoding='UTF-8'?>\n")
            f.write("<!-- SIMULATED data written by tools/synthcity.py (lcz project): a "
                    "synthetic city, not OpenStreetMap data. -->\n")
            f.write('<osm version="0.6" generator="lcz tools.synthcity">\n')
            f.write(f'  <bounds minlat="{lat_min:.7f}" minlon="{lon_min:.7f}" '
                    f'maxlat="{lat_max:.7f}" maxlon="{lon_max:.7f}"/>\n')
            for i, (lon, lat) in enumerate(lonlat, start=1):
                f.write(f'  <node id="{i}" version="1" lat="{lat:.8f}" lon="{lon:.8f}"/>\n')
            for k, (ids, tags) in enumerate(self.ways, start=1):
                f.write(f'  <way id="{k}" version="1">\n')
                f.writelines(f'    <nd ref="{i}"/>\n' for i in ids)
                f.writelines(f"    <tag k={quoteattr(key)} v={quoteattr(str(value))}/>\n"
                             for key, value in tags.items())
                f.write("  </way>\n")
            f.write("</osm>\n")


def fine_to_utm(col: float, row: float) -> tuple[float, float]:
    return ORIGIN[0] + col * FINE, ORIGIN[1] - row * FINE


def write_osm(rng, path: str, cells: np.ndarray, buildings: list[Building]) -> None:
    osm = OsmWriter()
    for b in buildings:
        draw = rng.random()
        if draw < 0.03:
            continue  # not mapped yet, as in real OSM
        tags = {"building": b.tag}
        if draw < 0.60:
            tags["height"] = f"{b.height:.1f}"
        elif draw < 0.90:
            tags["building:levels"] = str(max(1, int(round(b.height / 3.0))))
        xa, ya = fine_to_utm(b.x0, b.y0)
        xb, yb = fine_to_utm(b.x1, b.y1)
        osm.rectangle(xa, ya, xb, yb, tags)
    n = cells.shape[0]
    vertical, horizontal = street_widths(cells)

    def highway(width):
        return ("primary" if width >= 16 else "secondary" if width >= 14 else
                "tertiary" if width >= 12 else "residential" if width >= 8 else "service")

    for j in range(n + 1):  # vertical streets: runs of equal width down each column edge
        _street_runs(osm, vertical[:, j], lambda i, j=j: fine_to_utm(j * PX, i * PX), highway)
    for i in range(n + 1):
        _street_runs(osm, horizontal[i, :], lambda j, i=i: fine_to_utm(j * PX, i * PX),
                     highway)
    for code, tags in list(OSM_AREA_TAGS.items()) + [(15, {"amenity": "parking"})]:
        for i in range(n):
            j = 0
            while j < n:
                if cells[i, j] != code:
                    j += 1
                    continue
                k = j
                while k < n and cells[i, k] == code:
                    k += 1
                if code != 15 or rng.random() < 0.5:  # half the paved lots are mapped
                    xa, ya = fine_to_utm(j * PX, i * PX)
                    xb, yb = fine_to_utm(k * PX, (i + 1) * PX)
                    osm.rectangle(xa, ya, xb, yb, dict(tags))
                j = k
    osm.write(path)


def _street_runs(osm: OsmWriter, widths: np.ndarray, corner, highway) -> None:
    start = 0
    for k in range(1, len(widths) + 1):
        if k == len(widths) or widths[k] != widths[start]:
            if widths[start] > 0:
                points = [corner(m) for m in range(start, k + 1)]
                osm.way(points, {"highway": highway(widths[start]),
                                 "width": f"{widths[start]:g}"})
            start = k


def training_rectangles(rng, cells: np.ndarray, district: np.ndarray):
    """Per district (85 % of them) the largest rectangle of cells inside it:
    (code, row0, col0, row1, col1), rows/cols exclusive at the end."""
    out = []
    for d in np.unique(district):
        inside = district == d
        if rng.random() > 0.85:
            continue
        rows, cols = np.nonzero(inside)
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        sub = inside[r0:r1, c0:c1].astype(np.int32)
        integral = np.zeros((sub.shape[0] + 1, sub.shape[1] + 1), np.int32)
        integral[1:, 1:] = sub.cumsum(0).cumsum(1)
        best, best_area = None, 0
        for a in range(sub.shape[0]):
            for b in range(a + 1, min(a + 5, sub.shape[0]) + 1):
                for c in range(sub.shape[1]):
                    for e in range(c + 1, min(c + 5, sub.shape[1]) + 1):
                        area = (b - a) * (e - c)
                        if area <= best_area:
                            continue
                        full = integral[b, e] - integral[a, e] - integral[b, c] + integral[a, c]
                        if full == area:
                            best, best_area = (a, c, b, e), area
        a, c, b, e = best
        out.append((int(cells[r0 + a, c0 + c]), int(r0 + a), int(c0 + c), int(r0 + b),
                    int(c0 + e)))
    return out


def area_polygons(rng, rectangles):
    """Rectangles of cells -> slightly irregular polygons (UTM) well inside them."""
    polygons = []
    for code, r0, c0, r1, c1 in rectangles:
        xa, ya = ORIGIN[0] + c0 * CELL, ORIGIN[1] - r0 * CELL
        xb, yb = ORIGIN[0] + c1 * CELL, ORIGIN[1] - r1 * CELL
        inset = rng.uniform(8, 20, size=4)
        corners = [(xa + inset[0], ya - inset[1]), (xb - inset[2], ya - inset[1]),
                   (xb - inset[2], yb + inset[3]), (xa + inset[0], yb + inset[3])]
        ring = [(x + rng.uniform(-4, 4), y + rng.uniform(-4, 4)) for x, y in corners]
        polygons.append((code, ring))
    return polygons


def label_for(rng, code: int) -> str:
    """The class as digitisers write it: numbers, and for A-G sometimes letters or 101-107."""
    lcz = lcz_class(code)
    if lcz.built:
        return str(code)
    draw = rng.random()
    return lcz.letter if draw < 0.35 else str(lcz.wudapt_code) if draw < 0.65 else str(code)


def write_training_areas(rng, gpkg: str, kml: str, polygons) -> None:
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(gpkg)
    layer = ds.CreateLayer("training_areas", utm(), ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("lcz", ogr.OFTString))
    layer.CreateField(ogr.FieldDefn("note", ogr.OFTString))
    placemarks = []
    transform = osr.CoordinateTransformation(utm(), wgs84())
    for code, ring in polygons:
        wkt = "POLYGON((" + ",".join(f"{x:.2f} {y:.2f}" for x, y in ring + ring[:1]) + "))"
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetField("lcz", label_for(rng, code))
        feature.SetField("note", lcz_class(code).name)
        feature.SetGeometry(ogr.CreateGeometryFromWkt(wkt))
        layer.CreateFeature(feature)
        lonlat = transform.TransformPoints([(x, y) for x, y in ring + ring[:1]])
        coords = " ".join(f"{lon:.8f},{lat:.8f},0" for lon, lat, *_ in lonlat)
        placemarks.append(
            f"      <Placemark>\n        <name>{escape(lcz_class(code).letter)}</name>\n"
            f"        <description>{escape(lcz_class(code).name)}</description>\n"
            f"        <Polygon><outerBoundaryIs><LinearRing><coordinates>{coords}"
            f"</coordinates></LinearRing></outerBoundaryIs></Polygon>\n      </Placemark>")
    ds = None
    body = "\n".join(placemarks)
    with open(kml, "w", encoding="utf-8") as f:
        f.write(f"""<?xml version="1.0" encoding="UTF-8"?>
<kml xmlns="http://www.opengis.net/kml/2.2">
  <Document>
    <name>LCZ training areas (SIMULATED, tools/synthcity.py)</name>
    <Folder>
      <name>training areas</name>
{body}
    </Folder>
  </Document>
</kml>
""")


# -- the whole city -------------------------------------------------------------------------

@contextlib.contextmanager
def _gdal_exceptions():
    """GDAL/OGR raise Python exceptions while the city is written, and the process-wide mode
    is restored afterwards: code running later in the same process (the plugin's core, QGIS)
    must not find it switched."""
    before = gdal.GetUseExceptions(), ogr.GetUseExceptions()
    gdal.UseExceptions()
    ogr.UseExceptions()
    try:
        yield
    finally:
        if not before[1]:  # undone in the reverse order (GDAL keeps a stack)
            ogr.DontUseExceptions()
        if not before[0]:
            gdal.DontUseExceptions()


def generate(folder: str, seed: int = 0, size_km: float = 3.0, zip_safe: bool = False) -> City:
    with _gdal_exceptions():
        return _generate(folder, seed, size_km, zip_safe)


def _generate(folder: str, seed: int, size_km: float, zip_safe: bool) -> City:
    """Simulate a city of ``size_km`` x ``size_km`` (rounded to 100 m) into ``folder``.

    ``zip_safe``: also write the product as ``<name>.SAFE.zip`` beside the folder, the way
    the Copernicus Data Space delivers products (``City.safe_zip``)."""
    n = int(round(size_km * 1000 / CELL))
    if n < 3:
        raise ValueError("size_km must be at least 0.3 (three 100 m cells)")
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    cells, district = draw_districts(rng, n)
    material, height, bright, buildings = render(rng, cells)
    ground = terrain(rng, material.shape[0])

    truth = os.path.join(folder, "lcz_truth.tif")
    write_tiff(truth, cells, CELL, gdal.GDT_Byte, nodata=0, colour_table=colour_table(),
               categories=category_names())
    with open(os.path.splitext(truth)[0] + ".qml", "w", encoding="utf-8") as f:
        f.write(class_map_qml())
    dsm = os.path.join(folder, "dsm.tif")
    dtm = os.path.join(folder, "dtm.tif")
    write_tiff(dsm, ground + height, FINE, gdal.GDT_Float32, nodata=-9999.0)
    write_tiff(dtm, ground, FINE, gdal.GDT_Float32, nodata=-9999.0)
    safe = write_safe(rng, folder, seed, material, bright)
    safe_zip = None
    if zip_safe:
        safe_zip = shutil.make_archive(safe, "zip", root_dir=folder,
                                       base_dir=os.path.basename(safe))
    osm = os.path.join(folder, "city.osm")
    write_osm(rng, osm, cells, buildings)
    gpkg = os.path.join(folder, "training_areas.gpkg")
    kml = os.path.join(folder, "training_areas.kml")
    for path in (gpkg, kml):
        if os.path.exists(path):
            os.remove(path)
    write_training_areas(rng, gpkg, kml,
                         area_polygons(rng, training_rectangles(rng, cells, district)))
    codes, counts = np.unique(cells, return_counts=True)
    summary = {
        "note": "SIMULATED city (tools/synthcity.py): not a measurement of any place.",
        "seed": seed, "size_km": n * CELL / 1000, "cells": [n, n], "cell_size": CELL,
        "crs": f"EPSG:{EPSG}", "origin": list(ORIGIN), "fine_pixel": FINE,
        "buildings": len(buildings),
        "class_cells": {str(int(c)): int(k) for c, k in zip(codes, counts)},
        "files": {"truth": "lcz_truth.tif", "safe": os.path.basename(safe), "osm": "city.osm",
                  "dsm": "dsm.tif", "dtm": "dtm.tif", "training_areas": "training_areas.gpkg",
                  "training_areas_kml": "training_areas.kml"},
    }
    with open(os.path.join(folder, "synthcity.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    return City(folder=folder, seed=seed, cells=cells, truth=truth, safe=safe, osm=osm,
                dsm=dsm, dtm=dtm, training_areas=gpkg, training_areas_kml=kml, safe_zip=safe_zip,
                geotransform_10m=(ORIGIN[0], 10.0, 0.0, ORIGIN[1], 0.0, -10.0))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.synthcity",
        description="Simulate a synthetic city with known LCZ classes (Sentinel-2 L2A "
                    "SAFE-like product, OSM file, DSM/DTM, training areas). A simulation, "
                    "not data of a real place.")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--size-km", type=float, default=3.0,
                        help="side of the square scene in km (default 3)")
    parser.add_argument("--zip-safe", action="store_true",
                        help="also write the Sentinel-2 product as a .SAFE.zip")
    args = parser.parse_args(argv)
    city = generate(args.out, seed=args.seed, size_km=args.size_km, zip_safe=args.zip_safe)
    codes = sorted(set(city.cells.ravel().tolist()))
    print(f"synthetic city (seed {city.seed}, {city.cells.shape[0]} x {city.cells.shape[1]} "
          f"cells of 100 m, classes {', '.join(lcz_class(c).letter for c in codes)}) in "
          f"{os.path.abspath(city.folder)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
