"""Outputs that appear complete or not at all, and inputs that are never written.

Every file a run writes (rasters, patch files, reports, models, checkpoints) goes through one
:class:`Commit`:

1. :meth:`Commit.reserve` checks the destination (its folder can be created and written, it
   is not one of the run's inputs by file identity, not reserved twice) and returns a
   temporary name in the destination folder (``.<name>.lcz-partial-<host>-<pid>-<token><ext>``),
   so the final rename never crosses a file system;
2. the caller writes the temporary file (:meth:`write_text`, :meth:`write_bytes`,
   :meth:`save_with`, or its own writer on :meth:`reserve`'s path), checking every write,
   flush and close (:func:`gdal_errors` collects GDAL's, which GDAL 3.6 reports only to its
   error handler);
3. when the whole run succeeded, :meth:`Commit.commit` fsyncs every temporary file, then
   moves each into place with ``os.replace`` (atomic: readers see the old file or the new one,
   never a mixture) together with its sidecars (``.qml``, ``.aux.xml``), and fsyncs the
   folders. The previous file is never removed before its replacement is complete; a stale
   sidecar the new file does not have is removed only after the new file is in place.

An error, a cancel or a signal before that point deletes the temporary files and leaves every
previous output and every input as it was (``with Commit(...) as commit:`` does both).
A process killed outright (SIGKILL, power loss) leaves its temporary files behind; their
names say which host and process wrote them, and the next run into the same folder deletes
those whose process is gone (:func:`sweep_partials`; ``python -m lcz_qgis_plugin.core
clean-partials FOLDER`` does the same by hand).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .errors import InputError, OutputError

PARTIAL_MARK = ".lcz-partial-"
_HOST = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname() or "host")[:32]
_PARTIAL = re.compile(re.escape(PARTIAL_MARK) + r"(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-[0-9a-f]+")
_FULL_DISK = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def describe_os_error(exc: OSError) -> str:
    """The reason, with the fix for the usual ones (full disk, file too large, read-only)."""
    reason = exc.strerror or str(exc)
    if exc.errno in _FULL_DISK:
        return f"{reason}: free some space or write to another disk"
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"{reason}: choose a folder you can write to"
    return reason


# -- which files an input is ----------------------------------------------------------------

def _identity(path: str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def input_files(path: str) -> list[str]:
    """The files behind an input: the file itself (a ``|layername=...`` suffix dropped) and,
    for a raster GDAL opens, every file it reads, following VRTs into VRTs."""
    path = os.fspath(path).split("|")[0]
    files, queue = [], [path]
    while queue:
        current = queue.pop()
        if current in files:
            continue
        files.append(current)
        if current.lower().endswith(".vrt") and os.path.isfile(current):
            queue.extend(f for f in _gdal_file_list(current) if f not in files)
    return files


def _gdal_file_list(path: str) -> list[str]:
    from osgeo import gdal
    gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        ds = gdal.Open(path)
        return list(ds.GetFileList() or []) if ds is not None else []
    finally:
        gdal.PopErrorHandler()


class InputIdentities:
    """File identities (device, inode) of a run's inputs, with the name each was given as."""

    def __init__(self, inputs: Iterable[str] = ()):
        self._by_identity: dict[tuple[int, int], str] = {}
        for given in inputs:
            if given:
                self.add(given)

    def add(self, given: str) -> None:
        for path in input_files(os.fspath(given)):
            identity = _identity(path)
            if identity is not None:
                self._by_identity.setdefault(identity, os.fspath(given))

    def owner_of(self, path: str) -> str | None:
        """The input given as, when ``path`` is (or reaches) the same file as an input."""
        identity = _identity(path)
        return self._by_identity.get(identity) if identity is not None else None


# -- temporary names and their clean-up -------------------------------------------------------

def partial_path(final: str) -> str:
    """A temporary name beside ``final`` that keeps its extension (drivers pick formats by
    it) and says who writes it."""
    folder, name = os.path.split(os.path.abspath(final))
    ext = ".aux.xml" if name.lower().endswith(".aux.xml") else os.path.splitext(name)[1]
    token = uuid.uuid4().hex[:8]
    return os.path.join(folder, f".{name}{PARTIAL_MARK}{_HOST}-{os.getpid()}-{token}{ext}")


def is_partial(name: str) -> bool:
    return _PARTIAL.search(os.path.basename(name)) is not None


