"""Importing h5py inside QGIS, where GDAL has already loaded the system's HDF5 library.

QGIS links GDAL, and with it the system libhdf5, into the executable, so the HDF5 symbols
(``H5Tcopy`` ...) are in the process's global symbol scope. The h5py wheels from PyPI carry
their own, newer libhdf5; when Python loads h5py's extension modules, the dynamic linker binds
part of their HDF5 calls to the system library and part to h5py's own, and the import fails
with ``ValueError: Not a datatype``. Loading h5py's modules with ``RTLD_DEEPBIND`` makes them
prefer their own libhdf5. Outside QGIS (no HDF5 in the global scope) nothing changes.
"""

from __future__ import annotations

import ctypes
import os
import sys


def hdf5_in_global_scope() -> bool:
    try:
        return hasattr(ctypes.CDLL(None), "H5open")
    except OSError:
        return False


def import_h5py():
    """``import h5py`` that also works inside QGIS processes (see the module docstring)."""
    if "h5py" in sys.modules:
        return sys.modules["h5py"]
    deepbind = getattr(os, "RTLD_DEEPBIND", 0)
    if not deepbind or not hdf5_in_global_scope():
        import h5py
        return h5py
    flags = sys.getdlopenflags()
    sys.setdlopenflags(flags | deepbind)
    try:
        import h5py
    finally:
        sys.setdlopenflags(flags)
    return h5py
