"""Stack Sentinel-2 bands into one 10 m GeoTIFF with named bands (``lcz:stacksentinel2``).

Inputs are Level-1C or Level-2A products as ``.SAFE`` folders or ``.zip`` files (the JP2s are
read in place through GDAL's ``/vsizip/``), or individual band rasters. Several products of one
date (adjacent tiles of one pass) are mosaicked; their processing level, sensing date and CRS
must agree.

Values: UInt16 reflectance x 10000, i.e. the DN with the processing-baseline offset removed
(baseline >= 04.00, since 25 January 2022, adds 1000 to every DN; the offset is read from
``RADIO_ADD_OFFSET`` in ``MTD_MSIL1C.xml`` or ``BOA_ADD_OFFSET`` in ``MTD_MSIL2A.xml``):
``out = (DN + offset) * 10000 / QUANTIFICATION_VALUE``. 0 is no data (as in the products);
valid pixels whose reflectance would be <= 0 after removing the offset are written as 1 so
that they stay valid. Individual band rasters carry no metadata: they are taken as already
offset-free reflectance x 10000.

20 m (and 60 m) bands are resampled to the 10 m grid with GDAL's warper (bilinear by default,
no-data pixels excluded from the kernel); 10 m bands aligned with the grid are copied as they
are. The scene is processed in blocks of rows, so memory does not grow with the scene.

Optional extras: cloud and shadow masking from the L2A scene classification (``SCL`` classes
3 cloud shadow, 8 and 9 cloud medium and high probability, 10 thin cirrus become no data) and
spectral indices as extra bands ``IDX:NDVI`` ... . Indices are fractions in [-1, 1], so when
any is requested the whole file is written as Float32 with no data -9999 (reflectance bands
keep their x 10000 values); without indices it is UInt16 with no data 0.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass, field

import numpy as np
from osgeo import gdal, ogr, osr

from ..channels import S2_ALL, SO2SAT_BANDS, s2_channel
from ..errors import InputError
from ..feedback import Feedback, describe_files
from ..outputs import PendingOutputs, check_output_path
from ..rasters import FLOAT_NODATA, TILED, bounded_cache, check_cancel, quiet_gdal
from .reference_grid import Grid, transform_bounds

NATIVE_RESOLUTION = {"B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20,
                     "B07": 20, "B08": 10, "B8A": 20, "B09": 60, "B10": 60, "B11": 20,
                     "B12": 20, "SCL": 20}
RESAMPLING = ("nearest", "bilinear", "cubic", "cubicspline", "lanczos", "average")
SCL_MASKED = (3, 8, 9, 10)
INDICES = {  # name: (a, b) for (a - b) / (a + b)
    "NDVI": ("B08", "B04"),
    "NDBI": ("B11", "B08"),
    "MNDWI": ("B03", "B11"),
    "NDMI": ("B08", "B11"),
}
PIXEL = 10.0
BLOCK_ROWS = 1024  # a whole number of JP2 tiles (1024) and of output tiles (256)
_BAND_FILE = re.compile(r"_(B0[1-9]|B1[0-2]|B8A|SCL)(?:_(10|20|60)m)?\.jp2$", re.I)
_LOOSE_BAND = re.compile(r"(?:^|[^A-Za-z0-9])B(0?[1-9]|1[0-2]|8A)(?:[^A-Za-z0-9]|$)", re.I)


def band_name(text: str) -> str:
    """'B2', 'b02', 'S2:B02' -> 'B02'; 'B8A' -> 'B8A'."""
    raw = text.strip().upper()
    if raw.startswith("S2:"):
        raw = raw[3:]
    match = re.fullmatch(r"B?(0?[1-9]|1[0-2]|8A)", raw)
    if not match:
        raise InputError(f"'{text}' is not a Sentinel-2 band; use names such as B2, B02, B8A, "
                         f"B11 ({', '.join(S2_ALL)}).")
    number = match.group(1)
    return "B8A" if number == "8A" else f"B{int(number):02d}"


def channel_name(band: str) -> str:
    """The band description the model contract uses: ``S2:B02`` ... ``S2:B8A`` ... ``S2:B12``."""
    return s2_channel(band)


@dataclass
class Product:
    """One Sentinel-2 product (or a set of loose band rasters) and where its bands are."""

    source: str
    level: str  # "L1C", "L2A" or "bands" (loose rasters without metadata)
    sensing_date: str | None = None
    baseline: str | None = None
    quantification: float = 10000.0
    offsets: dict[str, float] = field(default_factory=dict)
    files: dict[str, list[str]] = field(default_factory=dict)


# -- finding products -----------------------------------------------------------------------

def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _parse_metadata(xml_bytes: bytes, source: str, product: Product) -> None:
    try:
        root = ET.fromstring(xml_bytes)
    except ET.ParseError as exc:
        raise InputError(f"the product metadata of {source} is not valid XML ({exc}); the "
                         f"product is damaged. Download it again.") from None
    for element in root.iter():
        tag, text = _local(element.tag), (element.text or "").strip()
        if tag in ("PRODUCT_START_TIME", "DATATAKE_SENSING_START") and text \
                and product.sensing_date is None:
            product.sensing_date = text[:10]
        elif tag == "PROCESSING_BASELINE" and text:
            product.baseline = text
        elif tag in ("QUANTIFICATION_VALUE", "BOA_QUANTIFICATION_VALUE") and text:
            product.quantification = _metadata_number(text, tag, source, positive=True)
        elif tag in ("RADIO_ADD_OFFSET", "BOA_ADD_OFFSET") and text:
            band_id = _metadata_band_id(element.get("band_id", "-1"), tag, source)
            if 0 <= band_id < len(S2_ALL):
                product.offsets[S2_ALL[band_id]] = _metadata_number(text, tag, source)


def _damaged(source: str, what: str, value: str, expected: str) -> InputError:
    return InputError(f"the product metadata of {source} is damaged: {what} is '{value}', "
                      f"not {expected}, so the band values cannot be converted to reflectance. "
                      f"Download the product again.")


def _metadata_number(text: str, tag: str, source: str, positive: bool = False) -> float:
    """A finite number (a positive one for a quantification value): NaN, text or 0 would
    turn whole bands into no data or infinities without an error."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not np.isfinite(value) or (positive and value <= 0):
        raise _damaged(source, tag, text, "a positive number" if positive else "a number")
    return value