def _process_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def sweep_partials(folder: str) -> list[str]:
    """Delete the temporary files (and scratch folders) that a killed run of this host left in
    ``folder``: those whose writing process no longer runs. Returns what was deleted."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        match = _PARTIAL.search(name)
        if not match or match.group("host") != _HOST:
            continue
        pid = int(match.group("pid"))
        if pid == os.getpid() or _process_running(pid):
            continue
        path = os.path.join(folder, name)
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
            removed.append(path)
        except OSError:
            pass
    return removed


def scratch_folder(near: str) -> str:
    """A private scratch folder beside ``near`` (named like a partial file, so a killed run's
    scratch is swept like its outputs). The caller deletes it."""
    folder = os.path.dirname(os.path.abspath(near))
    path = partial_path(os.path.join(folder, "scratch"))
    os.mkdir(path, 0o700)
    return path


# -- writing and committing ---------------------------------------------------------------------

def fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders; the data is synced
        pass
    finally:
        os.close(fd)


def _file_in_the_way(folder: str) -> str | None:
    """The nearest existing part of ``folder`` when it is a file (a file named like one of
    the path's folders), else None."""
    while folder and not os.path.exists(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return folder if folder and os.path.exists(folder) and not os.path.isdir(folder) else None


def _remove(path: str) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)
    except FileNotFoundError:
        pass
    except OSError:
        pass


@dataclass
class _Entry:
    final: str
    temp: str
    what: str
    sidecars: dict[str, str | None] = field(default_factory=dict)
    """final sidecar path -> its temporary file, or None: delete the old one at commit."""


def default_sidecars(final: str) -> list[str]:
    """Files GDAL and QGIS keep beside a raster: stale ones would describe the new file."""
    return [final + ".aux.xml", os.path.splitext(final)[0] + ".qml"]


class Commit:
    """The outputs of one run: reserved, written under temporary names, then put in place
    together (:meth:`commit`) or deleted (:meth:`discard`)."""

    def __init__(self, inputs: Iterable[str] = ()):
        self.inputs = InputIdentities(inputs)
        self._entries: dict[str, _Entry] = {}
        self._swept: set[str] = set()
        self._scratch: list[str] = []

    def add_inputs(self, inputs: Iterable[str]) -> None:
        for given in inputs:
            if given:
                self.inputs.add(given)

    # reserving --------------------------------------------------------------------------

    def reserve(self, final: str, what: str = "output", *,
                stale_sidecars: Iterable[str] | None = None) -> str:
        """The temporary path to write ``final`` to. Refuses a destination that is an input
        or already reserved, or whose folder cannot be written. ``stale_sidecars``: old
        sidecar files to delete once ``final`` is replaced (default: ``.aux.xml`` and
        ``.qml`` for rasters, none otherwise)."""
        final = os.path.abspath(os.fspath(final))
        if final in self._entries:
            raise InputError(f"two outputs point at the same file {final}; give each output "
                             f"its own name.")
        owner = self.inputs.owner_of(final)
        if owner is not None:
            raise InputError(f"the {what} {final} is the same file as the input {owner}"
                             + ("" if os.path.abspath(owner) == final else
                                " (reached through a link or a virtual raster)")
                             + f"; writing it would destroy the input. Choose another "
                               f"file name for the {what}.")
        if os.path.isdir(final):
            raise InputError(f"the {what} {final} is a folder; give a file name.")
        folder = os.path.dirname(final)
        self._prepare_folder(folder, what)
        temp = partial_path(final)
        if stale_sidecars is None:
            is_raster = final.lower().endswith((".tif", ".tiff", ".vrt"))
            stale_sidecars = default_sidecars(final) if is_raster else []
        self._entries[final] = _Entry(final, temp, what,
                                      {os.path.abspath(s): None for s in stale_sidecars})
        return temp

    def _prepare_folder(self, folder: str, what: str) -> None:
        blocker = _file_in_the_way(folder)
        if blocker:
            raise OutputError(f"cannot create the folder {folder} for the {what}: {blocker} "
                              f"is a file, not a folder; choose another folder.")
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create the folder {folder} for the {what}: "
                              f"{describe_os_error(exc)}.") from None
        try:  # a real write, so that a read-only mount or a full quota is told apart
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as exc:
            raise OutputError(f"cannot write the {what} into {folder}: "
                              f"{describe_os_error(exc)}.") from None
        if folder not in self._swept:
            self._swept.add(folder)
            sweep_partials(folder)

    def sidecar(self, final: str, sidecar_final: str) -> str:
        """Temporary path of a sidecar of ``final`` (reserved already) that moves with it."""
        entry = self._entries[os.path.abspath(os.fspath(final))]
        sidecar_final = os.path.abspath(os.fspath(sidecar_final))
        temp = partial_path(sidecar_final)
        entry.sidecars[sidecar_final] = temp
        return temp

    def scratch(self, near: str) -> str:
        """A scratch folder beside ``near``, deleted when the run ends either way."""
        try:
            path = scratch_folder(near)
        except OSError as exc:
            raise OutputError(f"cannot create a scratch folder beside {near}: "
                              f"{describe_os_error(exc)}.") from None
        self._scratch.append(path)
        return path

    def temp_of(self, final: str) -> str:
        return self._entries[os.path.abspath(os.fspath(final))].temp

    def __contains__(self, final: str) -> bool:
        return os.path.abspath(os.fspath(final)) in self._entries

    # writing helpers ----------------------------------------------------------------------

    def write_text(self, final: str, text: str, what: str = "output") -> str:
        return self.write_bytes(final, text.encode("utf-8"), what)

    def write_bytes(self, final: str, data: bytes, what: str = "output") -> str:
        temp = self.reserve(final, what) if final not in self else self.temp_of(final)
        _write_file(temp, data, final, what)
        return temp

    def write_sidecar_text(self, final: str, sidecar_final: str, text: str) -> str:
        temp = self.sidecar(final, sidecar_final)
        _write_file(temp, text.encode("utf-8"), sidecar_final, "style file")
        return temp

    def save_with(self, final: str, save: Callable[[str], object], what: str = "output",
                  errors: tuple[type[BaseException], ...] = ()):
        """Reserve ``final`` and call ``save(temporary_path)``; an OSError (or one of
        ``errors``: libraries that report a failed write their own way, such as torch's
        RuntimeError) becomes a clear :class:`OutputError`."""
        temp = self.reserve(final, what) if final not in self else self.temp_of(final)
        try:
            return save(temp)
        except OSError as exc:
            raise OutputError(f"writing the {what} {final} failed: "
                              f"{describe_os_error(exc)}. Nothing was replaced.") from None
        except errors as exc:
            raise OutputError(f"writing the {what} {final} failed: {str(exc)[:300]}. Free "
                              f"some space or write to another disk. Nothing was "
                              f"replaced.") from None

    # the end -------------------------------------------------------------------------------

    def saving_line(self) -> str:
        """The log line before :meth:`commit`: what is put in place, and where ("" when
        nothing is)."""
        if not self._entries:
            return ""
        return "Saving " + ", ".join(f"the {entry.what} {entry.final}"
                                     for entry in self._entries.values()) + "."

    def commit(self) -> None:
        """Sync every temporary file, then move each into place with its sidecars."""
        try:
            for entry in self._entries.values():
                for temp in [entry.temp] + [t for t in entry.sidecars.values() if t]:
                    if not os.path.exists(temp):
                        raise OutputError(f"the {entry.what} {entry.final} was not written "
                                          f"(its temporary file is missing).")
                    fsync_file(temp)
        except OSError as exc:
            self.discard()
            raise OutputError(f"writing the outputs failed: {describe_os_error(exc)}. "
                              f"Nothing was replaced.") from None
        except BaseException:
            self.discard()
            raise
        folders = set()
        for entry in self._entries.values():
            try:
                for sidecar_final, temp in entry.sidecars.items():
                    if temp:
                        os.replace(temp, sidecar_final)
                os.replace(entry.temp, entry.final)
            except OSError as exc:
                self.discard()
                raise OutputError(f"cannot move the {entry.what} into place as {entry.final}: "
                                  f"{describe_os_error(exc)}.") from None
            for sidecar_final, temp in entry.sidecars.items():
                if temp is None:
                    _remove(sidecar_final)
            folders.add(os.path.dirname(entry.final))
        for folder in folders:
            fsync_folder(folder)
        self._entries.clear()
        self._remove_scratch()

    def discard(self) -> None:
        """Delete every temporary file and scratch folder of this run."""
        for entry in self._entries.values():
            for temp in [entry.temp, entry.temp + ".aux.xml"] + [
                    t for t in entry.sidecars.values() if t]:
                _remove(temp)
        self._entries.clear()
        self._remove_scratch()

    def _remove_scratch(self) -> None:
        for path in self._scratch:
            _remove(path)
        self._scratch.clear()

    def __enter__(self) -> Commit:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def _write_file(temp: str, data: bytes, final: str, what: str) -> None:
    try:
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        _remove(temp)
        raise OutputError(f"writing the {what} {final} failed: {describe_os_error(exc)}. "
                          f"Nothing was replaced.") from None


