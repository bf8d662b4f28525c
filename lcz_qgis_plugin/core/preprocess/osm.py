"""Rasterize OpenStreetMap onto a reference grid (``lcz:rasterizeosm``).

Sources: one or more ``.osm`` / ``.osm.pbf`` extracts read with GDAL's OSM driver (layers
``multipolygons`` and ``lines``), and/or vector files given per role (buildings, roads, water,
land use; any OGR format, ``path|layername=name`` accepted). Features are reprojected into the
reference CRS, clipped to the reference extent and copied once into a scratch GeoPackage with a
spatial index; every block of output pixels then rasterizes only the features that touch it.
The OSM driver has no spatial index and re-reads the file for every query, which is why the
one-pass copy comes first.

A city often comes as several extracts (one per district or tile) that overlap at their
edges. An OSM element is copied once per kind (building, road ...) whatever the number of
files holding it: the key is its element type and id (GDAL's OSM driver gives
``multipolygons`` an ``osm_id`` for relations and an ``osm_way_id`` for closed ways, and
``lines`` the way's ``osm_id``; vector layers exported from OSM carry the same fields, or
QuickOSM's ``osm_type`` + ``osm_id``). The first file's copy is kept.

Tags: the OSM driver puts keys its ``osmconf.ini`` does not list (``height``,
``building:levels``, ``surface``, ``width`` ...) into ``other_tags`` as an hstore string
(``"key"=>"value",...``); it is parsed here, so GDAL's default ``osmconf.ini`` (or a user's
own) works unchanged.

Bands (Float32, aligned pixel for pixel with the reference):

=============================  ==============================================================
``OSM:building_fraction``      share of the pixel covered by ``building=*`` footprints (not
                               ``building=no``), from a supersampled rasterization
                               (``supersample`` x ``supersample`` sub-pixels per pixel,
                               default 10: 1 m sub-pixels on a 10 m grid). Overlapping
                               footprints count once.
``OSM:building_height``        area-weighted mean height (m) of the footprints in the pixel:
                               ``height`` (``m`` or feet ``'``/``ft`` understood), else
                               ``building:levels`` x ``metres_per_level`` (default 3.0 m),
                               else the *fill height* (:func:`fill_height`). 0 where the
                               pixel has no building; never no-data inside the coverage.
``OSM:road_fraction``          share covered by ``highway=*`` lines buffered to a width: the
                               ``width`` tag when numeric, else :data:`ROAD_WIDTHS` (metres,
                               total width). Tunnels (``tunnel=yes``/``building_passage``) and
                               proposed/under construction/abandoned roads are left out.
``OSM:water_fraction``         ``natural=water``, ``waterway=riverbank|dock``,
                               ``landuse=reservoir|basin``, ``water=*`` polygons. The sea,
                               which OSM draws with coastline lines, is not filled.
``OSM:vegetation_fraction``    polygons tagged as in :data:`VEGETATION`.
``OSM:impervious_fraction``    share covered by buildings, roads (buffered) or paved areas:
                               ``amenity=parking``, ``area:highway=*``, ``highway=*`` areas,
                               ``aeroway=runway|taxiway|apron|helipad``, ``railway=platform``
                               and any area with a paved ``surface`` (asphalt, concrete, paving
                               stones, sett ...). Sealed surfaces OSM does not map (yards,
                               small paths) are missing, so this is a lower bound.
``OSM:building_height_known``  share of the pixel's building area whose height comes from a
                               ``height`` or ``building:levels`` tag (the rest has the fill
                               height); 0 where the pixel has no building.
=============================  ==============================================================

Fractions are 0 where OpenStreetMap has nothing: OSM cannot tell "nothing there" from
"not mapped". Only pixels outside the data's *coverage* are no data (-9999, every band): the
``coverage`` polygons when given, else the union of the extracts' own bounds (the ``<bounds>``
of an .osm file, the header bbox of an .osm.pbf) when every file declares them, else the
whole grid. A pixel is covered when at least half of it lies inside the coverage.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass

import numpy as np
from osgeo import gdal, ogr, osr

from ..commit import GdalErrors
from ..errors import InputError
from ..feedback import Feedback
from ..outputs import PendingOutputs, check_output_path
from ..rasters import FLOAT_NODATA, TILED, bounded_cache, check_cancel, quiet_gdal
from .reference_grid import Grid, reference_grid, transform_bounds

BANDS = ("OSM:building_fraction", "OSM:building_height", "OSM:road_fraction",
         "OSM:water_fraction", "OSM:vegetation_fraction", "OSM:impervious_fraction",
         "OSM:building_height_known")
MIN_TAGGED_FOR_MEDIAN = 10
"""Tagged buildings needed in the grid before their median height becomes the fill height."""
FALLBACK_LEVELS = 2
"""Fill height without DEFAULT_HEIGHT and with too few tagged buildings: this many levels."""
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


def is_road(tags: dict[str, str], is_line: bool = True) -> bool:
    """A ``highway=*`` way that is a road surface above ground: not a tunnel, not proposed,
    under construction, abandoned or a platform; as a line, not the outline of an area."""
    highway = tags.get("highway")
    return bool(highway) and highway not in NOT_ROADS and tags.get("tunnel") not in (
        "yes", "building_passage") and (not is_line or tags.get("area") != "yes")


def is_building(tags: dict[str, str]) -> bool:
    return bool(tags.get("building")) and tags["building"] != "no"


def classify_tags(tags: dict[str, str], is_line: bool) -> list[str]:
    """The kinds (building, road, water, vegetation, paved) a feature contributes to."""
    kinds = []
    highway = tags.get("highway")
    if is_line:
        if is_road(tags):
            kinds.append("road")
        return kinds
    if is_building(tags):
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
        self.clip = _rectangle(grid.bounds, margin)
        self.inside = _rectangle(grid.bounds, 0.0)
        self.counts = dict.fromkeys(KINDS, 0)
        self.tagged_heights: list[float] = []
        self.duplicates = 0
        self.has_coverage = False
        self._seen: set[int] = set()
        self.ds.StartTransaction()

    @property
    def known_heights(self) -> int:
        return len(self.tagged_heights)

    def add(self, geometry, kind: str, height: float | None = None,
            buffer: float | None = None, key: int | None = None) -> None:
        """Copy a feature into the scratch layer. ``key``: the OSM element (see
        :func:`_element_key`); an element already copied for this kind is left out."""
        if key is not None:
            key = key * len(KINDS) + KINDS.index(kind)
            if key in self._seen:
                self.duplicates += 1
                return
        geometry = self._clipped(geometry, buffer)
        if geometry is None:
            return
        self._write(geometry, kind, height)
        if key is not None:
            self._seen.add(key)
        if kind == "building" and not _touches(geometry, self.inside):
            return  # in the margin only: drawn where it reaches, not counted
        self.counts[kind] += 1
        if kind == "building" and height is not None:
            self.tagged_heights.append(float(height))

    def add_coverage(self, geometry) -> None:
        """A polygon of the area the OSM data covers (see :func:`rasterize_osm`)."""
        geometry = self._clipped(geometry, None)
        if geometry is not None and geometry.GetDimension() == 2:
            self._write(geometry, "coverage", None)
            self.has_coverage = True

    def _clipped(self, geometry, buffer: float | None):
        if geometry is None or geometry.IsEmpty():
            return None
        if buffer is not None:
            geometry = _geos(lambda: geometry.Buffer(buffer / 2.0, 4))
            if geometry is None:
                return None
        elif geometry.GetDimension() == 2:
            geometry = _valid_polygons(geometry)
            if geometry is None:
                return None
        if not geometry.Intersects(self.clip):
            return None
        if not self.clip.Contains(geometry):
            geometry = _geos(lambda: geometry.Intersection(self.clip))
            if geometry is None or geometry.IsEmpty():
                return None
        return geometry

    def _write(self, geometry, kind: str, height: float | None) -> None:
        feature = ogr.Feature(self.layer.GetLayerDefn())
        feature.SetField("kind", kind)
        if height is not None:
            feature.SetField("height", float(height))
        feature.SetGeometry(geometry)
        self.layer.CreateFeature(feature)

    def finish(self) -> None:
        self.ds.CommitTransaction()

    def close(self) -> None:
        self.layer = None
        self.ds = None
        for path in (self.path, self.path + "-wal", self.path + "-shm", self.path + "-journal"):
            if os.path.exists(path):
                os.remove(path)


def _rectangle(bounds, margin: float):
    xmin, ymin, xmax, ymax = bounds
    ring = ogr.Geometry(ogr.wkbLinearRing)
    for x, y in ((xmin - margin, ymin - margin), (xmax + margin, ymin - margin),
                 (xmax + margin, ymax + margin), (xmin - margin, ymax + margin),
                 (xmin - margin, ymin - margin)):
        ring.AddPoint_2D(x, y)
    polygon = ogr.Geometry(ogr.wkbPolygon)
    polygon.AddGeometry(ring)
    return polygon


def _touches(geometry, box) -> bool:
    """Whether the geometry has area inside ``box`` (an envelope test first: most do)."""
    gx0, gx1, gy0, gy1 = geometry.GetEnvelope()
    bx0, bx1, by0, by1 = box.GetEnvelope()
    if gx0 >= bx0 and gx1 <= bx1 and gy0 >= by0 and gy1 <= by1:
        return True
    overlap = _geos(lambda: geometry.Intersection(box))
    return overlap is not None and not overlap.IsEmpty() and overlap.GetArea() > 0


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


_ELEMENT_TYPES = {"node": 0, "way": 1, "relation": 2}
_SPECIAL_FIELDS = ("height", "width", "highway", "building", "osm_id", "osm_way_id", "osm_type")


def _element_key(tags: dict[str, str], layout: str | None) -> int | None:
    """The OSM element a feature is, as one number (type and id), or None without an id.

    ``layout`` says how the layer names elements: ``multipolygons`` (GDAL's OSM driver:
    ``osm_way_id`` for closed ways, ``osm_id`` for relations), ``lines`` (``osm_id`` of a
    way), ``typed`` (QuickOSM: ``osm_type`` + ``osm_id``) or ``plain`` (an ``osm_id`` of unknown
    type, matched only with other such ids)."""
    if layout is None:
        return None
    if layout == "multipolygons":
        way = tags.get("osm_way_id")
        element, number = (1, way) if way else (2, tags.get("osm_id"))
    elif layout == "typed":
        element = _ELEMENT_TYPES.get((tags.get("osm_type") or "").lower(), 3)
        number = tags.get("osm_id")
    else:
        element, number = (1 if layout == "lines" else 3), tags.get("osm_id")
    try:
        return int(number) * 4 + element
    except (TypeError, ValueError):
        return None


def _read_osm_file(path: str, scratch: _Scratch, metres_per_level: float,
                   feedback: Feedback) -> tuple[float, float, float, float] | None:
    """Copy the file's features into the scratch layer; returns the extract's bounds
    (lon_min, lon_max, lat_min, lat_max) when the file declares them, else None."""
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
        feature, layer = _next_feature(ds, path)
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
        key = _element_key(tags, name)
        for kind in kinds:
            if kind == "building":
                scratch.add(geometry, kind, building_height(tags, metres_per_level), key=key)
            elif kind == "road":
                scratch.add(geometry, kind, buffer=road_width(tags), key=key)
            else:
                scratch.add(geometry, kind, key=key)
    return _declared_bounds(ds)


def _next_feature(ds, path: str):
    """The file's next (feature, layer), or (None, None) at its end. The OSM driver reports a
    file it cannot parse to the end (cut off by an interrupted download, a damaged PBF block)
    only as a GDAL error and then ends the layers as if the file were complete; such a file
    is refused instead of rasterized with part of its features missing. Warnings (unclosed
    rings of clipped extracts, repaired in ``_Scratch.add``) are not errors."""
    with GdalErrors() as errors:
        try:
            feature, layer = ds.GetNextFeature()
        except RuntimeError as exc:  # with gdal.UseExceptions() set by someone else
            errors.messages.append(str(exc))
            feature, layer = None, None
    if errors.messages:
        detail = "; ".join(dict.fromkeys(errors.messages))[:300]
        raise InputError(f"the OSM file {path} looks cut off or damaged: GDAL's OSM driver "
                         f"could not read it to the end ({detail}), so part of its features "
                         f"would be missing. Download the extract again (and compare its size "
                         f"or checksum with the one published).")
    return feature, layer


def _declared_bounds(ds) -> tuple[float, float, float, float] | None:
    """The ``<bounds>`` of an .osm file or the header bbox of an .osm.pbf, which GDAL's OSM
    driver reports as the layers' extent without scanning (None when the file has none)."""
    try:
        with quiet_gdal():
            extent = ds.GetLayerByName("multipolygons").GetExtent(force=0,
                                                                  can_return_null=True)
    except RuntimeError:
        return None
    if not extent or extent[0] >= extent[1] or extent[2] >= extent[3]:
        return None
    return tuple(extent)


