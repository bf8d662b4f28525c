"""The project's training-patch file (HDF5), written by patch extraction, read by training.

Schema ``lcz-patches`` version 1 (documented in docs/training-data.md, section "Patch files"):

datasets (N = number of patches, C channels, P x P pixels)
    ``patches``      float32 (N, C, P, P)  values in the input stack's own units (e.g.
                     Sentinel-2 DN); the per-channel ``scale`` / ``offset`` attributes say how
                     the model turns them into physical units (x * scale + offset).
    ``labels``       uint8 (N,)  LCZ code 1-17 of the cell the patch is centred on.
    ``soft_labels``  float32 (N, 17), optional: label distribution (votes) per class 1-17.
    ``polygon_ids``  int64 (N,)  id of the training area the cell came from (spatial splits
                     must keep all patches of one polygon in one split).
    ``split``        uint8 (N,), optional: 0 train, 1 validation, 2 test (a hold-out split
                     chosen by polygon at extraction time).
    ``centres``      float64 (N, 2)  x, y of the cell centre in the stack's CRS.

root attributes
    ``schema`` = "lcz-patches", ``schema_version`` = 1, ``channels`` (JSON list of band names
    such as "S2:B02"), ``scale`` / ``offset`` (JSON lists, one per channel), ``patch_size``
    (px), ``pixel_size`` (m), ``cell_size`` (m), ``crs`` (WKT), ``source`` (JSON object:
    input stack, training areas, tool version, date).

Patches are stored in chunks of whole patches so that readers can fetch random batches
without loading the file. h5py is imported lazily: it is only needed by the algorithms that
read or write patch files.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field

import numpy as np

from ..commit import Commit, describe_os_error
from ..errors import InputError, OutputError
from ..lcz_classes import LCZ_CODES

SCHEMA = "lcz-patches"
SCHEMA_VERSION = 1
SPLITS = {"train": 0, "validation": 1, "test": 2}

H5PY_MISSING = (
    "h5py is not installed in this Python, so patch files cannot be read or written. In "
    "QGIS, run 'Install LCZ dependencies' (lcz:installdependencies, Processing Toolbox > Local "
    "Climate Zones > Tools) and retry. By hand: Debian/Ubuntu 'sudo apt install python3-h5py' "
    "(or 'python3 -m pip install --user --break-system-packages h5py'); Windows: in the "
    "OSGeo4W Shell, 'python -m pip install h5py'; a venv: 'python -m pip install h5py'.")

def _h5py():
    from ..h5import import import_h5py
    try:
        return import_h5py()
    except ImportError as exc:
        raise InputError(f"{H5PY_MISSING} (Python said: {exc})") from None


@dataclass
class PatchFileInfo:
    """What a patch file holds, without its arrays."""

    channels: list[str]
    patch_size: int
    pixel_size: float
    cell_size: float
    scale: list[float]
    offset: list[float]
    crs: str = ""
    source: dict = field(default_factory=dict)
    count: int = 0
    has_soft_labels: bool = False
    has_split: bool = False

    def attrs(self) -> dict:
        return {
            "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
            "channels": json.dumps(list(self.channels)),
            "scale": json.dumps([float(v) for v in self.scale]),
            "offset": json.dumps([float(v) for v in self.offset]),
            "patch_size": int(self.patch_size), "pixel_size": float(self.pixel_size),
            "cell_size": float(self.cell_size), "crs": self.crs,
            "source": json.dumps(self.source),
        }


class _GuardedFile(io.RawIOBase):
    """The patch file's bytes, seen by HDF5 through h5py's file-object driver.

    A failed write (a full disk) is remembered instead of reaching HDF5: after it, writes are
    accepted and dropped, so HDF5 can still close the file it thinks is intact. Left to
    itself, HDF5 keeps a file it could not flush open and crashes the process when the
    library shuts down; here the caller sees :attr:`error` and deletes the file."""

    def __init__(self, path: str):
        super().__init__()
        self._file = open(path, "w+b", buffering=0)
        self.error: OSError | None = None

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, position: int, whence: int = 0) -> int:
        return self._file.seek(position, whence)

    def tell(self) -> int:
        return self._file.tell()

    def readinto(self, buffer) -> int:
        return self._file.readinto(buffer)

    def write(self, data) -> int:
        if self.error is None:
            try:
                return self._file.write(data)
            except OSError as exc:
                self.error = exc
        size = len(memoryview(data))
        self._file.seek(size, 1)
        return size

    def truncate(self, size=None):
        if self.error is None:
            try:
                return self._file.truncate(size)
            except OSError as exc:
                self.error = exc
        return size

    def flush(self) -> None:
        if self.error is None and not self._file.closed:
            try:
                os.fsync(self._file.fileno())
            except OSError as exc:
                self.error = exc

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        super().close()


class PatchWriter:
    """Appends patches to a new patch file; the file appears under its name only on close().

    Use as a context manager: an exception inside the block removes the partial file. The
    file is written under a temporary name of ``commit`` (:class:`~.commit.Commit`; one of its
    own when none is given, committed on close); with a shared ``commit`` the caller commits.
    """

    def __init__(self, path: str, info: PatchFileInfo, soft_labels: bool = False,
                 split: bool = False, chunk_patches: int = 64, commit: Commit | None = None):
        if len(info.scale) != len(info.channels) or len(info.offset) != len(info.channels):
            raise ValueError("scale and offset need one value per channel")
        self.path = path
        self.info = info
        self._own_commit = commit is None
        self._commit = commit if commit is not None else Commit()
        self._partial = (self._commit.temp_of(path) if path in self._commit
                         else self._commit.reserve(path, "patch file"))
        h5py = _h5py()
        self._file = self._bytes = None
        try:
            self._bytes = _GuardedFile(self._partial)
            self._file = h5py.File(self._bytes, "w")
            self._create_datasets(info, soft_labels, split, chunk_patches)
        except OSError as exc:
            self.discard()
            raise OutputError(f"cannot create the patch file {path}: "
                              f"{describe_os_error(exc)}.") from None
        self.count = 0

    def _check_written(self) -> None:
        if self._bytes.error is not None:
            error = self._bytes.error
            self.discard()
            raise OutputError(f"writing the patch file {self.path} failed: "
                              f"{describe_os_error(error)}. Nothing was replaced.")

    def _create_datasets(self, info, soft_labels, split, chunk_patches):
        c, p = len(info.channels), int(info.patch_size)
        chunk = (chunk_patches, c, p, p)
        f = self._file
        f.create_dataset("patches", (0, c, p, p), np.float32, maxshape=(None, c, p, p),
                         chunks=chunk, compression="gzip", compression_opts=1, shuffle=True)
        f.create_dataset("labels", (0,), np.uint8, maxshape=(None,), chunks=(4096,))
        f.create_dataset("polygon_ids", (0,), np.int64, maxshape=(None,), chunks=(4096,))
        f.create_dataset("centres", (0, 2), np.float64, maxshape=(None, 2), chunks=(4096, 2))
        if soft_labels:
            f.create_dataset("soft_labels", (0, len(LCZ_CODES)), np.float32,
                             maxshape=(None, len(LCZ_CODES)), chunks=(4096, len(LCZ_CODES)))
        if split:
            f.create_dataset("split", (0,), np.uint8, maxshape=(None,), chunks=(4096,))

    def append(self, patches, labels, polygon_ids, centres, soft_labels=None, split=None):
        patches = np.asarray(patches, dtype=np.float32)
        n = patches.shape[0]
        labels = np.asarray(labels)
        bad = ~np.isin(labels, LCZ_CODES)
        if bad.any():
            raise ValueError(f"labels must be LCZ codes 1-17, got "
                             f"{sorted(set(labels[bad].tolist()))}")
        columns = {"patches": patches, "labels": labels.astype(np.uint8),
                   "polygon_ids": np.asarray(polygon_ids, dtype=np.int64),
                   "centres": np.asarray(centres, dtype=np.float64).reshape(n, 2)}
        if "soft_labels" in self._file:
            if soft_labels is None:
                raise ValueError("this file was opened with soft labels: pass soft_labels")
            columns["soft_labels"] = np.asarray(soft_labels, dtype=np.float32)
        if "split" in self._file:
            if split is None:
                raise ValueError("this file was opened with a split: pass split")
            columns["split"] = np.asarray(split, dtype=np.uint8)
        for name, values in columns.items():
            if len(values) != n:
                raise ValueError(f"{name} has {len(values)} rows, patches has {n}")
        for name, values in columns.items():
            ds = self._file[name]
            ds.resize(self.count + n, axis=0)
            ds[self.count:self.count + n] = values
        self._check_written()
        self.count += n

    def close(self) -> str:
        """Write the attributes, close the file and (with a commit of its own) move it to its
        final name."""
        for key, value in self.info.attrs().items():
            self._file.attrs[key] = value
        self._file.close()
        self._bytes.flush()
        self._check_written()
        self._bytes.close()
        if self._own_commit:
            self._commit.commit()
        return self.path

    def discard(self):
        try:
            if self._file is not None:
                self._file.close()
            if self._bytes is not None:
                self._bytes.close()
        finally:
            self._file = self._bytes = None
            if self._own_commit:
                self._commit.discard()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.discard()
        return False


def _json_attr(attrs, key, path):
    try:
        return json.loads(attrs[key])
    except KeyError:
        raise InputError(f"{path} has no '{key}' attribute: it is not a complete lcz patch "
                         "file (write it with lcz:extractpatches).") from None
    except (TypeError, ValueError):
        raise InputError(f"{path}: attribute '{key}' is not valid JSON.") from None


def read_info(h5file, path: str = "") -> PatchFileInfo:
    """Check the schema of an open h5py File and describe it. Raises InputError naming what
    is wrong."""
    path = path or h5file.filename
    attrs = h5file.attrs
    if attrs.get("schema") != SCHEMA:
        raise InputError(f"{path} is not an lcz patch file (attribute "
                         f"schema={attrs.get('schema')!r}, expected {SCHEMA!r}). So2Sat LCZ42 "
                         f"files are read with the so2sat dataset.")
    version = int(attrs.get("schema_version", 0))
    if version > SCHEMA_VERSION:
        raise InputError(f"{path} uses patch schema {version}; this version reads up to "
                         f"{SCHEMA_VERSION}. Update the plugin / training package.")
    missing = [k for k in ("patches", "labels", "polygon_ids", "centres") if k not in h5file]
    if missing:
        raise InputError(f"{path} lacks the dataset(s) {', '.join(missing)}; re-extract the "
                         f"patches.")
    channels = _json_attr(attrs, "channels", path)
    n, c, p, _ = h5file["patches"].shape
    if c != len(channels):
        raise InputError(f"{path}: patches have {c} channels but {len(channels)} channel names.")
    return PatchFileInfo(
        channels=channels, patch_size=int(p), pixel_size=float(attrs["pixel_size"]),
        cell_size=float(attrs["cell_size"]), scale=_json_attr(attrs, "scale", path),
        offset=_json_attr(attrs, "offset", path), crs=str(attrs.get("crs", "")),
        source=_json_attr(attrs, "source", path) if "source" in attrs else {},
        count=int(n), has_soft_labels="soft_labels" in h5file, has_split="split" in h5file)


def open_patch_file(path: str):
    """Open a patch file read-only; returns (h5py.File, PatchFileInfo). Close the file when done."""
    if not os.path.isfile(path):
        raise InputError(f"Patch file not found: {path}")
    h5py = _h5py()
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{path} cannot be read as HDF5 ({exc}); is it a patch file?") from None
    try:
        return f, read_info(f, path)
    except Exception:
        f.close()
        raise
