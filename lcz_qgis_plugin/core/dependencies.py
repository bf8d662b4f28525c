"""Installing the plugin's Python dependencies into the Python QGIS runs, from inside QGIS.

QGIS ships without onnxruntime (and h5py, openvino), and installing them by hand is the most
frequent stumbling block of QGIS plugins: which Python is QGIS's, and Debian 12/13 refuse
``pip install --user`` (``externally-managed-environment``). :func:`install` runs pip for QGIS's
own interpreter, in a subprocess (progress lines, cancel kills it), into a **plugin-private
folder** (:func:`dependency_folder`) that the plugin appends to ``sys.path`` when it loads:
nothing of the system's or QGIS's Python is changed, and deleting the folder undoes it.

Two pip runs, so that nothing QGIS already has is installed a second time or changed:

1. ``pip install --dry-run --report`` resolves the request against what QGIS's Python already
   has (plus the folder), with a constraints file that pins **every distribution already
   installed** to its version: above all numpy, whose C API GDAL's bindings are built
   against (never upgrade numpy under GDAL). pip picks versions of the new packages that fit,
   or says that none does.
2. ``pip install --no-deps --target STAGING`` installs exactly the distributions of that
   report (less :data:`LEFT_OUT`: OpenVINO's telemetry) into a staging folder, moved into the
   dependency folder when pip has finished. A cancelled or failed run leaves the folder as it
   was.

``pip install --target`` alone would not do: it ignores what is installed and would put a
second numpy into the folder.

Call it from Python (also outside QGIS)::

    from lcz_qgis_plugin.core.dependencies import install, requirements_for
    install(requirements_for(["onnxruntime"]), dependency_folder())
"""

from __future__ import annotations

import functools
import glob
import importlib
import importlib.metadata
import importlib.util
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field

from .errors import Cancelled, LczError
from .feedback import Feedback

FOLDER_VARIABLE = "LCZ_DEPENDENCIES"
"""Environment variable naming the dependency folder's parent (instead of the QGIS profile's
``python/dependencies/lcz``): one folder for several profiles, or a test's own folder."""
MODULES = ("onnxruntime", "h5py", "openvino")
"""The modules the installer knows, in the order they matter."""
LEFT_OUT = {"openvino-telemetry": (
    "OpenVINO's usage telemetry (it would send usage statistics to Intel from QGIS without "
    "asking); OpenVINO runs without it and then sends nothing")}
"""Distributions the installer does not install although a package lists them."""
NO_WINDOW = getattr(subprocess, "CREATE_NO_WINDOW", 0)
"""Windows: pip runs without a console window popping up over QGIS."""
PEP440 = re.compile(r"^\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?(\+[a-z0-9.]+)?$", re.I)


class DependencyError(LczError):
    """The installer cannot run pip, or pip failed; the message says why and what to do."""


# --- where --------------------------------------------------------------------------------------

def default_parent() -> str:
    """The dependency folder's parent without QGIS (the Processing adapter passes the QGIS
    profile's ``python/dependencies/lcz`` instead): the user's data folder."""
    if sys.platform == "win32":
        base = os.environ.get("APPDATA") or os.path.expanduser("~")
    elif sys.platform == "darwin":
        base = os.path.expanduser("~/Library/Application Support")
    else:
        base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(base, "lcz_qgis_plugin", "dependencies")


def dependency_folder(parent: str | None = None) -> str:
    """The folder packages are installed into: ``$LCZ_DEPENDENCIES``, else ``parent``, else
    :func:`default_parent`; one subfolder per Python version (``py313``), because compiled
    packages are built for one Python and a QGIS upgrade may bring another."""
    parent = os.environ.get(FOLDER_VARIABLE) or parent or default_parent()
    return os.path.join(parent, f"py{sys.version_info[0]}{sys.version_info[1]}")


def add_to_sys_path(folder: str) -> bool:
    """Make the packages in ``folder`` importable now: appended to ``sys.path`` (after
    everything QGIS has, so none of its modules is shadowed). True when it was added."""
    if not folder or folder in sys.path:
        return False
    sys.path.append(folder)
    sys.path_importer_cache.pop(folder, None)
    importlib.invalidate_caches()
    return True