def _traditional(srs):
    srs = srs.Clone()
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def _open_layer(path: str, role: str, scratch: _Scratch):
    """(dataset, layer, transform to the grid) of a vector source, filtered to the grid."""
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
    box = transform_bounds(scratch.grid.bounds, scratch.grid.wkt,
                           _traditional(layer.GetSpatialRef()))
    layer.SetSpatialFilterRect(*box)
    return ds, layer, transform


def _id_layout(field_names: set[str], geometry_type: int) -> str | None:
    """How a vector layer names OSM elements (see :func:`_element_key`), None without ids."""
    if "osm_way_id" in field_names:
        return "multipolygons"
    if "osm_type" in field_names and "osm_id" in field_names:
        return "typed"
    if "osm_id" in field_names:
        flat = ogr.GT_Flatten(geometry_type)
        return "lines" if flat in (ogr.wkbLineString, ogr.wkbMultiLineString) else "plain"
    return None


def _read_vector(path: str, role: str, scratch: _Scratch, metres_per_level: float,
                 feedback: Feedback) -> None:
    """Copy a role's layer. A buildings layer with a ``building`` field (an OSM export) keeps
    the features whose ``building`` is set and not ``no``; a roads layer with a ``highway``
    field or OSM ``other_tags`` keeps the roads :func:`is_road` accepts (not barriers, power
    lines, tunnels ...). Layers without these fields are taken whole."""
    ds, layer, transform = _open_layer(path, role, scratch)
    defn = layer.GetLayerDefn()
    fields = {defn.GetFieldDefn(i).GetName().lower() for i in range(defn.GetFieldCount())}
    layout = _id_layout(fields, layer.GetGeomType())
    filtered = (role == "buildings" and "building" in fields) or (
        role == "roads" and bool(fields & {"highway", "other_tags", "all_tags"}))
    left_out = 0
    for number, feature in enumerate(layer):
        if number % 5000 == 0:
            check_cancel(feedback)
        geometry = _on_grid(feature, transform)
        if geometry is None:
            continue
        tags = _vector_tags(feature, defn)
        key = _element_key(tags, layout)
        if not _add_by_role(scratch, role, geometry, tags, key, filtered, metres_per_level):
            left_out += 1
    if left_out:
        what = ("building is empty or 'no'" if role == "buildings" else
                "no road highway value: barriers, power lines, tunnels, platforms ...")
        feedback.info(f"{role} layer {path}: {left_out} feature(s) left out ({what}).")


