"""Build Sentinel-2 products the way ESA lays them out (SAFE folder or zip, JP2 bands, MTD XML),
from arrays of reflectance, for tests and benchmarks.

10 m bands are written at 10 m, 20 m bands at 20 m (2 x 2 means of the 10 m reflectance),
60 m bands at 60 m, as lossless JPEG 2000 through GDAL's JP2OpenJPEG driver. DNs follow
processing baseline 04.00: DN = reflectance x 10000 + 1000 (the metadata says offset -1000).
"""

from __future__ import annotations

import os
import shutil
import zipfile

import numpy as np
from osgeo import gdal, osr

ALL_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10",
             "B11", "B12")
NATIVE = {"B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20,
          "B08": 10, "B8A": 20, "B09": 60, "B10": 60, "B11": 20, "B12": 20, "SCL": 20}
JP2_OPTIONS = ["QUALITY=100", "REVERSIBLE=YES", "YCC=NO"]
MTD_TEMPLATE = """<?xml version="1.0" encoding="UTF-8"?>
<n1:Level-{lvl}_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-{lvl}.xsd">
  <n1:General_Info>
    <Product_Info>
      <PRODUCT_START_TIME>{date}T10:00:31.024Z</PRODUCT_START_TIME>
      <PROCESSING_LEVEL>Level-{lvl}</PROCESSING_LEVEL>
      <PROCESSING_BASELINE>{baseline}</PROCESSING_BASELINE>
      <Datatake datatakeIdentifier="GS2A_{compact}T100031_000000_N{baseline}">
        <SPACECRAFT_NAME>Sentinel-2A</SPACECRAFT_NAME>
        <DATATAKE_SENSING_START>{date}T10:00:31.024Z</DATATAKE_SENSING_START>
      </Datatake>
    </Product_Info>
    <Product_Image_Characteristics>
      <{q}>10000</{q}>
      <{o}_LIST>
{offsets}
      </{o}_LIST>
    </Product_Image_Characteristics>
  </n1:General_Info>
</n1:Level-{lvl}_User_Product>
"""


def dn_of(reflectance: np.ndarray, offset: int = 1000) -> np.ndarray:
    """DN = reflectance x 10000 + offset, as the product stores it (0 stays no data)."""
    dn = np.rint(reflectance * 10000.0) + offset
    return np.clip(dn, 1, 65535).astype(np.uint16)


def block_mean(array: np.ndarray, factor: int) -> np.ndarray:
    rows, cols = array.shape[0] // factor, array.shape[1] // factor
    return array[:rows * factor, :cols * factor].reshape(rows, factor, cols, factor).mean((1, 3))


def write_jp2(path: str, data: np.ndarray, x0: float, y0: float, pixel: float, epsg: int,
              options=JP2_OPTIONS) -> None:
    mem = gdal.GetDriverByName("MEM").Create("", data.shape[1], data.shape[0], 1,
                                             gdal.GDT_UInt16)
    mem.SetGeoTransform((x0, pixel, 0.0, y0, 0.0, -pixel))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    mem.SetProjection(srs.ExportToWkt())
    mem.GetRasterBand(1).WriteArray(data)
    out = gdal.GetDriverByName("JP2OpenJPEG").CreateCopy(path, mem, options=list(options))
    assert out is not None, gdal.GetLastErrorMsg()
    out = None
    for extra in (path + ".aux.xml",):
        if os.path.exists(extra):
            os.remove(extra)


def make_product(folder, reflectance: dict, x0: float, y0: float, *, epsg: int = 32633,
                 level: str = "L1C", date: str = "2023-07-04", baseline: str = "05.09",
                 tile: str = "T33TVM", offset: int = 1000, scl: np.ndarray | None = None,
                 as_zip: bool = False, jp2_options=JP2_OPTIONS) -> str:
    """Write a SAFE product with the bands in ``reflectance`` (band -> 10 m array of
    reflectance, 0 = no data); 20/60 m bands are block means. Returns the .SAFE or .zip path."""
    lvl = "1C" if level == "L1C" else "2A"
    compact = date.replace("-", "")
    number = baseline.replace(".", "")
    name = f"S2A_MSIL{lvl}_{compact}T100031_N{number}_R122_{tile}_{compact}T120000"
    safe = os.path.join(os.fspath(folder), name + ".SAFE")
    granule = os.path.join(safe, "GRANULE", f"L{lvl}_{tile}_A000000_{compact}T100031", "IMG_DATA")
    stem = f"{tile}_{compact}T100031"
    q, o = (("QUANTIFICATION_VALUE", "RADIO_ADD_OFFSET") if level == "L1C"
            else ("BOA_QUANTIFICATION_VALUE", "BOA_ADD_OFFSET"))
    offsets = "\n".join(f'        <{o} band_id="{i}">{-offset}</{o}>' for i in range(13))
    os.makedirs(granule, exist_ok=True)
    with open(os.path.join(safe, f"MTD_MSIL{lvl}.xml"), "w") as f:
        f.write(MTD_TEMPLATE.format(lvl=lvl, date=date, compact=compact, baseline=baseline,
                                    q=q, o=o, offsets=offsets))
    layers = dict(reflectance)
    for band, values in list(layers.items()) + ([("SCL", scl)] if scl is not None else []):
        res = NATIVE[band]
        factor = res // 10
        if band == "SCL":
            data = values[::factor, ::factor].astype(np.uint16)
        else:
            coarse = block_mean(values, factor) if factor > 1 else values
            data = np.where(coarse > 0, dn_of(coarse, offset), 0).astype(np.uint16)
        if level == "L1C":
            path = os.path.join(granule, f"{stem}_{band}.jp2")
        else:
            sub = os.path.join(granule, f"R{res}m")
            os.makedirs(sub, exist_ok=True)
            path = os.path.join(sub, f"{stem}_{band}_{res}m.jp2")
        write_jp2(path, data, x0, y0, float(res), epsg, jp2_options)
    if not as_zip:
        return safe
    archive = safe[:-5] + ".zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        for base, _, files in os.walk(safe):
            for file in files:
                full = os.path.join(base, file)
                z.write(full, os.path.relpath(full, os.path.dirname(safe)))
    shutil.rmtree(safe)
    return archive
