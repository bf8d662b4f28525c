"""The plugin on today's QGIS: a Debian root with QGIS from Debian, the plugin from its ZIP.

``make test`` runs the main suite on the host's QGIS (Debian 12: QGIS 3.22, Python 3.11,
numpy 1.26, GDAL 3.6); this script runs the QGIS-facing tests on another Debian release in a
root made by debootstrap (Debian 13 "trixie": QGIS 3.40 LTR, Python 3.13, numpy 2.2, GDAL 3.10;
``--suite sid``: Debian unstable). The root has QGIS's Python as Debian installs it, without
onnxruntime, so the run also checks the first hour of a user:

1. ``lcz:checkenvironment`` (qgis_process, the plugin installed from its ZIP) reports
   onnxruntime missing;
2. ``lcz:installdependencies`` installs onnxruntime, h5py and OpenVINO (without its
   telemetry) from PyPI into the QGIS profile's dependency folder, with QGIS's own Python
   (which has no pip module: the installer runs pip from Debian's pip wheel);
3. ``lcz:checkenvironment`` reports them present;
4. pytest runs :data:`TESTS` in a venv of the root (``--system-site-packages``: QGIS's PyQGIS,
   numpy and GDAL; plus pytest and onnx to build the test models, but no onnxruntime) with
   that dependency folder on the path.

The root is cached under ``build/`` (one stamp file per phase; a phase runs again only when
its stamp is missing or its command changed), so a second run only repeats steps 1-4.
Everything mounted (/proc, /dev, the repository) is unmounted at the end, also after an error.
Without root, debootstrap, mount or network the script says why and exits 0 (skipped; with
``LCZ_QGIS_MATRIX=required`` in the environment a skip fails instead).

    python3 tools/qgis_matrix.py                              # Debian 13, build/debian13
    python3 tools/qgis_matrix.py --suite sid --root build/debian-sid
    python3 tools/qgis_matrix.py --unmount build    # what a killed run left mounted
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tools.package_plugin import build_zip  # noqa: E402

MIRROR = "http://deb.debian.org/debian"
APT_PACKAGES = "qgis python3-qgis qgis-providers python3-venv ca-certificates"
"""QGIS as Debian installs it; python3-venv for the test venv (it brings Debian's pip wheel,
not the pip module: QGIS's Python stays without pip, as on a user's machine)."""
TEST_PACKAGES = "pytest pytest-timeout onnx"
VENV = "/opt/lcz-test-venv"
WORK = "/root/lcz-matrix"
PROFILE = f"{WORK}/profile"
MOUNTED_REPO = "/mnt/lcz"
CA_IN_ROOT = "/etc/lcz-host-ca.crt"
TESTS = [
    "tests/test_algorithms.py",
    "tests/test_qgis_process.py",
    "tests/test_environment.py",
    "tests/test_cli.py",
    "tests/test_dependencies.py",
    "tests/test_extract_assess_algorithms.py",
    "tests/test_qgis_process_extract_assess.py",
    "tests/test_preprocess_sentinel2.py::test_stacksentinel2_through_processing_run",
    "tests/test_preprocess_osm.py::test_rasterizeosm_through_processing_run",
    "tests/test_preprocess_dsm.py::test_preparedsm_through_processing_run",
    "tests/test_preprocess_buildstack.py::test_buildstack_and_classify_through_processing_run",
    "tests/test_preprocess_buildstack.py::test_stacksentinel2_and_buildstack_through_qgis_process",
    "tests/test_preprocess_buildstack.py::test_rasterizeosm_and_preparedsm_through_qgis_process",
    "tests/test_preprocess_buildstack.py::test_model3_chain_product_to_model_input_stack",
]
"""The QGIS-facing tests: provider and compliance, classify through processing.run and
qgis_process (cell by cell against the core), each preprocessing algorithm, extraction and
assessment, the .model3 chains, the environment report and the installer."""


class Skip(Exception):
    """The matrix cannot run here; the message says why."""


def log(label: str, text: str) -> None:
    print(f"[{label}] {text}", flush=True)


# --- the host: can it run? ---------------------------------------------------------------------

def reachable(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=20) as answer:
            return answer.status < 400
    except Exception:
        return False


def preflight(suite: str) -> None:
    """Raise Skip when debootstrap, mount, chroot or the network are not available."""
    if not sys.platform.startswith("linux"):
        raise Skip("needs Linux (debootstrap, mount, chroot)")
    if os.geteuid() != 0:
        raise Skip("needs root (debootstrap, mount and chroot); CI runs make test as root")
    if not reachable(f"{MIRROR}/dists/{suite}/InRelease"):
        raise Skip(f"cannot reach {MIRROR} (no network?)")
    if not reachable("https://pypi.org/simple/onnxruntime/"):
        raise Skip("cannot reach https://pypi.org (the installer under test downloads from it)")
    if shutil.which("debootstrap") is None:
        apt = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for command in ("apt-get install -y debootstrap",
                        "apt-get update && apt-get install -y debootstrap"):
            subprocess.run(command, shell=True, capture_output=True, env=apt)
            if shutil.which("debootstrap"):
                break
        else:
            raise Skip("debootstrap is not installed and apt-get could not install it")


# --- mounts --------------------------------------------------------------------------------------

def mounts_under(root: str) -> list[str]:
    """Mount points under ``root``, deepest first (/proc/mounts escapes spaces as \\040)."""
    root = os.path.realpath(root)
    found = []
    if not os.path.exists("/proc/mounts"):
        return found
    with open("/proc/mounts") as f:
        for line in f:
            point = line.split()[1].replace("\\040", " ")
            if point == root or point.startswith(root + "/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def unmount_all(root: str) -> None:
    for point in mounts_under(root):
        if subprocess.run(["umount", point], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True)
    left = mounts_under(root)
    if left:
        raise RuntimeError(f"could not unmount {left}: unmount them before deleting {root}")


def mount_all(root: str) -> None:
    """/proc, /dev and the repository (read-write: pytest writes nothing there but its
    temporary files go to the root's /tmp)."""
    for command in (["mount", "-t", "proc", "proc", f"{root}/proc"],
                    ["mount", "--bind", "/dev", f"{root}/dev"],
                    ["mount", "--bind", REPO, f"{root}{MOUNTED_REPO}"]):
        os.makedirs(command[-1], exist_ok=True)
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise Skip(f"cannot mount ({' '.join(command)}): {done.stderr.strip()}")


# --- running in the root -------------------------------------------------------------------------

def root_environment(extra: dict | None = None) -> dict:
    """A clean environment for the root: none of the host's PIP_* settings (their wheel
    folders do not exist there), the host's CA bundle for pip (some networks re-sign TLS)."""
    environment = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                   "HOME": "/root", "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive",
                   "QT_QPA_PLATFORM": "offscreen", "PYTHONDONTWRITEBYTECODE": "1",
                   "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_CERT": CA_IN_ROOT,
                   "SSL_CERT_FILE": CA_IN_ROOT, "REQUESTS_CA_BUNDLE": CA_IN_ROOT}
    environment.update(extra or {})
    return environment