def _vector_tags(feature, defn) -> dict[str, str]:
    """A vector feature's fields as OSM tags: the special fields in lower case, a ``levels``
    field read as ``building:levels``."""
    tags = {k.lower() if k.lower() in _SPECIAL_FIELDS else k: v
            for k, v in _feature_tags(feature, defn).items()}
    if "levels" in tags and "building:levels" not in tags:
        tags["building:levels"] = tags["levels"]
    return tags


def _add_by_role(scratch: _Scratch, role: str, geometry, tags: dict[str, str], key,
                 filtered: bool, metres_per_level: float) -> bool:
    """Copy one feature of a role's layer as its role says; False when the OSM filter leaves
    it out (a building set to ``no``, a barrier in a roads layer ...)."""
    is_line = geometry.GetDimension() == 1
    if role == "buildings":
        if filtered and not is_building(tags):
            return False
        if not is_line:
            scratch.add(geometry, "building", building_height(tags, metres_per_level),
                        key=key)
    elif role == "roads":
        if filtered and not is_road(tags, is_line):
            return False
        if is_line:
            scratch.add(geometry, "road", buffer=road_width(tags), key=key)
        else:
            scratch.add(geometry, "road", key=key)
    elif role == "water":
        if not is_line:
            scratch.add(geometry, "water", key=key)
    else:  # land use: classify by tags
        for kind in classify_tags(tags, is_line):
            if kind in ("water", "vegetation", "paved"):
                scratch.add(geometry, kind, key=key)
    return True


