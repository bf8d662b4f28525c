"""``lcz:preparedsm`` — Heights from a surface model (adapter over core.dsm)."""

from qgis.core import (
    QgsProcessingOutputString,
    QgsProcessingParameterEnum,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
)

from ..core.preprocess.dsm import AGGREGATIONS, prepare_dsm
from .base import LczAlgorithm

AGGREGATION_LABELS = ("Automatic (mean if the DSM is finer)", "Mean", "Maximum")


class PrepareDsmAlgorithm(LczAlgorithm):
    DSM = "DSM"
    DTM = "DTM"
    REFERENCE = "REFERENCE"
    AGGREGATION = "AGGREGATION"
    GROUND_WINDOW = "GROUND_WINDOW"
    OUTPUT = "OUTPUT"

    ALGORITHM_ID = "preparedsm"
    DISPLAY_NAME = "Heights from a surface model"
    GROUP = "Preprocessing"
    GROUP_ID = "preprocessing"
    TAGS = ("lcz,dsm,dtm,ndsm,lidar,height above ground,building height,surface model,"
            "terrain,aggregate,preprocessing")
    SHORT_DESCRIPTION = ("Computes heights above ground from a DSM (and optional DTM) on "
                         "the grid of a reference raster.")
    HELP = """
Writes one Float32 band, DSM:height (metres above ground), aligned pixel for pixel with a reference
  raster (normally the Sentinel-2 stack).

Parameters
- Surface model (DSM): a DSM (lidar or photogrammetry) in any projected CRS; it is reprojected.
- Terrain model (DTM): optional. Given: height = DSM - DTM. Empty: the ground is estimated from the
  DSM by a morphological opening (minimum, then maximum, over GROUND_WINDOW metres), which removes
  objects narrower than the window.
- Reference raster (REFERENCE): defines CRS, extent and pixels of the output.
- Aggregation (AGGREGATION): how the DSM pixels inside one output pixel are combined: 0 Automatic
  (mean when the DSM is at least twice as fine as the grid; otherwise plain bilinear resampling), 1
  Mean (volume above ground per area), 2 Maximum (tallest object).
- Ground window (GROUND_WINDOW): window of the ground estimate in metres (default 100), larger than
  the widest building; only used without a DTM.

Output (OUTPUT): Float32 GeoTIFF. Negative heights become 0. No data (-9999) where the DSM or DTM
  has none; an output pixel is no data only when all its DSM pixels are.

The log gives the median, 90th and 99th percentile of the heights above ground, and warns (the run
  goes on) when
- 90 % of the heights are below 3 m: the DSM looks like a terrain model (DEM/DTM, bare ground), so
  the heights are only terrain residuals. Give the surface model with buildings and trees as DSM
  and the terrain model as DTM (ignore the warning for mostly open land);
- the DSM's or DTM's no-data value is a plausible height (-500 to 9000 m, e.g. 0 = sea level):
  every pixel at exactly that height is lost as no data. Remove the no-data value (gdal_edit.py
  -unsetnodata FILE) when the file has no gaps, or have it written with a no-data value like -9999.
"""

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(
            self.DSM, self.tr("Surface model (DSM)")))
        self.addParameter(QgsProcessingParameterRasterLayer(
            self.DTM, self.tr("Terrain model (DTM, optional)"), optional=True))
        self.addParameter(QgsProcessingParameterRasterLayer(
            self.REFERENCE, self.tr("Reference raster (defines the grid)")))
        self.addParameter(QgsProcessingParameterEnum(
            self.AGGREGATION, self.tr("Aggregation"),
            options=[self.tr(a) for a in AGGREGATION_LABELS], defaultValue=0))
        self.addParameter(QgsProcessingParameterNumber(
            self.GROUND_WINDOW, self.tr("Ground window in metres (without DTM)"),
            QgsProcessingParameterNumber.Double, defaultValue=100.0, minValue=1.0))
        self.addParameter(QgsProcessingParameterRasterDestination(
            self.OUTPUT, self.tr("Height above ground")))
        self.addOutput(QgsProcessingOutputString("AGGREGATION_USED",
                                                 self.tr("Aggregation used")))

    def run_core(self, parameters, context, feedback):
        dtm = self.parameterAsRasterLayer(parameters, self.DTM, context)
        result = prepare_dsm(
            self.parameterAsRasterLayer(parameters, self.DSM, context).source(),
            self.parameterAsRasterLayer(parameters, self.REFERENCE, context).source(),
            self.parameterAsOutputLayer(parameters, self.OUTPUT, context),
            dtm=dtm.source() if dtm is not None else None,
            aggregation=AGGREGATIONS[self.parameterAsEnum(parameters, self.AGGREGATION, context)],
            ground_window=self.parameterAsDouble(parameters, self.GROUND_WINDOW, context),
            feedback=feedback)
        return {self.OUTPUT: result.output, "AGGREGATION_USED": result.aggregation}
