"""The project's training-patch file (HDF5), written by patch extraction, read by training.

Schema ``lcz-patches`` (documented in docs/training-data.md, section "Patch files"). Version 1
holds patches, one per cell, for patch models; version 2 adds tiles with a per-pixel label mask
for dense models. A file without masks is still written as version 1, byte for byte as before,
and both versions are read.

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

version 2 (``sample_kind`` = "tiles"): each row is a T x T tile (P = T) instead of a patch
    ``masks``        uint8 (N, T, T)  per-pixel LCZ code 1-17, or 0 for pixels without a
                     label (outside every training area of the tile's split, in areas of
                     different classes, no-data, or beyond the raster edge): ignored by the loss.
    ``labels``       the most frequent code of the tile's mask (for counts and class weights).
    ``polygon_ids``  the training area holding most of the tile's labelled pixels.
    ``split``        the split of the tile's labelled pixels (a tile touching areas of two
                     splits is stored once per split, each copy labelling only its split).
    ``centres``      the tile's centre.

root attributes
    ``schema`` = "lcz-patches", ``schema_version`` = 1, ``channels`` (JSON list of band names
    such as "S2:B02"), ``scale`` / ``offset`` (JSON lists, one per channel), ``patch_size``
    (px), ``pixel_size`` (m), ``cell_size`` (m), ``crs`` (WKT), ``source`` (JSON object:
    input stack, training areas, tool version, date); version 2 adds ``sample_kind``
    ("tiles"), ``nodata`` (JSON list, one value or null per channel: the stack's no-data
    values, which tiles keep as stored) and ``grid_origin`` (JSON [x, y]: the stack's
    top-left corner, where the tile grid and the output cell lattice start).

Patches are stored in chunks of whole patches so that readers can fetch random batches
without loading the file. h5py is imported lazily: it is only needed by the algorithms that
read or write patch files.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from ..commit import Commit, describe_os_error
from ..errors import InputError, OutputError
from ..lcz_classes import LCZ_CODES

SCHEMA = "lcz-patches"
SCHEMA_VERSION = 2
"""The newest version written and read; files without masks are written as version 1."""
PATCHES_VERSION = 1
TILES_VERSION = 2
SAMPLE_KINDS = ("patches", "tiles")
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
    sample_kind: str = "patches"
    """"patches" (one per cell, for patch models) or "tiles" (with a ``masks`` dataset, for
    dense models)."""
    nodata: list | None = None
    """Tiles only: the stack's no-data value per channel (None where a band has none); pixels
    holding it, NaN or an infinite value are no-data and stored as they are."""
    grid_origin: list | None = None
    """Tiles only: x, y of the stack's top-left corner, where both the tile grid and the
    output cell lattice start (a tile's first pixel column is (centre x - x) / pixel_size -
    patch_size / 2; cell boundaries lie every cell_size / pixel_size pixels from x)."""

    @property
    def has_masks(self) -> bool:
        return self.sample_kind == "tiles"

    @property
    def schema_version(self) -> int:
        return TILES_VERSION if self.has_masks else PATCHES_VERSION

    def attrs(self) -> dict:
        attrs = {
            "schema": SCHEMA, "schema_version": self.schema_version,
            "channels": json.dumps(list(self.channels)),
            "scale": json.dumps([float(v) for v in self.scale]),
            "offset": json.dumps([float(v) for v in self.offset]),
            "patch_size": int(self.patch_size), "pixel_size": float(self.pixel_size),
            "cell_size": float(self.cell_size), "crs": self.crs,
            "source": json.dumps(self.source),
        }
        if self.has_masks:  # version 1 files stay exactly as they were
            attrs["sample_kind"] = self.sample_kind
            attrs["nodata"] = json.dumps([json_number(v) for v in
                                          (self.nodata or [None] * len(self.channels))])
            if self.grid_origin is not None:
                attrs["grid_origin"] = json.dumps([float(v) for v in self.grid_origin])
        return attrs


def json_number(value):
    """A no-data value as JSON: NaN (always no-data anyway) and None become null."""
    if value is None or not math.isfinite(float(value)):
        return None
    return float(value)


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

    ``masks=True`` writes a tile file (schema version 2, ``sample_kind`` "tiles"): every
    :meth:`append` then needs ``masks``, one ``T x T`` uint8 mask per tile (T = patch_size).
    """

    def __init__(self, path: str, info: PatchFileInfo, soft_labels: bool = False,
                 split: bool = False, chunk_patches: int = 64, commit: Commit | None = None,
                 masks: bool = False):
        if len(info.scale) != len(info.channels) or len(info.offset) != len(info.channels):
            raise ValueError("scale and offset need one value per channel")
        if info.sample_kind not in SAMPLE_KINDS:
            raise ValueError(f"sample_kind must be one of {SAMPLE_KINDS}, not "
                             f"{info.sample_kind!r}")
        if info.sample_kind == "tiles" and not masks:
            raise ValueError("a tile file (sample_kind 'tiles') needs masks=True")
        if masks and info.sample_kind != "tiles":
            info = dataclasses.replace(info, sample_kind="tiles")
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
            self._create_datasets(info, soft_labels, split, chunk_patches, masks)
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

    def _create_datasets(self, info, soft_labels, split, chunk_patches, masks):
        c, p = len(info.channels), int(info.patch_size)
        chunk = (chunk_patches, c, p, p)
        f = self._file
        f.create_dataset("patches", (0, c, p, p), np.float32, maxshape=(None, c, p, p),
                         chunks=chunk, compression="gzip", compression_opts=1, shuffle=True)
        if masks:
            f.create_dataset("masks", (0, p, p), np.uint8, maxshape=(None, p, p),
                             chunks=(chunk_patches, p, p), compression="gzip",
                             compression_opts=1, shuffle=True)
        f.create_dataset("labels", (0,), np.uint8, maxshape=(None,), chunks=(4096,))
        f.create_dataset("polygon_ids", (0,), np.int64, maxshape=(None,), chunks=(4096,))
        f.create_dataset("centres", (0, 2), np.float64, maxshape=(None, 2), chunks=(4096, 2))
        if soft_labels:
            f.create_dataset("soft_labels", (0, len(LCZ_CODES)), np.float32,
                             maxshape=(None, len(LCZ_CODES)), chunks=(4096, len(LCZ_CODES)))
        if split:
            f.create_dataset("split", (0,), np.uint8, maxshape=(None,), chunks=(4096,))

    def append(self, patches, labels, polygon_ids, centres, soft_labels=None, split=None,
               masks=None):
        """Append N rows; ``masks`` (tile files only): uint8 (N, T, T), LCZ codes 1-17 or 0
        (no label)."""
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
        if "masks" in self._file:
            columns["masks"] = self._checked_masks(masks, n)
        elif masks is not None:
            raise ValueError("this file was opened without masks: pass masks=True to "
                             "PatchWriter to write tiles")
        for name, values in columns.items():
            if len(values) != n:
                raise ValueError(f"{name} has {len(values)} rows, patches has {n}")
        try:
            for name, values in columns.items():
                ds = self._file[name]
                ds.resize(self.count + n, axis=0)
                ds[self.count:self.count + n] = values
        except OSError as exc:
            # HDF5 reading back a chunk whose write was dropped (a full disk) fails here
            # before the failed write is seen: report the write's reason, not HDF5's.
            self._check_written()
            raise OutputError(f"writing the patch file {self.path} failed: {exc}. Nothing "
                              f"was replaced.") from None
        self._check_written()
        self.count += n

    def _checked_masks(self, masks, n: int) -> np.ndarray:
        """The masks as uint8 (n, T, T), refusing a wrong shape or a value that is no LCZ
        code (0 = no label is allowed)."""
        if masks is None:
            raise ValueError("this file was opened with masks: pass masks")
        masks = np.asarray(masks)
        p = int(self.info.patch_size)
        if masks.shape != (n, p, p):
            raise ValueError(f"masks must have shape {(n, p, p)}, not {masks.shape}")
        bad = (masks != 0) & ~np.isin(masks, LCZ_CODES)
        if bad.any():
            raise ValueError(f"masks must hold LCZ codes 1-17 or 0 (no label), got "
                             f"{sorted(set(masks[bad].tolist()))[:10]}")
        return masks.astype(np.uint8)

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
    sample_kind = _sample_kind(h5file, path, version)
    return PatchFileInfo(
        channels=channels, patch_size=int(p), pixel_size=float(attrs["pixel_size"]),
        cell_size=float(attrs["cell_size"]), scale=_json_attr(attrs, "scale", path),
        offset=_json_attr(attrs, "offset", path), crs=str(attrs.get("crs", "")),
        source=_json_attr(attrs, "source", path) if "source" in attrs else {},
        count=int(n), has_soft_labels="soft_labels" in h5file, has_split="split" in h5file,
        sample_kind=sample_kind,
        nodata=_json_attr(attrs, "nodata", path) if "nodata" in attrs else None,
        grid_origin=_json_attr(attrs, "grid_origin", path) if "grid_origin" in attrs else None)