def missing_modules(include_openvino: bool = True) -> list[str]:
    """The modules of :data:`MODULES` this Python cannot find (openvino only if asked)."""
    wanted = [m for m in MODULES if include_openvino or m != "openvino"]
    return [m for m in wanted if importlib.util.find_spec(m) is None]


def requirements_for(modules: list[str], gpu: bool | None = None) -> list[str]:
    """The pip requirements that provide ``modules``: onnxruntime-gpu for onnxruntime where an
    NVIDIA GPU driver is present (``gpu`` None: look), else onnxruntime."""
    unknown = [m for m in modules if m not in MODULES]
    if unknown:
        raise DependencyError(f"unknown package {', '.join(unknown)}: the installer installs "
                              f"{', '.join(MODULES)}")
    if gpu is None:
        from .inference.engine import nvidia_driver_present
        gpu = "onnxruntime" in modules and nvidia_driver_present()
    return ["onnxruntime-gpu" if m == "onnxruntime" and gpu else m for m in modules]


# --- which Python, which pip ---------------------------------------------------------------------

def _candidates() -> list[str]:
    """Where QGIS's interpreter may be. Inside QGIS ``sys.executable`` is often QGIS itself
    (Windows' qgis-bin.exe, macOS' QGIS.app), so the interpreter is looked for beside the
    Python QGIS embeds: ``sys.exec_prefix`` (OSGeo4W: ``apps\\Python3xx\\python.exe``), its
    ``bin`` (Linux, venvs) and the app bundle's ``Contents/MacOS/bin``."""
    major, minor = sys.version_info[:2]
    found = []
    if os.path.basename(sys.executable or "").lower().startswith("python"):
        found.append(sys.executable)
    if sys.platform == "win32":
        for prefix in (sys.exec_prefix, sys.base_exec_prefix):
            found += [os.path.join(prefix, "python.exe"),
                      os.path.join(prefix, f"python{major}.exe")]
        return found
    folders = [os.path.join(sys.exec_prefix, "bin"), os.path.join(sys.base_exec_prefix, "bin")]
    if sys.executable:
        folders.append(os.path.join(os.path.dirname(sys.executable), "bin"))
    for folder in folders:
        found += [os.path.join(folder, n) for n in (f"python{major}.{minor}", f"python{major}")]
    return found


@functools.lru_cache(maxsize=1)
def python_interpreter() -> str:
    """The interpreter of the Python running this code, for running pip: the same build
    (``sys.version``) on the same installation (``sys.base_prefix``), not only the same
    version: an embedded Python finds its ``sys.executable`` on PATH, where pyenv or conda
    may put another Python of the same version first."""
    wanted = f"{sys.version_info[0]}.{sys.version_info[1]}"
    identity = repr((sys.version, sys.base_prefix))
    tried = []
    for candidate in dict.fromkeys(_candidates()):
        if not os.path.isfile(candidate) or candidate in tried:
            continue
        tried.append(candidate)
        try:
            done = subprocess.run([candidate, "-c", "import sys; print(repr((sys.version, "
                                   "sys.base_prefix)))"], capture_output=True, text=True,
                                  timeout=60, env=_clean_environment(),
                                  creationflags=NO_WINDOW)
        except (OSError, subprocess.SubprocessError):
            continue
        if done.stdout.strip() == identity:
            return candidate
    raise DependencyError(
        f"cannot find the Python {wanted} interpreter QGIS runs (looked beside "
        f"{sys.exec_prefix}: {', '.join(tried) or 'nothing there'}). Install the packages by "
        f"hand, see 'Check the LCZ environment' (lcz:checkenvironment) for the command.")


def _clean_environment(extra: dict | None = None) -> dict:
    """The environment for the child Python: QGIS's, without PYTHONHOME/PYTHONPATH that
    point at the embedding application's layout, plus ``extra``."""
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP")}
    environment.update(extra or {})
    return environment


