"""What the Python running the plugin has: the packages, the engines, the GPU, and the fix.

The first hour with a QGIS plugin that needs Python packages is usually spent finding out
which Python QGIS runs and how to install into it. :func:`check_environment` answers it in
one report (``lcz:checkenvironment`` in QGIS, :func:`report_text` for bug reports): QGIS,
Python, numpy, GDAL, onnxruntime and its execution providers, OpenVINO and the CPU features it
uses, h5py, the NVIDIA GPU and the CUDA/cuDNN libraries found, which ``DEVICE`` choices of
``lcz:classify`` will work and why the others will not, and the command that installs each
missing piece on this platform.

Nothing here changes the environment; :mod:`.dependencies` installs. The QGIS version is
passed in by the Processing adapter: the core never imports qgis.
"""

from __future__ import annotations

import ctypes.util
import glob
import html
import importlib
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field

from .inference import engine

INSTALL_ALGORITHM = ("Install LCZ dependencies (lcz:installdependencies, Processing Toolbox "
                     "> Local Climate Zones > Tools)")
CHECK_ALGORITHM = "Check the LCZ environment (lcz:checkenvironment)"
PYPI_NAMES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "h5py": "h5py"}
"""The pip package that provides each optional module (onnxruntime-gpu also provides
``onnxruntime``, see :func:`onnxruntime_package`)."""
DEBIAN_PACKAGES = {"h5py": "python3-h5py"}
"""Modules Debian/Ubuntu package for the system Python, built against the system's HDF5."""
CUDA_LIBRARIES = {"cudart": "CUDA runtime", "cublas": "cuBLAS", "cublasLt": "cuBLASLt",
                  "cufft": "cuFFT", "curand": "cuRAND", "cudnn": "cuDNN",
                  "nvinfer": "TensorRT (optional)"}
"""The NVIDIA libraries onnxruntime-gpu's CUDA (and TensorRT) providers load."""


@dataclass
class Component:
    """One piece the plugin uses: its version when present, else why it cannot be used."""

    name: str
    role: str
    version: str | None = None
    detail: str = ""
    problem: str = ""
    fix: str = ""
    required: bool = False

    @property
    def present(self) -> bool:
        return self.version is not None


@dataclass
class DeviceChoice:
    """Whether one ``DEVICE`` of lcz:classify will work here, and why (not)."""

    device: str
    works: bool
    why: str


@dataclass
class EnvironmentReport:
    qgis_version: str
    python: str
    interpreter: str
    platform: str
    components: dict[str, Component] = field(default_factory=dict)
    gpu: list[str] = field(default_factory=list)
    nvidia_driver: bool = False
    cuda_libraries: dict[str, str] = field(default_factory=dict)
    devices: list[DeviceChoice] = field(default_factory=list)
    dependency_folder: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def missing(self) -> list[str]:
        """The optional packages the plugin can install, that are not there."""
        return [n for n in PYPI_NAMES if n in self.components
                and not self.components[n].present]


def keep_gdal_exception_mode() -> None:
    """Declare the exception mode GDAL's Python bindings are in, without changing it.

    GDAL 3.9+ warns once per process (FutureWarning: "Neither gdal.UseExceptions() nor
    gdal.DontUseExceptions() has been explicitly called") when the application has not
    chosen. The mode is process-wide and belongs to the application: QGIS 3.40's Processing
    switches exceptions on, QGIS 3.22 leaves them off, and the core works in both (tested on
    both). So the plugin chooses nothing inside QGIS; the core's command line, which is the
    application, calls this: the mode stays what it is (off by default until GDAL 4), the
    warning goes."""
    try:
        from osgeo import gdal
    except ImportError:
        return
    if gdal.GetUseExceptions():
        gdal.UseExceptions()
    else:
        gdal.DontUseExceptions()


# --- the platform and the command that installs into QGIS's Python ----------------------------

