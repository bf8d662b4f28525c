"""GeoTIFF outputs that appear only when a run succeeds.

Every output is written under a hidden temporary name in its destination folder and moved
into place (with its ``.aux.xml`` and ``.qml`` sidecars) after the last strip is written and
the file closed without a GDAL error (:mod:`.commit`). An error, a cancel or a full disk
deletes the temporary files, so a failed run never leaves a half-written map that looks like
a finished one, and never touches the previous one. Scratch rasters (intermediate results)
live in a scratch folder beside the first output and are always deleted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from osgeo import gdal

from .commit import Commit, GdalErrors
from .errors import InputError, OutputError

TIFF_EXTENSIONS = (".tif", ".tiff")


def check_output_path(path: str, what: str) -> str:
    """Refuse non-GeoTIFF destinations (the folder is checked when the output is reserved,
    :meth:`PendingOutputs.reserve`)."""
    path = os.fspath(path)
    if not path.lower().endswith(TIFF_EXTENSIONS):
        raise InputError(f"the {what} {path} must be a GeoTIFF (.tif); this algorithm writes "
                         f"no other format.")
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
    what: str = "output"


class PendingOutputs:
    """GeoTIFFs written under temporary names; :meth:`commit` puts them in place.

    Built on :class:`~.commit.Commit` (one protocol for every output of the project): pass
    ``commit`` to share one with other outputs of the run, or ``inputs`` to have every
    destination checked against the run's inputs by file identity."""

    def __init__(self, folder: str, inputs=(), commit: Commit | None = None):
        self.folder = folder
        self.files = commit if commit is not None else Commit(inputs)
        self._own_commit = commit is None
        self._entries: dict[str, _Pending] = {}
        self._reserved: dict[str, tuple[str, str, str]] = {}
        self._scratch_folder: str | None = None

    def reserve(self, key: str, final_path: str, what: str = "output") -> None:
        """Check and reserve the destination of output ``key`` before any work starts (it is
        not an input, not another output's, its folder is writable); :meth:`create` then
        writes it."""
        self._reserved[key] = (final_path, self.files.reserve(final_path, what), what)

    def create(self, key: str, final_path: str | None, *, width: int, height: int, bands: int,
               data_type: int, geotransform, projection: str, block_rows: int, nodata: float,
               descriptions: list[str], metadata: dict[str, str], qml: str | None = None,
               colour_table: gdal.ColorTable | None = None,
               category_names: list[str] | None = None,
               creation_options: list[str] | None = None, what: str = "output") -> None:
        """Create output ``key`` (to become ``final_path``; None for a scratch raster).

        ``creation_options`` replace the default strip layout (e.g. tiled outputs)."""
        if key in self._reserved:
            final_path, temp, what = self._reserved.pop(key)
        elif final_path:
            temp = self.files.reserve(final_path, what)
        else:
            if self._scratch_folder is None:
                self._scratch_folder = self.files.scratch(os.path.join(self.folder, "x"))
            temp = os.path.join(self._scratch_folder, f"{key}.tif")
        options = ["COMPRESS=DEFLATE", "TILED=NO", f"BLOCKYSIZE={max(1, block_rows)}",
                   "BIGTIFF=IF_SAFER"]
        if data_type == gdal.GDT_Float32:
            options.append("PREDICTOR=3")
        if creation_options is not None:
            options = list(creation_options)
        with GdalErrors() as errors:
            ds = gdal.GetDriverByName("GTiff").Create(temp, width, height, bands, data_type,
                                                      options=options)
        if ds is None:
            raise OutputError(f"cannot create the {what} {final_path or temp}: "
                              f"{'; '.join(errors.messages) or gdal.GetLastErrorMsg()}")
        self._entries[key] = _Pending(temp, final_path, qml, ds, what)
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
        entry = self._entries[key]
        data = data[None] if data.ndim == 2 else data
        with GdalErrors() as errors:  # blocks pushed out of GDAL's cache are written here
            for number in range(data.shape[0]):
                band = entry.dataset.GetRasterBand(first_band + number)
                if band.WriteArray(data[number], col, row) != 0:
                    errors.messages.append(gdal.GetLastErrorMsg() or "GDAL refused the block")
                    break
        errors.raise_if_any(f"{entry.what} {entry.final or entry.temp}")

    def band(self, key: str, number: int = 1) -> gdal.Band:
        return self._entries[key].dataset.GetRasterBand(number)

    def set_band_metadata(self, key: str, number: int, metadata: dict[str, str]) -> None:
        self.band(key, number).SetMetadata(metadata)

    def _close(self, check: bool) -> None:
        """Close every dataset (the last reference: GDAL writes the rest of the file now);
        with ``check``, a GDAL write error raises :class:`OutputError`."""
        for entry in self._entries.values():
            if entry.dataset is None:
                continue
            with GdalErrors() as errors:
                entry.dataset.FlushCache()
                entry.dataset = None  # closes: the TIFF directory is written here
            if check:
                errors.raise_if_any(f"{entry.what} {entry.final or entry.temp}")

    def commit(self, feedback=None) -> None:
        """Close every output, check it, and move it with its sidecars to its final name;
        ``feedback`` (a :class:`~.feedback.Feedback`) gets a line saying what is saved where
        (closing a large compressed GeoTIFF takes a while)."""
        line = self.files.saving_line()
        if feedback is not None and line:
            feedback.info(line)
        try:
            self._close(check=True)
            for entry in self._entries.values():
                if entry.final is None:
                    continue
                if os.path.exists(entry.temp + ".aux.xml"):
                    os.replace(entry.temp + ".aux.xml",
                               self.files.sidecar(entry.final, entry.final + ".aux.xml"))
                if entry.qml is not None:
                    self.files.write_sidecar_text(entry.final, sidecars(entry.final)[1],
                                                  entry.qml)
        except BaseException:
            self.discard()
            raise
        if self._own_commit:
            self.files.commit()
        self._entries.clear()

    def discard(self) -> None:
        """Delete every temporary and scratch file of this run."""
        self._close(check=False)
        self._entries.clear()
        self.files.discard()
