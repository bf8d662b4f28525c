"""``lcz:extractpatches`` — Extract training patches (adapter over core.extract)."""

import os

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingUtils,
)

from ..core.training_data.extraction import extract_patches
from .areas_input import labelled_areas_parameter
from .base import LczAlgorithm

VALIDATION_DEFAULT = 0.2


class ExtractPatchesAlgorithm(LczAlgorithm):
    INPUT = "INPUT"
    TRAINING_AREAS = "TRAINING_AREAS"
    CLASS_FIELD = "CLASS_FIELD"
    IGNORE_UNKNOWN_LABELS = "IGNORE_UNKNOWN_LABELS"
    SAMPLES = "SAMPLES"
    PATCH_SIZE = "PATCH_SIZE"
    TILE_SIZE = "TILE_SIZE"
    CELL_SIZE = "CELL_SIZE"
    MAX_PER_POLYGON = "MAX_PER_POLYGON"
    MAX_PER_CLASS = "MAX_PER_CLASS"
    VALIDATION_FRACTION = "VALIDATION_FRACTION"
    TEST_FRACTION = "TEST_FRACTION"
    SEED = "SEED"
    INPUT_BANDS = "INPUT_BANDS"
    OUTPUT = "OUTPUT"
    OUTPUT_SUMMARY = "OUTPUT_SUMMARY"
    SAMPLE_KINDS = ("patches", "tiles")
    """Core ``samples`` value of each SAMPLES choice."""

    ALGORITHM_ID = "extractpatches"
    DISPLAY_NAME = "Extract training patches"
    GROUP = "Training"
    GROUP_ID = "training"
    TAGS = ("lcz,local climate zones,training areas,training data,patches,samples,wudapt,"
            "kml,hdf5,h5,deep learning,msmla,tiles,masks,dense,u-net,segmentation")
    SHORT_DESCRIPTION = ("Extracts training patches for LCZ models from training-area "
                         "polygons and an input stack.")
    HELP = """
Cuts one patch of pixels around every output cell whose centre lies inside a training area, and
  writes them with their LCZ class to a patch file (HDF5) that the training package reads (python
  -m training train). Cells sit on the same grid and patches are centred exactly as in Classify
  Local Climate Zones, so training and classification see the same patches.

With Samples = Tiles (for dense models such as a U-Net) it writes tiles instead: TILE_SIZE x
  TILE_SIZE pixel tiles every TILE_SIZE / 2 pixels from the stack's origin, each with a mask
  holding the LCZ class of every pixel whose centre lies in a training area (0 elsewhere: not
  used by training). Only tiles holding a labelled pixel are written.

Parameters
- Input stack (INPUT): raster whose band descriptions name its channels (S2:B02 ... S2:B12,
  OSM:building_fraction, DSM:height ...), e.g. from Build input stack. Projected CRS in metres. All
  bands are extracted.
- Training areas (TRAINING_AREAS): polygons with an LCZ class: any vector layer, or a WUDAPT
  KML/KMZ whose placemark names are the classes 1 ... 10, A ... G (every folder of the file is
  read). The layer's filter and "Selected features only" apply (for a whole KML/KMZ file the filter
  applies to every folder). The WUDAPT template's region of interest (a placemark or folder named
  ROI) is left out, and the log gives its extent for the EXTENT parameters. Reprojected to the
  stack's CRS when needed. Polygons outside the stack are skipped with a warning.
- Class field (CLASS_FIELD): field holding the class as 1-17, WUDAPT 101-107 or letters A-G. Empty:
  the KML placemark name (Name), or a field called lcz or class. Unknown labels stop the run and
  are all listed.
- Skip unknown labels (IGNORE_UNKNOWN_LABELS): instead of stopping, skip the polygons whose label
  is no LCZ class and list them in a warning.
- Samples (SAMPLES): 0 Patches, one per cell (patch models; default); 1 Tiles with a per-pixel
  label mask (dense models). Tiles: a pixel inside areas of two classes, or no-data in any
  channel, is left unlabelled (0); the last row and column of tiles reach past the raster edge
  by less than half a tile, filled by reflection as Classify does, never labelled there; each
  tile is written once per split whose areas it touches, labelling only that split's pixels.
- Patch size (PATCH_SIZE): patch edge in pixels, default 48. The patch file records it and
  the model trained on the file classifies patches of this size, so choose it for the model
  you will train: 48 for MSMLA (as its authors trained it), 32 for Sen2LCZ-Net and the So2Sat
  LCZ42 models (the demo uses 32 to train faster). Patches only.
- Tile size (TILE_SIZE): tile edge in pixels, 16-1024 (default 128), at most the stack's width
  and height. Tiles only.
- Cell size (CELL_SIZE): output cell size in metres, a whole multiple of the pixel size (100 m: one
  patch every 10 pixels).
- Maximum patches per polygon (MAX_PER_POLYGON) and per class (MAX_PER_CLASS): 0 = all; otherwise a
  random subset (SEED) keeps large polygons and common classes from dominating. Patches only:
  leave them at 0 for tiles.
- Validation fraction (VALIDATION_FRACTION) and test fraction (TEST_FRACTION): share of each
  class's patches (tiles: labelled pixels) held out, as whole polygons (so overlapping
  neighbouring patches never cross the split): per class, polygons are chosen until the
  held-out patches come as close to the share as whole polygons allow; at least one validation
  polygon once a class has two polygons, one test polygon once it has three, and always one
  left for training. The log's table gives each class's split counts and shares, and warns
  where a class's polygons are too few or too unequal to come within 10 points of the share.
  Stored in the patch file's split dataset. Defaults: validation 0.2, test 0 (a first training
  needs validation patches to choose its best epoch; keep a test share, or a separate area,
  for the final accuracy). 0 and 0: no split stored.
- Random seed (SEED): makes sampling and split repeatable.
- Input band names (INPUT_BANDS, optional): for a stack without band names (a GeoTIFF exported from
  Google Earth Engine, the Copernicus Browser or SNAP): its bands' names in order, separated by
  commas (S2:B02 or just B2 / B02, OSM:building_fraction ...; - leaves a band out), or a preset:
  so2sat (So2Sat / LCZ42 ten bands B2, B3, B4, B5, B6, B7, B8, B8A, B11, B12), s2-l1c-13 (Level-1C:
  B1 ... B8, B8A, B9, B10, B11, B12), s2-l2a-12 (Level-2A: the same without B10). The number of
  names must equal the stack's band count; the patch file records these names as its channels
  (S2:B02 ...). Values are read as they are. Empty: the band descriptions; bare Sentinel-2 ids (B2,
  B02, B8A) are recorded as S2:B02 ....

Outputs
- Patch file (OUTPUT): choose where to keep it: QGIS deletes a temporary file (the default)
  when it closes, and the log warns when the file went there. HDF5 (.h5) with patches (raw
  stack values), labels, polygon ids, split, cell centres, channel names and per-channel
  scale/offset (the band's GDAL scale/offset, else 1e-4 for S2:* and 1 for others). Tiles:
  schema version 2, with the masks, the tile size as patch size, each tile's most frequent
  class as its label and its centre. Schema: the plugin's help page Training data
  (help/training-data.html), section Patch files.
- Summary (OUTPUT_SUMMARY, optional): JSON with patches (tiles: labelled pixels, each counted
  once) per class and split, skipped polygons and cells.
- PATCHES: number of patches (tiles: tiles) written. Class counts (tiles: labelled pixels) are
  also printed in the log.
"""

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(
            self.INPUT, self.tr("Input stack")))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.TRAINING_AREAS, self.tr("Training areas (polygons, or WUDAPT KML/KMZ)"),
            [QgsProcessing.TypeVectorAnyGeometry]))
        self.addParameter(QgsProcessingParameterField(
            self.CLASS_FIELD, self.tr("Class field (empty: KML name or 'lcz')"),
            parentLayerParameterName=self.TRAINING_AREAS, optional=True))
        self.addParameter(QgsProcessingParameterBoolean(
            self.IGNORE_UNKNOWN_LABELS,
            self.tr("Skip polygons whose label is not an LCZ class"),
            defaultValue=False))
        self.addParameter(QgsProcessingParameterEnum(
            self.SAMPLES, self.tr("Samples"),
            options=[self.tr("Patches (patch models)"),
                     self.tr("Tiles with label masks (dense models)")],
            defaultValue=0))
        self.addParameter(QgsProcessingParameterNumber(
            self.PATCH_SIZE,
            self.tr("Patch size in pixels (MSMLA 48, So2Sat 32)"),
            QgsProcessingParameterNumber.Integer, defaultValue=48, minValue=1, maxValue=1024))
        self.addParameter(QgsProcessingParameterNumber(
            self.TILE_SIZE, self.tr("Tile size in pixels (tiles)"),
            QgsProcessingParameterNumber.Integer, defaultValue=128, minValue=16,
            maxValue=1024))
        self.addParameter(QgsProcessingParameterNumber(
            self.CELL_SIZE, self.tr("Cell size in metres"),
            QgsProcessingParameterNumber.Double, defaultValue=100.0, minValue=0.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.MAX_PER_POLYGON, self.tr("Maximum patches per polygon (0: all)"),
            QgsProcessingParameterNumber.Integer, defaultValue=0, minValue=0))
        self.addParameter(QgsProcessingParameterNumber(
            self.MAX_PER_CLASS, self.tr("Maximum patches per class (0: all)"),
            QgsProcessingParameterNumber.Integer, defaultValue=0, minValue=0))
        self.addParameter(QgsProcessingParameterNumber(
            self.VALIDATION_FRACTION,
            self.tr("Validation fraction per class (whole polygons)"),
            QgsProcessingParameterNumber.Double, defaultValue=VALIDATION_DEFAULT, minValue=0.0,
            maxValue=0.9))
        self.addParameter(QgsProcessingParameterNumber(
            self.TEST_FRACTION, self.tr("Test fraction per class (whole polygons)"),
            QgsProcessingParameterNumber.Double, defaultValue=0.0, minValue=0.0,
            maxValue=0.9))
        self.addParameter(QgsProcessingParameterNumber(
            self.SEED, self.tr("Random seed"), QgsProcessingParameterNumber.Integer,
            defaultValue=42))
        self.addParameter(QgsProcessingParameterString(
            self.INPUT_BANDS,
            self.tr("Input band names, or a preset"), optional=True))
        self.addParameter(QgsProcessingParameterFileDestination(
            self.OUTPUT, self.tr("Patch file (save it: a temporary one is deleted)"),
            self.tr("HDF5 patch files (*.h5)")))
        self.addParameter(QgsProcessingParameterFileDestination(
            self.OUTPUT_SUMMARY, self.tr("Summary (JSON)"), self.tr("JSON files (*.json)"),
            optional=True, createByDefault=False))
        self.addOutput(QgsProcessingOutputNumber("PATCHES", self.tr("Patches written")))

    def run_core(self, parameters, context, feedback):
        stack = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if stack is None or stack.providerType() != "gdal":
            raise QgsProcessingException(
                "The input stack must be a raster file GDAL can read; save it as a GeoTIFF "
                "first.")
        class_field = self.parameterAsString(parameters, self.CLASS_FIELD, context)
        areas = labelled_areas_parameter(
            self, parameters, self.TRAINING_AREAS, context, class_field, feedback,
            ignore_unknown_labels=self.parameterAsBool(parameters, self.IGNORE_UNKNOWN_LABELS,
                                                       context))
        if areas is None:
            raise QgsProcessingException(
                f"Cannot load the training areas (TRAINING_AREAS) "
                f"{parameters.get(self.TRAINING_AREAS)}; give a vector layer or file.")
        summary = None
        if parameters.get(self.OUTPUT_SUMMARY) not in (None, ""):
            summary = self.parameterAsFileOutput(parameters, self.OUTPUT_SUMMARY, context) or None
        result = extract_patches(
            stack.source(), areas,
            self.parameterAsFileOutput(parameters, self.OUTPUT, context),
            patch_size=self.parameterAsInt(parameters, self.PATCH_SIZE, context),
            cell_size=self.parameterAsDouble(parameters, self.CELL_SIZE, context),
            max_per_polygon=self.parameterAsInt(parameters, self.MAX_PER_POLYGON, context),
            max_per_class=self.parameterAsInt(parameters, self.MAX_PER_CLASS, context),
            validation_fraction=self.parameterAsDouble(parameters, self.VALIDATION_FRACTION,
                                                       context),
            test_fraction=self.parameterAsDouble(parameters, self.TEST_FRACTION, context),
            seed=self.parameterAsInt(parameters, self.SEED, context),
            summary_output=summary, feedback=feedback,
            input_bands=self.parameterAsString(parameters, self.INPUT_BANDS, context) or None,
            samples=self.SAMPLE_KINDS[self.parameterAsEnum(parameters, self.SAMPLES, context)],
            tile_size=self.parameterAsInt(parameters, self.TILE_SIZE, context))
        warn_if_temporary(result.output, "patch file", feedback)
        return {self.OUTPUT: result.output, self.OUTPUT_SUMMARY: result.summary_path,
                "PATCHES": result.patches}


def warn_if_temporary(path: str, what: str, feedback) -> None:
    """A training input written to QGIS's temporary folder is lost when QGIS closes: say so
    while the user can still copy it."""
    folder = os.path.realpath(QgsProcessingUtils.tempFolder())
    if os.path.realpath(path).startswith(folder + os.sep):
        feedback.warning(f"The {what} {path} is in QGIS's temporary folder, which QGIS deletes "
                         f"when it closes: copy it elsewhere, or run again with a file name of "
                         f"your own for the output.")