def platform_kind() -> str:
    """``debian`` (a Debian/Ubuntu system Python), ``linux``, ``windows`` or ``macos``."""
    if sys.platform == "win32":
        return "windows"
    if sys.platform == "darwin":
        return "macos"
    return "debian" if os.path.exists("/etc/debian_version") else "linux"


def in_virtual_environment() -> bool:
    return sys.prefix != sys.base_prefix


def externally_managed() -> bool:
    """Whether pip refuses to install into this Python without --break-system-packages
    (PEP 668: an EXTERNALLY-MANAGED file beside the standard library, outside a venv)."""
    stdlib = sysconfig.get_path("stdlib") or ""
    return (not in_virtual_environment()
            and os.path.isfile(os.path.join(stdlib, "EXTERNALLY-MANAGED")))


def pip_install_command(packages: list[str], kind: str | None = None,
                        interpreter: str | None = None, managed: bool | None = None,
                        venv: bool | None = None) -> str:
    """The command a user types to install ``packages`` into the Python QGIS runs.

    Debian/Ubuntu's system Python is "externally managed" (Debian 12 and 13 refuse a plain
    ``pip install --user`` with ``externally-managed-environment``), so the command there adds
    ``--break-system-packages`` (into the user's own site folder, not the system's); in a venv
    a plain install. Windows: the OSGeo4W Shell's ``python``; macOS: the app bundle's."""
    kind = kind or platform_kind()
    venv = in_virtual_environment() if venv is None else venv
    managed = externally_managed() if managed is None else managed
    names = " ".join(f'"{p}"' if "[" in p else p for p in packages)
    if kind == "windows":
        return f"python -m pip install {names}   (in the OSGeo4W Shell)"
    if kind == "macos":
        python = interpreter or "/Applications/QGIS.app/Contents/MacOS/bin/python3"
        return f"'{python}' -m pip install --user {names}"
    if venv and interpreter:
        return f"{interpreter} -m pip install {names}"
    flags = "--user --break-system-packages " if (managed or kind == "debian") else "--user "
    return f"python3 -m pip install {flags}{names}"


def fix_for(module: str, kind: str | None = None, gpu: bool = False, **how) -> str:
    """What to do when ``module`` is missing: the installer algorithm, or the command."""
    kind = kind or platform_kind()
    package = onnxruntime_package(gpu) if module == "onnxruntime" else PYPI_NAMES[module]
    command = pip_install_command([package], kind, **how)
    text = f"run {INSTALL_ALGORITHM}, or: {command}"
    if kind == "debian" and module in DEBIAN_PACKAGES:
        text += f" (or: sudo apt install {DEBIAN_PACKAGES[module]})"
    return text


def onnxruntime_package(gpu: bool) -> str:
    """onnxruntime-gpu only where an NVIDIA GPU driver is present: without one its CUDA
    provider can never start, and the CPU build is smaller."""
    return "onnxruntime-gpu" if gpu else "onnxruntime"


# --- what is installed -------------------------------------------------------------------------

def try_import(name: str):
    """(module, "") or (None, why it cannot be imported)."""
    try:
        if name == "h5py":
            from .h5import import import_h5py
            return import_h5py(), ""
        return importlib.import_module(name), ""
    except Exception as exc:  # ImportError, and the OSError/ValueError of a broken build
        return None, f"{type(exc).__name__}: {str(exc).strip()[:300]}"


def distribution_of(module) -> str:
    """The pip distribution and the folder a module was imported from."""
    folder = os.path.dirname(os.path.dirname(os.path.abspath(module.__file__ or "")))
    names = importlib.metadata.packages_distributions().get(module.__name__, [])
    return f"{'/'.join(sorted(set(names))) or module.__name__} from {folder}"


def numpy_and_gdal() -> list[Component]:
    numpy, numpy_problem = try_import("numpy")
    gdal, gdal_problem = try_import("osgeo.gdal")
    return [
        Component("numpy", "arrays (QGIS's own: never upgraded by the installer)",
                  numpy.__version__ if numpy else None, problem=numpy_problem, required=True),
        Component("GDAL", "rasters (QGIS's Python bindings)",
                  gdal.__version__ if gdal else None, problem=gdal_problem, required=True)]