def in_root(root: str, command: str, extra: dict | None = None, check: bool = True,
            capture: bool = False, timeout: int = 3600) -> subprocess.CompletedProcess:
    done = subprocess.run(["chroot", root, "bash", "-c", command], env=root_environment(extra),
                          text=True, capture_output=capture, timeout=timeout)
    if check and done.returncode != 0:
        output = (done.stdout or "")[-3000:] + (done.stderr or "")[-3000:] if capture else ""
        raise RuntimeError(f"in the root, '{command}' failed (exit {done.returncode})\n{output}")
    return done


class Phases:
    """Timed phases; cached ones leave a stamp holding their command in the root."""

    def __init__(self, label: str, root: str):
        self.label, self.root, self.times = label, root, []

    def stamp(self, name: str) -> str:
        return os.path.join(self.root, f".lcz-matrix-{name}")

    def cached(self, name: str, key: str) -> bool:
        try:
            with open(self.stamp(name)) as f:
                return f.read() == key
        except OSError:
            return False

    def run(self, name: str, action, key: str | None = None) -> None:
        """Run ``action`` (timed); with a ``key``, only when the stamp does not hold it."""
        if key is not None and self.cached(name, key):
            self.times.append((name, None))
            log(self.label, f"{name}: cached")
            return
        started = time.monotonic()
        action()
        seconds = time.monotonic() - started
        self.times.append((name, seconds))
        if key is not None:
            with open(self.stamp(name), "w") as f:
                f.write(key)
        log(self.label, f"{name}: {seconds:.0f} s")

    def summary(self) -> str:
        return ", ".join(f"{name} {'cached' if s is None else f'{s:.0f} s'}"
                         for name, s in self.times)


# --- building the root ---------------------------------------------------------------------------