def pip_command(interpreter: str) -> list[str]:
    """How to run pip with ``interpreter``: its pip module, else the pip wheel Debian/Ubuntu
    keep for venvs (python3-pip-whl, installed with python3-venv: pip runs from the wheel),
    else an error saying how to get pip."""
    try:
        done = subprocess.run([interpreter, "-m", "pip", "--version"], capture_output=True,
                              text=True, timeout=120, env=_clean_environment(),
                              creationflags=NO_WINDOW)
        if done.returncode == 0:
            return [interpreter, "-m", "pip"]
    except (OSError, subprocess.SubprocessError):
        pass
    wheels = sorted(glob.glob("/usr/share/python-wheels/pip-*.whl"))
    if wheels:
        return [interpreter, os.path.join(wheels[-1], "pip")]
    raise DependencyError(
        f"pip is not available for QGIS's Python ({interpreter}). Debian/Ubuntu: 'sudo apt "
        f"install python3-pip' (or python3-venv), then run the installer again; Windows: "
        f"pip comes with OSGeo4W's python3-pip package; macOS: '{interpreter} -m ensurepip "
        f"--user'.")


# --- the constraints: nothing QGIS has may change -----------------------------------------------

def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _inside(path: str, folder: str) -> bool:
    try:
        return os.path.commonpath([os.path.abspath(path), os.path.abspath(folder)]) == \
            os.path.abspath(folder)
    except ValueError:  # different drives on Windows
        return False


def installed_distributions(exclude: str = "") -> dict[str, str]:
    """Normalised name -> version of every distribution this Python imports (the first on
    ``sys.path`` wins, as for imports), except those inside ``exclude`` (the plugin's own
    folder, whose packages may be upgraded). numpy is the version actually loaded."""
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name, version = dist.metadata["Name"], dist.version
        location = str(getattr(dist, "_path", "") or "")
        if not name or not version or (exclude and location and _inside(location, exclude)):
            continue
        found.setdefault(_normalise(name), version)
    if "numpy" in sys.modules or importlib.util.find_spec("numpy") is not None:
        import numpy
        if not (exclude and _inside(os.path.dirname(numpy.__file__), exclude)):
            found["numpy"] = numpy.__version__
    return found


def constraints(exclude: str = "") -> list[str]:
    """``name==version`` for every installed distribution pip can read (see the module
    docstring: numpy above all). Versions pip cannot parse are left out."""
    return [f"{name}=={version}" for name, version in sorted(installed_distributions(exclude)
                                                             .items()) if PEP440.match(version)]


def _holds_distributions(folder: str) -> bool:
    if os.path.basename(folder.rstrip("/\\")) in ("site-packages", "dist-packages"):
        return True
    try:
        return any(n.endswith((".dist-info", ".egg-info")) for n in os.listdir(folder))
    except OSError:
        return False


def pip_environment(folder: str) -> dict:
    """The child pip's environment: it sees what QGIS's Python sees (the folder and every
    folder on QGIS's ``sys.path`` that holds installed distributions: site folders, a venv
    QGIS was started from, other plugins' folders), so what is there counts as installed."""
    sites = [p for p in sys.path if p and os.path.isdir(p) and _holds_distributions(p)]
    paths = list(dict.fromkeys([folder] + sites))
    return _clean_environment({"PYTHONPATH": os.pathsep.join(paths), "PIP_NO_INPUT": "1",
                               "PYTHONIOENCODING": "utf-8"})


# --- running pip --------------------------------------------------------------------------------

def _read_lines(stream, lines: queue.Queue) -> None:
    for line in iter(stream.readline, ""):
        lines.put(line)
    lines.put(None)


