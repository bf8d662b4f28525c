"""Rasterize OpenStreetMap onto a reference grid (``lcz:rasterizeosm``).

Sources: an ``.osm`` / ``.osm.pbf`` extract read with GDAL's OSM driver (layers
``multipolygons`` and ``lines``), and/or vector files given per role (buildings, roads, water,
land use; any OGR format, ``path|layername=name`` accepted). Features are reprojected into the
reference CRS, clipped to the reference extent and copied once into a scratch GeoPackage with a
spatial index; every block of output pixels then rasterizes only the features that touch it.
The OSM driver has no spatial index and re-reads the file for every query, which is why the
one-pass copy comes first.

Tags: the OSM driver puts keys its ``osmconf.ini`` does not list (``height``,
``building:levels``, ``surface``, ``width`` ...) into ``other_tags`` as an hstore string
(``"key"=>"value",...``); it is parsed here, so GDAL's default ``osmconf.ini`` (or a user's
own) works unchanged.

Bands (Float32, aligned pixel for pixel with the reference):

=========================  ==================================================================
``OSM:building_fraction``  share of the pixel covered by ``building=*`` footprints (not
                           ``building=no``), from a supersampled rasterization
                           (``supersample`` x ``supersample`` sub-pixels per pixel, default
                           10: 1 m sub-pixels on a 10 m grid). Overlapping footprints count
                           once.
``OSM:building_height``    area-weighted mean height (m) of the footprints in the pixel, over
                           the sub-pixels whose building has a known height: ``height`` (``m``
                           or feet ``'``/``ft`` understood), else ``building:levels`` x
                           ``metres_per_level`` (default 3.0 m). 0 where the pixel has no
                           building; no data (-9999) where it has buildings but none with a
                           known height (or ``default_height`` for those, when given).
``OSM:road_fraction``      share covered by ``highway=*`` lines buffered to a width: the
                           ``width`` tag when numeric, else :data:`ROAD_WIDTHS` (metres, total
                           width). Tunnels (``tunnel=yes``/``building_passage``) and
                           proposed/under construction/abandoned roads are left out.
``OSM:water_fraction``     ``natural=water``, ``waterway=riverbank|dock``,
                           ``landuse=reservoir|basin``, ``water=*`` polygons. The sea, which OSM
                           draws with coastline lines, is not filled.
``OSM:vegetation_fraction``  polygons tagged as in :data:`VEGETATION`.
``OSM:impervious_fraction``  share covered by buildings, roads (buffered) or paved areas:
                           ``amenity=parking``, ``area:highway=*``, ``highway=*`` areas,
                           ``aeroway=runway|taxiway|apron|helipad``, ``railway=platform`` and
                           any area with a paved ``surface`` (asphalt, concrete, paving stones,
                           sett ...). Sealed surfaces OSM does not map (yards, small paths)
                           are missing, so this is a lower bound.
=========================  ==================================================================

Fractions are 0 where OpenStreetMap has nothing: OSM cannot tell "nothing there" from
"not mapped".
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass

import numpy as np
from osgeo import gdal, ogr, osr

from .errors import InputError
from .feedback import Feedback
from .outputs import PendingOutputs, check_output_path
from .refgrid import (FLOAT_NODATA, TILED, Grid, bounded_cache, check_cancel, quiet_gdal,
                      reference_grid, transform_bounds)

BANDS = ("OSM:building_fraction", "OSM:building_height", "OSM:road_fraction",
         "OSM:water_fraction", "OSM:vegetation_fraction", "OSM:impervious_fraction")
ROAD_WIDTHS = {  # metres, whole road; links as their class
    "motorway": 20.0, "trunk": 16.0, "primary": 12.0, "secondary": 10.0, "tertiary": 8.0,
    "unclassified": 6.0, "residential": 6.0, "busway": 6.0, "living_street": 5.0,
    "service": 4.0, "pedestrian": 4.0, "track": 3.0, "road": 6.0, "raceway": 8.0,
    "footway": 2.0, "cycleway": 2.0, "path": 2.0, "steps": 2.0, "bridleway": 2.0,
    "corridor": 2.0,
}
DEFAULT_ROAD_WIDTH = 4.0  # a highway value not listed above, or a road layer without classes
NOT_ROADS = {"proposed", "construction", "abandoned", "disused", "platform", "elevator",
             "bus_stop", "razed", "no"}
VEGETATION = {
    "landuse": {"forest", "grass", "meadow", "orchard", "vineyard", "allotments", "farmland",
                "recreation_ground", "village_green", "cemetery", "greenfield",
                "plant_nursery", "flowerbed"},
    "natural": {"wood", "scrub", "grassland", "heath", "wetland", "fell", "moor",
                "shrubbery", "tundra"},
    "leisure": {"park", "garden", "golf_course", "nature_reserve", "dog_park"},
}
WATER = {"natural": {"water"}, "waterway": {"riverbank", "dock"},
         "landuse": {"reservoir", "basin"}}
PAVED_SURFACES = {"asphalt", "concrete", "paved", "paving_stones", "sett", "concrete:plates",
                  "concrete:lanes", "cobblestone", "unhewn_cobblestone", "metal", "bricks"}
KINDS = ("building", "road", "water", "vegetation", "paved")
BLOCK_SUBPIXELS = 2560  # sub-pixels per block edge: 256 px at 10x, ~100 MB of scratch arrays
_HSTORE = re.compile(r'"((?:[^"\\]|\\.)*)"=>"((?:[^"\\]|\\.)*)"')
_NUMBER = re.compile(r"^\s*([0-9]+(?:[.,][0-9]+)?)\s*(m|metres|meters|ft|feet|'|)\s*$", re.I)


def parse_other_tags(text: str | None) -> dict[str, str]:
    """The OSM driver's hstore ``"k"=>"v","k2"=>"v2"`` -> dict."""
    if not text:
        return {}
    return {k.replace('\\"', '"'): v.replace('\\"', '"') for k, v in _HSTORE.findall(text)}


