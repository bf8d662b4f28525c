"""Assess an LCZ map against reference data: confusion matrix, LCZ scores, per-class table.

The map's own grid is the unit of assessment: every map cell with a class (1-17) and a
reference class counts once. The reference is either

- polygons (a class field, or WUDAPT KML placemark names), rasterised onto the map grid:
  a cell takes a polygon's class when its centre lies inside it (reprojected first when
  the CRS differ); polygons outside the map, or holding no cell centre, are counted and
  reported; or
- an LCZ raster in any coding (1-17 or WUDAPT 101-107), brought onto the map grid (and
  reprojected when the CRS differ). Its pixel size is measured in the map's CRS in x and in
  y separately. A reference that is not finer than the map in *both* directions is sampled
  at each cell centre (nearest neighbour). A finer one gives each cell the class covering
  most of its area: the reference is sampled (nearest neighbour) on a grid k_x x k_y times
  finer than the map's, with sub-cells no larger than a reference pixel, and the classes of
  each cell's sub-samples are counted (exact when the reference grid nests in the map grid).
  Ties go to the class at the cell centre when it is among them, otherwise to the tied class
  found nearest to the centre; no rule favours low or high codes.

Both map and reference may use 1-17 or 101-107 for A-G; any other value is no-data. The
scores come from :mod:`.metrics` (one implementation for the plugin and the training
package). The work is done in strips of map rows, so memory does not grow with the map.
The HTML report is drawn by :mod:`.report`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
from osgeo import gdal, ogr, osr

from ..areas import LabelledAreas, describe_areas, read_areas
from ..commit import Commit, GdalErrors
from ..errors import Cancelled, InputError
from ..feedback import Feedback
from ..lcz_classes import LCZ_CLASSES, LCZ_CODES
from ..rasters import open_raster
from .metrics import accuracy_scores, confusion_matrix, format_percent
from .report import write_report

STRIP_ROWS = 512
FINE_PIXELS_PER_STRIP = 16_000_000
"""Bound on the reference pixels warped per strip (Int16: 32 MB)."""
FINE_CELLS_PER_STRIP = 1_000_000
"""Bound on the map cells per strip when sub-samples are counted (17 int32 counts each)."""
FINER = 0.99
"""A reference is finer than the map in one direction when its pixel is below 99 % of the
map cell there (a reprojected reference of the same resolution stays at nearest neighbour)."""


@dataclass
class ClassRow:
    code: int
    letter: str
    name: str
    reference: int
    predicted: int
    producers_accuracy: float
    users_accuracy: float
    f1: float


@dataclass
class AssessResult:
    scores: dict
    matrix: np.ndarray
    classes: list[ClassRow]
    report: str | None = None
    notes: list[str] = field(default_factory=list)
    table: str | None = None

    @property
    def samples(self) -> int:
        return int(self.matrix.sum())


def recode(values: np.ndarray) -> np.ndarray:
    """Codes 1-17 as they are, WUDAPT 101-107 -> 11-17, anything else -> 0 (no-data)."""
    lut = np.zeros(256, np.uint8)
    lut[1:18] = np.arange(1, 18)
    lut[101:108] = np.arange(11, 18)
    v = np.asarray(values)
    if v.dtype.kind == "f":
        v = np.where(np.isfinite(v), v, -1)
    v = v.astype(np.int64)
    return np.where((v >= 0) & (v < 256), lut[np.clip(v, 0, 255)], 0).astype(np.uint8)


def _srs(wkt: str) -> osr.SpatialReference:
    srs = osr.SpatialReference(wkt=wkt)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


class _RasterReference:
    """Reference LCZ raster brought strip by strip onto the map grid (see the module doc)."""

    def __init__(self, path: str, map_ds: gdal.Dataset, feedback: Feedback):
        self.ds = open_raster(path, "reference raster")
        self.path = path
        ref_wkt, map_wkt = self.ds.GetProjection(), map_ds.GetProjection()
        if not ref_wkt:
            raise InputError(f"the reference raster {path} has no CRS. Assign one "
                             f"(Raster > Projections > Assign Projection).")
        self.map_wkt = map_wkt
        ref_srs, map_srs = _srs(ref_wkt), _srs(map_wkt)
        self.notes = []
        self.reprojected = not ref_srs.IsSame(map_srs)
        if self.reprojected:
            message = (f"Reference raster reprojected from {ref_srs.GetName()} to the map's "
                       f"CRS {map_srs.GetName()}.")
            feedback.info(message)
            self.notes.append(message)
        ref_x, ref_y = self._pixel_in_map_units(ref_srs, map_srs, map_ds)
        map_gt = map_ds.GetGeoTransform()
        map_x, map_y = abs(map_gt[1]), abs(map_gt[5])
        finer = ref_x < FINER * map_x and ref_y < FINER * map_y
        self.kx = math.ceil(map_x / ref_x) if finer else 1
        self.ky = math.ceil(map_y / ref_y) if finer else 1
        self.samples_per_cell = self.kx * self.ky
        units = ("m" if map_srs.GetLinearUnits() == 1.0 else map_srs.GetLinearUnitsName()) \
            if map_srs.IsProjected() else "degrees"
        sizes = (f"Reference pixels ({ref_x:.4g} x {ref_y:.4g} {units} in the map's CRS), "
                 f"map cells ({map_x:.4g} x {map_y:.4g}): ")
        message = sizes + (
            f"each cell takes the reference class covering most of its area (area-weighted "
            f"mode of {self.kx} x {self.ky} sub-samples; ties: the class at the cell "
            f"centre, else the tied class nearest to it)." if finer else
            "the reference is not finer than the map in both directions, so each cell takes "
            "the reference class at its centre (nearest neighbour).")
        feedback.info(message)
        self.notes.append(message)
        self.nodata = self.ds.GetRasterBand(1).GetNoDataValue()
        self.order = sample_order(self.kx, self.ky, map_x, map_y)

    def _pixel_in_map_units(self, ref_srs, map_srs, map_ds) -> tuple[float, float]:
        """Lengths in the map's CRS of one reference pixel step along its x and y axes,
        measured at the map's centre (or the reference's, when that cannot be placed)."""
        gt = self.ds.GetGeoTransform()
        step_x, step_y = (gt[1], gt[4]), (gt[2], gt[5])
        if ref_srs.IsSame(map_srs):
            return math.hypot(*step_x), math.hypot(*step_y)
        to_map = osr.CoordinateTransformation(ref_srs, map_srs)
        map_gt = map_ds.GetGeoTransform()
        centre = (map_gt[0] + map_gt[1] * map_ds.RasterXSize / 2,
                  map_gt[3] + map_gt[5] * map_ds.RasterYSize / 2)
        try:
            cx, cy = osr.CoordinateTransformation(map_srs, ref_srs).TransformPoint(*centre)[:2]
        except RuntimeError:
            cx = gt[0] + gt[1] * self.ds.RasterXSize / 2
            cy = gt[3] + gt[5] * self.ds.RasterYSize / 2
        a = to_map.TransformPoint(cx, cy)
        b = to_map.TransformPoint(cx + step_x[0], cy + step_x[1])
        c = to_map.TransformPoint(cx + step_y[0], cy + step_y[1])
        return math.hypot(b[0] - a[0], b[1] - a[1]), math.hypot(c[0] - a[0], c[1] - a[1])

    def _warp(self, geotransform, width: int, height: int, kx: int, ky: int) -> np.ndarray:
        """Nearest-neighbour codes at the centres of a grid kx x ky times finer than the
        strip's cells."""
        x0, px, _, y0, _, py = geotransform
        bounds = (x0, y0 + py * height, x0 + px * width, y0)
        options = dict(format="MEM", outputBounds=bounds, width=width * kx, height=height * ky,
                       dstSRS=self.map_wkt, resampleAlg="near", outputType=gdal.GDT_Int16,
                       dstNodata=-1)
        if self.reprojected and kx * ky == 1:
            options["errorThreshold"] = 0.0  # exact positions for the cell-centre samples
        if self.nodata is not None:
            options["srcNodata"] = self.nodata
        warped = gdal.Warp("", self.ds, **options)
        if warped is None:
            raise InputError(f"GDAL could not warp the reference raster {self.path}: "
                             f"{gdal.GetLastErrorMsg()}")
        return recode(warped.ReadAsArray().reshape(height * ky, width * kx))

    def read(self, geotransform, width: int, height: int) -> np.ndarray:
        centre = self._warp(geotransform, width, height, 1, 1)
        if self.samples_per_cell == 1:
            return centre
        fine = self._warp(geotransform, width, height, self.kx, self.ky)
        return area_majority(fine, self.kx, self.ky, centre, self.order)