def onnxruntime_component(gpu: bool) -> Component:
    module, problem = try_import("onnxruntime")
    item = Component("onnxruntime", "runs LCZ models (lcz:classify); required",
                     required=True, problem=problem)
    if module is None:
        item.fix = fix_for("onnxruntime", gpu=gpu)
        return item
    item.version = module.__version__
    providers = module.get_available_providers()
    item.detail = f"{distribution_of(module)}; providers: {', '.join(providers)}"
    if gpu and engine.CUDA not in providers:
        item.fix = (f"for the NVIDIA GPU, replace it by onnxruntime-gpu: python3 -m pip "
                    f"uninstall onnxruntime, then {fix_for('onnxruntime', gpu=True)}")
    return item


def openvino_component() -> Component:
    module, problem = try_import("openvino")
    item = Component("openvino", "the faster CPU engines (DEVICE OpenVINO, Automatic); "
                     "optional", problem=problem)
    if module is None:
        item.fix = fix_for("openvino")
        return item
    item.version = module.__version__
    try:
        core = engine.openvino_core()
        capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        name = core.get_property("CPU", "FULL_DEVICE_NAME")
        item.detail = f"{distribution_of(module)}; CPU {name}: {', '.join(capabilities)}"
    except Exception as exc:  # OpenVINO's RuntimeError: its CPU plugin cannot load
        item.problem = f"its CPU plugin does not load: {str(exc).strip()[:300]}"
    return item


def openvino_telemetry() -> str:
    """"on" when OpenVINO's telemetry package is installed and the user has not opted out
    (OpenVINO then sends usage statistics to Intel when it reads a model: no consent file
    counts as consent), "off" when opted out, "" when the package is not installed."""
    if importlib.util.find_spec("openvino_telemetry") is None:
        return ""
    if sys.platform == "win32":
        folder = os.path.join(os.environ.get("LOCALAPPDATA", ""), "Intel Corporation")
    else:
        folder = os.path.join(os.path.expanduser("~"), "intel")
    try:
        with open(os.path.join(folder, "openvino_telemetry"), encoding="utf-8") as f:
            return "on" if f.readline().strip() == "1" else "off"
    except OSError:
        return "on"


def h5py_component() -> Component:
    module, problem = try_import("h5py")
    item = Component("h5py", "patch files (lcz:extractpatches); optional", problem=problem)
    if module is None:
        item.fix = fix_for("h5py")
        return item
    item.version = module.__version__
    item.detail = f"{distribution_of(module)}; HDF5 {module.version.hdf5_version}"
    return item


# --- the GPU -----------------------------------------------------------------------------------

