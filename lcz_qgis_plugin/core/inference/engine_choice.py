"""How the Automatic device picks its CPU engine: CPU features, a short measurement, a cache.

Which CPU engine is fastest depends on the CPU, not only on what it can execute: bfloat16
runs on AMX tiles at 2.3-2.7x float32 (Xeon Sapphire Rapids and later), but on CPUs that have
AVX512-BF16 dot products without AMX (AMD Zen 4/5, Xeon Cooper Lake) it was measured slower
than float32 (0.64x for MSMLA-50 on a 2-core Xeon), and int8 through VNNI was the fastest
engine there. So the Automatic device takes the engines that keep the map (float32 always,
bfloat16 and int8 only where the model card records a passed check), lets the CPU's features
decide where they settle it (AMX: bfloat16 beats both float32 engines), and otherwise times a
few batches of each on first use. The decision is cached in a small JSON file in the user's
cache folder, keyed by the model file's SHA-256, the CPU's model name and flags, the threads
and the onnxruntime and openvino versions, so later runs open only the winner; a changed
model file, CPU or engine version measures again.

The cache folder is ``$LCZ_CACHE_DIR`` when set, else ``$XDG_CACHE_HOME/lcz``, else the
platform's cache folder (``~/.cache/lcz``, ``%LOCALAPPDATA%\\lcz``,
``~/Library/Caches/lcz``). A cache that cannot be read or written only costs the measurement.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import sys
import tempfile
import threading
import time

CACHE_ENV = "LCZ_CACHE_DIR"
CACHE_FILE = "engine-choices.json"
CACHE_VERSION = 1
MAX_CHOICES = 200  # oldest dropped beyond this
MAX_HASHES = 200

REDUCED_MARGIN = 1.05
"""A reduced-precision engine (bfloat16, int8) is chosen over the fastest float32 engine only
when measured at least this much faster: within the noise of a short measurement the exact
engine is kept."""

# timing: a few batches per candidate, interleaved so that a busy moment of a shared machine
# does not fall on one candidate only; the best batch counts
MEASURE_PATCHES = 32
MEASURE_TILES = 2  # dense models: tiles of the default tile size (256 px: 64 patches of 32 px)
MEASURE_ROUNDS = 3
MEASURE_SECONDS = 1.5  # rounds stop early once the timed batches took this long in all


# --- the CPU --------------------------------------------------------------------------------

_cpu: dict = {}


def cpu_info() -> dict:
    """``{"name": model name, "flags": set of /proc/cpuinfo flags}`` (flags empty where the
    system does not list them, e.g. Windows and macOS)."""
    if not _cpu:
        name, flags = "", set()
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
                for line in info:
                    key, _, value = line.partition(":")
                    key = key.strip()
                    if key == "model name" and not name:
                        name = value.strip()
                    elif key in ("flags", "Features") and not flags:
                        flags = set(value.split())
                    if name and flags:
                        break
        except OSError:
            pass
        _cpu.update(name=name or platform.processor() or platform.machine(), flags=flags)
    return _cpu


def cpu_has_amx() -> bool:
    """Whether the CPU has AMX tiles for bfloat16 (Linux reports ``amx_bf16``)."""
    return "amx_bf16" in cpu_info()["flags"]


def cpu_features() -> str:
    """The features that decide the CPU engines, for logs and the benchmark."""
    flags = cpu_info()["flags"]
    if not flags:
        return "CPU features not listed by this system"
    shown = [("AMX", "amx_bf16" in flags or "amx_tile" in flags),
             ("AVX512-BF16", "avx512_bf16" in flags),
             ("VNNI", "avx512_vnni" in flags or "avx_vnni" in flags),
             ("AVX-512", "avx512f" in flags)]
    return ", ".join(f"{name} {'yes' if present else 'no'}" for name, present in shown)


def cpu_key() -> str:
    """The CPU's model name and a digest of all its flags (a hypervisor may hide AMX from a
    CPU of the same name)."""
    info = cpu_info()
    digest = hashlib.sha256(" ".join(sorted(info["flags"])).encode()).hexdigest()[:16]
    return f"{info['name']} [{digest}]"


# --- the cache file -------------------------------------------------------------------------

def cache_folder() -> str:
    if os.environ.get(CACHE_ENV):
        return os.environ[CACHE_ENV]
    if os.environ.get("XDG_CACHE_HOME"):
        return os.path.join(os.environ["XDG_CACHE_HOME"], "lcz")
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return os.path.join(os.environ["LOCALAPPDATA"], "lcz")
    if sys.platform == "darwin":
        return os.path.join(os.path.expanduser("~"), "Library", "Caches", "lcz")
    return os.path.join(os.path.expanduser("~"), ".cache", "lcz")


def cache_path() -> str:
    return os.path.join(cache_folder(), CACHE_FILE)


_lock = threading.Lock()


def _load() -> dict:
    try:
        with open(cache_path(), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        data = {}
    data["version"] = CACHE_VERSION
    for part in ("hashes", "choices"):
        if not isinstance(data.get(part), dict):
            data[part] = {}
    return data


def _save(data: dict) -> None:
    """Write through a temporary file: a parallel run reads the old or the new cache, never a
    half-written one. Failing to write (read-only home) only costs a later measurement."""
    for part, limit in (("hashes", MAX_HASHES), ("choices", MAX_CHOICES)):
        entries = data[part]
        while len(entries) > limit:
            entries.pop(next(iter(entries)))
    folder = cache_folder()
    try:
        os.makedirs(folder, exist_ok=True)
        handle, partial = tempfile.mkstemp(prefix=".engine-choices.", dir=folder)
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(partial, cache_path())
    except OSError:
        pass


# --- file hashes ----------------------------------------------------------------------------

_hashes: dict = {}


def file_sha256(path: str) -> str:
    """SHA-256 of a file, computed once per file version (path, modification time, size) and
    kept in this process and in the cache file."""
    info = os.stat(path)
    real = os.path.realpath(path)
    version = [info.st_mtime_ns, info.st_size]
    known = _hashes.get(real)
    if known and known[0] == version:
        return known[1]
    with _lock:
        data = _load()
        stored = data["hashes"].get(real)
        if isinstance(stored, dict) and stored.get("version") == version:
            digest = stored.get("sha256", "")
        else:
            digest = ""
        if len(digest) != 64:
            sha = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    sha.update(block)
            digest = sha.hexdigest()
            data["hashes"].pop(real, None)
            data["hashes"][real] = {"version": version, "sha256": digest}
            _save(data)
    _hashes[real] = (version, digest)
    return digest


# --- decisions ------------------------------------------------------------------------------

def decision_key(model_sha256: str, threads: int, versions: str) -> str:
    return f"{model_sha256}|{cpu_key()}|threads {threads}|{versions}"


def cached_choice(key: str) -> dict | None:
    with _lock:
        entry = _load()["choices"].get(key)
    return entry if isinstance(entry, dict) and isinstance(entry.get("engine"), str) else None


def store_choice(key: str, engine: str, rates: dict, note: str) -> dict:
    entry = {"engine": engine, "rates": {k: round(v, 1) for k, v in rates.items()},
             "note": note, "date": _dt.datetime.now().isoformat(timespec="seconds")}
    with _lock:
        data = _load()
        data["choices"].pop(key, None)
        data["choices"][key] = entry
        _save(data)
    return entry


def measure(runners: dict, batch, warm: bool = True) -> dict:
    """Patches per second of each runner (``{candidate: callable(batch)}``) on ``batch``: one
    warm-up call each (unless the caller made it), then up to :data:`MEASURE_ROUNDS`
    interleaved timed calls; the fastest call counts (the others met a busy moment)."""
    best = {}
    for name, run in runners.items():
        if warm:
            run(batch)
        best[name] = float("inf")
    spent = 0.0
    for round_index in range(MEASURE_ROUNDS):
        order = list(runners) if round_index % 2 == 0 else list(runners)[::-1]
        for name in order:
            start = time.perf_counter()
            runners[name](batch)
            seconds = time.perf_counter() - start
            spent += seconds
            best[name] = min(best[name], seconds)
        if spent > MEASURE_SECONDS:
            break
    return {name: len(batch) / max(seconds, 1e-9) for name, seconds in best.items()}


def pick(rates: dict, reduced: set) -> str:
    """The fastest candidate; a reduced-precision one only when it beats the fastest float32
    candidate by :data:`REDUCED_MARGIN`."""
    fastest = max(rates, key=rates.get)
    exact = [name for name in rates if name not in reduced]
    if fastest in reduced and exact:
        best_exact = max(exact, key=rates.get)
        if rates[fastest] < REDUCED_MARGIN * rates[best_exact]:
            return best_exact
    return fastest
