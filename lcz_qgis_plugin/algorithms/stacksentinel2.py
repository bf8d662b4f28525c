"""``lcz:stacksentinel2`` — Stack Sentinel-2 bands (adapter over core.sentinel2)."""

from qgis.core import (
    QgsGeometry,
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterString,
)

from ..core.preprocess.sentinel2 import INDICES, RESAMPLING, SO2SAT_BANDS, stack_sentinel2
from .base import LczAlgorithm

INDEX_NAMES = tuple(INDICES)


class StackSentinel2Algorithm(LczAlgorithm):
    INPUT = "INPUT"
    BANDS = "BANDS"
    RESAMPLING = "RESAMPLING"
    EXTENT = "EXTENT"
    AOI = "AOI"
    MASK_CLOUDS = "MASK_CLOUDS"
    INDICES = "INDICES"
    OUTPUT = "OUTPUT"

    ALGORITHM_ID = "stacksentinel2"
    DISPLAY_NAME = "Stack Sentinel-2 bands"
    GROUP = "Preprocessing"
    GROUP_ID = "preprocessing"
    TAGS = ("lcz,sentinel-2,sentinel2,safe,jp2,l1c,l2a,band stack,mosaic,resample,reflectance,"
            "offset,scl,cloud mask,ndvi,ndbi,mndwi,ndmi,preprocessing")
    SHORT_DESCRIPTION = ("Stacks Sentinel-2 bands from .SAFE folders or .zip products into "
                         "one 10 m GeoTIFF with named bands.")
    HELP = """
Stacks the bands of Sentinel-2 Level-1C or Level-2A products into one tiled, compressed 10 m
  GeoTIFF whose band descriptions (S2:B02 ... S2:B8A ... S2:B12) are the channel names LCZ models
  expect.

Parameters
- Sentinel-2 inputs (INPUT): the .zip files as downloaded (read in place, no unzipping), .SAFE
  folders, or individual band rasters (file names containing B02, B8A ...). In the selection
  dialog (the ... button): Add File(s)... for a .zip, band rasters or the MTD_MSIL1C.xml /
  MTD_MSIL2A.xml inside a .SAFE folder (it stands for the folder); Add Directory... on a .SAFE
  folder adds every file in it, and those files are read as that one product. Headless runs
  (qgis_process, Python) also take the .SAFE folder's path. Several products of one date
  (adjacent tiles of one pass, same UTM zone) are mosaicked; mixing dates or processing levels is
  refused.
- Bands (BANDS): comma-separated, in output order; default the So2Sat ten:
  B02,B03,B04,B05,B06,B07,B08,B8A,B11,B12 (B2 and B02 both work).
- Resampling (RESAMPLING): how 20 m and 60 m bands reach 10 m: nearest, bilinear (default), cubic,
  cubic spline, Lanczos, average. No-data pixels are left out of the kernel.
- Extent (EXTENT): optional rectangle to cut (any CRS).
- Area of interest (AOI): optional polygons; the stack covers their bounding box and pixels outside
  them are no data.
- Cloud and shadow mask (MASK_CLOUDS): L2A only; pixels the scene classification (SCL) calls cloud
  shadow (3), cloud (8, 9) or thin cirrus (10) become no data.
- Spectral indices (INDICES): optional extra bands IDX:NDVI (B08,B04), IDX:NDBI (B11,B08),
  IDX:MNDWI (B03,B11), IDX:NDMI (B08,B11) as (a - b) / (a + b).

Output (OUTPUT)
Reflectance x 10000 with the processing-baseline offset removed (baseline 04.00 and later add 1000
  to every DN; the offset is read from MTD_MSIL1C.xml / MTD_MSIL2A.xml), UInt16, 0 = no data. With
  indices the file is Float32 (indices are fractions), no data -9999, reflectance bands keep their
  x 10000 values. Band rasters given one by one carry no metadata and are taken as offset-free.

Bad input (missing bands, a zip that is not a Sentinel-2 product, damaged JP2, mixed dates, levels
  or UTM zones, an AOI outside the tiles) stops the run with the reason; no partial output is left.
"""

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterMultipleLayers(
            self.INPUT, self.tr("Sentinel-2 products or band rasters"),
            QgsProcessing.TypeFile))
        self.addParameter(QgsProcessingParameterString(
            self.BANDS, self.tr("Bands (comma-separated, in output order)"),
            defaultValue=",".join(SO2SAT_BANDS)))
        self.addParameter(QgsProcessingParameterEnum(
            self.RESAMPLING, self.tr("Resampling of 20 m / 60 m bands"),
            options=list(RESAMPLING), defaultValue=RESAMPLING.index("bilinear")))
        self.addParameter(QgsProcessingParameterExtent(
            self.EXTENT, self.tr("Extent (empty: everything)"), optional=True))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.AOI, self.tr("Area of interest (outside: no data)"),
            [QgsProcessing.TypeVectorPolygon], optional=True))
        self.addParameter(QgsProcessingParameterBoolean(
            self.MASK_CLOUDS, self.tr("Mask clouds and shadows with the L2A SCL band"),
            defaultValue=False))
        self.addParameter(QgsProcessingParameterEnum(
            self.INDICES, self.tr("Spectral indices as extra bands"), options=list(INDEX_NAMES),
            allowMultiple=True, optional=True, defaultValue=[]))
        self.addParameter(QgsProcessingParameterRasterDestination(
            self.OUTPUT, self.tr("Sentinel-2 stack")))
        self.addOutput(QgsProcessingOutputString("LEVEL", self.tr("Processing level")))
        self.addOutput(QgsProcessingOutputNumber("PRODUCTS", self.tr("Products mosaicked")))

    def run_core(self, parameters, context, feedback):
        inputs = self.parameterAsFileList(parameters, self.INPUT, context)
        if not inputs:
            raise QgsProcessingException("No Sentinel-2 input: choose at least one product "
                                         "(.SAFE folder or .zip) or band raster for INPUT.")
        extent = None
        if parameters.get(self.EXTENT) not in (None, ""):
            rect = self.parameterAsExtent(parameters, self.EXTENT, context)
            if not rect.isNull():
                crs = self.parameterAsExtentCrs(parameters, self.EXTENT, context)
                extent = (rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum(),
                          crs.toWkt() if crs.isValid() else None)
        aoi_wkt = aoi_crs = None
        if parameters.get(self.AOI) not in (None, ""):
            source = self.parameterAsSource(parameters, self.AOI, context)
            if source is not None:
                geometries = [f.geometry() for f in source.getFeatures() if f.hasGeometry()]
                if not geometries:
                    raise QgsProcessingException("The AOI layer has no polygon; choose a "
                                                 "layer with at least one feature.")
                aoi_wkt = QgsGeometry.unaryUnion(geometries).asWkt()
                aoi_crs = source.sourceCrs().toWkt()
        bands = [b for b in self.parameterAsString(parameters, self.BANDS, context).split(",")
                 if b.strip()]
        indices = [INDEX_NAMES[i] for i in self.parameterAsEnums(parameters, self.INDICES,
                                                                 context)]
        result = stack_sentinel2(
            inputs, self.parameterAsOutputLayer(parameters, self.OUTPUT, context),
            bands=bands or None,
            resampling=RESAMPLING[self.parameterAsEnum(parameters, self.RESAMPLING, context)],
            extent=extent, aoi_wkt=aoi_wkt, aoi_crs=aoi_crs,
            mask_clouds=self.parameterAsBoolean(parameters, self.MASK_CLOUDS, context),
            indices=indices, feedback=feedback)
        return {self.OUTPUT: result.output, "LEVEL": result.level,
                "PRODUCTS": result.products}
