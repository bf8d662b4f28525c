"""What every LCZ Processing algorithm shares: group, help, feedback bridge, error handling.

Algorithms are thin adapters: they declare parameters, turn them into plain Python values,
call a function of :mod:`lcz_qgis_plugin.core` with a :class:`QgisFeedback`, and return its
outputs. Core errors (:class:`~lcz_qgis_plugin.core.errors.LczError`) become
``QgsProcessingException`` with the same message.
"""

import html
import importlib.util
import os
import tempfile

from qgis.core import (QgsProcessingAlgorithm, QgsProcessingException,
                       QgsProcessingFeedback)
from qgis.PyQt.QtCore import QCoreApplication, QUrl
from qgis.PyQt.QtGui import QIcon

from ..core.engine import ONNXRUNTIME_MISSING
from ..core.errors import LczError
from ..core.feedback import Feedback

ICON = os.path.join(os.path.dirname(os.path.dirname(__file__)), "icons", "lcz.svg")
REFERENCES = (
    "Stewart, I. D. & Oke, T. R. (2012). Local Climate Zones for urban temperature studies. "
    "BAMS 93(12), 1879-1900. "
    "Kim, M., Jeong, D. & Kim, Y. (2021). Local climate zone classification using a "
    "multi-scale, multi-level attention network. ISPRS J. Photogramm. Remote Sens. 181. "
    "Demuzere, M. et al. (2022). A global map of Local Climate Zones. ESSD 14, 3835-3873.")


class QgisFeedback(Feedback):
    """Passes core progress and log lines to a ``QgsProcessingFeedback``."""

    def __init__(self, feedback: QgsProcessingFeedback):
        self._feedback = feedback or QgsProcessingFeedback()

    @property
    def processing_feedback(self) -> QgsProcessingFeedback:
        """The ``QgsProcessingFeedback`` itself, for QGIS calls that take one: some crash
        without it (``parameterAsCompatibleSourceLayerPath`` when it must convert a layer)."""
        return self._feedback

    def progress(self, percent):
        self._feedback.setProgress(percent)

    def is_cancelled(self):
        return self._feedback.isCanceled()

    def info(self, message):
        self._feedback.pushInfo(message)

    def warning(self, message):
        if hasattr(self._feedback, "pushWarning"):
            self._feedback.pushWarning(message)
        else:
            self._feedback.reportError(message, False)


class LczAlgorithm(QgsProcessingAlgorithm):
    """Base class: subclasses set the class attributes and implement ``initAlgorithm`` and
    ``run_core(parameters, context, feedback) -> dict``."""

    ALGORITHM_ID = ""
    DISPLAY_NAME = ""
    GROUP = ""
    GROUP_ID = ""
    TAGS = ""
    SHORT_DESCRIPTION = ""
    HELP = ""
    NEEDS_ONNXRUNTIME = False

    def tr(self, text):
        return QCoreApplication.translate(type(self).__name__, text)

    def createInstance(self):  # noqa: N802 (QGIS API name)
        return type(self)()

    def name(self):
        return self.ALGORITHM_ID

    def displayName(self):  # noqa: N802
        return self.tr(self.DISPLAY_NAME)

    def group(self):
        return self.tr(self.GROUP)

    def groupId(self):  # noqa: N802
        return self.GROUP_ID

    def tags(self):
        return [t.strip() for t in self.tr(self.TAGS).split(",") if t.strip()]

    def shortDescription(self):  # noqa: N802
        return self.tr(self.SHORT_DESCRIPTION)

    def shortHelpString(self):  # noqa: N802
        return self.tr(self.HELP.strip() + "\n\nReferences: " + REFERENCES)

    def icon(self):
        return QIcon(ICON)

    def helpUrl(self):  # noqa: N802
        """A local HTML page with the full help, written on demand (works offline)."""
        folder = os.path.join(tempfile.gettempdir(), "lcz_qgis_plugin_help")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{self.name()}.html")
        body = html.escape(self.shortHelpString()).replace("\n", "<br>\n")
        page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>"
                f"{html.escape(self.displayName())}</title></head><body><h1>"
                f"{html.escape(self.displayName())} (lcz:{self.name()})</h1><p><i>"
                f"{html.escape(self.shortDescription())}</i></p><p>{body}</p></body></html>")
        try:
            with open(path, encoding="utf-8") as f:
                current = f.read()
        except OSError:
            current = None
        if current != page:  # QGIS asks for the URL often (dialogs, list --json)
            with open(path, "w", encoding="utf-8") as f:
                f.write(page)
        return QUrl.fromLocalFile(path).toString()

    def canExecute(self):  # noqa: N802
        if self.NEEDS_ONNXRUNTIME and importlib.util.find_spec("onnxruntime") is None:
            return False, ONNXRUNTIME_MISSING
        return True, ""

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        if self.NEEDS_ONNXRUNTIME:
            ok, message = self.canExecute()
            if not ok:
                raise QgsProcessingException(message)
        try:
            return self.run_core(parameters, context, QgisFeedback(feedback))
        except LczError as exc:
            raise QgsProcessingException(str(exc)) from None

    def run_core(self, parameters, context, feedback):
        raise NotImplementedError
