"""``lcz:rasterizeosm`` — Rasterize OpenStreetMap layers onto a reference grid (adapter over
core.osm)."""

from qgis.core import (QgsProcessing, QgsProcessingOutputNumber, QgsProcessingParameterDefinition,
                       QgsProcessingParameterFeatureSource, QgsProcessingParameterFile,
                       QgsProcessingParameterNumber, QgsProcessingParameterRasterDestination,
                       QgsProcessingParameterRasterLayer)

from ..core.osm import rasterize_osm
from .base import LczAlgorithm

VECTOR_FORMATS = ["gpkg", "shp", "geojson", "fgb"]


class RasterizeOsmAlgorithm(LczAlgorithm):
    OSM_FILE = "OSM_FILE"
    BUILDINGS = "BUILDINGS"
    ROADS = "ROADS"
    WATER = "WATER"
    LANDUSE = "LANDUSE"
    REFERENCE = "REFERENCE"
    METRES_PER_LEVEL = "METRES_PER_LEVEL"
    DEFAULT_HEIGHT = "DEFAULT_HEIGHT"
    SUPERSAMPLE = "SUPERSAMPLE"
    OUTPUT = "OUTPUT"

    ALGORITHM_ID = "rasterizeosm"
    DISPLAY_NAME = "Rasterize OpenStreetMap layers"
    GROUP = "Preprocessing"
    GROUP_ID = "preprocessing"
    TAGS = ("lcz,openstreetmap,osm,pbf,buildings,building fraction,building height,roads,"
            "water,vegetation,impervious,rasterize,coverage,preprocessing")
    SHORT_DESCRIPTION = ("Rasterizes OpenStreetMap buildings, roads, water and land use into "
                         "per-pixel fractions on the grid of a reference raster.")
    HELP = """
Turns OpenStreetMap data into six Float32 bands aligned pixel for pixel with a reference raster (normally the Sentinel-2 stack): OSM:building_fraction, OSM:building_height, OSM:road_fraction, OSM:water_fraction, OSM:vegetation_fraction, OSM:impervious_fraction.

Parameters
- OpenStreetMap file (OSM_FILE): an .osm or .osm.pbf extract (read with GDAL's OSM driver; tags outside its osmconf.ini are read from other_tags).
- Buildings (BUILDINGS), Roads (ROADS), Water (WATER), Land use (LANDUSE): optional vector layers used instead of, or besides, the file. Building heights come from a height or building:levels field; roads use a highway field for their width class; land-use polygons are classified by landuse / natural / leisure / amenity / surface fields like OSM tags.
- Reference raster (REFERENCE): defines CRS, extent and pixels of the output. Data in another CRS is reprojected.
- Metres per level (METRES_PER_LEVEL): building height = building:levels x this when height is not tagged (default 3.0).
- Default building height (DEFAULT_HEIGHT): optional height for buildings with neither tag; empty leaves them unknown (no data where only such buildings cover a pixel).
- Sub-pixels (SUPERSAMPLE, advanced): each pixel is rasterized as n x n sub-pixels (default 10: 1 m on a 10 m grid) and fractions are their means.

Definitions (see the README for the full tag lists)
- building fraction: share of the pixel under building=* footprints. Building height: area-weighted mean height of the footprints in the pixel; 0 without buildings.
- road fraction: highway=* lines buffered to the width tag or a class width (motorway 20 m, trunk 16, primary 12, secondary 10, tertiary 8, residential/unclassified 6, living street 5, service/pedestrian 4, track 3, footway/cycleway/path/steps 2, other 4); tunnels left out.
- water fraction: natural=water, waterway=riverbank/dock, landuse=reservoir/basin, water=*.
- vegetation fraction: landuse=forest/grass/meadow/orchard/vineyard/allotments/farmland/recreation_ground/village_green/cemetery..., natural=wood/scrub/grassland/heath/wetland..., leisure=park/garden/golf_course/nature_reserve.
- impervious fraction: buildings, roads, parking, highway areas, runways/aprons, platforms and paved surface=* areas (a lower bound: OSM does not map every sealed surface).

Output (OUTPUT): Float32 GeoTIFF, -9999 = no data (only in building height). An extract without buildings inside the grid gives zeros and a warning.
"""

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterFile(
            self.OSM_FILE, self.tr("OpenStreetMap file (.osm, .osm.pbf)"),
            QgsProcessingParameterFile.File,
            fileFilter="OpenStreetMap (*.osm *.pbf *.osm.pbf)", optional=True))
        for name, label, types in (
                (self.BUILDINGS, "Buildings layer", [QgsProcessing.TypeVectorPolygon]),
                (self.ROADS, "Roads layer", [QgsProcessing.TypeVectorLine,
                                             QgsProcessing.TypeVectorPolygon]),
                (self.WATER, "Water layer", [QgsProcessing.TypeVectorPolygon]),
                (self.LANDUSE, "Land use layer", [QgsProcessing.TypeVectorPolygon])):
            self.addParameter(QgsProcessingParameterFeatureSource(
                name, self.tr(label), types, optional=True))
        self.addParameter(QgsProcessingParameterRasterLayer(
            self.REFERENCE, self.tr("Reference raster (defines the grid)")))
        self.addParameter(QgsProcessingParameterNumber(
            self.METRES_PER_LEVEL, self.tr("Metres per building level"),
            QgsProcessingParameterNumber.Double, defaultValue=3.0, minValue=0.1))
        self.addParameter(QgsProcessingParameterNumber(
            self.DEFAULT_HEIGHT, self.tr("Default building height in metres (empty: unknown)"),
            QgsProcessingParameterNumber.Double, optional=True, minValue=0.0))
        supersample = QgsProcessingParameterNumber(
            self.SUPERSAMPLE, self.tr("Sub-pixels per pixel edge"),
            QgsProcessingParameterNumber.Integer, defaultValue=10, minValue=1, maxValue=50)
        supersample.setFlags(supersample.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(supersample)
        self.addParameter(QgsProcessingParameterRasterDestination(
            self.OUTPUT, self.tr("OSM layers")))
        self.addOutput(QgsProcessingOutputNumber("BUILDINGS_FOUND",
                                                 self.tr("Building footprints inside the grid")))

    def _layer_path(self, parameters, name, context):
        if parameters.get(name) in (None, ""):
            return []
        path = self.parameterAsCompatibleSourceLayerPath(
            parameters, name, context, VECTOR_FORMATS, "gpkg")
        return [path] if path else []

    def run_core(self, parameters, context, feedback):
        reference = self.parameterAsRasterLayer(parameters, self.REFERENCE, context)
        default_height = None
        if parameters.get(self.DEFAULT_HEIGHT) not in (None, ""):
            default_height = self.parameterAsDouble(parameters, self.DEFAULT_HEIGHT, context)
        result = rasterize_osm(
            reference.source(), self.parameterAsOutputLayer(parameters, self.OUTPUT, context),
            osm_file=self.parameterAsFile(parameters, self.OSM_FILE, context) or None,
            buildings=self._layer_path(parameters, self.BUILDINGS, context),
            roads=self._layer_path(parameters, self.ROADS, context),
            water=self._layer_path(parameters, self.WATER, context),
            landuse=self._layer_path(parameters, self.LANDUSE, context),
            metres_per_level=self.parameterAsDouble(parameters, self.METRES_PER_LEVEL, context),
            default_height=default_height,
            supersample=self.parameterAsInt(parameters, self.SUPERSAMPLE, context),
            feedback=feedback)
        return {self.OUTPUT: result.output, "BUILDINGS_FOUND": result.counts["building"]}
