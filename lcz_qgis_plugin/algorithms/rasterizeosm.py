"""``lcz:rasterizeosm`` — Rasterize OpenStreetMap layers onto a reference grid (adapter over
core.osm)."""

import os

from qgis.core import (
    QgsProcessing,
    QgsProcessingOutputNumber,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingUtils,
)

from ..core.preprocess.osm import rasterize_osm
from .base import LczAlgorithm

VECTOR_FORMATS = ["gpkg", "shp", "geojson", "fgb"]


class RasterizeOsmAlgorithm(LczAlgorithm):
    OSM_FILE = "OSM_FILE"
    BUILDINGS = "BUILDINGS"
    ROADS = "ROADS"
    WATER = "WATER"
    LANDUSE = "LANDUSE"
    COVERAGE = "COVERAGE"
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
Turns OpenStreetMap data into seven Float32 bands aligned pixel for pixel with a reference raster
  (normally the Sentinel-2 stack): OSM:building_fraction, OSM:building_height, OSM:road_fraction,
  OSM:water_fraction, OSM:vegetation_fraction, OSM:impervious_fraction, OSM:building_height_known.

Parameters
- OpenStreetMap files (OSM_FILE): one or more .osm or .osm.pbf extracts (read with GDAL's OSM
  driver; tags outside its osmconf.ini are read from other_tags). A city in several extracts
  (districts, tiles): give them all (with qgis_process repeat OSM_FILE=a.osm.pbf
  OSM_FILE=b.osm.pbf). Where extracts overlap, an OSM element (type and id) counts once.
- Buildings (BUILDINGS), Roads (ROADS), Water (WATER), Land use (LANDUSE): optional vector layers
  used instead of, or besides, the files (any format; a layer of a GeoPackage, a subset or an .osm
  file opened as a layer too). Building heights come from a height or building:levels (or levels)
  field. A buildings layer with a building field (an OSM export such as multipolygons) keeps only
  the features whose building is set and not "no"; a roads layer with a highway field or OSM
  other_tags keeps only roads, by the same rule as the files (barriers, power lines, tunnels,
  proposed or abandoned ways are left out), and uses the highway class for the width. Layers
  without these fields are taken whole: every polygon of BUILDINGS is a building, every line of
  ROADS a road of 4 m (or its width field). Land-use polygons are classified by landuse / natural /
  leisure / amenity / surface fields like OSM tags.
- Coverage (COVERAGE): optional polygons of where the OpenStreetMap data is complete (the city
  boundary, the extract's .poly area). Pixels less than half inside are no data (-9999) in every
  band. Without it the extracts' own bounds (the <bounds> of an .osm file, the header bbox of an
  .osm.pbf) are used when every file declares them; otherwise the whole grid counts as covered (the
  log says so).
- Reference raster (REFERENCE): defines CRS, extent and pixels of the output. Data in another CRS
  is reprojected.
- Metres per level (METRES_PER_LEVEL): building height = building:levels x this when height is not
  tagged (default 3.0).
- Default building height (DEFAULT_HEIGHT): height for buildings with neither tag. Empty: the
  median height of the tagged buildings in the grid when there are at least 10, else 2 levels x
  METRES_PER_LEVEL. The log gives the share of tagged buildings and the height used.
- Sub-pixels (SUPERSAMPLE, advanced): each pixel is rasterized as n x n sub-pixels (default 10: 1 m
  on a 10 m grid) and fractions are their means.

