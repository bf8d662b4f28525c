"""Labelled polygons: training areas and reference areas, read with OGR (QGIS-free).

LCZ training areas come as any vector file with a class field, or as WUDAPT KML/KMZ files
whose placemark names are the class (``1`` ... ``10``, ``A`` ... ``G``). Class labels may use
any of the three codings (1-17, WUDAPT 101-107, letters); :func:`parse_lcz_code` maps them to
1-17. Problems are collected over the whole file and reported at once, so one run shows every
label to fix.

Which field holds the class: the one the user names; otherwise the first of
:data:`CLASS_FIELD_CANDIDATES` the layer has (``Name`` is where OGR's KML drivers put the
placemark name).

Files made from the WUDAPT template also hold the region of interest: a placemark or a folder
named ``ROI`` (any case). It is not a training area, so it is kept apart
(:attr:`LabelledAreas.roi`) and the log says so, with its extent for the EXTENT parameters.
Labels that are no LCZ class stop the run unless ``ignore_unknown_labels`` is set; then those
polygons are skipped and listed in a warning.
"""

from __future__ import annotations

import os
import zipfile
from collections import Counter
from dataclasses import dataclass, field

from osgeo import gdal, ogr, osr

from .errors import InputError
from .feedback import Feedback
from .lcz_classes import parse_lcz_code

CLASS_FIELD_CANDIDATES = ("Name", "name", "NAME", "lcz", "LCZ", "lcz_class", "LCZ_class",
                          "class", "Class", "CLASS")
KML_EXTENSIONS = (".kml", ".kmz")
_POLYGONAL = (ogr.wkbPolygon, ogr.wkbMultiPolygon, ogr.wkbCurvePolygon, ogr.wkbMultiSurface)
ACCEPTED_CODINGS = ("1-17, WUDAPT 101-107 for A-G, or the letters A-G (also 'LCZ 3', "
                    "'LCZ A')")
ROI_NAME = "roi"
"""Placemark or folder name of the region of interest in the WUDAPT template (any case)."""


def is_roi_name(name) -> bool:
    """True for the WUDAPT template's region-of-interest name ``ROI`` (any case, spaces)."""
    return name is not None and str(name).strip().casefold() == ROI_NAME


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
    roi: ogr.Geometry | None = None
    """The WUDAPT region of interest (ROI polygons, merged) in the same CRS, when the source
    has one; it is never a training or reference area."""

    def in_crs(self, target_wkt: str, feedback: Feedback, what: str = "training areas"
               ) -> LabelledAreas:
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
        roi = None
        if self.roi is not None:
            roi = self.roi.Clone()
            if roi.Transform(transform) != 0:
                roi = None
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
                             self.notes + ["reprojected"], roi)