def sample_order(kx: int, ky: int, cell_x: float = 1.0, cell_y: float = 1.0) -> np.ndarray:
    """Indices of a cell's kx x ky sub-samples (row-major) from the nearest to the cell centre
    to the farthest (distances in map units; equally near ones row by row): the search order
    for ties whose classes do not include the centre's."""
    rows, cols = np.meshgrid((np.arange(ky) + 0.5) / ky - 0.5, (np.arange(kx) + 0.5) / kx - 0.5,
                             indexing="ij")
    distance = np.hypot(rows * cell_y, cols * cell_x).ravel()
    return np.argsort(np.round(distance, 9), kind="stable")


def area_majority(fine: np.ndarray, kx: int, ky: int, centre: np.ndarray,
                  order: np.ndarray | None = None) -> np.ndarray:
    """Per cell, the code 1-17 of most of its kx x ky sub-samples of ``fine`` (0 when none
    has a code). Ties: the ``centre`` code when it is among the tied, else the tied code of
    the sub-sample nearest the centre (``order``, see :func:`sample_order`)."""
    rows, cols = centre.shape
    if order is None:
        order = sample_order(kx, ky)
    samples = fine[:rows * ky, :cols * kx].reshape(rows, ky, cols, kx)
    samples = samples.transpose(0, 2, 1, 3).reshape(rows, cols, ky * kx)
    present = np.flatnonzero(np.bincount(samples.ravel(), minlength=256)[1:18]) + 1
    result = np.zeros((rows, cols), np.uint8)
    if present.size == 0:
        return result
    counts = np.stack([(samples == code).sum(axis=2, dtype=np.int32) for code in present])
    best = counts.max(axis=0)
    tied = (counts == best) & (best > 0)
    result[:] = np.where(best > 0, present[counts.argmax(axis=0)], 0)
    several = tied.sum(axis=0) > 1
    if not several.any():
        return result
    position = np.full(256, -1, np.int64)
    position[present] = np.arange(present.size)
    tied_here = tied[:, several].T                       # (cells, present codes)
    cells = np.arange(tied_here.shape[0])
    centre_pos = position[centre[several]]
    centre_wins = (centre_pos >= 0) & tied_here[cells, np.maximum(centre_pos, 0)]
    ordered = samples[several][:, order]                 # (cells, sub-samples) nearest first
    sample_pos = position[ordered]
    is_tied = (sample_pos >= 0) & tied_here[cells[:, None], np.maximum(sample_pos, 0)]
    nearest = ordered[cells, is_tied.argmax(axis=1)]
    result[several] = np.where(centre_wins, centre[several], nearest)
    return result


