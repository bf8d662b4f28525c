"""Turning a Processing vector parameter of labelled polygons into core :class:`LabelledAreas`.

Features are read through the Processing feature source, as the layer shows them, so a
layer filter (``|subset=`` in qgis_process, *Filter…* in QGIS), *Selected features only*
and a feature limit all apply.

One exception: a KML/KMZ given as the whole file (no layer of it chosen, no selection, no
feature limit). A WUDAPT file keeps each class in its own folder, which OGR exposes as a
layer of its own, and a QGIS layer shows only one of them; such a file is read whole with
OGR, every folder, and a layer filter, if any, is applied to every folder (as an OGR
attribute filter). Pick one folder (``file.kml|layername=LCZ 2``) to read only that one.
"""

from osgeo import ogr
from qgis.core import (
    QgsFeatureRequest,
    QgsProcessingFeatureSource,
    QgsProcessingFeatureSourceDefinition,
    QgsProcessingUtils,
    QgsProviderRegistry,
)

from ..core.areas import KML_EXTENSIONS, LabelCollector, choose_class_field, read_areas


def labelled_areas_parameter(algorithm, parameters, name, context, class_field, feedback, *,
                             what="training areas", ignore_unknown_labels=False):
    """The polygons of parameter ``name`` with their LCZ codes (``class_field`` '' =
    automatic), or None when the parameter is empty."""
    value = parameters.get(name)
    restricted = isinstance(value, QgsProcessingFeatureSourceDefinition) and (
        value.selectedFeaturesOnly or value.featureLimit != -1)
    layer = _layer_of(algorithm, parameters, name, context)
    if layer is None:
        return None
    parts = _uri_parts(layer)
    path = parts.get("path") or layer.source()
    is_kml = path.lower().endswith(KML_EXTENSIONS)
    feedback.info(f"Reading the {what} {path if layer.providerType() == 'ogr' else layer.name()}"
                  f" ...")
    if is_kml and not parts.get("layerName") and not restricted:
        return read_areas(path, class_field or None, None, feedback,
                          attribute_filter=layer.subsetString() or None, what=what,
                          ignore_unknown_labels=ignore_unknown_labels)
    source = algorithm.parameterAsSource(parameters, name, context)
    label = path if layer.providerType() == "ogr" else layer.name()
    return _read_source(source, label, is_kml, parts.get("layerName"), _restriction(
        layer, value, restricted), class_field, feedback, what, ignore_unknown_labels)


def _layer_of(algorithm, parameters, name, context):
    """The vector layer behind the parameter (also for a 'selected features only' value,
    which parameterAsVectorLayer does not resolve)."""
    value = parameters.get(name)
    if isinstance(value, QgsProcessingFeatureSourceDefinition):
        reference = value.source.valueAsString(context.expressionContext())
        if isinstance(reference, tuple):
            reference = reference[0]
        return QgsProcessingUtils.mapLayerFromString(reference, context)
    return algorithm.parameterAsVectorLayer(parameters, name, context)


def _uri_parts(layer) -> dict:
    if layer.providerType() != "ogr":
        return {}
    return QgsProviderRegistry.instance().decodeUri("ogr", layer.source())


def _restriction(layer, value, restricted) -> str:
    """What narrows the layer's features, for the log ('' when nothing does)."""
    parts = []
    if layer.subsetString():
        parts.append(f"layer filter {layer.subsetString()}")
    if restricted and value.selectedFeaturesOnly:
        parts.append("selected features only")
    if restricted and value.featureLimit != -1:
        parts.append(f"first {value.featureLimit} features")
    return ", ".join(parts)


def _read_source(source, label, is_kml, folder, restriction, class_field, feedback, what,
                 ignore_unknown_labels):
    """Labelled polygons from a Processing feature source, feature by feature."""
    names = [f.name() for f in source.fields()]
    name = choose_class_field(names, class_field or None, label)
    collector = LabelCollector(label, name, is_kml, what=what,
                               ignore_unknown_labels=ignore_unknown_labels)
    count = 0
    # the core rasterises invalid polygons as GDAL does; Processing's invalid-geometry check
    # would otherwise stop or thin out the run depending on a desktop setting
    features = source.getFeatures(QgsFeatureRequest(),
                                  QgsProcessingFeatureSource.FlagSkipGeometryValidityChecks)
    for feature in features:
        count += 1
        geometry = feature.geometry()
        ogr_geometry = None
        if not geometry.isNull():
            ogr_geometry = ogr.CreateGeometryFromWkb(bytes(geometry.asWkb()))
        value = feature[name]
        collector.add(None if value is None or str(value) == "NULL" else value, ogr_geometry,
                      feature.id(), folder)
    if restriction:
        feedback.info(f"{label}: read {count} feature(s) ({restriction}).")
    crs = source.sourceCrs()
    areas = collector.finish(crs.toWkt() if crs.isValid() else "", feedback)
    if restriction:
        areas.notes.append(f"{what}: {count} feature(s) of {label} ({restriction})")
    return areas