def _read_coverage(paths: list[str], scratch: _Scratch) -> None:
    for path in paths:
        ds, layer, transform = _open_layer(path, "coverage", scratch)
        for feature in layer:
            scratch.add_coverage(_on_grid(feature, transform))
        del ds  # closes the file before the next one is opened


def _bounds_coverage(bounds, scratch: _Scratch) -> None:
    """Each extract's lon/lat bounds as a polygon on the grid (edges densified: a lon/lat
    rectangle is curved in a projected CRS)."""
    wgs84 = osr.SpatialReference()
    wgs84.ImportFromEPSG(4326)
    transform = _transform_to(wgs84, scratch.grid, "the extract bounds")
    lon_lat = transform_bounds(scratch.grid.bounds, scratch.grid.wkt, _traditional(wgs84))
    pad = 0.01
    for lon_min, lon_max, lat_min, lat_max in bounds:
        lon_a, lon_b = max(lon_min, lon_lat[0] - pad), min(lon_max, lon_lat[2] + pad)
        lat_a, lat_b = max(lat_min, lon_lat[1] - pad), min(lat_max, lon_lat[3] + pad)
        if lon_a >= lon_b or lat_a >= lat_b:
            continue  # this extract lies away from the grid
        polygon = _rectangle((lon_a, lat_a, lon_b, lat_b), 0.0)
        polygon.Segmentize(0.0005)
        if transform is not None:
            polygon.Transform(transform)
        scratch.add_coverage(polygon)


