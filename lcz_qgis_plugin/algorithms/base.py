"""What every LCZ Processing algorithm shares: group, help, feedback bridge, error handling.

Algorithms are thin adapters: they declare parameters, turn them into plain Python values,
call a function of :mod:`lcz_qgis_plugin.core` with a :class:`QgisFeedback`, and return its
outputs. Core errors (:class:`~lcz_qgis_plugin.core.errors.LczError`) become
``QgsProcessingException`` with the same message.
"""

import atexit
import html
import importlib.util
import os
import re
import shutil
import tempfile

from qgis.core import (
    QgsApplication,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingFeedback,
)
from qgis.PyQt.QtCore import QCoreApplication, QUrl
from qgis.PyQt.QtGui import QIcon

from ..core.areas import kmz_as_kml
from ..core.errors import Cancelled, LczError
from ..core.feedback import Feedback
from ..core.inference.engine import ONNXRUNTIME_MISSING
from ..core.interrupt import CANCELLED, cancel_on_signals

PLUGIN_FOLDER = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ICON = os.path.join(PLUGIN_FOLDER, "icons", "lcz.svg")
MANUAL = os.path.join(PLUGIN_FOLDER, "help")
"""The user manual as HTML pages, put there when the plugin is packaged (docs/*.md)."""
MANUAL_PAGES = {
    "classify": "classify.html",
    "stacksentinel2": "preprocessing.html#stack-sentinel-2-bands-lczstacksentinel2",
    "rasterizeosm": "preprocessing.html#rasterize-openstreetmap-layers-lczrasterizeosm",
    "preparedsm": "preprocessing.html#heights-from-a-surface-model-lczpreparedsm",
    "buildstack": "preprocessing.html#build-model-input-stack-lczbuildstack",
    "extractpatches": "training-data.html",
    "assessaccuracy": "assessment.html",
    "checkenvironment": "install.html#checking-check-the-lcz-environment",
    "installdependencies": "install.html#from-inside-qgis",
}
"""Each algorithm's page of the manual (help/ in the plugin folder)."""
REFERENCES = (
    "Stewart, I. D. & Oke, T. R. (2012). Local Climate Zones for urban temperature studies. "
    "BAMS 93(12), 1879-1900. "
    "Kim, M., Jeong, D. & Kim, Y. (2021). Local climate zone classification using a "
    "multi-scale, multi-level attention network. ISPRS J. Photogramm. Remote Sens. 181. "
    "Demuzere, M. et al. (2022). A global map of Local Climate Zones. ESSD 14, 3835-3873.")


def help_text(source: str) -> str:
    """A HELP text as QGIS shows it: the source wraps long lines with two-space continuation
    lines (to keep the code within 100 columns); QGIS wants one line per paragraph or item.
    An indented line starting with "- " is a sub-item: a line of its own, indented (the
    indent shows in qgis_process's help; the dialog shows each line as a paragraph)."""
    text = re.sub(r"\n {2,}(?!- )", " ", source.strip())
    return re.sub(r"\n {2,}- ", "\n    ", text)