def nvidia_gpus() -> list[str]:
    """The NVIDIA GPUs ``nvidia-smi`` lists (name, memory, driver), or [] without it."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        done = subprocess.run([smi, "--query-gpu=name,memory.total,driver_version",
                               "--format=csv,noheader"], capture_output=True, text=True,
                              timeout=15, creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def cuda_libraries() -> dict[str, str]:
    """Where each CUDA/cuDNN library onnxruntime-gpu needs is found: the system's (the
    dynamic linker's search path) or pip's nvidia-* packages (loaded by onnxruntime-gpu's
    ``preload_dlls``); "" when it is not found."""
    found = {}
    pip_libraries = []
    try:
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        spec = None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        pip_libraries += glob.glob(os.path.join(folder, "*", "lib", "*"))
        pip_libraries += glob.glob(os.path.join(folder, "*", "bin", "*.dll"))
    for name in CUDA_LIBRARIES:
        system = ctypes.util.find_library(name)
        from_pip = [p for p in pip_libraries
                    if os.path.basename(p).lower().startswith(("lib" + name + ".", name))]
        found[name] = (system and f"{system} (system)") or (
            from_pip and f"{os.path.basename(from_pip[0])} (pip nvidia package)") or ""
    return found



# --- which DEVICE choices work -----------------------------------------------------------------

CUDA_NEEDED = ("cudart", "cublas", "cudnn", "cufft", "curand")


def cuda_choice(components: dict[str, Component], nvidia: bool,
                libraries: dict[str, str]) -> tuple[bool, str]:
    """(works, why) of DEVICE CUDA, checked the way the engine will meet it: the provider in
    onnxruntime, a driver, the libraries the provider loads."""
    providers = engine.available_providers()
    if engine.CUDA not in providers:
        return False, ("this onnxruntime has no CUDA provider (onnxruntime-gpu has it; "
                       "install it where an NVIDIA GPU is)")
    if not nvidia:
        return False, "no NVIDIA GPU driver on this machine"
    missing = [CUDA_LIBRARIES[n] for n in CUDA_NEEDED if not libraries.get(n)]
    if missing:
        return False, (f"the CUDA provider's libraries are not found: {', '.join(missing)} "
                       f"(install NVIDIA's CUDA 12 and cuDNN 9 libraries: help/install.html)")
    return True, "CUDA provider, NVIDIA driver and CUDA/cuDNN libraries found"


def device_choices(components: dict[str, Component], nvidia: bool,
                   libraries: dict[str, str]) -> list[DeviceChoice]:
    """Each DEVICE of lcz:classify (:data:`engine.DEVICES`) with whether it will work here.
    The engine decides the same way (tests/test_environment.py loads a model on each)."""
    if not components["onnxruntime"].present:
        return [DeviceChoice(d, False, "onnxruntime is not installed") for d in engine.DEVICES]
    cuda, cuda_why = cuda_choice(components, nvidia, libraries)
    openvino = components["openvino"].present and not components["openvino"].problem
    no_openvino = "the openvino package is not installed" if not components[
        "openvino"].present else f"openvino cannot run: {components['openvino'].problem}"
    cpu_engines = "the faster of onnxruntime and OpenVINO" if openvino else "onnxruntime"
    bf16 = openvino and engine.cpu_runs_bfloat16()
    fp16 = cuda and components["onnx"].present
    why = {
        "auto": (True, "the NVIDIA GPU (CUDA)" if cuda else
                 f"the CPU, with {cpu_engines}; not CUDA: {cuda_why}"),
        "cpu": (True, "onnxruntime on the CPU, the reference engine"),
        "cuda": (cuda, cuda_why + ("; only a run proves that CUDA starts" if cuda else "")),
        "cuda-fp16": (fp16, cuda_why if not cuda else cuda_why if fp16 else
                      "also needs the onnx package (it converts the model to float16)"),
        "openvino": (openvino, "OpenVINO float32 on the CPU" if openvino else no_openvino),
        "openvino-bf16": (openvino, no_openvino if not openvino else "bfloat16 on this CPU"
                          if bf16 else "runs in float32: this CPU has no bfloat16 instructions"),
        "openvino-int8": (openvino, "with models that carry a calibrated int8 variant"
                          if openvino else no_openvino),
    }
    return [DeviceChoice(d, *why[d]) for d in engine.DEVICES]


# --- the report --------------------------------------------------------------------------------

def check_environment(qgis_version: str = "", dependency_folder: str = "") -> EnvironmentReport:
    """Everything :mod:`this module <.environment>` checks, as one report. ``qgis_version``
    and the plugin's ``dependency_folder`` come from the caller (the core knows no QGIS)."""
    from .dependencies import python_interpreter
    nvidia = engine.nvidia_driver_present()
    try:
        interpreter = python_interpreter()
    except Exception as exc:  # LczError: no interpreter found; the report says it
        interpreter = f"not found ({exc})"
    report = EnvironmentReport(
        qgis_version=qgis_version or "not running in QGIS", interpreter=interpreter,
        python=f"{platform.python_version()} ({sys.base_prefix})",
        platform=f"{platform.platform()} [{platform_kind()}]", nvidia_driver=nvidia,
        dependency_folder=dependency_folder)
    components = numpy_and_gdal() + [onnxruntime_component(nvidia), openvino_component(),
                                     h5py_component()]
    onnx, problem = try_import("onnx")
    components.append(Component("onnx", "DEVICE CUDA float16 only; optional",
                                onnx.__version__ if onnx else None, problem=problem))
    report.components = {c.name: c for c in components}
    report.gpu = nvidia_gpus()
    report.cuda_libraries = cuda_libraries()
    report.devices = device_choices(report.components, nvidia, report.cuda_libraries)
    report.notes = _notes(report)
    return report


