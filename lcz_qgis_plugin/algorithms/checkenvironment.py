"""``lcz:checkenvironment`` — Check the LCZ environment (adapter over core.environment)."""

from qgis.core import (
    Qgis,
    QgsProcessingOutputBoolean,
    QgsProcessingOutputString,
    QgsProcessingParameterFileDestination,
)

from ..core.environment import check_environment, report_text, write_report
from ..installer import plugin_dependency_folder
from .base import LczAlgorithm

FLAGS = (("ONNXRUNTIME", "onnxruntime", "onnxruntime is installed"),
         ("OPENVINO", "openvino", "OpenVINO is installed"),
         ("H5PY", "h5py", "h5py is installed"))


class CheckEnvironmentAlgorithm(LczAlgorithm):
    OUTPUT = "OUTPUT"

    ALGORITHM_ID = "checkenvironment"
    DISPLAY_NAME = "Check the LCZ environment"
    GROUP = "Tools"
    GROUP_ID = "tools"
    TAGS = ("lcz,local climate zones,dependencies,onnxruntime,openvino,h5py,gpu,cuda,python,"
            "install,diagnostics,bug report")
    SHORT_DESCRIPTION = ("Reports the Python packages, engines and GPU the LCZ algorithms can "
                         "use here, and how to install what is missing.")
    HELP = """
Checks the Python that runs QGIS, without changing anything, and reports: the QGIS, Python,
  numpy and GDAL versions; onnxruntime (needed by Classify Local Climate Zones) and its execution
  providers; OpenVINO (optional, the faster CPU engines) and the CPU features it uses; h5py
  (needed by Extract training patches); the NVIDIA driver, GPUs and the CUDA/cuDNN libraries
  found; which DEVICE choices of Classify Local Climate Zones will work here and why the others
  will not; and, for each missing package, the exact command that installs it on this platform
  (or run Install LCZ dependencies). The report is in the log: copy it into a bug report.

Parameters
- Report file (OUTPUT, optional): also write the report to a file (.html, or .txt for plain
  text).

Outputs
- REPORT: the report as text. ONNXRUNTIME, OPENVINO, H5PY, CUDA: whether each package is
  installed (CUDA: whether DEVICE CUDA will work). DEVICES: the DEVICE choices that will work,
  comma-separated. MISSING: the packages Install LCZ dependencies would install.
"""

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterFileDestination(
            self.OUTPUT, self.tr("Report file"),
            self.tr("HTML files (*.html);;Text files (*.txt)"), optional=True,
            createByDefault=False))
        self.addOutput(QgsProcessingOutputString("REPORT", self.tr("Report")))
        for key, _, label in FLAGS:
            self.addOutput(QgsProcessingOutputBoolean(key, self.tr(label)))
        self.addOutput(QgsProcessingOutputBoolean("CUDA", self.tr("DEVICE CUDA will work")))
        self.addOutput(QgsProcessingOutputString("DEVICES", self.tr("DEVICE choices that work")))
        self.addOutput(QgsProcessingOutputString("MISSING", self.tr("Missing packages")))

    def run_core(self, parameters, context, feedback):
        report = check_environment(Qgis.version(), plugin_dependency_folder())
        text = report_text(report)
        for line in text.splitlines():
            feedback.info(line)
        results = {"REPORT": text, "MISSING": ",".join(report.missing),
                   "DEVICES": ",".join(d.device for d in report.devices if d.works),
                   "CUDA": any(d.works for d in report.devices if d.device == "cuda")}
        for key, name, _ in FLAGS:
            results[key] = report.components[name].present
        path = self.parameterAsFileOutput(parameters, self.OUTPUT, context)
        if path:
            results[self.OUTPUT] = write_report(report, path)
        return results