def stop(process: subprocess.Popen) -> None:
    """End pip: terminate, and kill what has not ended after 5 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_pip(command: list[str], env: dict, feedback: Feedback, on_line=None) -> tuple:
    """Run pip, passing each output line to the log (and ``on_line``) as it comes; a cancel
    ends pip within a fraction of a second and raises Cancelled. (returncode, lines)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, text=True, env=env, errors="replace",
                               creationflags=NO_WINDOW)
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True)
    reader.start()
    output = []
    try:
        while True:
            if feedback.is_cancelled():
                stop(process)
                raise Cancelled("cancelled; nothing was installed")
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                break
            output.append(line.rstrip())
            if output[-1].strip():
                feedback.info(output[-1])
                if on_line:
                    on_line(output[-1])
        return process.wait(), output
    finally:
        stop(process)
        process.stdout.close()


def _failure(step: str, lines: list[str]) -> DependencyError:
    """pip's failure as a message: its last lines, and what usually causes them."""
    text = "\n".join(lines[-15:])
    hint = ""
    if re.search(r"ResolutionImpossible|conflicting dependencies|conflict", text, re.I):
        numpy = installed_distributions().get("numpy", "?")
        hint = (f" The packages asked for need versions of packages QGIS already has that "
                f"differ from QGIS's (numpy {numpy} and the others stay as they are: GDAL's "
                f"bindings are built against them).")
    elif re.search(r"No matching distribution|Could not find a version|NewConnection|"
                   r"Network is unreachable|Temporary failure", text):
        hint = (" pip found no wheel for this Python and platform, or could not reach the "
                "package index (the installer needs https://pypi.org, or PIP_OPTIONS such as "
                "--no-index --find-links FOLDER for a folder of wheels).")
    return DependencyError(f"pip could not {step}.{hint} pip said:\n{text}")


# --- installing ---------------------------------------------------------------------------------

COMMON_OPTIONS = ["--disable-pip-version-check", "--no-input", "--progress-bar", "off",
                  "--only-binary", ":all:"]
"""Wheels only: building onnxruntime or h5py from source inside QGIS cannot end well."""


@dataclass
class InstallResult:
    """What :func:`install` did: the folder, the distributions it installed (name ->
    version), and those asked for that were there already."""

    folder: str
    installed: dict[str, str] = field(default_factory=dict)
    already: list[str] = field(default_factory=list)


def resolve(pip: list[str], requirements: list[str], folder: str, pip_options: list[str],
            feedback: Feedback, work: str) -> list[dict]:
    """Step 1: the distributions pip would add (name, version, url), with every installed
    distribution pinned (:func:`constraints`)."""
    pins = os.path.join(work, "constraints.txt")
    with open(pins, "w", encoding="utf-8") as f:
        f.write("\n".join(constraints(exclude=folder)) + "\n")
    report = os.path.join(work, "plan.json")
    seen = [0]

    def collecting(line: str) -> None:
        if line.startswith("Collecting"):
            seen[0] += 1
            feedback.progress(30 * (1 - 0.75 ** seen[0]))

    code, lines = run_pip(pip + ["install", "--dry-run", "--report", report, *COMMON_OPTIONS,
                                 "--upgrade-strategy", "only-if-needed", "-c", pins,
                                 *pip_options, *requirements],
                          pip_environment(folder), feedback, collecting)
    if code != 0 or not os.path.isfile(report):
        raise _failure(f"find packages for {', '.join(requirements)} that fit QGIS's Python",
                       lines)
    with open(report, encoding="utf-8") as f:
        return planned(json.load(f), feedback)


def planned(report: dict, feedback: Feedback) -> list[dict]:
    """The distributions of pip's installation report (``--report``) to install: name,
    version, url; :data:`LEFT_OUT` ones are named in the log and left out."""
    plan = []
    for item in report.get("install", []):
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        why = LEFT_OUT.get(_normalise(name))
        if why:
            feedback.info(f"Leaving out {name} {version}: {why}.")
        else:
            plan.append({"name": name, "version": version, "url": item["download_info"]["url"]})
    return plan


