"""Labelled polygons: training areas and reference areas, read with OGR (QGIS-free).

LCZ training areas come as any vector file with a class field, or as WUDAPT KML/KMZ files
whose placemark names are the class (``1`` ... ``10``, ``A`` ... ``G``). Class labels may use
any of the three codings (1-17, WUDAPT 101-107, letters); :func:`parse_lcz_code` maps them to
1-17. Problems are collected over the whole file and reported at once, so one run shows every
label to fix.

Which field holds the class: the one the user names; otherwise the first of
:data:`CLASS_FIELD_CANDIDATES` the layer has (``Name`` is where OGR's KML drivers put the
placemark name).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

from osgeo import ogr, osr

from .errors import InputError
from .feedback import Feedback
from .lcz_classes import parse_lcz_code

CLASS_FIELD_CANDIDATES = ("Name", "name", "NAME", "lcz", "LCZ", "lcz_class", "LCZ_class",
                          "class", "Class", "CLASS")
KML_EXTENSIONS = (".kml", ".kmz")
_POLYGONAL = (ogr.wkbPolygon, ogr.wkbMultiPolygon, ogr.wkbCurvePolygon, ogr.wkbMultiSurface)
ACCEPTED_CODINGS = ("1-17, WUDAPT 101-107 for A-G, or the letters A-G (also 'LCZ 3', "
                    "'LCZ A')")


@dataclass
class Area:
    """One labelled polygon."""

    polygon_id: int
    """Id stored with its patches and named in messages: the feature id (FID) in the source
    when that is unique, else the next free number (several KML folders)."""
    code: int
    """LCZ code 1-17."""
    label: str
    """The label as written in the source (for messages)."""
    geometry: ogr.Geometry


@dataclass
class LabelledAreas:
    """Polygons with LCZ codes, in one CRS."""

    areas: list[Area]
    crs_wkt: str
    """WKT of their CRS ('' when the source has none)."""
    source: str
    class_field: str = ""
    notes: list[str] = field(default_factory=list)

    def in_crs(self, target_wkt: str, feedback: Feedback, what: str = "training areas"
               ) -> "LabelledAreas":
        """The same areas in ``target_wkt`` (reprojected with OSR when the CRS differ)."""
        target = osr.SpatialReference(wkt=target_wkt)
        target.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        if not self.crs_wkt:
            feedback.warning(f"the {what} ({self.source}) have no CRS; assuming they are in "
                             f"the raster's CRS ({target.GetName()}). Assign their CRS if "
                             f"that is wrong.")
            return self
        source = osr.SpatialReference(wkt=self.crs_wkt)
        source.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        if source.IsSame(target):
            return self
        transform = osr.CoordinateTransformation(source, target)
        moved = []
        for area in self.areas:
            geometry = area.geometry.Clone()
            if geometry.Transform(transform) != 0:
                raise InputError(f"cannot reproject {what} polygon {area.polygon_id} from "
                                 f"{source.GetName()} to {target.GetName()}. Check the CRS "
                                 f"of the {what}.")
            moved.append(Area(area.polygon_id, area.code, area.label, geometry))
        feedback.info(f"Reprojected {len(moved)} {what} from {source.GetName()} to the "
                      f"raster's CRS {target.GetName()}.")
        return LabelledAreas(moved, target.ExportToWkt(), self.source, self.class_field,
                             self.notes + ["reprojected"])


class LabelCollector:
    """Turns (label, geometry) pairs into :class:`Area` s, remembering every problem."""

    def __init__(self, source: str, class_field: str, is_kml: bool):
        self.source, self.class_field, self.is_kml = source, class_field, is_kml
        self.areas: list[Area] = []
        self.unknown: Counter = Counter()
        self.unnamed = 0
        self.not_polygons = 0
        self.empty = 0
        self._ids: set[int] = set()

    def add(self, label, geometry: ogr.Geometry | None, fid: int | None = None) -> None:
        if geometry is None or geometry.IsEmpty():
            self.empty += 1
            return
        if ogr.GT_Flatten(geometry.GetGeometryType()) not in _POLYGONAL:
            if ogr.GT_Flatten(geometry.GetGeometryType()) == ogr.wkbGeometryCollection:
                polygons = [geometry.GetGeometryRef(i).Clone()
                            for i in range(geometry.GetGeometryCount())
                            if ogr.GT_Flatten(geometry.GetGeometryRef(i).GetGeometryType())
                            in _POLYGONAL]
                if polygons:
                    merged = ogr.Geometry(ogr.wkbMultiPolygon)
                    for polygon in polygons:
                        merged.AddGeometry(polygon)
                    geometry = merged
                else:
                    self.not_polygons += 1
                    return
            else:
                self.not_polygons += 1
                return
        if label is None or str(label).strip() == "":
            self.unnamed += 1
            return
        try:
            code = parse_lcz_code(label)
        except ValueError:
            self.unknown[str(label)] += 1
            return
        geometry = geometry.Clone()
        geometry.FlattenTo2D()
        if fid is None or fid < 0 or fid in self._ids:
            fid = max(self._ids, default=0) + 1
        self._ids.add(fid)
        self.areas.append(Area(int(fid), code, str(label).strip(), geometry))

    def finish(self, crs_wkt: str, feedback: Feedback) -> LabelledAreas:
        where = ("placemark names" if self.is_kml and self.class_field.lower() == "name"
                 else f"field '{self.class_field}'")
        if self.unknown:
            listed = ", ".join(f"'{label}' ({count}x)" for label, count in
                               sorted(self.unknown.items()))
            raise InputError(
                f"{self.source}: {sum(self.unknown.values())} polygon(s) have class labels "
                f"that are not LCZ classes, in the {where}: {listed}. Use {ACCEPTED_CODINGS}; "
                f"fix or delete those polygons, or choose another class field.")
        notes = []
        if self.unnamed:
            what = "placemarks without a name" if self.is_kml else \
                f"polygons with an empty '{self.class_field}'"
            if not self.areas:
                raise InputError(
                    f"{self.source}: all {self.unnamed} {what}, so no polygon has a class. "
                    f"Name each placemark after its class (1 ... 10, A ... G)" if self.is_kml
                    else f"{self.source}: all {self.unnamed} {what}, so no polygon has a "
                         f"class. Fill the field, or choose the field that holds the classes.")
            message = (f"{self.source}: skipped {self.unnamed} {what}; give them a class "
                       f"({ACCEPTED_CODINGS}) to use them.")
            feedback.warning(message)
            notes.append(message)
        if self.not_polygons:
            message = (f"{self.source}: skipped {self.not_polygons} feature(s) that are not "
                       f"polygons (points or lines cannot delimit a training area).")
            feedback.warning(message)
            notes.append(message)
        if self.empty:
            message = f"{self.source}: skipped {self.empty} feature(s) without geometry."
            feedback.warning(message)
            notes.append(message)
        if not self.areas:
            raise InputError(f"{self.source} holds no labelled polygons. Training and "
                             f"reference areas must be polygons with an LCZ class.")
        return LabelledAreas(self.areas, crs_wkt, self.source, self.class_field, notes)


def _open_vector(path: str):
    if not os.path.exists(path) and not path.startswith("/vsi"):
        raise InputError(f"the polygon file {path} does not exist.")
    candidates = [path]
    if path.lower().endswith(".kmz"):
        candidates.append(f"/vsizip/{path}/doc.kml")
    reason = ""
    for candidate in candidates:
        try:
            ds = ogr.Open(candidate)
        except RuntimeError as exc:  # with ogr.UseExceptions() set by someone else
            ds, reason = None, str(exc)
        if ds is not None:
            return ds
    raise InputError(f"OGR cannot open {path} as a vector file{': ' + reason if reason else ''}. "
                     f"Use a GeoPackage, shapefile, GeoJSON or a WUDAPT KML/KMZ.")


def choose_class_field(names: list[str], class_field: str | None, source: str) -> str:
    if class_field:
        if class_field in names:
            return class_field
        raise InputError(f"{source} has no field '{class_field}'. Its fields are: "
                         f"{', '.join(names) or 'none'}. Choose the field holding the LCZ class.")
    for candidate in CLASS_FIELD_CANDIDATES:
        if candidate in names:
            return candidate
    raise InputError(f"cannot tell which field of {source} holds the LCZ class (fields: "
                     f"{', '.join(names) or 'none'}). Choose the class field (CLASS_FIELD), or "
                     f"name the field 'lcz'.")


def read_areas(path: str, class_field: str | None = None, layer: str | None = None,
               feedback: Feedback | None = None) -> LabelledAreas:
    """Read labelled polygons from a vector file.

    ``layer``: the layer to read; by default every layer of a KML/KMZ (WUDAPT files keep
    one folder per class) and the first layer of any other file.
    """
    feedback = feedback or Feedback()
    ds = _open_vector(path)
    is_kml = path.lower().endswith(KML_EXTENSIONS)
    if layer:
        layers = [ds.GetLayerByName(layer)]
        if layers[0] is None:
            names = [ds.GetLayerByIndex(i).GetName() for i in range(ds.GetLayerCount())]
            raise InputError(f"{path} has no layer '{layer}'; its layers: {', '.join(names)}.")
    elif is_kml:
        layers = [ds.GetLayerByIndex(i) for i in range(ds.GetLayerCount())]
    else:
        layers = [ds.GetLayerByIndex(0)]
        if ds.GetLayerCount() > 1:
            feedback.info(f"{path} has {ds.GetLayerCount()} layers; reading the first, "
                          f"'{layers[0].GetName()}'.")
    if not layers or layers[0] is None:
        raise InputError(f"{path} has no layers.")
    chosen = None
    collector = None
    crs_wkt = ""
    for lyr in layers:
        definition = lyr.GetLayerDefn()
        names = [definition.GetFieldDefn(i).GetName() for i in range(definition.GetFieldCount())]
        if lyr.GetFeatureCount() == 0 and not class_field and len(layers) > 1:
            continue
        name = choose_class_field(names, class_field, path)
        if chosen is None:
            chosen = name
            collector = LabelCollector(path, name, is_kml)
        srs = lyr.GetSpatialRef()
        if srs is not None and not crs_wkt:
            crs_wkt = srs.ExportToWkt()
        index = definition.GetFieldIndex(name)
        lyr.ResetReading()
        for feature in lyr:
            collector.add(feature.GetField(index) if feature.IsFieldSet(index) else None,
                          feature.GetGeometryRef(), feature.GetFID())
    if collector is None:
        raise InputError(f"{path} holds no features.")
    return collector.finish(crs_wkt, feedback)
