"""Turning a QGIS vector layer of labelled polygons into core :class:`LabelledAreas`.

File-based layers (OGR provider) are read by the core itself from the file, so a WUDAPT KML
with one folder per class is read whole. Other layers (memory, PostGIS, scratch outputs of
a model) are handed over feature by feature.
"""

from osgeo import ogr
from qgis.core import QgsProviderRegistry, QgsVectorLayer

from ..core.areas import LabelCollector, choose_class_field, read_areas


def labelled_areas(layer: QgsVectorLayer, class_field: str, feedback):
    """The layer's polygons with their LCZ codes (``class_field`` '' = automatic)."""
    if layer.providerType() == "ogr":
        parts = QgsProviderRegistry.instance().decodeUri("ogr", layer.source())
        path = parts.get("path") or layer.source()
        return read_areas(path, class_field or None, parts.get("layerName") or None, feedback)
    names = [f.name() for f in layer.fields()]
    name = choose_class_field(names, class_field or None, layer.name())
    collector = LabelCollector(layer.name(), name, is_kml=False)
    for feature in layer.getFeatures():
        geometry = feature.geometry()
        ogr_geometry = None
        if not geometry.isNull():
            ogr_geometry = ogr.CreateGeometryFromWkb(bytes(geometry.asWkb()))
        value = feature[name]
        collector.add(None if value is None or str(value) == "NULL" else value, ogr_geometry,
                      feature.id())
    return collector.finish(layer.crs().toWkt() if layer.crs().isValid() else "", feedback)