def _coverage(scratch: _Scratch, coverage: list[str], osm_files: list[str],
              bounds: list, feedback: Feedback) -> str | None:
    """Add the coverage polygons; returns what they are (for the log), or None when the
    whole grid counts as covered."""
    if coverage:
        _read_coverage(coverage, scratch)
        source = "the COVERAGE polygons"
    elif osm_files and all(b is not None for b in bounds):
        _bounds_coverage(bounds, scratch)
        source = "the bounds the OpenStreetMap file(s) declare"
    else:
        if osm_files:
            unknown = [os.path.basename(f) for f, b in zip(osm_files, bounds) if b is None]
            feedback.info(f"{', '.join(unknown)} declare(s) no bounds: the whole grid is taken "
                          f"as covered by OpenStreetMap (give COVERAGE polygons to mark where "
                          f"the data ends).")
        return None
    if not scratch.has_coverage:
        raise InputError(f"{source} cover none of the reference grid, so every pixel would be "
                         f"no data. Choose OpenStreetMap data (or COVERAGE polygons) of the "
                         f"reference raster's area.")
    return source


def fill_height(tagged_heights: list[float], default_height: float | None,
                metres_per_level: float) -> tuple[float, str]:
    """The height given to buildings with neither ``height`` nor ``building:levels``, and
    the rule that chose it: ``default_height`` when given; else the median height of the
    tagged buildings in the grid when there are at least :data:`MIN_TAGGED_FOR_MEDIAN`;
    else :data:`FALLBACK_LEVELS` levels x ``metres_per_level``."""
    if default_height is not None:
        return float(default_height), "DEFAULT_HEIGHT"
    if len(tagged_heights) >= MIN_TAGGED_FOR_MEDIAN:
        return (float(np.median(tagged_heights)),
                f"the median height of the {len(tagged_heights)} tagged buildings in the grid")
    return (FALLBACK_LEVELS * metres_per_level,
            f"{FALLBACK_LEVELS} levels x {metres_per_level:g} m (fewer than "
            f"{MIN_TAGGED_FOR_MEDIAN} tagged buildings in the grid)")


def _report_features(scratch: _Scratch, fill: float, rule: str, default_height,
                     feedback: Feedback) -> None:
    counts = scratch.counts
    feedback.info("Features inside the grid: " + ", ".join(f"{k} {v}"
                                                           for k, v in counts.items())
                  + (f"; {scratch.duplicates} copies of the same OSM element in overlapping "
                     f"files left out" if scratch.duplicates else ""))
    buildings, known = counts["building"], scratch.known_heights
    if not buildings:
        feedback.warning("no building footprint falls inside the reference grid: "
                         "OSM:building_fraction is 0 everywhere. Check that the OSM "
                         "extract covers the reference raster.")
        return
    line = (f"Buildings with a height or building:levels tag: {known / buildings:.0%} "
            f"({known} of {buildings})")
    if known < buildings:
        line += f"; the other {buildings - known} are given {fill:.1f} m ({rule})."
        if 2 * known < buildings and default_height is None:
            line += (" Most buildings have no height tag: set DEFAULT_HEIGHT to the typical "
                     "height of this city's buildings if you know it; the band "
                     "OSM:building_height_known shows where heights are tagged.")
    feedback.info(line)


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