# -- GDAL's errors -----------------------------------------------------------------------------

class GdalErrors:
    """GDAL errors (CE_Failure and worse) raised while the block runs, in this thread.

    GDAL 3.6 reports a failed block write (a full disk) only to its error handler: the
    ``WriteArray`` that filled the cache returns success and ``FlushCache`` returns nothing.
    """

    def __init__(self):
        self.messages: list[str] = []

    def __call__(self, error_class, number, message) -> None:
        if error_class >= 3:  # CE_Failure, CE_Fatal
            self.messages.append(str(message))

    def __enter__(self) -> GdalErrors:
        from osgeo import gdal
        gdal.PushErrorHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        from osgeo import gdal
        gdal.PopErrorHandler()

    def raise_if_any(self, what: str) -> None:
        if self.messages:
            detail = "; ".join(dict.fromkeys(m.strip().rstrip(".") for m in self.messages))
            detail = detail[:400]
            hint = (" Free some space or write to another disk." if any(
                k in detail.lower() for k in ("space", "too large", "write error"))
                else "")
            raise OutputError(f"writing the {what} failed: {detail}.{hint} Nothing was "
                              f"replaced.")


@contextlib.contextmanager
def committed(inputs: Iterable[str] = ()):
    """``with committed(inputs) as commit:`` (the same as ``with Commit(inputs)``)."""
    commit = Commit(inputs)
    with commit:
        yield commit