class LabelCollector:
    """Turns (label, geometry) pairs into :class:`Area` s, remembering every problem.

    ``what`` names the polygons in messages ("training areas", "reference areas").
    """

    def __init__(self, source: str, class_field: str, is_kml: bool, *,
                 what: str = "training areas", ignore_unknown_labels: bool = False):
        self.source, self.class_field, self.is_kml = source, class_field, is_kml
        self.what, self.ignore_unknown_labels = what, ignore_unknown_labels
        self.areas: list[Area] = []
        self.roi: list[ogr.Geometry] = []
        self.unknown: Counter = Counter()
        self.unnamed = 0
        self.not_polygons = 0
        self.empty = 0
        self._ids: set[int] = set()

    def add(self, label, geometry: ogr.Geometry | None, fid: int | None = None,
            folder: str | None = None) -> None:
        """One feature; ``folder``: the KML folder (OGR layer) it comes from, if any."""
        if is_roi_name(label) or (self.is_kml and is_roi_name(folder)):
            self._add_roi(geometry)
            return
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

    def _add_roi(self, geometry: ogr.Geometry | None) -> None:
        if geometry is None or geometry.IsEmpty():
            self.roi.append(None)
            return
        geometry = geometry.Clone()
        geometry.FlattenTo2D()
        self.roi.append(geometry)

    def finish(self, crs_wkt: str, feedback: Feedback) -> LabelledAreas:
        notes = []
        if self.unknown:
            notes.append(self._unknown_labels(feedback))
        roi = self._roi_note(crs_wkt, feedback, notes)
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
            left_out = []
            if self.roi:
                left_out.append(f"{len(self.roi)} ROI polygon(s)")
            if self.unknown:
                left_out.append(f"{sum(self.unknown.values())} polygon(s) with unknown labels")
            raise InputError(f"{self.source} holds no labelled polygons"
                             + (f" (left out: {', '.join(left_out)})" if left_out else "")
                             + ". Training and reference areas must be polygons with an LCZ "
                               "class.")
        return LabelledAreas(self.areas, crs_wkt, self.source, self.class_field, notes, roi)

    def _unknown_labels(self, feedback: Feedback) -> str:
        """Refuse unknown labels, or (``ignore_unknown_labels``) list them in a warning."""
        where = ("placemark names" if self.is_kml and self.class_field.lower() == "name"
                 else f"field '{self.class_field}'")
        count = sum(self.unknown.values())
        listed = ", ".join(f"'{label}' ({n}x)" for label, n in sorted(self.unknown.items()))
        if not self.ignore_unknown_labels:
            raise InputError(
                f"{self.source}: {count} polygon(s) have class labels that are not LCZ "
                f"classes, in the {where}: {listed}. Use {ACCEPTED_CODINGS}; fix or delete "
                f"those polygons, choose another class field, or set IGNORE_UNKNOWN_LABELS "
                f"to skip them.")
        message = (f"{self.source}: skipped {count} polygon(s) whose class labels are not LCZ "
                   f"classes (IGNORE_UNKNOWN_LABELS), in the {where}: {listed}.")
        feedback.warning(message)
        return message

    def _roi_note(self, crs_wkt: str, feedback: Feedback, notes: list) -> ogr.Geometry | None:
        """Merge the ROI polygons and tell the user they were left out, with their extent."""
        if not self.roi:
            return None
        polygons = [g for g in self.roi if g is not None
                    and ogr.GT_Flatten(g.GetGeometryType()) in _POLYGONAL]
        merged = None
        for polygon in polygons:
            merged = polygon.Clone() if merged is None else merged.Union(polygon)
        count = "the ROI polygon" if len(self.roi) == 1 else f"{len(self.roi)} ROI polygons"
        message = (f"{self.source}: {count} (the region of interest of the WUDAPT template) "
                   f"{'was' if len(self.roi) == 1 else 'were'} left out of the {self.what}")
        if merged is not None:
            message += (f"; use it as the EXTENT of the preprocessing and classification "
                        f"steps to cover the same region: {extent_text(merged, crs_wkt)}")
        message += "."
        feedback.info(message)
        notes.append(message)
        return merged


def extent_text(geometry: ogr.Geometry, crs_wkt: str) -> str:
    """The bounding box as a QGIS extent string ``xmin,xmax,ymin,ymax [EPSG:n]``."""
    xmin, xmax, ymin, ymax = geometry.GetEnvelope()
    srs = osr.SpatialReference(wkt=crs_wkt) if crs_wkt else None
    digits = 6 if srs is None or srs.IsGeographic() else 1
    text = ",".join(f"{v:.{digits}f}" for v in (xmin, xmax, ymin, ymax))
    if srs is not None:
        srs.AutoIdentifyEPSG()
        if srs.GetAuthorityName(None) and srs.GetAuthorityCode(None):
            text += f" [{srs.GetAuthorityName(None)}:{srs.GetAuthorityCode(None)}]"
    return text


def describe_areas(areas: list[Area], limit: int = 15) -> str:
    """Polygon ids and labels for messages: "3 ('2'), 7 ('B') and 4 more"."""
    text = ", ".join(f"{a.polygon_id} ('{a.label}')" for a in areas[:limit])
    return text + (f" and {len(areas) - limit} more" if len(areas) > limit else "")