def _metres(value: str | None) -> float | None:
    if not value:
        return None
    match = _NUMBER.match(value.split(";")[0])
    if not match:
        return None
    number = float(match.group(1).replace(",", "."))
    if match.group(2).lower() in ("ft", "feet", "'"):
        number *= 0.3048
    return number if number > 0 else None


def building_height(tags: dict[str, str], metres_per_level: float) -> float | None:
    """``height`` in metres, else ``building:levels`` x ``metres_per_level``, else None."""
    height = _metres(tags.get("height"))
    if height is not None:
        return height
    levels = _metres(tags.get("building:levels"))
    return levels * metres_per_level if levels is not None else None


def classify_tags(tags: dict[str, str], is_line: bool) -> list[str]:
    """The kinds (building, road, water, vegetation, paved) a feature contributes to."""
    kinds = []
    highway = tags.get("highway")
    if is_line:
        if highway and highway not in NOT_ROADS and tags.get("tunnel") not in (
                "yes", "building_passage") and tags.get("area") != "yes":
            kinds.append("road")
        return kinds
    if tags.get("building") and tags["building"] != "no":
        kinds.append("building")
    if any(tags.get(k) in values for k, values in WATER.items()) or tags.get("water"):
        kinds.append("water")
    if any(tags.get(k) in values for k, values in VEGETATION.items()):
        kinds.append("vegetation")
    if (tags.get("amenity") == "parking" or tags.get("area:highway") or highway
            or tags.get("aeroway") in ("runway", "taxiway", "apron", "helipad")
            or tags.get("railway") == "platform" or tags.get("surface") in PAVED_SURFACES):
        kinds.append("paved")
    return kinds


def road_width(tags: dict[str, str]) -> float:
    width = _metres(tags.get("width"))
    if width is not None and width < 100:
        return width
    highway = (tags.get("highway") or "").removesuffix("_link")
    return ROAD_WIDTHS.get(highway, DEFAULT_ROAD_WIDTH)


# -- collecting features into the scratch GeoPackage ----------------------------------------

