"""``lcz:classify`` — Classify Local Climate Zones (adapter over core.classify)."""

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFile,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterString,
    QgsRasterLayer,
)

from ..core.inference.classify import classify
from ..core.inference.engine import DEVICES  # ids by enum index: auto, cuda, cpu, openvino, ...
from .base import LczAlgorithm
from .output_layers import style_loaded_outputs

# by enum index, as DEVICES: new choices go at the end, so saved models and scripts keep theirs
DEVICE_LABELS = ("Automatic (fastest that keeps the map)",
                 "NVIDIA GPU",
                 "CPU",
                 "CPU through OpenVINO",
                 "CPU through OpenVINO, approximate",
                 "NVIDIA GPU, approximate",
                 "CPU through OpenVINO, int8 copy, approximate")


class ClassifyAlgorithm(LczAlgorithm):
    INPUT = "INPUT"
    MODEL = "MODEL"
    INPUT_BANDS = "INPUT_BANDS"
    CELL_SIZE = "CELL_SIZE"
    EXTENT = "EXTENT"
    DEVICE = "DEVICE"
    BATCH_SIZE = "BATCH_SIZE"
    MAJORITY_RADIUS = "MAJORITY_RADIUS"
    THREADS = "THREADS"
    TILE_SIZE = "TILE_SIZE"
    OUTPUT = "OUTPUT"
    OUTPUT_PROBABILITIES = "OUTPUT_PROBABILITIES"
    OUTPUT_CONFIDENCE = "OUTPUT_CONFIDENCE"
    OUTPUT_FINE = "OUTPUT_FINE"

    ALGORITHM_ID = "classify"
    DISPLAY_NAME = "Classify Local Climate Zones"
    GROUP = "Classification"
    GROUP_ID = "classification"
    NEEDS_ONNXRUNTIME = True
    TAGS = ("lcz,local climate zones,urban climate,urban heat island,classification,"
            "deep learning,cnn,msmla,onnx,sentinel-2,wudapt,land cover")
    SHORT_DESCRIPTION = ("Classifies Local Climate Zones from input stacks with an ONNX "
                         "model: one patch per output cell, or a dense model's per-pixel "
                         "classes averaged over each cell.")
    HELP = """
Classifies Local Climate Zones (LCZ 1-10 built types, A-G land cover) from one or more raster
  stacks with a deep-learning model in ONNX format (MSMLA, Sen2LCZ-Net, ResNet ... exported by the
  lcz training package). For every output cell a patch of pixels centred on the cell is cut from
  the stack and classified; the map gets the WUDAPT colours and a class legend. A dense model
  (U-Net, lcz.model_kind dense) instead classifies every pixel of overlapping tiles; the per-pixel
  probabilities are blended across the tiles' overlaps and averaged over each cell's pixels.

Parameters
- Input stacks (INPUT): one or more rasters whose band descriptions name the model's channels (e.g.
  S2:B02 ... S2:B12, OSM:building_fraction, DSM:height); band order does not matter, missing
  channels are refused. Several stacks are taken as dates of the same area on the same grid: their
  class probabilities are averaged. The CRS must be projected in metres, at the model's pixel size
  (usually 10 m).
- Model (MODEL): an .onnx file carrying the LCZ model metadata (channels, scaling, patch size,
  classes). Scaling and normalisation come only from the model.
- Input band names (INPUT_BANDS, optional): for rasters without band names, e.g. exported from
  Google Earth Engine, the Copernicus Browser or SNAP. Either the names of the input's bands in
  order, separated by commas (S2:B02 or just B2 / B02, OSM:building_fraction ...; - skips a band),
  or a preset: so2sat (the So2Sat / LCZ42 ten bands B2, B3, B4, B5, B6, B7, B8, B8A, B11, B12),
  s2-l1c-13 (Level-1C: B1 ... B8, B8A, B9, B10, B11, B12), s2-l2a-12 (Level-2A: the same without
  B10). It replaces the band descriptions; the number of names must equal the number of bands. With
  several input stacks it applies to each. Values are read as they are (no no-data is added: DN 0
  stays a value unless the raster declares 0 as no data). Empty: the band descriptions name the
  channels; bare Sentinel-2 ids (B2, B02, B8A, also with a wavelength such as "B2 (490 nm)") are
  read as S2:B02 ....
- Cell size (CELL_SIZE): output cell size in metres, a whole multiple of the pixel size. Empty: the
  model's default (usually 100 m).
- Extent (EXTENT): optional area to classify; every cell overlapping it is classified. Pixels
  outside the extent but inside the raster still feed the patches at its border.
- Device (DEVICE): where the model runs; the log names what ran and why. Details and speeds:
  the plugin's help page Performance and memory (help/performance.html).
  - 0 Automatic (default): the NVIDIA GPU when one is usable, else the fastest CPU engine that
    gives the same map on this computer (tried once per model and CPU, then remembered).
  - 1 NVIDIA GPU: needs onnxruntime-gpu; stops with the reason when no GPU is usable.
  - 2 CPU: onnxruntime.
  - 3 CPU through OpenVINO: needs the openvino package.
  - 4 CPU through OpenVINO, reduced precision: faster on recent Intel Xeon CPUs; a cell whose
    two best classes are close may change class.
  - 5 NVIDIA GPU, reduced precision: for large batches on recent GPUs; approximate too.
  - 6 CPU through OpenVINO with the model's int8 copy (MODEL.int8.onnx beside the model,
    written by the training package): faster on many CPUs; approximate.
- Batch size (BATCH_SIZE): patches per inference call (64 suits CPUs; 1024-4096 for GPUs). Dense
  models run BATCH_SIZE / 16 tiles per call (at least one).
- Majority filter radius (MAJORITY_RADIUS): 0 = off; r > 0 replaces each class by the most frequent
  class in the (2r+1) x (2r+1) cells around it.
- CPU threads (THREADS, advanced): 0 = one per physical core.
- Tile size (TILE_SIZE, advanced, dense models only): tile edge in pixels, a multiple of the
  model's tile multiple; 0 = automatic (256 px, more for models that see further). Tiles overlap by
  at least half the model's receptive field on each side; larger tiles waste less on overlaps but
  need more memory.

Outputs
- LCZ map (OUTPUT): Byte GeoTIFF, codes 1-17 (A-G = 11-17), 0 = no data, with a colour table,
  category names and a .qml style.
- Class probabilities (OUTPUT_PROBABILITIES, optional): Float32, one band per model class, band
  descriptions = class names, -9999 = no data.
- Confidence (OUTPUT_CONFIDENCE, optional): band 1 top-1 probability, band 2 normalised entropy (0
  certain, 1 uniform).
- Fine class map (OUTPUT_FINE, optional, dense models only): the class of every pixel at the
  model's output resolution (10 m for a stride-1 model), Byte, same codes, colours and legend as the
  LCZ map; 0 = no data. Refused for patch models.

No data: a cell is no data when its centre pixel is no data or more than half of its patch is; the
  log counts such cells and names the channel(s) responsible. Patches reaching past the raster edge
  are filled by reflection. A failed or cancelled run leaves no output behind. Dense models: a cell
  is no data when its centre pixel is or more than half of its pixels are; its probabilities are
  the mean over its valid pixels. CELL_SIZE must then be a whole multiple of the model's output
  pixel.
"""

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterMultipleLayers(
            self.INPUT, self.tr("Input stacks (one or more dates of the same area)"),
            QgsProcessing.TypeRaster))
        self.addParameter(QgsProcessingParameterFile(
            self.MODEL, self.tr("Model (.onnx)"), QgsProcessingParameterFile.File,
            extension="onnx"))
        self.addParameter(QgsProcessingParameterString(
            self.INPUT_BANDS,
            self.tr("Input band names, or a preset"), optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.CELL_SIZE, self.tr("Cell size in metres (empty: the model's)"),
            QgsProcessingParameterNumber.Double, optional=True, minValue=0.0))
        self.addParameter(QgsProcessingParameterExtent(
            self.EXTENT, self.tr("Extent (empty: the whole input)"), optional=True))
        self.addParameter(QgsProcessingParameterEnum(
            self.DEVICE, self.tr("Device"), options=[self.tr(d) for d in DEVICE_LABELS],
            defaultValue=0))
        self.addParameter(QgsProcessingParameterNumber(
            self.BATCH_SIZE, self.tr("Batch size (patches per inference call)"),
            QgsProcessingParameterNumber.Integer, defaultValue=64, minValue=1,
            maxValue=65536))
        self.addParameter(QgsProcessingParameterNumber(
            self.MAJORITY_RADIUS, self.tr("Majority filter radius in cells (0: off)"),
            QgsProcessingParameterNumber.Integer, defaultValue=0, minValue=0, maxValue=50))
        threads = QgsProcessingParameterNumber(
            self.THREADS, self.tr("CPU threads (0: one per physical core)"),
            QgsProcessingParameterNumber.Integer, defaultValue=0, minValue=0, maxValue=1024)
        threads.setFlags(threads.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(threads)
        tile = QgsProcessingParameterNumber(
            self.TILE_SIZE, self.tr("Tile size in pixels, dense models (0: automatic)"),
            QgsProcessingParameterNumber.Integer, defaultValue=0, minValue=0, maxValue=4096)
        tile.setFlags(tile.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(tile)
        self.addParameter(QgsProcessingParameterRasterDestination(
            self.OUTPUT, self.tr("LCZ map")))
        self.addParameter(QgsProcessingParameterRasterDestination(
            self.OUTPUT_PROBABILITIES, self.tr("Class probabilities"), optional=True,
            createByDefault=False))
        self.addParameter(QgsProcessingParameterRasterDestination(
            self.OUTPUT_CONFIDENCE, self.tr("Confidence (top-1 probability, entropy)"),
            optional=True, createByDefault=False))
        self.addParameter(QgsProcessingParameterRasterDestination(
            self.OUTPUT_FINE, self.tr("Fine class map (dense models only)"),
            optional=True, createByDefault=False))
        self.addOutput(QgsProcessingOutputString(
            "EXECUTION_PROVIDER", self.tr("Engine and execution provider used")))
        self.addOutput(QgsProcessingOutputNumber(
            "CLASSIFIED_CELLS", self.tr("Number of classified cells")))

    def run_core(self, parameters, context, feedback):
        layers = self.parameterAsLayerList(parameters, self.INPUT, context)
        if not layers:
            raise QgsProcessingException(
                "No input stack: choose at least one raster layer for INPUT.")
        for layer in layers:
            if not isinstance(layer, QgsRasterLayer) or layer.providerType() != "gdal":
                raise QgsProcessingException(
                    f"The input layer '{layer.name()}' is not a raster file GDAL can read "
                    f"(provider '{layer.providerType()}'); save it as a GeoTIFF first.")
        extent = None
        if parameters.get(self.EXTENT) not in (None, ""):
            rect = self.parameterAsExtent(parameters, self.EXTENT, context, layers[0].crs())
            if not rect.isNull():
                extent = (rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum())
        cell_size = None
        if parameters.get(self.CELL_SIZE) not in (None, ""):
            cell_size = self.parameterAsDouble(parameters, self.CELL_SIZE, context) or None
        output = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        probabilities = self._optional_output(parameters, self.OUTPUT_PROBABILITIES, context)
        confidence = self._optional_output(parameters, self.OUTPUT_CONFIDENCE, context)
        fine = self._optional_output(parameters, self.OUTPUT_FINE, context)
        result = classify(
            [layer.source() for layer in layers],
            self.parameterAsFile(parameters, self.MODEL, context),
            output,
            probabilities_output=probabilities,
            confidence_output=confidence,
            cell_size=cell_size,
            extent=extent,
            device=DEVICES[self.parameterAsEnum(parameters, self.DEVICE, context)],
            batch_size=self.parameterAsInt(parameters, self.BATCH_SIZE, context),
            majority_radius=self.parameterAsInt(parameters, self.MAJORITY_RADIUS, context),
            threads=self.parameterAsInt(parameters, self.THREADS, context),
            feedback=feedback,
            input_bands=self.parameterAsString(parameters, self.INPUT_BANDS, context) or None,
            fine_output=fine,
            tile_size=self.parameterAsInt(parameters, self.TILE_SIZE, context) or None,
        )
        style_loaded_outputs(context, {self.OUTPUT: output, self.OUTPUT_FINE: fine,
                                       self.OUTPUT_PROBABILITIES: probabilities,
                                       self.OUTPUT_CONFIDENCE: confidence})
        return {
            self.OUTPUT: result.output,
            self.OUTPUT_PROBABILITIES: result.probabilities,
            self.OUTPUT_CONFIDENCE: result.confidence,
            self.OUTPUT_FINE: result.fine,
            "EXECUTION_PROVIDER": result.provider,
            "CLASSIFIED_CELLS": result.classified_cells,
        }

    def _optional_output(self, parameters, name, context):
        if parameters.get(name) in (None, ""):
            return None
        return self.parameterAsOutputLayer(parameters, name, context) or None