def _fraction(values: np.ndarray, factor: int) -> np.ndarray:
    """Mean of every ``factor`` x ``factor`` block (float64): the share of a 0/1 mask, summed
    as integers (exact, and twice as fast as a float mean)."""
    rows, cols = values.shape[0] // factor, values.shape[1] // factor
    blocks = values.reshape(rows, factor, cols, factor)
    if values.dtype in (np.bool_, np.uint8):
        total = blocks.view(np.uint8).sum(axis=(1, 3), dtype=np.uint16)
    else:
        total = blocks.sum(axis=(1, 3), dtype=np.float64)
    return total / float(factor * factor)


def _block_coverage(layer, box) -> str:
    """``all``, ``none`` or ``partial``: how the coverage polygons meet a block (most blocks
    lie wholly inside or outside, and need no rasterization of the coverage)."""
    layer.SetAttributeFilter("kind = 'coverage'")
    state = "none"
    for feature in layer:
        geometry = feature.GetGeometryRef()
        if _geos(lambda shape=geometry: shape.Contains(box)):
            return "all"
        if _geos(lambda shape=geometry: shape.Intersects(box)):
            state = "partial"
    return state


def _rasterize_block(layer, grid: Grid, col0: int, row0: int, cols: int, rows: int,
                     factor: int, fill: float, with_coverage: bool) -> tuple[np.ndarray, int]:
    """The bands of one block of pixels, and how many of its pixels are outside the
    coverage (no data in every band)."""
    fine_pixel = grid.pixel / factor
    x0 = grid.x0 + col0 * grid.pixel
    y0 = grid.y0 - row0 * grid.pixel
    fine = Grid(x0, y0, fine_pixel, cols * factor, rows * factor, grid.wkt)
    bounds = (x0, y0 - rows * grid.pixel, x0 + cols * grid.pixel, y0)
    layer.SetSpatialFilterRect(*bounds)
    out = np.empty((len(BANDS), rows, cols), np.float32)
    covered = None
    if with_coverage:
        state = _block_coverage(layer, _rectangle(bounds, 0.0))
        if state == "none":
            layer.SetAttributeFilter(None)
            out[:] = FLOAT_NODATA
            return out, rows * cols
        if state == "partial":
            covered = _fraction(_burn(layer, "coverage", fine), factor) >= 0.5
    building = _burn(layer, "building", fine)
    heights = _burn(layer, "building", fine, "height")  # tagged heights (> 0), else 0
    road = _burn(layer, "road", fine)
    water = _burn(layer, "water", fine)
    vegetation = _burn(layer, "vegetation", fine)
    paved = _burn(layer, "paved", fine)
    layer.SetAttributeFilter(None)
    building_share = _fraction(building, factor)
    known_share = _fraction(heights > 0, factor)
    height_sum = _fraction(heights, factor) + fill * (building_share - known_share)
    with np.errstate(divide="ignore", invalid="ignore"):
        out[1] = np.where(building_share > 0, height_sum / building_share, 0.0)
        out[6] = np.where(building_share > 0, known_share / building_share, 0.0)
    out[0] = building_share
    out[2] = _fraction(road, factor)
    out[3] = _fraction(water, factor)
    out[4] = _fraction(vegetation, factor)
    out[5] = _fraction(building | road | paved, factor)
    if covered is None:
        return out, 0
    out[:, ~covered] = FLOAT_NODATA
    return out, int((~covered).sum())


@dataclass
class OsmResult:
    output: str
    counts: dict[str, int]
    """Features copied per kind; ``building``: distinct buildings reaching into the grid."""
    buildings_with_height: int
    width: int
    height: int
    fill_height: float = 0.0
    """Height given to buildings without a height or levels tag (see :func:`fill_height`)."""
    duplicates: int = 0
    """Copies of one OSM element in overlapping files (or layers) that were left out."""
    uncovered_pixels: int = 0
    """Pixels outside the coverage, no data in every band."""