def debootstrap(root: str, suite: str) -> None:
    """A minimal root, made in a temporary folder and renamed (an interrupted run leaves no
    half root behind that looks complete)."""
    partial = root + ".partial"
    if os.path.exists(partial):
        unmount_all(partial)
        shutil.rmtree(partial)
    os.makedirs(os.path.dirname(root) or ".", exist_ok=True)
    log_file = root + ".debootstrap.log"
    with open(log_file, "w") as output:
        done = subprocess.run(["debootstrap", "--variant=minbase", suite, partial, MIRROR],
                              stdout=output, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        with open(log_file) as f:
            tail = "".join(f.readlines()[-5:])
        raise Skip(f"debootstrap {suite} failed (exit {done.returncode}; {log_file}):\n{tail}")
    if os.path.exists(root):
        unmount_all(root)
        shutil.rmtree(root)
    os.replace(partial, root)


def copy_host_files(root: str) -> None:
    shutil.copy("/etc/resolv.conf", os.path.join(root, "etc", "resolv.conf"))
    host_ca = "/etc/ssl/certs/ca-certificates.crt"
    target = root + CA_IN_ROOT
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.isfile(host_ca):
        shutil.copy(host_ca, target)
    elif os.path.isfile(root + host_ca):
        shutil.copy(root + host_ca, target)


def install_qgis(root: str) -> None:
    """QGIS from the release's archive. Valid-Until is not checked: a mirror a few weeks
    behind serves an expired sid Release file (seen here), which is no reason to skip."""
    in_root(root, f"apt-get -o Acquire::Check-Valid-Until=false update -q && apt-get "
                  f"install -y -q --no-install-recommends {APT_PACKAGES} >/dev/null && "
                  f"apt-get clean")


def make_test_venv(root: str) -> None:
    """pytest and onnx (test models) beside QGIS's packages; numpy stays QGIS's."""
    in_root(root, f"rm -rf {VENV} && python3 -m venv --system-site-packages {VENV} && "
                  f"python3 -c 'import numpy; print(\"numpy==\" + numpy.__version__)' "
                  f"> /tmp/numpy-pin.txt && {VENV}/bin/pip install -q -c /tmp/numpy-pin.txt "
                  f"{TEST_PACKAGES} && ! {VENV}/bin/python -c 'import onnxruntime' 2>/dev/null")


def versions(root: str) -> str:
    code = ("import sys, numpy; from osgeo import gdal; from qgis.core import Qgis; "
            "print(f'QGIS {Qgis.version()}, Python {sys.version.split()[0]}, "
            "numpy {numpy.__version__}, GDAL {gdal.__version__}')")
    return in_root(root, f"{VENV}/bin/python -W ignore -c \"{code}\"",
                   capture=True).stdout.strip()


# --- the user's first hour, then the tests ------------------------------------------------------

def qgis_process(root: str, args: str, extra: dict | None = None) -> dict:
    """``qgis_process.bin --json ARGS`` in the root with the test profile; its JSON answer."""
    environment = {"QGIS_PLUGINPATH": f"{WORK}/plugins", "QGIS_CUSTOM_CONFIG_PATH": PROFILE}
    environment.update(extra or {})
    done = in_root(root, f"qgis_process.bin --json {args}", environment, check=False,
                   capture=True)
    try:
        answer = json.loads(done.stdout)
    except json.JSONDecodeError:
        answer = None
    if done.returncode != 0 or answer is None:
        raise RuntimeError(f"qgis_process {args} failed (exit {done.returncode}):\n"
                           f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return answer["results"]


def install_plugin(root: str) -> None:
    """The plugin from its ZIP, enabled in a fresh profile (as a user installs it)."""
    archive = build_zip(os.path.join(REPO, "build", "matrix", "lcz_qgis_plugin.zip"))
    inside = MOUNTED_REPO + archive[len(REPO):]
    in_root(root, f"rm -rf {WORK} && mkdir -p {WORK}/plugins {PROFILE} && "
                  f"python3 -m zipfile -e {inside} {WORK}/plugins && "
                  f"QGIS_PLUGINPATH={WORK}/plugins QGIS_CUSTOM_CONFIG_PATH={PROFILE} "
                  f"qgis_process.bin plugins enable lcz_qgis_plugin >/dev/null")


def check(condition: bool, what: str, answer) -> None:
    if not condition:
        raise RuntimeError(f"{what}; the algorithm answered:\n{answer}")


def first_hour(root: str, label: str) -> str:
    """Steps 1-3 of the module docstring; returns the dependency folder."""
    before = qgis_process(root, "run lcz:checkenvironment")
    check(not before["ONNXRUNTIME"] and "onnxruntime" in before["MISSING"].split(","),
          "lcz:checkenvironment does not report onnxruntime missing", before["REPORT"])
    log(label, f"checkenvironment before: missing {before['MISSING']}, "
               f"DEVICES '{before['DEVICES']}'")
    started = time.monotonic()
    installed = qgis_process(root, "run lcz:installdependencies")
    log(label, f"installdependencies: {installed['INSTALLED']} "
               f"({time.monotonic() - started:.0f} s) into {installed['FOLDER']}")
    after = qgis_process(root, "run lcz:checkenvironment")
    check(after["ONNXRUNTIME"] and after["H5PY"] and after["OPENVINO"]
          and after["MISSING"] == "" and "cpu" in after["DEVICES"].split(","),
          "after lcz:installdependencies, lcz:checkenvironment still reports a gap",
          after["REPORT"])
    check("openvino-telemetry" not in installed["INSTALLED"]
          and "telemetry" not in after["REPORT"],
          "the installer installed OpenVINO's telemetry", installed)
    log(label, f"checkenvironment after: DEVICES {after['DEVICES']}")
    return installed["FOLDER"]


def run_tests(root: str, folder: str, label: str) -> str:
    """pytest on :data:`TESTS` with the installed folder on the path (a .pth file appends
    it, as the plugin does); returns the counts."""
    site = in_root(root, f"{VENV}/bin/python -c 'import sysconfig; "
                         f"print(sysconfig.get_path(\"purelib\"))'", capture=True).stdout.strip()
    with open(f"{root}{site}/lcz-dependencies.pth", "w") as f:
        f.write(folder + "\n")
    report = "/tmp/lcz-matrix-junit.xml"
    done = in_root(root, f"cd {MOUNTED_REPO} && {VENV}/bin/python -m pytest -p no:cacheprovider "
                         f"-q -ra --junitxml={report} {' '.join(TESTS)}", check=False)
    counts = junit_counts(root + report)
    if done.returncode != 0:
        raise RuntimeError(f"the tests failed in the root ({counts})")
    return counts


def junit_counts(path: str) -> str:
    import xml.etree.ElementTree as ElementTree
    try:
        suite = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError):
        return "no test report"
    suite = suite if suite.tag == "testsuite" else suite[0]
    tests, skipped = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
    failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    return f"{tests - skipped - failed} passed, {skipped} skipped, {failed} failed"


# --- main -----------------------------------------------------------------------------------------

def run(suite: str, root: str, label: str) -> None:
    phases = Phases(label, root)
    if not os.path.isdir(os.path.join(root, "usr")) or not phases.cached("root", suite):
        phases.run("debootstrap", lambda: debootstrap(root, suite))
        with open(phases.stamp("root"), "w") as f:
            f.write(suite)
    else:
        phases.times.append(("debootstrap", None))
    unmount_all(root)  # what a killed earlier run left
    try:
        mount_all(root)
        copy_host_files(root)
        phases.run("qgis", lambda: install_qgis(root), APT_PACKAGES)
        phases.run("venv", lambda: make_test_venv(root), TEST_PACKAGES)
        log(label, versions(root))
        phases.run("plugin", lambda: install_plugin(root))
        folder = []
        phases.run("first-hour", lambda: folder.append(first_hour(root, label)))
        counts = []
        phases.run("pytest", lambda: counts.append(run_tests(root, folder[0], label)))
        log(label, f"tests: {counts[0]}")
    finally:
        unmount_all(root)
        log(label, f"times: {phases.summary()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", default="trixie", help="Debian release (trixie, sid)")
    parser.add_argument("--root", help="where the root is built (default build/debian13 for "
                                       "trixie, build/debian-SUITE otherwise)")
    parser.add_argument("--unmount", metavar="FOLDER",
                        help="only unmount what a killed run left mounted under FOLDER")
    args = parser.parse_args(argv)
    if args.unmount:
        if os.path.isdir(args.unmount):
            unmount_all(args.unmount)
        return 0
    root = os.path.abspath(args.root or os.path.join(
        REPO, "build", "debian13" if args.suite == "trixie" else f"debian-{args.suite}"))
    label = f"qgis-matrix {args.suite}"
    started = time.monotonic()
    try:
        preflight(args.suite)
        run(args.suite, root, label)
    except Skip as why:
        log(label, f"SKIPPED: {why}")
        return 1 if os.environ.get("LCZ_QGIS_MATRIX") == "required" else 0
    except (RuntimeError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        log(label, f"FAILED: {exc}")
        return 1
    log(label, f"passed in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