def polygons_off_the_map(areas: LabelledAreas, geotransform, width: int, height: int,
                         crs_wkt: str = ""):
    """(polygons outside the map's extent, polygons inside it that hold no cell centre);
    ``areas`` in the map's CRS ``crs_wkt``."""
    x0, px, _, y0, _, py = geotransform
    xmin, xmax = min(x0, x0 + px * width), max(x0, x0 + px * width)
    ymin, ymax = min(y0, y0 + py * height), max(y0, y0 + py * height)
    extent = ogr.CreateGeometryFromWkt(f"POLYGON(({xmin} {ymin},{xmax} {ymin},{xmax} {ymax},"
                                       f"{xmin} {ymax},{xmin} {ymin}))")
    outside, without_cells = [], []
    driver = gdal.GetDriverByName("MEM")
    to_pixel = gdal.InvGeoTransform(geotransform)
    source = ogr.GetDriverByName("Memory").CreateDataSource("one")
    layer = source.CreateLayer("one", _srs(crs_wkt) if crs_wkt else None, ogr.wkbUnknown)
    for area in areas.areas:
        if not area.geometry.Intersects(extent):
            outside.append(area)
            continue
        # a window of the map grid around the polygon, burnt as the reference is (centres)
        gxmin, gxmax, gymin, gymax = area.geometry.GetEnvelope()
        corners = [gdal.ApplyGeoTransform(to_pixel, x, y) for x in (gxmin, gxmax)
                   for y in (gymin, gymax)]
        c0 = max(0, math.floor(min(c for c, _ in corners)))
        c1 = min(width, math.ceil(max(c for c, _ in corners)))
        r0 = max(0, math.floor(min(r for _, r in corners)))
        r1 = min(height, math.ceil(max(r for _, r in corners)))
        if c1 <= c0 or r1 <= r0:
            without_cells.append(area)
            continue
        window = driver.Create("", c1 - c0, r1 - r0, 1, gdal.GDT_Byte)
        window.SetGeoTransform((x0 + c0 * px, px, 0.0, y0 + r0 * py, 0.0, py))
        if crs_wkt:
            window.SetProjection(crs_wkt)
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetGeometry(area.geometry)
        layer.CreateFeature(feature)
        gdal.RasterizeLayer(window, [1], layer, burn_values=[1])
        layer.DeleteFeature(feature.GetFID())
        if not window.GetRasterBand(1).ReadAsArray().any():
            without_cells.append(area)
    return outside, without_cells