def _as_list(value) -> list[str]:
    if not value:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [os.fspath(value)]
    return [os.fspath(v) for v in value if v]


def rasterize_osm(reference: str, output: str, *,
                  osm_file: str | list[str] | None = None,
                  buildings: list[str] = (), roads: list[str] = (), water: list[str] = (),
                  landuse: list[str] = (), coverage: str | list[str] | None = None,
                  metres_per_level: float = 3.0, default_height: float | None = None,
                  supersample: int = 10, feedback: Feedback | None = None) -> OsmResult:
    """Rasterize OpenStreetMap (``osm_file``: one extract or a list of them, e.g. the
    districts of a city) and/or vector layers per role onto the grid of the ``reference``
    raster; write the ``OSM:*`` bands (:data:`BANDS`) to ``output`` (GeoTIFF).

    ``coverage``: polygon layer(s) of where the OSM data is complete; pixels outside are no
    data. Without it, the extracts' declared bounds are used when every file has them.
    ``default_height``: height of buildings with neither ``height`` nor ``building:levels``
    (None: :func:`fill_height` chooses)."""
    feedback = feedback or Feedback()
    output = check_output_path(output, "OSM raster")
    sources = _OsmSources(osm_files=_as_list(osm_file), coverage=_as_list(coverage), layers={
        "buildings": buildings, "roads": roads, "water": water, "landuse": landuse})
    _check_arguments(sources, supersample, metres_per_level, default_height)
    grid = reference_grid(reference)
    pending = PendingOutputs(os.path.dirname(os.path.abspath(output)),
                             inputs=[reference, *sources.paths])
    pending.reserve("osm", output, "OSM raster")
    margin = max(ROAD_WIDTHS.values()) + grid.pixel
    scratch = _Scratch(pending.files.scratch(output), grid, margin)
    uncovered = 0
    try:
        fill, covered_by = _read_features(scratch, sources, metres_per_level, default_height,
                                          feedback)
        raster = _OsmRaster(grid=grid, fill=fill, covered_by=covered_by,
                            metres_per_level=metres_per_level, supersample=supersample)
        counts = dict(scratch.counts)
        feedback.progress(10)
        with bounded_cache():
            _create_raster(pending, output, raster, sources)
            uncovered = _write_blocks(pending, scratch, raster, feedback)
        scratch.close()
        pending.commit(feedback)  # also deletes the scratch folder
    except BaseException:
        scratch.close()
        pending.discard()
        raise
    if uncovered:
        feedback.info(f"{uncovered / (grid.width * grid.height):.1%} of the grid ({uncovered} "
                      f"of {grid.width * grid.height} px) lies outside {raster.covered_by} and "
                      f"is no data in every band.")
    return OsmResult(output=output, counts=counts, buildings_with_height=scratch.known_heights,
                     width=grid.width, height=grid.height, fill_height=raster.fill,
                     duplicates=scratch.duplicates, uncovered_pixels=uncovered)


@dataclass
class _OsmSources:
    """The user's OpenStreetMap inputs: extracts, vector layers by role, coverage polygons."""

    osm_files: list[str]
    coverage: list[str]
    layers: dict[str, list[str]]
    """Role (buildings, roads, water, landuse) -> vector layers, in that order."""

    @property
    def paths(self) -> list[str]:
        """Every input file (the outputs must be none of them)."""
        return [*self.osm_files, *(p for paths in self.layers.values() for p in paths),
                *self.coverage]


@dataclass
class _OsmRaster:
    """How the features read become pixels."""

    grid: Grid
    fill: float
    """Height of buildings without a height or levels tag (see :func:`fill_height`)."""
    covered_by: str | None
    """What the coverage polygons are (for the log); None: the whole grid is covered."""
    metres_per_level: float
    supersample: int


