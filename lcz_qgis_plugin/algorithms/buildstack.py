"""``lcz:buildstack`` — Build a model input stack (adapter over core.buildstack)."""

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputString,
    QgsProcessingParameterFile,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterString,
)

from ..core.preprocess.buildstack import build_stack, parse_channel_list
from .base import LczAlgorithm


class BuildStackAlgorithm(LczAlgorithm):
    MODEL = "MODEL"
    CHANNEL_LIST = "CHANNEL_LIST"
    INPUT = "INPUT"
    INPUT_BANDS = "INPUT_BANDS"
    OUTPUT = "OUTPUT"

    ALGORITHM_ID = "buildstack"
    DISPLAY_NAME = "Build model input stack"
    GROUP = "Preprocessing"
    GROUP_ID = "preprocessing"
    TAGS = ("lcz,stack,channels,bands,model input,onnx,vrt,align,sentinel-2,osm,dsm,"
            "preprocessing")
    SHORT_DESCRIPTION = ("Builds the input stack a model expects: its channels, in its order, "
                         "from any number of aligned rasters.")
    HELP = """
Reads the channel list of an LCZ model (.onnx with LCZ metadata) and writes a raster holding
  exactly those channels in the model's order, taken by band description from the given rasters
  (e.g. the Sentinel-2 stack, the OSM layers and the heights). The result is ready for Classify
  Local Climate Zones.

Parameters
- Model (MODEL): the .onnx file; its metadata names the channels (S2:B02 ... S2:B12,
  OSM:building_fraction, DSM:height ...). onnxruntime is not needed for this step.
- Channels (CHANNEL_LIST): instead of a model, the band names to stack in order, separated by
  commas (e.g. S2:B02,...,S2:B12,OSM:building_fraction,DSM:height). Use it to build a training
  stack for Extract training patches before any model exists. Give a model or a channel list, not
  both.
- Rasters (INPUT): any number of rasters; bands are matched by description, the first raster wins
  when two hold the same name, unused bands are ignored.
- Input band names (INPUT_BANDS, optional): names the bands of the first raster when they have no
  band names, e.g. a GeoTIFF exported from Google Earth Engine, the Copernicus Browser or SNAP: its
  bands' names in order, separated by commas (S2:B02 or just B2 / B02, OSM:building_fraction ...; -
  skips a band), or a preset: so2sat (So2Sat / LCZ42 ten bands B2, B3, B4, B5, B6, B7, B8, B8A,
  B11, B12), s2-l1c-13 (Level-1C: B1 ... B8, B8A, B9, B10, B11, B12), s2-l2a-12 (Level-2A: the same
  without B10). The number of names must equal the first raster's band count; the other rasters
  keep their band descriptions. The output's bands are described with the channel names (S2:B02
  ...), so it can be classified without INPUT_BANDS. Values are copied as they are (no no-data is
  added). Empty: band descriptions only; bare Sentinel-2 ids (B2, B02, B8A, "B2 (490 nm)") are read
  as S2:B02 ....
- Output (OUTPUT): .tif (a tiled GeoTIFF copy; mixed data types or no-data values become Float32
  with -9999) or .vrt (a virtual raster pointing at the inputs, written instantly).

Every channel must come from rasters on one grid (same CRS, origin, pixel size and size) at the
  model's pixel size; otherwise the run stops naming the raster and the difference. Missing
  channels are listed together with what the rasters offer.
"""

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterFile(
            self.MODEL, self.tr("Model (.onnx)"), QgsProcessingParameterFile.File,
            extension="onnx", optional=True))
        self.addParameter(QgsProcessingParameterString(
            self.CHANNEL_LIST, self.tr("Channels, in order (instead of a model)"), optional=True))
        self.addParameter(QgsProcessingParameterMultipleLayers(
            self.INPUT, self.tr("Rasters holding the channels"), QgsProcessing.TypeRaster))
        self.addParameter(QgsProcessingParameterString(
            self.INPUT_BANDS,
            self.tr("First raster's band names, or a preset"), optional=True))
        self.addParameter(QgsProcessingParameterRasterDestination(
            self.OUTPUT, self.tr("Model input stack")))
        self.addOutput(QgsProcessingOutputString("CHANNELS", self.tr("Channels written")))

    def run_core(self, parameters, context, feedback):
        layers = self.parameterAsLayerList(parameters, self.INPUT, context)
        if not layers:
            raise QgsProcessingException("No input raster: choose the rasters that hold the "
                                         "model's channels for INPUT.")
        channels = parse_channel_list(
            self.parameterAsString(parameters, self.CHANNEL_LIST, context))
        result = build_stack(self.parameterAsFile(parameters, self.MODEL, context) or None,
                             [layer.source() for layer in layers],
                             self.parameterAsOutputLayer(parameters, self.OUTPUT, context),
                             feedback=feedback, channels=channels or None,
                             input_bands=self.parameterAsString(parameters, self.INPUT_BANDS,
                                                                context) or None)
        return {self.OUTPUT: result.output, "CHANNELS": ",".join(result.channels)}