class _PolygonReference:
    """Reference polygons burnt strip by strip onto the map grid (cell centre inside)."""

    samples_per_cell = 1

    def __init__(self, areas: LabelledAreas, map_ds: gdal.Dataset, feedback: Feedback):
        areas = areas.in_crs(map_ds.GetProjection(), feedback, "reference areas")
        self.notes = list(areas.notes)
        self._report_unused(areas, map_ds, feedback)
        driver = ogr.GetDriverByName("Memory")
        self.source = driver.CreateDataSource("reference")
        srs = _srs(map_ds.GetProjection()) if map_ds.GetProjection() else None
        self.layer = self.source.CreateLayer("reference", srs, ogr.wkbMultiPolygon)
        self.layer.CreateField(ogr.FieldDefn("code", ogr.OFTInteger))
        for area in areas.areas:
            feature = ogr.Feature(self.layer.GetLayerDefn())
            feature.SetField("code", area.code)
            feature.SetGeometry(area.geometry)
            self.layer.CreateFeature(feature)
        self.map_wkt = map_ds.GetProjection()

    def _report_unused(self, areas: LabelledAreas, map_ds: gdal.Dataset, feedback: Feedback):
        """Say how many polygons lie outside the map or hold no cell centre (not used)."""
        outside, without_cells = polygons_off_the_map(
            areas, map_ds.GetGeoTransform(), map_ds.RasterXSize, map_ds.RasterYSize,
            map_ds.GetProjection())
        total = len(areas.areas)
        if outside:
            message = (f"{len(outside)} of {total} reference polygons are outside the map and "
                       f"were not used: polygon {describe_areas(outside)}.")
            feedback.warning(message)
            self.notes.append(message)
        if without_cells:
            cell = abs(map_ds.GetGeoTransform()[1])
            message = (f"{len(without_cells)} of {total} reference polygons hold no cell centre "
                       f"of the map ({cell:g} cells) and were not used: polygon "
                       f"{describe_areas(without_cells)}.")
            feedback.warning(message)
            self.notes.append(message)

    def read(self, geotransform, width: int, height: int) -> np.ndarray:
        target = gdal.GetDriverByName("MEM").Create("", width, height, 1, gdal.GDT_Byte)
        target.SetGeoTransform(geotransform)
        if self.map_wkt:
            target.SetProjection(self.map_wkt)
        gdal.RasterizeLayer(target, [1], self.layer, options=["ATTRIBUTE=code"])
        return target.ReadAsArray()