def install_plan(pip: list[str], plan: list[dict], folder: str, pip_options: list[str],
                 feedback: Feedback) -> None:
    """Step 2: exactly the planned wheels, without their dependencies (the plan has them),
    into a staging folder beside ``folder``, then moved in."""
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(folder, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".staging-", dir=parent)
    done = [0]

    def installing(line: str) -> None:
        if line.startswith(("Collecting", "Processing")):
            done[0] += 1
            feedback.progress(30 + 65 * min(done[0], len(plan)) / len(plan))

    try:
        code, lines = run_pip(pip + ["install", "--no-deps", "--target", staging,
                                     *COMMON_OPTIONS, *pip_options,
                                     *[item["url"] for item in plan]],
                              pip_environment(folder), feedback, installing)
        if code != 0:
            raise _failure("install " + ", ".join(f"{i['name']} {i['version']}" for i in plan),
                           lines)
        move_into(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def move_into(staging: str, folder: str) -> None:
    """Move what pip put into ``staging`` into ``folder``: an older version of the same
    distribution there is removed first (its files and its .dist-info), scripts are merged."""
    new = {_normalise(n.split("-")[0]) for n in os.listdir(staging) if n.endswith(".dist-info")}
    for name in os.listdir(folder):
        if name.endswith(".dist-info") and _normalise(name.split("-")[0]) in new:
            _remove_distribution(folder, name)
    for name in os.listdir(staging):
        source, target = os.path.join(staging, name), os.path.join(folder, name)
        if name == "bin" and os.path.isdir(target):
            for script in os.listdir(source):
                os.replace(os.path.join(source, script), os.path.join(target, script))
            continue
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        elif os.path.lexists(target):
            os.remove(target)
        os.replace(source, target)


def _remove_distribution(folder: str, dist_info: str) -> None:
    """Remove an installed distribution's files (its RECORD) and its .dist-info."""
    record = os.path.join(folder, dist_info, "RECORD")
    if os.path.isfile(record):
        with open(record, encoding="utf-8", errors="replace") as f:
            for line in f:
                path = os.path.normpath(os.path.join(folder, line.rsplit(",", 2)[0]))
                if _inside(path, folder) and os.path.isfile(path):
                    os.remove(path)
    shutil.rmtree(os.path.join(folder, dist_info), ignore_errors=True)


def install(requirements: list[str], folder: str | None = None,
            pip_options: list[str] | tuple = (), feedback: Feedback | None = None
            ) -> InstallResult:
    """Install ``requirements`` (pip requirement strings) for the Python running this code,
    into ``folder`` (:func:`dependency_folder` by default), leaving every package it already
    has as it is, and make them importable now. ``pip_options`` go to both pip runs (e.g.
    ``["--no-index", "--find-links", "/wheels"]``). Raises DependencyError, or Cancelled
    (the folder is then left as it was)."""
    feedback = feedback or Feedback()
    folder = os.path.abspath(folder or dependency_folder())
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise DependencyError(f"cannot create the dependency folder {folder}: "
                              f"{exc.strerror}. Choose another one.") from None
    interpreter = python_interpreter()
    pip = pip_command(interpreter)
    feedback.info(f"Installing {', '.join(requirements)} for {interpreter} into {folder}")
    with tempfile.TemporaryDirectory(prefix="lcz-install-") as work:
        plan = resolve(pip, list(requirements), folder, list(pip_options), feedback, work)
        if plan:
            feedback.info("To install: " + ", ".join(f"{i['name']} {i['version']}"
                                                      for i in plan))
            install_plan(pip, plan, folder, list(pip_options), feedback)
    add_to_sys_path(folder)
    feedback.progress(100)
    planned = {_normalise(i["name"]) for i in plan}
    return InstallResult(folder, {i["name"]: i["version"] for i in plan},
                         [r for r in requirements if _normalise(re.split(r"[\[<>=!~ ;]", r)[0])
                          not in planned])


def module_versions(modules: list[str]) -> dict[str, tuple[str | None, str]]:
    """module -> (version, "") or (None, why it does not import); imported now, as the plugin
    will (h5py the way QGIS needs, see :mod:`.h5import`)."""
    from .environment import try_import
    versions = {}
    for name in modules:
        module, problem = try_import(name)
        versions[name] = (getattr(module, "__version__", "?"), "") if module else (None, problem)
    return versions