class _Scratch:
    """The features of interest, in the reference CRS, in a GeoPackage with an R-tree."""

    def __init__(self, folder: str, grid: Grid, margin: float):
        self.path = os.path.join(folder, f".lcz-osm-{uuid.uuid4().hex[:8]}.gpkg")
        self.grid = grid
        driver = ogr.GetDriverByName("GPKG")
        self.ds = driver.CreateDataSource(self.path)
        if self.ds is None:
            raise InputError(f"cannot create a scratch GeoPackage in {folder}: "
                             f"{gdal.GetLastErrorMsg()}")
        self.layer = self.ds.CreateLayer("features", grid.srs, ogr.wkbUnknown,
                                         ["SPATIAL_INDEX=YES"])
        self.layer.CreateField(ogr.FieldDefn("kind", ogr.OFTString))
        self.layer.CreateField(ogr.FieldDefn("height", ogr.OFTReal))
        xmin, ymin, xmax, ymax = grid.bounds
        clip = ogr.Geometry(ogr.wkbLinearRing)
        for x, y in ((xmin - margin, ymin - margin), (xmax + margin, ymin - margin),
                     (xmax + margin, ymax + margin), (xmin - margin, ymax + margin),
                     (xmin - margin, ymin - margin)):
            clip.AddPoint_2D(x, y)
        self.clip = ogr.Geometry(ogr.wkbPolygon)
        self.clip.AddGeometry(clip)
        self.counts = dict.fromkeys(KINDS, 0)
        self.known_heights = 0
        self.ds.StartTransaction()

    def add(self, geometry, kind: str, height: float | None = None,
            buffer: float | None = None) -> None:
        if geometry is None or geometry.IsEmpty():
            return
        if buffer is not None:
            geometry = _geos(lambda: geometry.Buffer(buffer / 2.0, 4))
            if geometry is None:
                return
        elif geometry.GetDimension() == 2:
            geometry = _valid_polygons(geometry)
            if geometry is None:
                return
        if not geometry.Intersects(self.clip):
            return
        if not self.clip.Contains(geometry):
            geometry = _geos(lambda: geometry.Intersection(self.clip))
            if geometry is None or geometry.IsEmpty():
                return
        feature = ogr.Feature(self.layer.GetLayerDefn())
        feature.SetField("kind", kind)
        if height is not None:
            feature.SetField("height", float(height))
            self.known_heights += 1
        feature.SetGeometry(geometry)
        self.layer.CreateFeature(feature)
        self.counts[kind] += 1

    def finish(self) -> None:
        self.ds.CommitTransaction()

    def close(self) -> None:
        self.layer = None
        self.ds = None
        for path in (self.path, self.path + "-wal", self.path + "-shm", self.path + "-journal"):
            if os.path.exists(path):
                os.remove(path)


def _geos(operation):
    """Result of a GEOS operation, or None where GEOS refuses a degenerate OSM geometry (a way
    of two identical nodes ...). Works in both of OGR's error modes: another library in the
    same process (QGIS, a script) may have called ogr.UseExceptions()."""
    with quiet_gdal():
        try:
            return operation()
        except RuntimeError:
            return None


def _valid_polygons(geometry):
    """OSM polygons cut by an extract's edge or drawn crossing themselves are invalid; repair
    them (GEOS MakeValid) and keep the polygonal parts, or drop what cannot be repaired."""
    if _geos(geometry.IsValid):
        return geometry
    repaired = _geos(geometry.MakeValid)
    if repaired is None or repaired.IsEmpty():
        return None
    if repaired.GetDimension() == 2 and repaired.GetGeometryType() in (
            ogr.wkbPolygon, ogr.wkbMultiPolygon):
        return repaired
    parts = ogr.Geometry(ogr.wkbMultiPolygon)
    for i in range(repaired.GetGeometryCount()):
        part = repaired.GetGeometryRef(i)
        if part.GetGeometryType() == ogr.wkbPolygon:
            parts.AddGeometry(part)
        elif part.GetGeometryType() == ogr.wkbMultiPolygon:
            for j in range(part.GetGeometryCount()):
                parts.AddGeometry(part.GetGeometryRef(j))
    return parts if parts.GetGeometryCount() else None


def _split_source(path: str) -> tuple[str, str | None]:
    """``file.gpkg|layername=roads`` -> (file.gpkg, roads)."""
    parts = os.fspath(path).split("|")
    layer = None
    for part in parts[1:]:
        if part.startswith("layername="):
            layer = part[len("layername="):]
    return parts[0], layer


