"""``lcz:installdependencies`` — Install LCZ dependencies (adapter over core.dependencies)."""

import shlex

from qgis.core import (
    QgsProcessingOutputFolder,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterString,
)

from ..core.dependencies import (
    MODULES,
    install,
    missing_modules,
    module_versions,
    requirements_for,
)
from ..core.errors import InputError
from ..installer import plugin_dependency_folder
from .base import LczAlgorithm


class InstallDependenciesAlgorithm(LczAlgorithm):
    PACKAGES = "PACKAGES"
    INCLUDE_OPENVINO = "INCLUDE_OPENVINO"
    PIP_OPTIONS = "PIP_OPTIONS"

    ALGORITHM_ID = "installdependencies"
    DISPLAY_NAME = "Install LCZ dependencies"
    GROUP = "Tools"
    GROUP_ID = "tools"
    TAGS = "lcz,local climate zones,dependencies,install,pip,onnxruntime,openvino,h5py,setup"
    SHORT_DESCRIPTION = ("Installs onnxruntime, h5py and OpenVINO into the plugin's own folder "
                         "for the Python QGIS runs.")
    HELP = """
Installs the Python packages the LCZ algorithms need into a folder of their own that the plugin
  puts on Python's path when it loads: <QGIS profile>/python/dependencies/lcz/py3XX (one
  subfolder per Python version), or under the folder the LCZ_DEPENDENCIES environment variable
  names. It runs pip for the Python QGIS runs (found beside QGIS's own Python); nothing of QGIS's
  or the system's Python is changed: every package QGIS already has, numpy above all (GDAL's
  bindings are built against it), stays at its version, and pip picks versions of the new
  packages that fit it. Deleting the folder undoes the installation. The packages can be used at
  once, without restarting QGIS. Needs access to https://pypi.org (or see PIP_OPTIONS).

onnxruntime is installed as onnxruntime-gpu where an NVIDIA GPU driver is present (it runs on the
  CPU too), else as onnxruntime. Cancel stops pip at once and leaves the folder as it was.

Parameters
- Packages (PACKAGES, optional): onnxruntime (runs the models), h5py (patch files), openvino
  (faster CPU engines, optional). Empty: those that are missing.
- Include OpenVINO (INCLUDE_OPENVINO): with PACKAGES empty, install OpenVINO too when it is
  missing.
- pip options (PIP_OPTIONS, advanced, optional): extra pip options for both pip runs, e.g.
  --no-index --find-links /path/to/wheels (offline, from a folder of wheels), --index-url URL, or
  --proxy URL.

Outputs
- FOLDER: the dependency folder. INSTALLED: the distributions installed (name version, ...).
  VERSIONS: the version of each package asked for, as it imports now.
"""

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterEnum(
            self.PACKAGES, self.tr("Packages (empty: those that are missing)"),
            options=list(MODULES), allowMultiple=True, optional=True, defaultValue=[]))
        self.addParameter(QgsProcessingParameterBoolean(
            self.INCLUDE_OPENVINO, self.tr("Include OpenVINO (optional, faster on the CPU)"),
            defaultValue=True))
        options = QgsProcessingParameterString(self.PIP_OPTIONS, self.tr("pip options"),
                                               optional=True)
        options.setFlags(options.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(options)
        self.addOutput(QgsProcessingOutputFolder("FOLDER", self.tr("Dependency folder")))
        self.addOutput(QgsProcessingOutputString("INSTALLED", self.tr("Installed")))
        self.addOutput(QgsProcessingOutputString("VERSIONS", self.tr("Versions")))

    def run_core(self, parameters, context, feedback):
        chosen = self.parameterAsEnums(parameters, self.PACKAGES, context)
        modules = [MODULES[i] for i in chosen] or missing_modules(
            self.parameterAsBool(parameters, self.INCLUDE_OPENVINO, context))
        try:
            pip_options = shlex.split(self.parameterAsString(parameters, self.PIP_OPTIONS,
                                                             context) or "")
        except ValueError as exc:
            raise InputError(f"cannot read the pip options (PIP_OPTIONS): {exc}; quote "
                             f"paths with spaces.") from None
        folder = plugin_dependency_folder()
        if not modules:
            feedback.info("Nothing to install: onnxruntime, h5py and openvino are there.")
            return {"FOLDER": folder, "INSTALLED": "", "VERSIONS": ""}
        result = install(requirements_for(modules), folder, pip_options, feedback)
        versions = module_versions(modules)
        for name, (version, problem) in versions.items():
            if version is None:
                feedback.warning(f"{name} was installed but does not import: {problem}. "
                                 f"Restart QGIS; if that does not help, run Check the LCZ "
                                 f"environment.")
        installed = ", ".join(f"{n} {v}" for n, v in result.installed.items())
        feedback.info(f"Installed into {result.folder}: {installed or 'nothing new'}")
        return {"FOLDER": result.folder, "INSTALLED": installed,
                "VERSIONS": ", ".join(f"{n} {v or 'not importable'}"
                                      for n, (v, _) in versions.items())}