def assess_accuracy(map_path: str, *, reference_raster: str | None = None,
                    reference_areas: LabelledAreas | str | None = None,
                    class_field: str | None = None, layer: str | None = None,
                    report: str | None = None, table: str | None = None, title: str = "",
                    feedback: Feedback | None = None,
                    ignore_unknown_labels: bool = False) -> AssessResult:
    """Confusion matrix and LCZ scores of ``map_path`` against exactly one reference.

    ``reference_areas``: labelled polygons or the path of a vector file (then ``class_field``,
    ``layer`` and ``ignore_unknown_labels`` as in :func:`.areas.read_areas`);
    ``reference_raster``: an LCZ raster.
    ``report``: path of the HTML report to write; ``table``: path of the per-class table
    (:data:`TABLE_FORMATS`); both optional, checked before any work and put in place
    together at the end (:mod:`.commit`).
    """
    feedback = feedback or Feedback()
    if (reference_raster is None) == (reference_areas is None):
        raise InputError("give exactly one reference: reference polygons or a reference LCZ "
                         "raster.")
    source = reference_raster or (reference_areas if isinstance(reference_areas, str)
                                  else reference_areas.source)
    files = _reserve_outputs(map_path, source, report, table)
    feedback.info(f"Reading the LCZ map {os.path.basename(map_path)} and the reference "
                  f"{os.path.basename(source.split('|')[0])} ...")
    map_ds = _open_map(map_path)
    if reference_raster is not None:
        reference = _RasterReference(reference_raster, map_ds, feedback)
        reference_name = reference_raster
    else:
        if isinstance(reference_areas, str):
            reference_areas = read_areas(reference_areas, class_field, layer, feedback,
                                         what="reference areas",
                                         ignore_unknown_labels=ignore_unknown_labels)
        reference_name = reference_areas.source
        reference = _PolygonReference(reference_areas, map_ds, feedback)
    matrix = _compare(map_ds, map_path, reference, feedback)
    if matrix.sum() == 0:
        raise InputError(
            f"no cell of the LCZ map {map_path} has both a class and a reference class from "
            f"{reference_name}. Check that map and reference cover the same area, that the "
            f"reference holds LCZ codes (1-17, 101-107) and that its CRS is declared.")
    result = _scores(matrix, reference, feedback)
    with files:
        if report:
            result.report = write_report(report, result, map_path, reference_name,
                                         title or "LCZ map accuracy", feedback, files)
        if table:
            result.table = write_class_table(table, result.classes, files)
        if files.saving_line():
            feedback.info(files.saving_line())
    return result


def _reserve_outputs(map_path: str, source: str, report: str | None,
                     table: str | None) -> Commit:
    """Check and reserve the report and the table before any work (neither may be an
    input; the table's extension must be one offered)."""
    files = Commit(inputs=[map_path, source])
    if report:
        files.reserve(report, "accuracy report")
    if table:
        table_driver(table)
        files.reserve(table, "per-class table")
    return files


def _open_map(map_path: str) -> gdal.Dataset:
    """The LCZ map, north-up and with a CRS, so the reference can be placed on its grid."""
    map_ds = open_raster(map_path, "LCZ map")
    _, _, rx, _, ry, _ = map_ds.GetGeoTransform()
    if rx or ry:
        raise InputError(f"the LCZ map {map_path} is rotated; warp it to a north-up grid.")
    if not map_ds.GetProjection():
        raise InputError(f"the LCZ map {map_path} has no coordinate reference system, so the "
                         f"reference cannot be placed on it. Assign its CRS (Raster > "
                         f"Projections > Assign Projection).")
    return map_ds