def _transform_to(layer_srs, grid: Grid, source: str):
    if layer_srs is None:
        raise InputError(f"the vector data {source} has no CRS; assign one (Vector > Data "
                         f"Management Tools > Assign Projection) and try again.")
    layer_srs = layer_srs.Clone()
    layer_srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    if layer_srs.IsSame(grid.srs):
        return None
    return osr.CoordinateTransformation(layer_srs, grid.srs)


def _on_grid(feature, transform):
    """A copy of the feature's geometry in the grid's CRS (None when it has none)."""
    geometry = feature.GetGeometryRef()
    if geometry is None:
        return None
    geometry = geometry.Clone()
    if transform is not None:
        geometry.Transform(transform)
    return geometry


def _feature_tags(feature, defn) -> dict[str, str]:
    tags = {}
    for i in range(defn.GetFieldCount()):
        name = defn.GetFieldDefn(i).GetName()
        if feature.IsFieldSetAndNotNull(i):
            value = feature.GetFieldAsString(i)
            if name == "other_tags":
                tags.update(parse_other_tags(value))
            elif name == "all_tags":
                tags.update(parse_other_tags(value))
            else:
                tags.setdefault(name, value)
    return tags


def _read_osm_file(path: str, scratch: _Scratch, metres_per_level: float,
                   default_height: float | None, feedback: Feedback) -> None:
    with quiet_gdal():
        ds = gdal.OpenEx(path, gdal.OF_VECTOR, allowed_drivers=["OSM"])
        reason = gdal.GetLastErrorMsg()
    if ds is None:
        raise InputError(f"GDAL's OSM driver cannot read {path} ({reason or 'not OSM data'}). "
                         f"Give an .osm (XML) or .osm.pbf extract, e.g. from Geofabrik or "
                         f"the 'Export' of openstreetmap.org.")
    wgs84 = osr.SpatialReference()
    wgs84.ImportFromEPSG(4326)
    transform = _transform_to(wgs84, scratch.grid, path)
    lon_lat = transform_bounds(scratch.grid.bounds, scratch.grid.wkt, _traditional(wgs84))
    wanted = {"multipolygons": False, "lines": True}
    for name in wanted:
        layer = ds.GetLayerByName(name)
        pad = 0.001  # ~100 m: roads buffered past the edge still count
        layer.SetSpatialFilterRect(lon_lat[0] - pad, lon_lat[1] - pad, lon_lat[2] + pad,
                                   lon_lat[3] + pad)
    # Read every layer in one pass over the file (GDAL's recommended way for the OSM driver;
    # reading layer after layer would re-parse the file and needs OGR_INTERLEAVED_READING).
    count = 0
    while True:
        with quiet_gdal():  # clipped extracts hold unclosed rings; repaired in add()
            feature, layer = ds.GetNextFeature()
        if feature is None:
            break
        name = layer.GetName()
        if name not in wanted:
            continue
        count += 1
        if count % 5000 == 0:
            check_cancel(feedback)
        tags = _feature_tags(feature, layer.GetLayerDefn())
        kinds = classify_tags(tags, wanted[name])
        if not kinds:
            continue
        geometry = _on_grid(feature, transform)
        if geometry is None:
            continue
        for kind in kinds:
            if kind == "building":
                height = building_height(tags, metres_per_level)
                scratch.add(geometry, kind, height if height is not None else default_height)
            elif kind == "road":
                scratch.add(geometry, kind, buffer=road_width(tags))
            else:
                scratch.add(geometry, kind)


