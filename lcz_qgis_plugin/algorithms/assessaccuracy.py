"""``lcz:assessaccuracy`` — Assess an LCZ map (adapter over core.assess)."""

import math
import os

from qgis.core import (
    Qgis,
    QgsFeature,
    QgsFeatureSink,
    QgsField,
    QgsFields,
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingOutputLayerDefinition,
    QgsProcessingOutputNumber,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterRasterLayer,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import QMetaType, QVariant

from ..core.assessment.accuracy import assess_accuracy
from .areas_input import labelled_areas_parameter
from .base import LczAlgorithm

SCORES = (("OA", "oa", "Overall accuracy"), ("WA", "wa", "Weighted accuracy (WA)"),
          ("OA_BU", "oa_bu", "Overall accuracy of the built classes"),
          ("OA_N", "oa_n", "Overall accuracy of the natural classes"),
          ("OA_BUILT_VS_NATURAL", "oa_built_vs_natural", "Built vs natural accuracy"),
          ("KAPPA", "kappa", "Cohen's kappa"), ("F1_MACRO", "f1_macro", "Macro F1"),
          ("F1_WEIGHTED", "f1_weighted", "Weighted F1"))


def _sink_error(sink):
    return (sink.lastError() if hasattr(sink, "lastError") else "") or "the data was refused"


def _field(name: str, kind: str) -> QgsField:
    """A field of type int, string or double: QGIS 3.38+ takes a QMetaType (its QVariant
    constructor is deprecated and warns), older QGIS only a QVariant type."""
    if Qgis.QGIS_VERSION_INT >= 33800:
        types = {"int": QMetaType.Int, "string": QMetaType.QString, "double": QMetaType.Double}
    else:
        types = {"int": QVariant.Int, "string": QVariant.String, "double": QVariant.Double}
    return QgsField(name, types[kind])


def _number(value):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


class AssessAccuracyAlgorithm(LczAlgorithm):
    INPUT = "INPUT"
    REFERENCE_AREAS = "REFERENCE_AREAS"
    CLASS_FIELD = "CLASS_FIELD"
    IGNORE_UNKNOWN_LABELS = "IGNORE_UNKNOWN_LABELS"
    REFERENCE_RASTER = "REFERENCE_RASTER"
    OUTPUT_HTML = "OUTPUT_HTML"
    OUTPUT_TABLE = "OUTPUT_TABLE"

    ALGORITHM_ID = "assessaccuracy"
    DISPLAY_NAME = "Assess LCZ map accuracy"
    GROUP = "Classification"
    GROUP_ID = "classification"
    TAGS = ("lcz,local climate zones,accuracy,validation,confusion matrix,kappa,f1,"
            "weighted accuracy,wudapt,report")
    SHORT_DESCRIPTION = ("Assesses an LCZ map against reference polygons or a reference "
                         "LCZ raster and writes an accuracy report.")
    HELP = """
Compares an LCZ map cell by cell with reference data and reports the LCZ accuracy figures: overall
  accuracy (OA), weighted accuracy (WA, Bechtel et al. 2017, partial credit for similar classes),
  OA of the built classes (OA_BU) and of the natural classes (OA_N), built-vs-natural accuracy,
  Cohen's kappa, and per-class producer's and user's accuracy and F1, with the confusion matrix
  (rows: reference, columns: map).

Parameters
- LCZ map (INPUT): the map to assess, e.g. from Classify Local Climate Zones (codes 1-17; 101-107
  are read as A-G; other values are no data).
- Reference polygons (REFERENCE_AREAS): polygons with the true class, e.g. training areas held out
  for testing or a WUDAPT KML/KMZ (placemark names 1 ... 10, A ... G; every folder of the file is
  read). The layer's filter and "Selected features only" apply (for a whole KML/KMZ file the filter
  applies to every folder). The WUDAPT template's region of interest (a placemark or folder named
  ROI) is left out. A map cell is compared when its centre lies in a polygon. Reprojected to the
  map's CRS when needed. The log and the report say how many polygons lie outside the map or hold
  no cell centre (not used).
- Class field (CLASS_FIELD): field with the class (1-17, 101-107 or A-G). Empty: the KML placemark
  name (Name), or a field called lcz or class. Unknown labels stop the run and are all listed.
- Skip unknown labels (IGNORE_UNKNOWN_LABELS): instead of stopping, skip the polygons whose label
  is no LCZ class and list them in a warning.
- Reference LCZ raster (REFERENCE_RASTER): instead of polygons, an LCZ raster in any coding (1-17,
  101-107), e.g. a published map, reprojected onto the map grid. Its pixel size is measured in the
  map's CRS in x and y. Not finer than the map in both directions: each cell takes the reference
  class at its centre (nearest neighbour). Finer in both: each cell takes the class covering most
  of its area (sub-samples no larger than a reference pixel are counted); ties go to the class at
  the cell centre, else to the tied class nearest to the centre, never by code. Give either
  polygons or a raster.

Outputs
- Report (OUTPUT_HTML): one HTML file with the scores, the per-class table and the confusion matrix
  as a table and as a figure (the figure needs matplotlib).
- Per-class table (OUTPUT_TABLE, optional): one row per LCZ class: code, letter, name, reference
  and mapped cells, producer's and user's accuracy, F1; usable in a graphical model or saved as CSV
  (numbers unquoted).
- Numbers OA, WA, OA_BU, OA_N, OA_BUILT_VS_NATURAL, KAPPA, F1_MACRO, F1_WEIGHTED (fractions 0-1)
  and SAMPLES (cells compared), for use in a model.
Both files are checked before any work starts: a folder that cannot be created or written, or a
  table extension QGIS cannot write (.csv, .gpkg, .xlsx, .ods ... are fine), stops the run at once.
"""

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("LCZ map")))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.REFERENCE_AREAS, self.tr("Reference polygons (or WUDAPT KML/KMZ)"),
            [QgsProcessing.TypeVectorAnyGeometry], optional=True))
        self.addParameter(QgsProcessingParameterField(
            self.CLASS_FIELD, self.tr("Class field (empty: KML name or 'lcz')"),
            parentLayerParameterName=self.REFERENCE_AREAS, optional=True))
        self.addParameter(QgsProcessingParameterBoolean(
            self.IGNORE_UNKNOWN_LABELS,
            self.tr("Skip polygons whose label is not an LCZ class"),
            defaultValue=False))
        self.addParameter(QgsProcessingParameterRasterLayer(
            self.REFERENCE_RASTER, self.tr("Reference LCZ map (raster)"),
            optional=True))
        self.addParameter(QgsProcessingParameterFileDestination(
            self.OUTPUT_HTML, self.tr("Accuracy report"), self.tr("HTML files (*.html)")))
        self.addParameter(QgsProcessingParameterFeatureSink(
            self.OUTPUT_TABLE, self.tr("Per-class accuracy table"), QgsProcessing.TypeVector,
            optional=True, createByDefault=False))
        for key, _, label in SCORES:
            self.addOutput(QgsProcessingOutputNumber(key, self.tr(label)))
        self.addOutput(QgsProcessingOutputNumber("SAMPLES", self.tr("Cells compared")))

    def run_core(self, parameters, context, feedback):
        report = self.parameterAsFileOutput(parameters, self.OUTPUT_HTML, context)
        table_file = self._table_file(parameters, context)
        lcz_map = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        has_areas = parameters.get(self.REFERENCE_AREAS) not in (None, "")
        raster = self.parameterAsRasterLayer(parameters, self.REFERENCE_RASTER, context)
        if has_areas == (raster is not None):
            raise QgsProcessingException(
                "Give exactly one reference: reference polygons (REFERENCE_AREAS) or a "
                "reference LCZ raster (REFERENCE_RASTER).")
        areas = None
        if has_areas:
            class_field = self.parameterAsString(parameters, self.CLASS_FIELD, context)
            areas = labelled_areas_parameter(
                self, parameters, self.REFERENCE_AREAS, context, class_field, feedback,
                what="reference areas",
                ignore_unknown_labels=self.parameterAsBool(
                    parameters, self.IGNORE_UNKNOWN_LABELS, context))
            if areas is None:
                raise QgsProcessingException(
                    f"Cannot load the reference polygons (REFERENCE_AREAS) "
                    f"{parameters.get(self.REFERENCE_AREAS)}; give a vector layer or file.")
        result = assess_accuracy(
            lcz_map.source(), reference_raster=raster.source() if raster else None,
            reference_areas=areas, report=report, table=table_file,
            title=f"Accuracy of the LCZ map {lcz_map.name()}", feedback=feedback)
        outputs = {self.OUTPUT_HTML: result.report, "SAMPLES": result.samples}
        for key, name, _ in SCORES:
            outputs[key] = _number(result.scores[name])
        table_id = (self._load_table_file(parameters, context, table_file) if table_file
                    else self._write_table(parameters, context, result))
        if table_id is not None:
            outputs[self.OUTPUT_TABLE] = table_id
        return outputs

    def _table_file(self, parameters, context):
        """The per-class table's path when it is a file: the core then writes it with the
        report, both checked before any work and put in place together (atomically). None
        for no table or a memory layer / database table, which goes through a sink."""
        if parameters.get(self.OUTPUT_TABLE) in (None, ""):
            return None
        destination = self.parameterAsOutputLayer(parameters, self.OUTPUT_TABLE, context) or ""
        path = destination.split("|")[0]
        if path.startswith(("memory:", "ogr:", "postgres:", "postgis:", "spatialite:")) \
                or "://" in path or "dbname=" in path or not path:
            return None
        if not os.path.splitext(path)[1]:
            path += ".gpkg"  # what QGIS does for a name without an extension
        return path

    def _load_table_file(self, parameters, context, path):
        """Loads the table the core wrote when the user asked for it (a sink does this
        itself)."""
        value = parameters.get(self.OUTPUT_TABLE)
        if isinstance(value, QgsProcessingOutputLayerDefinition) and value.destinationProject:
            details = QgsProcessingContext.LayerDetails(
                value.destinationName or self.tr("Per-class accuracy"),
                value.destinationProject, self.OUTPUT_TABLE)
            context.addLayerToLoadOnCompletion(path, details)
        return path

    def _write_table(self, parameters, context, result):
        if parameters.get(self.OUTPUT_TABLE) in (None, ""):
            return None
        fields = QgsFields()
        for name, kind in (("code", "int"), ("letter", "string"), ("name", "string"),
                           ("reference", "int"), ("predicted", "int"),
                           ("producers_accuracy", "double"), ("users_accuracy", "double"),
                           ("f1", "double")):
            fields.append(_field(name, kind))
        # GDAL 3.6's CSV writer quotes integers under its default STRING_QUOTING=IF_AMBIGUOUS
        destination = self.parameterAsOutputLayer(parameters, self.OUTPUT_TABLE, context) or ""
        is_csv = destination.split("|")[0].lower().endswith(".csv")
        sink, dest_id = self.parameterAsSink(
            parameters, self.OUTPUT_TABLE, context, fields, QgsWkbTypes.NoGeometry,
            layerOptions=["STRING_QUOTING=IF_NEEDED"] if is_csv else [])
        if sink is None:
            raise QgsProcessingException(f"cannot create the per-class table "
                                         f"{destination or parameters.get(self.OUTPUT_TABLE)}; "
                                         f"choose another file name or folder.")
        for row in result.classes:
            feature = QgsFeature(fields)
            feature.setAttributes([row.code, row.letter, row.name, row.reference,
                                   row.predicted, _number(row.producers_accuracy),
                                   _number(row.users_accuracy), _number(row.f1)])
            if not sink.addFeature(feature, QgsFeatureSink.FastInsert):
                raise QgsProcessingException(
                    f"writing the per-class table {destination} failed: "
                    f"{_sink_error(sink)}; choose another file name or folder.")
        if not sink.flushBuffer():
            raise QgsProcessingException(f"writing the per-class table {destination} failed: "
                                         f"{_sink_error(sink)}.")
        return dest_id