def kml_inside(path: str) -> str | None:
    """The KML document of a KMZ (a ZIP): doc.kml, or else its first .kml file; None when
    there is none or the file is no ZIP."""
    try:
        with zipfile.ZipFile(path) as kmz:
            names = [n for n in kmz.namelist() if n.lower().endswith(".kml")]
    except (OSError, zipfile.BadZipFile):
        return None
    return "doc.kml" if "doc.kml" in names else (names[0] if names else None)


def kmz_as_kml(source) -> str | None:
    """A KMZ file as a source QGIS and GDAL can open where GDAL has no LIBKML driver (Debian
    unstable's GDAL, under QGIS 3.44): its KML document through /vsizip/, which GDAL's own
    KML driver reads, with the source's ``|layername=`` or ``|subset=`` kept. None when
    ``source`` is no KMZ file, or LIBKML is there to read it."""
    if not isinstance(source, str):
        return None
    path, bar, options = source.partition("|")
    if not (path.lower().endswith(".kmz") and os.path.isfile(path)):
        return None
    if ogr.GetDriverByName("LIBKML") is not None:
        return None
    inside = kml_inside(path)
    return f"/vsizip/{path}/{inside}{bar}{options}" if inside else None


def _open_vector(path: str):
    if not os.path.exists(path) and not path.startswith("/vsi"):
        raise InputError(f"the polygon file {path} does not exist.")
    candidates = [path]
    if path.lower().endswith(".kmz") and kml_inside(path):
        candidates.append(f"/vsizip/{path}/{kml_inside(path)}")
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
               feedback: Feedback | None = None, *, attribute_filter: str | None = None,
               what: str = "training areas",
               ignore_unknown_labels: bool = False) -> LabelledAreas:
    """Read labelled polygons from a vector file.

    ``layer``: the layer to read; by default every layer of a KML/KMZ (WUDAPT files keep
    one folder per class) and the first layer of any other file. ``attribute_filter``: an
    OGR SQL WHERE clause (a QGIS layer filter) applied to every layer read. ``what`` names
    the polygons in messages; ``ignore_unknown_labels``: skip (and list) polygons whose label
    is no LCZ class instead of refusing the file.
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
        if attribute_filter:
            _set_attribute_filter(lyr, attribute_filter, path)
        if lyr.GetFeatureCount() == 0 and not class_field and len(layers) > 1:
            continue
        name = choose_class_field(names, class_field, path)
        if chosen is None:
            chosen = name
            collector = LabelCollector(path, name, is_kml, what=what,
                                       ignore_unknown_labels=ignore_unknown_labels)
        srs = lyr.GetSpatialRef()
        if srs is not None and not crs_wkt:
            crs_wkt = srs.ExportToWkt()
        index = definition.GetFieldIndex(name)
        lyr.ResetReading()
        for feature in lyr:
            collector.add(feature.GetField(index) if feature.IsFieldSet(index) else None,
                          feature.GetGeometryRef(), feature.GetFID(), lyr.GetName())
    if collector is None:
        raise InputError(f"{path} holds no features"
                         + (f" that pass the filter {attribute_filter}" if attribute_filter
                            else "") + ".")
    return collector.finish(crs_wkt, feedback)


def _set_attribute_filter(layer, where: str, path: str) -> None:
    """Apply a layer filter (OGR SQL WHERE clause) to one layer, or say why it cannot be."""
    gdal.ErrorReset()
    try:
        failed = layer.SetAttributeFilter(where) != 0
        reason = gdal.GetLastErrorMsg()
    except RuntimeError as exc:  # with ogr.UseExceptions() set by someone else
        failed, reason = True, str(exc)
    if failed:
        raise InputError(f"the layer filter {where} cannot be applied to layer "
                         f"'{layer.GetName()}' of {path}: {reason or 'invalid expression'}. "
                         f"Write it in OGR SQL with the file's field names (e.g. "
                         f"\"Name\" IN ('2', 'B')).")