def _traditional(srs):
    srs = srs.Clone()
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def _read_vector(path: str, role: str, scratch: _Scratch, metres_per_level: float,
                 default_height: float | None, feedback: Feedback) -> None:
    file, layer_name = _split_source(path)
    with quiet_gdal():
        ds = gdal.OpenEx(file, gdal.OF_VECTOR)
        reason = gdal.GetLastErrorMsg()
    if ds is None:
        raise InputError(f"the {role} layer {path} cannot be opened as vector data "
                         f"({reason or 'unknown format'}). Save it as a GeoPackage first.")
    layer = ds.GetLayerByName(layer_name) if layer_name else ds.GetLayer(0)
    if layer is None:
        raise InputError(f"the {role} source {file} has no layer '{layer_name}'.")
    transform = _transform_to(layer.GetSpatialRef(), scratch.grid, path)
    if layer.GetSpatialRef() is not None:
        box = transform_bounds(scratch.grid.bounds, scratch.grid.wkt,
                               _traditional(layer.GetSpatialRef()))
        layer.SetSpatialFilterRect(*box)
    defn = layer.GetLayerDefn()
    for number, feature in enumerate(layer):
        if number % 5000 == 0:
            check_cancel(feedback)
        geometry = _on_grid(feature, transform)
        if geometry is None:
            continue
        tags = {k.lower() if k.lower() in ("height", "width") else k: v
                for k, v in _feature_tags(feature, defn).items()}
        if "levels" in tags and "building:levels" not in tags:
            tags["building:levels"] = tags["levels"]
        is_line = geometry.GetDimension() == 1
        if role == "buildings":
            if not is_line:
                height = building_height(tags, metres_per_level)
                scratch.add(geometry, "building",
                            height if height is not None else default_height)
        elif role == "roads":
            if is_line:
                scratch.add(geometry, "road", buffer=road_width(tags))
            else:
                scratch.add(geometry, "road")
        elif role == "water":
            if not is_line:
                scratch.add(geometry, "water")
        else:  # land use: classify by tags
            for kind in classify_tags(tags, is_line):
                if kind in ("water", "vegetation", "paved"):
                    scratch.add(geometry, kind)


# -- rasterizing block by block -------------------------------------------------------------

def _burn(layer, kind: str, fine: Grid, attribute: str | None = None) -> np.ndarray:
    data_type = gdal.GDT_Float32 if attribute else gdal.GDT_Byte
    mem = gdal.GetDriverByName("MEM").Create("", fine.width, fine.height, 1, data_type)
    mem.SetGeoTransform(fine.geotransform)
    mem.SetProjection(fine.wkt)
    where = f"kind = '{kind}'" + (f" AND {attribute} IS NOT NULL" if attribute else "")
    layer.SetAttributeFilter(where)
    if attribute:
        gdal.RasterizeLayer(mem, [1], layer, options=[f"ATTRIBUTE={attribute}"])
    else:
        gdal.RasterizeLayer(mem, [1], layer, burn_values=[1])
    return mem.GetRasterBand(1).ReadAsArray()


def _fraction(mask: np.ndarray, factor: int) -> np.ndarray:
    rows, cols = mask.shape[0] // factor, mask.shape[1] // factor
    return mask.reshape(rows, factor, cols, factor).mean(axis=(1, 3), dtype=np.float64)


def _rasterize_block(layer, grid: Grid, col0: int, row0: int, cols: int, rows: int,
                     factor: int) -> np.ndarray:
    fine_pixel = grid.pixel / factor
    x0 = grid.x0 + col0 * grid.pixel
    y0 = grid.y0 - row0 * grid.pixel
    fine = Grid(x0, y0, fine_pixel, cols * factor, rows * factor, grid.wkt)
    layer.SetSpatialFilterRect(x0, y0 - rows * grid.pixel, x0 + cols * grid.pixel, y0)
    building = _burn(layer, "building", fine).astype(bool)
    heights = _burn(layer, "building", fine, "height")
    known = building & (heights > 0)
    road = _burn(layer, "road", fine).astype(bool)
    water = _burn(layer, "water", fine).astype(bool)
    vegetation = _burn(layer, "vegetation", fine).astype(bool)
    paved = _burn(layer, "paved", fine).astype(bool)
    layer.SetAttributeFilter(None)
    out = np.empty((len(BANDS), rows, cols), np.float32)
    out[0] = _fraction(building, factor)
    known_count = _fraction(known, factor)
    height_sum = _fraction(np.where(known, heights, 0.0), factor)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_height = np.where(known_count > 0, height_sum / known_count, 0.0)
    out[1] = np.where((out[0] > 0) & (known_count == 0), FLOAT_NODATA, mean_height)
    out[2] = _fraction(road, factor)
    out[3] = _fraction(water, factor)
    out[4] = _fraction(vegetation, factor)
    out[5] = _fraction(building | road | paved, factor)
    return out


@dataclass
class OsmResult:
    output: str
    counts: dict[str, int]
    buildings_with_height: int
    width: int
    height: int


