"""GeoTIFF outputs that appear only when a run succeeds.

Every output is written under a hidden temporary name in its destination folder and renamed
into place (with its ``.aux.xml`` and ``.qml`` sidecars) after the last strip is written. An
error or a cancel deletes the temporary files, so a failed run never leaves a half-written map
that looks like a finished one. Scratch rasters (intermediate results) live beside the first
output and are always deleted.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

import numpy as np
from osgeo import gdal

from .errors import InputError, OutputError

TIFF_EXTENSIONS = (".tif", ".tiff")


def check_output_path(path: str, what: str) -> str:
    """Refuse non-GeoTIFF destinations and create the destination folder."""
    path = os.fspath(path)
    if not path.lower().endswith(TIFF_EXTENSIONS):
        raise InputError(f"the {what} {path} must be a GeoTIFF (.tif); this algorithm writes "
                         f"no other format.")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the folder {folder} for the {what}: {exc}") from None
    if not os.access(folder, os.W_OK):
        raise InputError(f"cannot write the {what} into {folder}: permission denied.")
    return path


def sidecars(path: str) -> list[str]:
    """Files GDAL and QGIS keep beside a raster."""
    return [path + ".aux.xml", os.path.splitext(path)[0] + ".qml"]


@dataclass
class _Pending:
    temp: str
    final: str | None  # None: scratch, deleted at the end
    qml: str | None
    dataset: gdal.Dataset | None


class PendingOutputs:
    """GeoTIFFs written under temporary names; :meth:`commit` renames them into place."""

    def __init__(self, folder: str):
        self.folder = folder
        self._entries: dict[str, _Pending] = {}

    def create(self, key: str, final_path: str | None, *, width: int, height: int, bands: int,
               data_type: int, geotransform, projection: str, block_rows: int, nodata: float,
               descriptions: list[str], metadata: dict[str, str], qml: str | None = None,
               colour_table: gdal.ColorTable | None = None,
               category_names: list[str] | None = None,
               creation_options: list[str] | None = None) -> None:
        """Create output ``key`` (to become ``final_path``; None for a scratch raster).

        ``creation_options`` replace the default strip layout (e.g. tiled outputs)."""
        folder = os.path.dirname(os.path.abspath(final_path)) if final_path else self.folder
        name = os.path.basename(final_path) if final_path else f"{key}.tif"
        temp = os.path.join(folder, f".{name}.partial-{uuid.uuid4().hex[:8]}.tif")
        options = ["COMPRESS=DEFLATE", "TILED=NO", f"BLOCKYSIZE={max(1, block_rows)}",
                   "BIGTIFF=IF_SAFER"]
        if data_type == gdal.GDT_Float32:
            options.append("PREDICTOR=3")
        if creation_options is not None:
            options = list(creation_options)
        ds = gdal.GetDriverByName("GTiff").Create(temp, width, height, bands, data_type,
                                                  options=options)
        if ds is None:
            raise OutputError(f"cannot create {final_path or temp}: {gdal.GetLastErrorMsg()}")
        self._entries[key] = _Pending(temp, final_path, qml, ds)
        ds.SetGeoTransform(geotransform)
        ds.SetProjection(projection)
        ds.SetMetadata(metadata)
        for number, description in enumerate(descriptions, start=1):
            band = ds.GetRasterBand(number)
            band.SetDescription(description)
            band.SetNoDataValue(nodata)
            if colour_table is not None:
                band.SetColorTable(colour_table)
                band.SetColorInterpretation(gdal.GCI_PaletteIndex)
            if category_names is not None:
                band.SetCategoryNames(category_names)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def write(self, key: str, data: np.ndarray, row: int, col: int = 0,
              first_band: int = 1) -> None:
        """Write ``data`` (rows x cols, or bands x rows x cols) starting at ``row``
        (and column ``col``) into bands ``first_band``, ``first_band + 1`` ..."""
        ds = self._entries[key].dataset
        data = data[None] if data.ndim == 2 else data
        for number in range(data.shape[0]):
            band = ds.GetRasterBand(first_band + number)
            if band.WriteArray(data[number], col, row) != 0:
                raise OutputError(f"writing {self._entries[key].temp} failed: "
                                  f"{gdal.GetLastErrorMsg()}. Is the disk full?")

    def band(self, key: str, number: int = 1) -> gdal.Band:
        return self._entries[key].dataset.GetRasterBand(number)

    def set_band_metadata(self, key: str, number: int, metadata: dict[str, str]) -> None:
        self.band(key, number).SetMetadata(metadata)

    def _close(self) -> None:
        for entry in self._entries.values():
            if entry.dataset is not None:
                entry.dataset.FlushCache()
            entry.dataset = None

    def commit(self) -> None:
        """Close every output and move it, with its sidecars, to its final name."""
        self._close()
        for entry in self._entries.values():
            if entry.final is None:
                continue
            for old in [entry.final] + sidecars(entry.final):
                if os.path.exists(old):
                    os.remove(old)
            os.replace(entry.temp, entry.final)
            if os.path.exists(entry.temp + ".aux.xml"):
                os.replace(entry.temp + ".aux.xml", entry.final + ".aux.xml")
            if entry.qml is not None:
                with open(sidecars(entry.final)[1], "w", encoding="utf-8") as f:
                    f.write(entry.qml)
        self.discard()

    def discard(self) -> None:
        """Delete every temporary and scratch file of this run."""
        self._close()
        for entry in self._entries.values():
            for path in (entry.temp, entry.temp + ".aux.xml"):
                if os.path.exists(path):
                    os.remove(path)
        self._entries.clear()