def _metadata_band_id(text: str, tag: str, source: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise _damaged(source, f"the band_id of {tag}", text,
                       "a band number (0-12)") from None


def _pick_files(names: list[str], level: str) -> dict[str, list[str]]:
    """Band -> file among the product's JP2s, at the band's native resolution for L2A."""
    found: dict[str, dict[int, str]] = {}
    for name in names:
        if "/IMG_DATA/" not in name.replace("\\", "/"):
            continue
        match = _BAND_FILE.search(name)
        if match:
            band = match.group(1).upper()
            res = int(match.group(2)) if match.group(2) else NATIVE_RESOLUTION[band]
            found.setdefault(band, {})[res] = name
    files = {}
    for band, by_res in found.items():
        native = NATIVE_RESOLUTION[band]
        best = by_res.get(native) or by_res[min(by_res)]
        files[band] = [best]
    return files


def open_product(path: str) -> Product:
    """Read a .SAFE folder, a .zip of one, or the MTD_MSIL*.xml inside a .SAFE folder."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"the Sentinel-2 input {path} does not exist.")
    if os.path.isfile(path) and os.path.basename(path).upper().startswith("MTD_MSIL"):
        path = os.path.dirname(path)
    hint = ("A Sentinel-2 product is a .SAFE folder, or the .zip downloaded from the "
            "Copernicus Data Space, holding MTD_MSIL1C.xml or MTD_MSIL2A.xml and the band "
            "JP2s under GRANULE/*/IMG_DATA/.")
    if os.path.isdir(path):
        names = []
        for folder, _, files in os.walk(path):
            names += [os.path.relpath(os.path.join(folder, f), path).replace(os.sep, "/")
                      for f in files]
        prefix = path

        def read(name):
            with open(os.path.join(path, name), "rb") as f:
                return f.read()
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        prefix = "/vsizip/" + os.path.abspath(path)

        def read(name):
            with zipfile.ZipFile(path) as archive:
                return archive.read(name)
    else:
        raise InputError(f"{path} is neither a .SAFE folder nor a .zip file. {hint}")
    metadata = [n for n in names if re.search(r"(^|/)MTD_MSIL(1C|2A)\.xml$", n)
                and n.count("/") <= 1]
    if not metadata:
        raise InputError(f"{path} is not a Sentinel-2 product: it holds no MTD_MSIL1C.xml or "
                         f"MTD_MSIL2A.xml. {hint} For loose band rasters, give the band "
                         f"files themselves.")
    level = "L1C" if metadata[0].endswith("MTD_MSIL1C.xml") else "L2A"
    product = Product(source=path, level=level)
    _parse_metadata(read(metadata[0]), path, product)
    root = metadata[0].rsplit("/", 1)[0] + "/" if "/" in metadata[0] else ""
    picked = _pick_files([n for n in names if n.startswith(root)], level)
    product.files = {band: [f"{prefix}/{name}" for name in files]
                     for band, files in picked.items()}
    if not product.files:
        raise InputError(f"{path} has Sentinel-2 metadata but no band JP2 under "
                         f"GRANULE/*/IMG_DATA/; the download is incomplete. {hint}")
    return product


def _band_of_raster(path: str) -> str:
    match = _BAND_FILE.search(os.path.basename(path)) or _LOOSE_BAND.search(
        os.path.splitext(os.path.basename(path))[0])
    if match:
        return band_name(match.group(1))
    with quiet_gdal():
        ds = gdal.Open(path)
    if ds is not None and ds.RasterCount == 1:
        description = ds.GetRasterBand(1).GetDescription()
        try:
            return band_name(description)
        except InputError:
            pass
    raise InputError(f"cannot tell which Sentinel-2 band {path} holds: name the file after "
                     f"the band (e.g. T33TVM_20230704_B04.tif or B04.tif), or give the "
                     f"whole product (.SAFE folder or .zip).")


def whole_products(inputs) -> list[str]:
    """The inputs with every file inside a Sentinel-2 product folder replaced by the folder
    (once, in the order given). QGIS's "Add Directory..." in a multiple-input dialog adds every
    file under the chosen folder, not the folder: a .SAFE folder arrives as its metadata,
    manifest and band files, which together stand for the one product."""
    items = []
    for item in map(os.fspath, inputs):
        inside = os.path.isfile(item) and not item.lower().endswith(".zip")
        items.append((_product_folder_of(item) if inside else None) or item)
    return list(dict.fromkeys(items))


def _product_folder_of(path: str):
    """The product folder (.SAFE) holding the file ``path``: the nearest folder above it with
    MTD_MSIL1C.xml or MTD_MSIL2A.xml; None for a file outside any product."""
    folder = os.path.dirname(os.path.abspath(path))
    while folder != os.path.dirname(folder):
        if any(os.path.isfile(os.path.join(folder, f"MTD_MSIL{level}.xml"))
               for level in ("1C", "2A")):
            return folder
        folder = os.path.dirname(folder)
    return None


def find_products(inputs: list[str]) -> list[Product]:
    """Products from the user's inputs; loose band rasters form one product of level 'bands'."""
    if not inputs:
        raise InputError("no Sentinel-2 input given; choose one or more products (.SAFE "
                         "folders or .zip files) or band rasters.")
    products, loose = [], Product(source="band rasters", level="bands")
    for item in whole_products(inputs):
        low = item.lower()
        if os.path.isfile(item) and low.endswith((".jp2", ".tif", ".tiff", ".vrt")) \
                and not os.path.basename(item).upper().startswith("MTD_MSIL"):
            loose.files.setdefault(_band_of_raster(item), []).append(item)
        else:
            products.append(open_product(item))
    if loose.files:
        if products:
            raise InputError("give either whole products (.SAFE/.zip) or loose band rasters, "
                             "not both: loose rasters carry no date, level or offset to "
                             "check against the products.")
        products.append(loose)
    first = products[0]
    for other in products[1:]:
        if other.level != first.level:
            raise InputError(
                f"mixed processing levels in one mosaic: {first.source} is {first.level}, "
                f"{other.source} is {other.level}. Mosaic products of one level only (all "
                f"L2A or all L1C); stack each level separately.")
        if other.sensing_date != first.sensing_date:
            raise InputError(
                f"mixed dates in one mosaic: {first.source} was sensed on "
                f"{first.sensing_date}, {other.source} on {other.sensing_date}. Only adjacent "
                f"tiles of one date are mosaicked; stack each date separately (several dates "
                f"can be given to lcz:classify as separate stacks).")
    return products


# -- the output grid ------------------------------------------------------------------------

def _open_band(path: str, band: str, source: str) -> gdal.Dataset:
    with quiet_gdal():
        ds = gdal.Open(path)
        reason = gdal.GetLastErrorMsg()
    if ds is None or ds.RasterCount < 1:
        raise InputError(f"band {band} of {source} cannot be read ({os.path.basename(path)}: "
                         f"{reason or 'not a raster'}). The JP2 is damaged or incomplete; "
                         f"download the product again.")
    if not ds.GetProjection():
        raise InputError(f"band {band} of {source} ({os.path.basename(path)}) has no CRS; "
                         f"Sentinel-2 band files are georeferenced in UTM. Is it a real "
                         f"Sentinel-2 band?")
    return ds


def _output_grid(products: list[Product], bands: list[str], extent, aoi) -> Grid:
    """Union of the band files' footprints (cut to the extent / AOI), on a 10 m lattice
    anchored at the first file's origin (Sentinel-2 tiles share a lattice in each UTM zone)."""
    first_srs, anchor, union = None, None, None
    for product in products:
        for band in bands:
            for path in product.files[band]:
                ds = _open_band(path, band, product.source)
                srs = osr.SpatialReference(wkt=ds.GetProjection())
                x0, px, rx, y0, ry, py = ds.GetGeoTransform()
                box = (x0, y0 + ds.RasterYSize * py, x0 + ds.RasterXSize * px, y0)
                if first_srs is None:
                    first_srs, anchor, wkt = srs, (x0, y0), ds.GetProjection()
                elif not srs.IsSame(first_srs):
                    raise InputError(
                        f"the inputs are in different CRSs ({first_srs.GetName()} and "
                        f"{srs.GetName()} in {product.source}): tiles from two UTM zones "
                        f"cannot be mosaicked onto one grid. Stack each zone separately, "
                        f"or reproject the bands of one zone into the other first.")
                union = box if union is None else (min(union[0], box[0]), min(union[1], box[1]),
                                                   max(union[2], box[2]), max(union[3], box[3]))
    target = osr.SpatialReference(wkt=wkt)
    target.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    box = union
    for what, wanted in (("extent", extent), ("AOI", aoi)):
        if wanted is None:
            continue
        if what == "extent":
            bounds, crs = wanted[:4], wanted[4] if len(wanted) > 4 else wkt
            cut = transform_bounds(bounds, crs or wkt, target)
        else:
            cut = aoi.GetEnvelope()
            cut = (cut[0], cut[2], cut[1], cut[3])
        new = (max(box[0], cut[0]), max(box[1], cut[1]), min(box[2], cut[2]),
               min(box[3], cut[3]))
        if new[0] >= new[2] or new[1] >= new[3]:
            raise InputError(
                f"the {what} ({cut[0]:.0f}, {cut[1]:.0f}, {cut[2]:.0f}, {cut[3]:.0f} in "
                f"{target.GetName()}) lies outside the Sentinel-2 data ({union[0]:.0f}, "
                f"{union[1]:.0f}, {union[2]:.0f}, {union[3]:.0f}). Choose an {what} inside "
                f"the tile(s), or leave it empty to stack everything.")
        box = new
    ax, ay = anchor
    col0 = np.floor((box[0] - ax) / PIXEL + 1e-6)
    col1 = np.ceil((box[2] - ax) / PIXEL - 1e-6)
    row0 = np.floor((ay - box[3]) / PIXEL + 1e-6)
    row1 = np.ceil((ay - box[1]) / PIXEL - 1e-6)
    return Grid(ax + col0 * PIXEL, ay - row0 * PIXEL, PIXEL, int(col1 - col0), int(row1 - row0),
                wkt)


# -- reading a band onto the grid -----------------------------------------------------------

class _BandReader:
    """Reads one band of one product onto the output grid, block by block: aligned 10 m files
    by direct window reads, everything else through a warped VRT (GDAL's warper)."""

    def __init__(self, product: Product, band: str, grid: Grid, resampling: str):
        self.product, self.band = product, band
        self.parts = []  # (dataset, direct?, column/row offset of the grid in the file)
        for path in product.files[band]:
            ds = _open_band(path, band, product.source)
            x0, px, _, y0, _, py = ds.GetGeoTransform()
            dx, dy = (grid.x0 - x0) / PIXEL, (y0 - grid.y0) / PIXEL
            aligned = (abs(px - PIXEL) < 1e-6 and abs(py + PIXEL) < 1e-6
                       and abs(dx - round(dx)) < 1e-6 and abs(dy - round(dy)) < 1e-6)
            if aligned:
                self.parts.append((ds, True, int(round(dx)), int(round(dy)), path))
            else:
                alg = "near" if band == "SCL" or resampling == "nearest" else resampling
                with quiet_gdal():
                    warped = gdal.Warp("", ds, format="VRT", outputBounds=grid.bounds,
                                       xRes=PIXEL, yRes=PIXEL, resampleAlg=alg, srcNodata=0,
                                       dstNodata=0, outputType=gdal.GDT_UInt16)
                if warped is None:
                    raise InputError(f"band {band} of {product.source} cannot be resampled: "
                                     f"{gdal.GetLastErrorMsg()}.")
                self.parts.append((warped, False, 0, 0, path))

    def read(self, row0: int, rows: int, width: int) -> np.ndarray:
        out = np.zeros((rows, width), np.uint16)
        for ds, direct, dx, dy, path in self.parts:
            if direct:
                x_a, x_b = max(dx, 0), min(dx + width, ds.RasterXSize)
                y_a, y_b = max(dy + row0, 0), min(dy + row0 + rows, ds.RasterYSize)
                if x_a >= x_b or y_a >= y_b:
                    continue
                data = self._read(ds, x_a, y_a, x_b - x_a, y_b - y_a, path)
                target = out[y_a - dy - row0:y_b - dy - row0, x_a - dx:x_b - dx]
            else:
                data = self._read(ds, 0, row0, width, rows, path)
                target = out
            np.copyto(target, data.astype(np.uint16, copy=False), where=(target == 0))
        return out

    def _read(self, ds, x, y, w, h, path):
        with quiet_gdal():
            data = ds.GetRasterBand(1).ReadAsArray(x, y, w, h)
            reason = gdal.GetLastErrorMsg()
        if data is None:
            raise InputError(f"reading band {self.band} of {self.product.source} failed "
                             f"({os.path.basename(path)}: {reason or 'unknown error'}). The "
                             f"JP2 is damaged or incomplete; download the product again.")
        return data


def _to_reflectance(dn: np.ndarray, product: Product, band: str) -> np.ndarray:
    """DN -> reflectance x 10000 (UInt16), no data (0) kept, valid pixels at least 1."""
    offset = product.offsets.get(band, 0.0)
    scale = 10000.0 / product.quantification
    valid = dn != 0
    if offset == 0 and scale == 1.0:
        return dn
    if scale == 1.0 and float(offset).is_integer():  # the usual case: integer arithmetic
        out = np.clip(dn.astype(np.int32) + int(offset), 1, 65535).astype(np.uint16)
        out[~valid] = 0
        return out
    values = (dn.astype(np.float32) + np.float32(offset)) * np.float32(scale)
    out = np.clip(np.rint(values), 1, 65535).astype(np.uint16)
    out[~valid] = 0
    return out


# -- the algorithm --------------------------------------------------------------------------

def _aoi_geometry(aoi_wkt: str | None, aoi_crs: str | None, target_wkt: str):
    if not aoi_wkt:
        return None
    geometry = ogr.CreateGeometryFromWkt(aoi_wkt)
    if geometry is None or geometry.IsEmpty():
        raise InputError("the AOI polygon is empty or not valid WKT; choose a polygon layer "
                         "with at least one feature.")
    if geometry.GetDimension() != 2:
        raise InputError("the AOI must be a polygon (area); use EXTENT for a rectangle.")
    if aoi_crs:
        source = osr.SpatialReference()
        source.SetFromUserInput(aoi_crs)
        source.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        target = osr.SpatialReference(wkt=target_wkt)
        target.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        if not source.IsSame(target):
            geometry.Transform(osr.CoordinateTransformation(source, target))
    return geometry


def _aoi_mask(geometry, grid: Grid) -> np.ndarray:
    """True inside the AOI polygon (pixel centres), for one block."""
    mem = gdal.GetDriverByName("MEM").Create("", grid.width, grid.height, 1, gdal.GDT_Byte)
    mem.SetGeoTransform(grid.geotransform)
    mem.SetProjection(grid.wkt)
    source = ogr.GetDriverByName("Memory").CreateDataSource("aoi")
    layer = source.CreateLayer("aoi", grid.srs, ogr.wkbUnknown)
    feature = ogr.Feature(layer.GetLayerDefn())
    feature.SetGeometry(geometry)
    layer.CreateFeature(feature)
    gdal.RasterizeLayer(mem, [1], layer, burn_values=[1])
    return mem.ReadAsArray().astype(bool)


@dataclass
class StackResult:
    output: str
    bands: list[str]
    level: str
    products: int
    width: int
    height: int


def _stacking_line(bands: list[str], products: list[Product], level: str, grid: Grid) -> str:
    """The log line that says what is stacked: 'Stacking B02, B03 of 1 L2A product dated
    2023-07-04 onto 100 x 100 px of 10 m; offset removed: 1000' (plural for a mosaic)."""
    many = len(products) > 1
    if level == "bands":  # loose rasters always form one product
        source = "from loose band rasters"
    else:
        source = f"of {len(products)} {level} product{'s' if many else ''}"
    date = f" dated {products[0].sensing_date}" if products[0].sensing_date else ""
    offsets = ", ".join(f"{p.offsets.get(bands[0], 0):g}" for p in products)
    return (f"Stacking {', '.join(bands)} {source}{date} onto {grid.width} x {grid.height} px "
            f"of 10 m; offset{'s' if many else ''} removed: {offsets}")


def stack_sentinel2(inputs: list[str], output: str, *, bands=SO2SAT_BANDS,
                    resampling: str = "bilinear", extent=None, aoi_wkt: str | None = None,
                    aoi_crs: str | None = None, mask_clouds: bool = False,
                    indices=(), feedback: Feedback | None = None) -> StackResult:
    """Stack the ``bands`` of Sentinel-2 ``inputs`` into a 10 m GeoTIFF ``output``.

    ``extent``: (xmin, ymin, xmax, ymax[, crs]) with crs as WKT/``EPSG:n`` (default: the
    products' CRS); ``aoi_wkt``/``aoi_crs``: a polygon; pixels outside it become no data.
    """
    feedback = feedback or Feedback()
    output = check_output_path(output, "Sentinel-2 stack")
    bands, indices = _check_arguments(bands, resampling, indices)
    feedback.info(f"Reading the Sentinel-2 input(s) {describe_files(inputs)} ...")
    products = find_products(inputs)
    plan = _plan_stack(products, bands, indices, resampling=resampling, extent=extent,
                       aoi_wkt=aoi_wkt, aoi_crs=aoi_crs, mask_clouds=mask_clouds)
    feedback.info(_stacking_line(bands, products, plan.level, plan.grid))
    pending = _reserve_output(inputs, products, output)
    try:
        with bounded_cache():
            _write_stack(pending, output, plan, feedback)
        pending.commit(feedback)
    except BaseException:
        pending.discard()
        raise
    return StackResult(output=output, bands=plan.names, level=plan.level,
                       products=len(products), width=plan.grid.width, height=plan.grid.height)


@dataclass
class _StackPlan:
    """What is stacked onto which grid, decided before any pixel is read."""

    products: list[Product]
    bands: list[str]
    """The reflectance bands written, in output order."""
    indices: list[str]
    needed: list[str]
    """Every band read: the written ones, then those only the indices need."""
    grid: Grid
    aoi: ogr.Geometry | None
    resampling: str
    mask_clouds: bool

    @property
    def level(self) -> str:
        return self.products[0].level

    @property
    def float_out(self) -> bool:
        """Indices are fractions, so any index makes the whole file Float32."""
        return bool(self.indices)

    @property
    def names(self) -> list[str]:
        return [channel_name(b) for b in self.bands] + [f"IDX:{i}" for i in self.indices]


def _check_arguments(bands, resampling: str, indices) -> tuple[list[str], list[str]]:
    """Normalised band and index names; a clear error for a repeated band, an unknown
    resampling or index, before any product is opened."""
    bands = [band_name(b) for b in (bands or SO2SAT_BANDS)]
    if len(set(bands)) != len(bands):
        raise InputError(f"the band list {', '.join(bands)} names a band twice.")
    if resampling not in RESAMPLING:
        raise InputError(f"unknown resampling '{resampling}'; use one of {', '.join(RESAMPLING)}.")
    indices = [i.upper() for i in indices]
    unknown = [i for i in indices if i not in INDICES]
    if unknown:
        raise InputError(f"unknown spectral index {', '.join(unknown)}; available: "
                         f"{', '.join(INDICES)}.")
    return bands, indices


def _check_products(products: list[Product], needed: list[str], mask_clouds: bool) -> None:
    """Every product must hold every band read (and the SCL for cloud masking)."""
    for product in products:
        missing = [b for b in needed if b not in product.files]
        if missing:
            raise InputError(
                f"{product.source} lacks band(s) {', '.join(missing)} (it has "
                f"{', '.join(sorted(product.files)) or 'none'}). Use a complete product, add "
                f"the missing band rasters, or remove them from the band list.")
        if mask_clouds and "SCL" not in product.files:
            raise InputError(
                f"cloud masking needs the scene classification (SCL) of a Level-2A product, "
                f"but {product.source} is {product.level} without SCL. Use the L2A product, "
                f"or switch cloud masking off.")


def _plan_stack(products: list[Product], bands: list[str], indices: list[str], *,
                resampling: str, extent, aoi_wkt: str | None, aoi_crs: str | None,
                mask_clouds: bool) -> _StackPlan:
    """Check the products against the bands needed and place the output grid (the union of
    the tiles, cut to the extent and the AOI)."""
    needed = list(bands) + [b for i in indices for b in INDICES[i] if b not in bands]
    needed = list(dict.fromkeys(needed))
    _check_products(products, needed, mask_clouds)
    wkt_probe = _open_band(products[0].files[needed[0]][0], needed[0], products[0].source)
    aoi = _aoi_geometry(aoi_wkt, aoi_crs, wkt_probe.GetProjection())
    grid = _output_grid(products, needed, extent, aoi)
    return _StackPlan(products=products, bands=bands, indices=indices, needed=needed,
                      grid=grid, aoi=aoi, resampling=resampling, mask_clouds=mask_clouds)


def _reserve_output(inputs: list[str], products: list[Product], output: str) -> PendingOutputs:
    """Reserve the stack before any work: it must not be one of the band files read."""
    pending = PendingOutputs(os.path.dirname(os.path.abspath(output)), inputs=list(inputs) + [
        path for product in products for paths in product.files.values() for path in paths])
    pending.reserve("stack", output, "Sentinel-2 stack")
    return pending


def _create_stack(pending: PendingOutputs, output: str, plan: _StackPlan) -> None:
    """Create the stack's temporary GeoTIFF with its band names and provenance metadata."""
    products, grid = plan.products, plan.grid
    pending.create(
        "stack", output, width=grid.width, height=grid.height, bands=len(plan.names),
        data_type=gdal.GDT_Float32 if plan.float_out else gdal.GDT_UInt16,
        geotransform=grid.geotransform, projection=grid.wkt, block_rows=256,
        nodata=FLOAT_NODATA if plan.float_out else 0, descriptions=plan.names,
        metadata={"LCZ_SENTINEL2_LEVEL": plan.level,
                  "LCZ_SENTINEL2_DATE": products[0].sensing_date or "unknown",
                  "LCZ_SENTINEL2_INPUTS": ";".join(p.source for p in products),
                  "LCZ_SENTINEL2_RESAMPLING": plan.resampling,
                  "LCZ_SENTINEL2_CLOUD_MASK": "SCL 3,8,9,10" if plan.mask_clouds else "no",
                  "LCZ_VALUES": "reflectance x 10000, offset removed"},
        creation_options=TILED + (["PREDICTOR=3"] if plan.float_out else ["PREDICTOR=2"]))


class _Mosaic:
    """Every needed band (and the SCL) of every product on the output grid, merged block by
    block: at each pixel the first product with data gives the value."""

    def __init__(self, plan: _StackPlan):
        self.plan = plan
        self.readers = {(i, b): _BandReader(p, b, plan.grid, plan.resampling)
                        for i, p in enumerate(plan.products) for b in plan.needed}
        self.scl = {i: _BandReader(p, "SCL", plan.grid, "nearest")
                    for i, p in enumerate(plan.products)} if plan.mask_clouds else {}

    def read(self, band: str, row0: int, rows: int) -> np.ndarray:
        """Reflectance x 10000 of ``band`` in rows ``row0`` ..., clouds masked if asked."""
        width = self.plan.grid.width
        merged = np.zeros((rows, width), np.uint16)
        for i, product in enumerate(self.plan.products):
            refl = _to_reflectance(self.readers[i, band].read(row0, rows, width), product, band)
            if self.plan.mask_clouds:
                classes = self.scl[i].read(row0, rows, width)
                refl[np.isin(classes, SCL_MASKED)] = 0
            np.copyto(merged, refl, where=(merged == 0))
        return merged


def _write_stack(pending: PendingOutputs, output: str, plan: _StackPlan,
                 feedback: Feedback) -> None:
    """Open the bands, create the stack and fill it in blocks of rows, so memory does not
    grow with the scene (the band readers are closed when this returns)."""
    mosaic = _Mosaic(plan)
    _create_stack(pending, output, plan)
    blocks = list(range(0, plan.grid.height, BLOCK_ROWS))
    feedback.info(f"Writing the stack in {len(blocks)} block(s) of up to {BLOCK_ROWS} rows ...")
    for number, row0 in enumerate(blocks):
        check_cancel(feedback)
        _write_block(pending, plan, mosaic, row0)
        feedback.progress(100.0 * (number + 1) / len(blocks))


def _write_block(pending: PendingOutputs, plan: _StackPlan, mosaic: _Mosaic,
                 row0: int) -> None:
    """One block of rows: each band mosaicked, cut to the AOI and written, then the indices
    from the bands kept for them."""
    grid = plan.grid
    rows = min(BLOCK_ROWS, grid.height - row0)
    inside = _aoi_mask(plan.aoi, grid.window(row0, rows)) if plan.aoi is not None else None
    index_bands = {b for i in plan.indices for b in INDICES[i]}
    kept = {}
    for band in plan.needed:  # one band at a time: memory is a few block rows
        merged = mosaic.read(band, row0, rows)
        if inside is not None:
            merged[~inside] = 0
        if band in index_bands:
            kept[band] = merged
        if band in plan.bands:
            data = merged if not plan.float_out else np.where(
                merged == 0, np.float32(FLOAT_NODATA), merged.astype(np.float32))
            pending.write("stack", data, row0, first_band=plan.bands.index(band) + 1)
    _write_indices(pending, plan, kept, row0)


def _write_indices(pending: PendingOutputs, plan: _StackPlan, kept: dict[str, np.ndarray],
                   row0: int) -> None:
    """The normalised differences (a - b) / (a + b) of one block, no data where a band is."""
    for offset, index in enumerate(plan.indices):
        a, b = (kept[x].astype(np.float32) for x in INDICES[index])
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = (a - b) / (a + b)
        ratio = np.where((a > 0) & (b > 0), ratio, np.float32(FLOAT_NODATA))
        pending.write("stack", ratio.astype(np.float32), row0,
                      first_band=len(plan.bands) + offset + 1)