def rasterize_osm(reference: str, output: str, *, osm_file: str | None = None,
                  buildings: list[str] = (), roads: list[str] = (), water: list[str] = (),
                  landuse: list[str] = (), metres_per_level: float = 3.0,
                  default_height: float | None = None, supersample: int = 10,
                  feedback: Feedback | None = None) -> OsmResult:
    """Rasterize OpenStreetMap (``osm_file``) and/or vector layers per role onto the grid of
    the ``reference`` raster; write the six ``OSM:*`` bands to ``output`` (GeoTIFF)."""
    feedback = feedback or Feedback()
    output = check_output_path(output, "OSM raster")
    if not osm_file and not (buildings or roads or water or landuse):
        raise InputError("no OpenStreetMap data given: choose an .osm/.osm.pbf file or at "
                         "least one vector layer (buildings, roads, water or land use).")
    if osm_file and not os.path.isfile(osm_file):
        raise InputError(f"the OSM file {osm_file} does not exist.")
    if not (1 <= supersample <= 50):
        raise InputError(f"supersampling {supersample} is out of range; use 1 to 50 "
                         f"(10 gives 1 m sub-pixels on a 10 m grid).")
    if metres_per_level <= 0:
        raise InputError("metres per building level must be positive (3.0 is typical).")
    grid = reference_grid(reference)
    folder = os.path.dirname(os.path.abspath(output))
    scratch_dir = tempfile.mkdtemp(prefix=".lcz-osm-", dir=folder)
    margin = max(ROAD_WIDTHS.values()) + grid.pixel
    scratch = _Scratch(scratch_dir, grid, margin)
    pending = PendingOutputs(folder)
    try:
        feedback.info(f"Reading OpenStreetMap features for {grid.width} x {grid.height} px of "
                      f"{grid.pixel:g} m ...")
        if osm_file:
            _read_osm_file(osm_file, scratch, metres_per_level, default_height, feedback)
        for role, paths in (("buildings", buildings), ("roads", roads), ("water", water),
                            ("landuse", landuse)):
            for path in paths or ():
                _read_vector(path, role, scratch, metres_per_level, default_height, feedback)
        scratch.finish()
        counts = dict(scratch.counts)
        feedback.info("Features inside the grid: " + ", ".join(f"{k} {v}"
                                                               for k, v in counts.items())
                      + f"; buildings with a known height: {scratch.known_heights}")
        if counts["building"] == 0:
            feedback.warning("no building footprint falls inside the reference grid: "
                             "OSM:building_fraction is 0 everywhere. Check that the OSM "
                             "extract covers the reference raster.")
        feedback.progress(10)
        with bounded_cache():
            pending.create("osm", output, width=grid.width, height=grid.height,
                           bands=len(BANDS), data_type=gdal.GDT_Float32,
                           geotransform=grid.geotransform, projection=grid.wkt,
                           block_rows=256, nodata=FLOAT_NODATA, descriptions=list(BANDS),
                           metadata={"LCZ_OSM_SOURCE": osm_file or "vector layers",
                                     "LCZ_OSM_SUPERSAMPLE": str(supersample),
                                     "LCZ_OSM_METRES_PER_LEVEL": f"{metres_per_level:g}"},
                           creation_options=TILED + ["PREDICTOR=3"])
            edge = max(8, BLOCK_SUBPIXELS // supersample)
            blocks = [(r, c) for r in range(0, grid.height, edge)
                      for c in range(0, grid.width, edge)]
            for number, (row0, col0) in enumerate(blocks):
                check_cancel(feedback)
                rows, cols = min(edge, grid.height - row0), min(edge, grid.width - col0)
                values = _rasterize_block(scratch.layer, grid, col0, row0, cols, rows,
                                          supersample)
                pending.write("osm", values, row0, col0)
                feedback.progress(10 + 90.0 * (number + 1) / len(blocks))
        pending.commit()
    except BaseException:
        pending.discard()
        raise
    finally:
        scratch.close()
        shutil.rmtree(scratch_dir, ignore_errors=True)
    return OsmResult(output=output, counts=counts, buildings_with_height=scratch.known_heights,
                     width=grid.width, height=grid.height)