def _check_arguments(sources: _OsmSources, supersample: int, metres_per_level: float,
                     default_height: float | None) -> None:
    """Refuse a run without data, a missing OSM file or settings out of range, before any
    file is read."""
    if not sources.osm_files and not any(sources.layers.values()):
        raise InputError("no OpenStreetMap data given: choose an .osm/.osm.pbf file or at "
                         "least one vector layer (buildings, roads, water or land use).")
    for path in sources.osm_files:
        if not os.path.isfile(path):
            raise InputError(f"the OSM file {path} does not exist.")
    if not (1 <= supersample <= 50):
        raise InputError(f"supersampling {supersample} is out of range; use 1 to 50 "
                         f"(10 gives 1 m sub-pixels on a 10 m grid).")
    if metres_per_level <= 0:
        raise InputError("metres per building level must be positive (3.0 is typical).")
    if default_height is not None and default_height < 0:
        raise InputError("the default building height cannot be negative.")


def _read_features(scratch: _Scratch, sources: _OsmSources, metres_per_level: float,
                   default_height: float | None, feedback: Feedback) -> tuple[float, str | None]:
    """Copy the features of every extract and layer (and the coverage) into the scratch
    layer, then choose the height of untagged buildings and report what was found; returns
    that height and what the coverage is (None: the whole grid)."""
    grid = scratch.grid
    feedback.info(f"Reading OpenStreetMap features for {grid.width} x {grid.height} px of "
                  f"{grid.pixel:g} m ...")
    osm_files, bounds = sources.osm_files, []
    for number, path in enumerate(osm_files, start=1):
        if len(osm_files) > 1:
            feedback.info(f"OpenStreetMap file {number} of {len(osm_files)}: {path}")
        bounds.append(_read_osm_file(path, scratch, metres_per_level, feedback))
    for role, paths in sources.layers.items():
        for path in paths or ():
            _read_vector(path, role, scratch, metres_per_level, feedback)
    covered_by = _coverage(scratch, sources.coverage, osm_files, bounds, feedback)
    scratch.finish()
    fill, rule = fill_height(scratch.tagged_heights, default_height, metres_per_level)
    _report_features(scratch, fill, rule, default_height, feedback)
    return fill, covered_by


def _create_raster(pending: PendingOutputs, output: str, raster: _OsmRaster,
                   sources: _OsmSources) -> None:
    """Create the temporary GeoTIFF of the ``OSM:*`` bands with the settings as metadata."""
    grid = raster.grid
    pending.create("osm", output, width=grid.width, height=grid.height,
                   bands=len(BANDS), data_type=gdal.GDT_Float32,
                   geotransform=grid.geotransform, projection=grid.wkt,
                   block_rows=256, nodata=FLOAT_NODATA, descriptions=list(BANDS),
                   metadata={"LCZ_OSM_SOURCE": ";".join(
                                 os.path.basename(f) for f in sources.osm_files)
                             or "vector layers",
                             "LCZ_OSM_SUPERSAMPLE": str(raster.supersample),
                             "LCZ_OSM_METRES_PER_LEVEL": f"{raster.metres_per_level:g}",
                             "LCZ_OSM_FILL_HEIGHT": f"{raster.fill:g}",
                             "LCZ_OSM_COVERAGE": raster.covered_by or "whole grid"},
                   creation_options=TILED + ["PREDICTOR=3"])


def _write_blocks(pending: PendingOutputs, scratch: _Scratch, raster: _OsmRaster,
                  feedback: Feedback) -> int:
    """Rasterize and write square blocks of :data:`BLOCK_SUBPIXELS` sub-pixels a side, so
    memory does not grow with the grid; returns the pixels outside the coverage."""
    grid, supersample = raster.grid, raster.supersample
    edge = max(8, BLOCK_SUBPIXELS // supersample)
    blocks = [(r, c) for r in range(0, grid.height, edge) for c in range(0, grid.width, edge)]
    feedback.info(f"Rasterizing {len(blocks)} block(s) of up to {edge} x {edge} px, "
                  f"{supersample} x {supersample} sub-pixels per pixel ...")
    uncovered = 0
    for number, (row0, col0) in enumerate(blocks):
        check_cancel(feedback)
        rows, cols = min(edge, grid.height - row0), min(edge, grid.width - col0)
        values, outside = _rasterize_block(scratch.layer, grid, col0, row0, cols, rows,
                                           supersample, raster.fill,
                                           raster.covered_by is not None)
        uncovered += outside
        pending.write("osm", values, row0, col0)
        feedback.progress(10 + 90.0 * (number + 1) / len(blocks))
    return uncovered