def _notes(report: EnvironmentReport) -> list[str]:
    notes = []
    folder = report.dependency_folder
    if folder:
        state = ("on sys.path" if folder in sys.path else "not on sys.path: restart QGIS"
                 ) if os.path.isdir(folder) else "not made yet: nothing installed there"
        notes.append(f"The plugin's dependency folder is {folder} ({state}).")
    if externally_managed():
        notes.append("This Python is externally managed (PEP 668): 'pip install' and 'pip "
                     "install --user' stop with externally-managed-environment; by hand add "
                     "--break-system-packages. The installer algorithm needs neither: it "
                     "installs into the plugin's own folder.")
    if report.missing:
        notes.append(f"To install what is missing: {INSTALL_ALGORITHM}.")
    if report.components["openvino"].present and openvino_telemetry() == "on":
        notes.append("OpenVINO's telemetry (the openvino-telemetry package) is on: OpenVINO "
                     "sends usage statistics to Intel when the plugin loads a model with it. "
                     f"Turn it off: {_python_for_commands()} -m openvino_telemetry.opt_in_out "
                     "--opt_out (the plugin's installer does not install it).")
    return notes


def _python_for_commands() -> str:
    return "python" if sys.platform == "win32" else "python3"


def report_text(report: EnvironmentReport) -> str:
    """The plain-text report, to read or paste into a bug report."""
    from .about import plugin_version
    lines = [f"LCZ environment (plugin {plugin_version()})",
             f"QGIS:        {report.qgis_version}",
             f"Python:      {report.python}",
             f"Interpreter: {report.interpreter} (what pip runs with)",
             f"Platform:    {report.platform}", "", "Packages:"]
    for item in report.components.values():
        state = "ok" if item.present and not item.problem else (
            "BROKEN" if item.present else "MISSING")
        lines.append(f"  [{state:7}] {item.name} {item.version or ''}".rstrip()
                     + f"  - {item.role}")
        problem = "" if item.problem.startswith("ModuleNotFoundError") else item.problem
        for label, text in (("from", item.detail), ("problem", problem), ("fix", item.fix)):
            if text:
                lines.append(f"            {label}: {text}")
    lines += ["", "GPU:", f"  NVIDIA driver: {'found' if report.nvidia_driver else 'not found'}"]
    lines += [f"  GPU: {gpu}" for gpu in report.gpu]
    lines += [f"  {CUDA_LIBRARIES[name]}: {where or 'not found'}"
              for name, where in report.cuda_libraries.items()]
    lines += ["", "DEVICE choices of lcz:classify:"]
    lines += [f"  {d.device:14} {'yes' if d.works else 'no ':3}  {d.why}" for d in report.devices]
    if report.notes:
        lines += ["", "Notes:"] + [f"  {note}" for note in report.notes]
    return "\n".join(lines) + "\n"


def report_html(report: EnvironmentReport) -> str:
    """The same report as an HTML page (the text, preformatted: easy to copy as is)."""
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>LCZ environment</title>"
            "</head><body><h1>LCZ environment</h1><pre>" + html.escape(report_text(report))
            + "</pre></body></html>\n")


def write_report(report: EnvironmentReport, path: str) -> str:
    """Write the report to ``path`` (HTML for .html/.htm, else text) through :class:`Commit`
    (complete or not at all)."""
    from .commit import Commit
    text = report_html(report) if path.lower().endswith((".html", ".htm")) else \
        report_text(report)
    with Commit() as files:
        files.write_text(path, text, "environment report")
    return path