Definitions (full tag lists: the plugin's help page Preprocessing
  (help/preprocessing.html#rasterize-openstreetmap-layers-lczrasterizeosm))
- building fraction: share of the pixel under building=* footprints. Building height: area-weighted
  mean height of the footprints in the pixel (untagged ones at the default height above); 0 without
  buildings. Building height known: share of the pixel's building area whose height comes from a
  height or building:levels tag; 0 without buildings.
- road fraction: highway=* lines buffered to the width tag or a class width (motorway 20 m, trunk
  16, primary 12, secondary 10, tertiary 8, residential/unclassified 6, living street 5,
  service/pedestrian 4, track 3, footway/cycleway/path/steps 2, other 4); tunnels left out.
- water fraction: natural=water, waterway=riverbank/dock, landuse=reservoir/basin, water=*.
- vegetation fraction:
  landuse=forest/grass/meadow/orchard/vineyard/allotments/farmland/recreation_ground/village_green/cemetery...,
  natural=wood/scrub/grassland/heath/wetland..., leisure=park/garden/golf_course/nature_reserve.
- impervious fraction: buildings, roads, parking, highway areas, runways/aprons, platforms and
  paved surface=* areas (a lower bound: OSM does not map every sealed surface).

Output (OUTPUT): Float32 GeoTIFF, -9999 = no data, only outside the coverage. Inside it every band
  has a value: fractions are 0 where OSM maps nothing. BUILDINGS_FOUND: distinct buildings reaching
  into the grid. An extract without buildings inside the grid gives zeros and a warning.
"""

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterMultipleLayers(
            self.OSM_FILE, self.tr("OpenStreetMap files (.osm, .osm.pbf)"),
            QgsProcessing.TypeFile, optional=True))
        for name, label, types in (
                (self.BUILDINGS, "Buildings layer", [QgsProcessing.TypeVectorPolygon]),
                (self.ROADS, "Roads layer", [QgsProcessing.TypeVectorLine,
                                             QgsProcessing.TypeVectorPolygon]),
                (self.WATER, "Water layer", [QgsProcessing.TypeVectorPolygon]),
                (self.LANDUSE, "Land use layer", [QgsProcessing.TypeVectorPolygon])):
            self.addParameter(QgsProcessingParameterFeatureSource(
                name, self.tr(label), types, optional=True))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.COVERAGE, self.tr("OSM coverage (outside: no data)"),
            [QgsProcessing.TypeVectorPolygon], optional=True))
        self.addParameter(QgsProcessingParameterRasterLayer(
            self.REFERENCE, self.tr("Reference raster (defines the grid)")))
        self.addParameter(QgsProcessingParameterNumber(
            self.METRES_PER_LEVEL, self.tr("Metres per building level"),
            QgsProcessingParameterNumber.Double, defaultValue=3.0, minValue=0.1))
        self.addParameter(QgsProcessingParameterNumber(
            self.DEFAULT_HEIGHT, self.tr("Default building height, m"),
            QgsProcessingParameterNumber.Double, optional=True, minValue=0.0))
        supersample = QgsProcessingParameterNumber(
            self.SUPERSAMPLE, self.tr("Sub-pixels per pixel edge"),
            QgsProcessingParameterNumber.Integer, defaultValue=10, minValue=1, maxValue=50)
        supersample.setFlags(supersample.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(supersample)
        self.addParameter(QgsProcessingParameterRasterDestination(
            self.OUTPUT, self.tr("OSM layers")))
        self.addOutput(QgsProcessingOutputNumber("BUILDINGS_FOUND",
                                                 self.tr("Distinct buildings inside the grid")))

    def _layer_path(self, parameters, name, context, feedback):
        """The layer as ``file|layername=name`` the core can open with OGR. A layer QGIS must
        convert first (a subset, a selection, an .osm file, a database table) is written to
        a temporary GeoPackage; that conversion needs the QgsProcessingFeedback itself
        (without one QGIS 3.22 dereferences a null pointer and the whole process dies)."""
        if parameters.get(name) in (None, ""):
            return []
        path, layer_name = self.parameterAsCompatibleSourceLayerPathAndLayerName(
            parameters, name, context, VECTOR_FORMATS, "gpkg",
            feedback.processing_feedback)
        if not path:
            return []
        if os.path.abspath(path).startswith(os.path.abspath(QgsProcessingUtils.tempFolder())):
            layer_name = ""  # QGIS's converted copy holds one layer; 3.22 returns a stale name
        return [f"{path}|layername={layer_name}" if layer_name else path]

    def run_core(self, parameters, context, feedback):
        reference = self.parameterAsRasterLayer(parameters, self.REFERENCE, context)
        default_height = None
        if parameters.get(self.DEFAULT_HEIGHT) not in (None, ""):
            default_height = self.parameterAsDouble(parameters, self.DEFAULT_HEIGHT, context)
        result = rasterize_osm(
            reference.source(), self.parameterAsOutputLayer(parameters, self.OUTPUT, context),
            osm_file=self.parameterAsFileList(parameters, self.OSM_FILE, context),
            buildings=self._layer_path(parameters, self.BUILDINGS, context, feedback),
            roads=self._layer_path(parameters, self.ROADS, context, feedback),
            water=self._layer_path(parameters, self.WATER, context, feedback),
            landuse=self._layer_path(parameters, self.LANDUSE, context, feedback),
            coverage=self._layer_path(parameters, self.COVERAGE, context, feedback),
            metres_per_level=self.parameterAsDouble(parameters, self.METRES_PER_LEVEL, context),
            default_height=default_height,
            supersample=self.parameterAsInt(parameters, self.SUPERSAMPLE, context),
            feedback=feedback)
        return {self.OUTPUT: result.output, "BUILDINGS_FOUND": result.counts["building"]}
