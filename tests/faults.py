"""Real faults for tests: a file-size limit, a small or read-only mount, snapshots of folders.

A full disk is simulated two ways. Portable: the algorithm runs in a child process under
``RLIMIT_FSIZE`` with SIGXFSZ ignored, so every write past the limit fails with EFBIG, as a
full disk fails with ENOSPC (:func:`run_core_limited`). Where mounting is allowed (root in
CI): a small tmpfs (:func:`small_tmpfs`). A read-only destination is a read-only bind mount
(root cannot be kept out by permissions); both skip with the reason where mounting fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD = os.path.join(ROOT, "tests", "fault_child.py")


def snapshot(*folders) -> dict[str, str]:
    """sha256 of every file under ``folders`` (hidden ones included)."""
    digests = {}
    for folder in folders:
        for base, _, names in os.walk(os.fspath(folder)):
            for name in names:
                path = os.path.join(base, name)
                with open(path, "rb") as f:
                    digests[path] = hashlib.sha256(f.read()).hexdigest()
    return digests


QGIS_STATISTICS = ".tif.aux.xml"
"""QGIS itself (not the plugin) saves the histogram it computes to draw a raster it loads
beside that raster, in every run: an input stack gains ``stack.tif.aux.xml``."""


def assert_unchanged(before: dict[str, str], *folders, qgis_loaded_inputs=()) -> None:
    """Every file as it was, none added (a partial file or a stray sidecar), none removed.
    ``qgis_loaded_inputs``: rasters qgis_process loaded, whose new statistics sidecar is
    QGIS's own doing (:data:`QGIS_STATISTICS`)."""
    after = snapshot(*folders)
    allowed = {os.fspath(p) + ".aux.xml" for p in qgis_loaded_inputs}
    added = sorted(set(after) - set(before) - allowed)
    removed = sorted(set(before) - set(after))
    changed = sorted(p for p in set(before) & set(after) if before[p] != after[p])
    assert not (added or removed or changed), (
        f"added {added}, removed {removed}, changed {changed}")


def file_size_limit(limit: int):
    """A ``preexec_fn``: writes past ``limit`` bytes fail with EFBIG instead of killing."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def run_core_limited(call: str, args: list, kwargs: dict, limit: int | None = None,
                     timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``module:function(*args, **kwargs)`` of the core in a child Python, optionally
    under a file-size limit; an LczError ends it like the CLI: one ``error:`` line, status 2."""
    spec = json.dumps({"call": call, "args": args, "kwargs": kwargs})
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([sys.executable, CHILD, spec], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout,
                          preexec_fn=file_size_limit(limit) if limit else None)


def assert_one_clear_error(done: subprocess.CompletedProcess, *needles: str) -> str:
    """Non-zero exit, no traceback, the message holding every needle (and, from the CLIs,
    on an ``error:`` line)."""
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "Traceback" not in output, output
    if not done.args[0].endswith("qgis_process.bin"):
        assert any(line.startswith("error: ") for line in output.splitlines()), output
    for needle in needles:
        assert needle.lower() in output.lower(), f"{needle!r} not in:\n{output}"
    return output


def _mount(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


@contextlib.contextmanager
def small_tmpfs(folder, size_kb: int):
    """A tmpfs of ``size_kb`` mounted on ``folder`` (skips where mounting is not allowed)."""
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    done = _mount("-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", folder)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the file-size-limit "
                    f"tests cover full disks portably")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", folder], capture_output=True)


def fill(folder, leave_bytes: int) -> None:
    """Fill the file system of ``folder`` until about ``leave_bytes`` are free."""
    info = os.statvfs(folder)
    free = info.f_bavail * info.f_frsize
    with open(os.path.join(folder, "filler.bin"), "wb") as f:
        f.write(b"\0" * max(0, free - leave_bytes))


@contextlib.contextmanager
def read_only(folder):
    """``folder`` made read-only for everybody, root included (a read-only bind mount);
    without root, permissions suffice."""
    folder = os.fspath(folder)
    if os.geteuid() != 0:
        mode = os.stat(folder).st_mode
        os.chmod(folder, 0o555)
        try:
            yield folder
        finally:
            os.chmod(folder, mode)
        return
    done = _mount("--bind", folder, folder)
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount here as root ({done.stderr.strip()})")
    done = _mount("-o", "remount,bind,ro", folder)
    if done.returncode != 0:
        subprocess.run(["umount", folder], capture_output=True)
        pytest.skip(f"cannot remount read-only here ({done.stderr.strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", folder], capture_output=True)


def partials(folder) -> list[str]:
    """Temporary files of the commit protocol left anywhere under ``folder``."""
    found = []
    for base, dirs, names in os.walk(os.fspath(folder)):
        found += [os.path.join(base, n) for n in names + dirs if ".lcz-partial-" in n
                  or n.endswith(".partial")]
    return found