class QgisFeedback(Feedback):
    """Passes core progress and log lines to a ``QgsProcessingFeedback``.

    ``fixed_width_tables``: log tables as console output, with non-breaking spaces. The QGIS
    desktop's log shows console output in the system's fixed-width font but collapses runs of
    ordinary spaces (it is HTML); qgis_process and scripts print plain lines, whose spaces
    line up in a terminal. Default: in the QGIS desktop application only."""

    def __init__(self, feedback: QgsProcessingFeedback, fixed_width_tables=None):
        self._feedback = feedback or QgsProcessingFeedback()
        if fixed_width_tables is None:
            fixed_width_tables = QgsApplication.platform() == "desktop"
        self._fixed_width_tables = fixed_width_tables

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

    def table(self, lines):
        if not self._fixed_width_tables:
            super().table(lines)
            return
        for line in lines:
            self._feedback.pushConsoleInfo(line.replace(" ", "\u00a0"))

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
    AREA_PARAMETERS: tuple[str, ...] = ()
    """Parameters of polygons that may be WUDAPT KML/KMZ files."""

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
        references = "" if self.GROUP_ID == "tools" else "\n\nReferences: " + REFERENCES
        return self.tr(help_text(self.HELP) + references)

    def icon(self):
        return QIcon(ICON)

    def helpUrl(self):  # noqa: N802
        """A local HTML page with the full help, written on demand (works offline) into a
        folder only this user can open (see :func:`help_folder`), with a link to the
        algorithm's page of the manual installed with the plugin."""
        body = html.escape(self.shortHelpString()).replace("\n", "<br>\n")
        manual = manual_page_url(self.name())
        link = (f"<p>The manual's page for this algorithm, with examples: <a href='"
                f"{html.escape(manual)}'>{html.escape(manual)}</a></p>" if manual else "")
        page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>"
                f"{html.escape(self.displayName())}</title></head><body><h1>"
                f"{html.escape(self.displayName())} (lcz:{self.name()})</h1><p><i>"
                f"{html.escape(self.shortDescription())}</i></p>{link}<p>{body}</p>{link}"
                f"</body></html>")
        path = write_private_page(f"{self.name()}.html", page)
        return QUrl.fromLocalFile(path).toString() if path else ""

    def canExecute(self):  # noqa: N802
        if self.NEEDS_ONNXRUNTIME and importlib.util.find_spec("onnxruntime") is None:
            return False, ONNXRUNTIME_MISSING
        return True, ""

    def checkParameterValues(self, parameters, context):  # noqa: N802
        return super().checkParameterValues(self.readable_areas(parameters), context)

    def readable_areas(self, parameters: dict) -> dict:
        """``parameters`` with each KMZ file of :attr:`AREA_PARAMETERS` given as its KML
        document where GDAL has no LIBKML driver: QGIS 3.44 refuses a source it cannot open
        before the algorithm runs, and Debian unstable's GDAL cannot open a .kmz."""
        readable = {name: kmz_as_kml(parameters.get(name)) for name in self.AREA_PARAMETERS}
        return dict(parameters, **{name: kml for name, kml in readable.items() if kml})

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        parameters = self.readable_areas(parameters)
        if self.NEEDS_ONNXRUNTIME:
            ok, message = self.canExecute()
            if not ok:
                raise QgsProcessingException(message)
        feedback = feedback or QgsProcessingFeedback()
        # Headless runs (qgis_process, scripts): Ctrl+C and SIGTERM press the cancel button
        with cancel_on_signals(feedback.cancel):
            try:
                return self.run_core(parameters, context, QgisFeedback(feedback))
            except Cancelled:
                raise QgsProcessingException(CANCELLED) from None
            except LczError as exc:
                raise QgsProcessingException(str(exc)) from None

    def run_core(self, parameters, context, feedback):
        raise NotImplementedError


def manual_page_url(algorithm: str) -> str:
    """The file: URL of ``algorithm``'s manual page in the installed plugin; empty where the
    manual is not installed (a source checkout: the pages are docs/*.md)."""
    page, _, anchor = MANUAL_PAGES.get(algorithm, "index.html").partition("#")
    path = os.path.join(MANUAL, page)
    if not os.path.isfile(path):
        return ""
    url = QUrl.fromLocalFile(path)
    url.setFragment(anchor or None)
    return url.toString()


_help_folder = None


def help_folder() -> str:
    """This process's folder for help pages: made by ``mkdtemp`` (a fresh, unpredictable name,
    mode 0700, never an existing path), deleted when the process ends. A fixed name in the
    shared temporary folder would let another local user plant a link there and have the
    page written over any file this user can write."""
    global _help_folder
    if _help_folder is None or not _private_folder(_help_folder):
        _help_folder = tempfile.mkdtemp(prefix="lcz_qgis_plugin_help-")
        atexit.register(shutil.rmtree, _help_folder, True)
    return _help_folder


def _private_folder(path: str) -> bool:
    """Still the folder we made: a real folder (no link), ours, closed to everyone else."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return (os.path.isdir(path) and not os.path.islink(path)
            and (not hasattr(os, "getuid") or info.st_uid == os.getuid())
            and info.st_mode & 0o077 == 0)


def write_private_page(name: str, page: str):
    """Write ``page`` as ``name`` in :func:`help_folder` (unchanged pages are not rewritten:
    QGIS asks for the URL often) and return its path; None when it cannot be written (the
    help text stays in the dialog). The page is written to a new file (``mkstemp``:
    O_CREAT|O_EXCL) and moved into place with ``os.replace``, which replaces a link instead of
    following it; the old page is read without following links."""
    try:
        folder = help_folder()
        path = os.path.join(folder, name)
        if _read_no_follow(path) == page:
            return path
        handle, temp = tempfile.mkstemp(prefix=".page-", suffix=".html", dir=folder)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as f:
                f.write(page)
            os.replace(temp, path)
        except BaseException:
            if os.path.exists(temp):
                os.remove(temp)
            raise
        return path
    except OSError:
        return None


def _read_no_follow(path: str):
    try:
        handle = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    with os.fdopen(handle, encoding="utf-8", errors="replace") as f:
        return f.read()