def _strip_rows(width: int, samples_per_cell: int) -> int:
    """Map rows per strip: memory bounded by the reference pixels warped and, when
    sub-samples are counted, by the cells."""
    strip_rows = max(1, min(STRIP_ROWS, FINE_PIXELS_PER_STRIP // max(1, width * samples_per_cell)))
    if samples_per_cell > 1:
        strip_rows = max(1, min(strip_rows, FINE_CELLS_PER_STRIP // max(1, width)))
    return strip_rows


def _compare(map_ds: gdal.Dataset, map_path: str, reference, feedback: Feedback) -> np.ndarray:
    """The confusion matrix (reference rows, map columns) of every cell with a class in
    both, built strip by strip of map rows."""
    x0, px, _, y0, _, py = map_ds.GetGeoTransform()
    band = map_ds.GetRasterBand(1)
    map_nodata = band.GetNoDataValue()
    width, height = map_ds.RasterXSize, map_ds.RasterYSize
    matrix = np.zeros((len(LCZ_CODES), len(LCZ_CODES)), np.int64)
    strip_rows = _strip_rows(width, reference.samples_per_cell)
    feedback.info(f"Comparing {width} x {height} map cells with the reference, in strips of "
                  f"up to {strip_rows} rows ...")
    for row in range(0, height, strip_rows):
        if feedback.is_cancelled():
            raise Cancelled()
        rows = min(strip_rows, height - row)
        predicted = band.ReadAsArray(0, row, width, rows)
        if predicted is None:
            raise InputError(f"GDAL could not read the LCZ map {map_path}: "
                             f"{gdal.GetLastErrorMsg()}")
        if map_nodata is not None:
            predicted = np.where(predicted == map_nodata, 0, predicted)
        strip_gt = (x0, px, 0.0, y0 + py * row, 0.0, py)
        truth = reference.read(strip_gt, width, rows)
        matrix += confusion_matrix(truth, recode(predicted))
        feedback.progress(100.0 * (row + rows) / height)
    return matrix


def _scores(matrix: np.ndarray, reference, feedback: Feedback) -> AssessResult:
    """The LCZ scores and per-class rows of a confusion matrix, with the headline logged."""
    scores = accuracy_scores(matrix)
    classes = class_rows(matrix, scores)
    result = AssessResult(scores=scores, matrix=matrix, classes=classes,
                          notes=list(getattr(reference, "notes", [])))
    feedback.info(f"{result.samples} cells assessed: OA {format_percent(scores['oa'])}, "
                  f"WA {format_percent(scores['wa'])}, kappa {scores['kappa']:.3f}, "
                  f"OA_BU {format_percent(scores['oa_bu'])}, OA_N "
                  f"{format_percent(scores['oa_n'])}.")
    return result


def class_rows(matrix: np.ndarray, scores: dict) -> list[ClassRow]:
    rows = []
    reference = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    for k, lcz in enumerate(LCZ_CLASSES):
        hit = matrix[k, k]
        rows.append(ClassRow(
            code=lcz.code, letter=lcz.letter, name=lcz.name, reference=int(reference[k]),
            predicted=int(predicted[k]),
            producers_accuracy=float(hit / reference[k]) if reference[k] else float("nan"),
            users_accuracy=float(hit / predicted[k]) if predicted[k] else float("nan"),
            f1=float(scores["f1"][str(lcz.code)])))
    return rows


TABLE_FORMATS = {".csv": ("CSV", ["STRING_QUOTING=IF_NEEDED"]), ".gpkg": ("GPKG", []),
                 ".xlsx": ("XLSX", []), ".ods": ("ODS", [])}
"""Per-class table formats: extension -> (OGR driver, layer options). GDAL 3.6's CSV writer
quotes integers unless told otherwise."""
TABLE_FIELDS = (("code", ogr.OFTInteger), ("letter", ogr.OFTString), ("name", ogr.OFTString),
                ("reference", ogr.OFTInteger), ("predicted", ogr.OFTInteger),
                ("producers_accuracy", ogr.OFTReal), ("users_accuracy", ogr.OFTReal),
                ("f1", ogr.OFTReal))


def table_driver(path: str) -> tuple[str, list[str]]:
    """The OGR driver and layer options for a per-class table, by extension."""
    extension = os.path.splitext(os.fspath(path))[1].lower()
    if extension not in TABLE_FORMATS:
        raise InputError(f"the per-class table {path} must end in "
                         f"{', '.join(TABLE_FORMATS)}; other formats are not offered.")
    return TABLE_FORMATS[extension]


def write_class_table(path: str, classes: list[ClassRow], files: Commit) -> str:
    """One row per LCZ class, written with OGR under the table's temporary name in
    ``files``; numbers stay numbers (NaN: empty)."""
    driver_name, options = table_driver(path)
    temp = files.temp_of(path)
    name = os.path.splitext(os.path.basename(path))[0]
    with GdalErrors() as errors:
        ds = ogr.GetDriverByName(driver_name).CreateDataSource(temp)
        layer = ds.CreateLayer(name, None, ogr.wkbNone, options) if ds is not None else None
        if layer is not None:
            for field_name, kind in TABLE_FIELDS:
                layer.CreateField(ogr.FieldDefn(field_name, kind))
            for row in classes:
                feature = ogr.Feature(layer.GetLayerDefn())
                for field_name, _ in TABLE_FIELDS:
                    value = getattr(row, field_name)
                    if not (isinstance(value, float) and math.isnan(value)):
                        feature.SetField(field_name, value)
                if layer.CreateFeature(feature) != 0:
                    errors.messages.append(gdal.GetLastErrorMsg() or "a row was refused")
                    break
        layer = None
        ds = None  # closes: the file is complete now
    if not os.path.exists(temp) and not errors.messages:
        errors.messages.append("the table file was not created")
    errors.raise_if_any(f"per-class table {path}")
    return path
