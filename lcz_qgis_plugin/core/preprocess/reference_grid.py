"""The reference grid every preprocessed layer lands on.

Every ancillary layer (OpenStreetMap fractions, heights) must align pixel for pixel with the
Sentinel-2 stack, so the preprocessing algorithms take a *reference raster* and copy its CRS,
origin, pixel size and size. Outputs are tiled, compressed GeoTIFFs written block by block
under a hidden temporary name (:class:`~lcz_qgis_plugin.core.outputs.PendingOutputs`).
"""

from __future__ import annotations

from dataclasses import dataclass

from osgeo import gdal, osr

from ..errors import InputError
from ..rasters import check_georeferencing, open_raster


@dataclass(frozen=True)
class Grid:
    """A north-up raster grid: origin, square pixel size, size in pixels, CRS as WKT."""

    x0: float
    y0: float
    pixel: float
    width: int
    height: int
    wkt: str

    @property
    def geotransform(self):
        return (self.x0, self.pixel, 0.0, self.y0, 0.0, -self.pixel)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax)"""
        return (self.x0, self.y0 - self.height * self.pixel,
                self.x0 + self.width * self.pixel, self.y0)

    @property
    def srs(self) -> osr.SpatialReference:
        srs = osr.SpatialReference()
        srs.ImportFromWkt(self.wkt)
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        return srs

    def window(self, row0: int, rows: int) -> Grid:
        """The grid of rows ``row0`` to ``row0 + rows - 1``."""
        return Grid(self.x0, self.y0 - row0 * self.pixel, self.pixel, self.width, rows, self.wkt)

    def same_as(self, other: Grid) -> bool:
        tol = 1e-6 * max(1.0, self.pixel)
        return (self.width == other.width and self.height == other.height
                and abs(self.x0 - other.x0) < 1e-3 and abs(self.y0 - other.y0) < 1e-3
                and abs(self.pixel - other.pixel) < tol
                and self.srs.IsSame(other.srs))


def grid_of(ds: gdal.Dataset) -> Grid:
    x0, px, _, y0, _, _ = ds.GetGeoTransform()
    return Grid(x0, y0, px, ds.RasterXSize, ds.RasterYSize, ds.GetProjection())


def reference_grid(path: str) -> Grid:
    """The grid of the reference raster (usually the Sentinel-2 stack)."""
    ds = open_raster(path, "reference raster")
    check_georeferencing(ds, path)
    return grid_of(ds)


def transform_bounds(bounds, source_wkt: str, target: osr.SpatialReference):
    """Bounding box (xmin, ymin, xmax, ymax) of ``bounds`` (in ``source_wkt``) in ``target``,
    densified along the edges so curved edges are covered."""
    source = osr.SpatialReference()
    source.SetFromUserInput(source_wkt)
    source.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    if source.IsSame(target):
        return tuple(bounds)
    xmin, ymin, xmax, ymax = bounds
    ct = osr.CoordinateTransformation(source, target)
    points = []
    for i in range(21):
        f = i / 20
        points += [(xmin + f * (xmax - xmin), ymin), (xmin + f * (xmax - xmin), ymax),
                   (xmin, ymin + f * (ymax - ymin)), (xmax, ymin + f * (ymax - ymin))]
    try:
        out = [ct.TransformPoint(x, y)[:2] for x, y in points]
    except RuntimeError as exc:
        raise InputError(f"cannot transform the extent {bounds} into the target CRS: {exc}. "
                         f"Check the extent's CRS.") from None
    xs, ys = [p[0] for p in out], [p[1] for p in out]
    return min(xs), min(ys), max(xs), max(ys)