def _sample_kind(h5file, path: str, version: int) -> str:
    """"tiles" for a file with masks, "patches" otherwise; refuses a file whose masks, version
    and ``sample_kind`` attribute disagree (a damaged or hand-made file)."""
    declared = h5file.attrs.get("sample_kind", "patches")
    if isinstance(declared, bytes):
        declared = declared.decode("utf-8", "replace")
    if declared not in SAMPLE_KINDS:
        raise InputError(f"{path}: unknown sample_kind {declared!r} (expected one of "
                         f"{', '.join(SAMPLE_KINDS)}); re-extract it with lcz:extractpatches.")
    if "masks" not in h5file:
        if declared == "tiles":
            raise InputError(f"{path} says it holds tiles but has no masks dataset; "
                             f"re-extract it with lcz:extractpatches (SAMPLES = tiles).")
        return "patches"
    n, _, p, _ = h5file["patches"].shape
    if declared != "tiles" or version < TILES_VERSION:
        raise InputError(f"{path} has a masks dataset but is not marked as a tile file "
                         f"(schema_version {version}, sample_kind {declared!r}); re-extract it "
                         f"with lcz:extractpatches (SAMPLES = tiles).")
    if h5file["masks"].shape != (n, p, p):
        raise InputError(f"{path}: masks have shape {h5file['masks'].shape}, but the tiles "
                         f"need {(n, p, p)}; re-extract the tiles.")
    return "tiles"


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
