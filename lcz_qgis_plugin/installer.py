"""Installing missing Python packages from inside QGIS: the folder, the task, the message bar.

The work is :func:`lcz_qgis_plugin.core.dependencies.install` (pip for QGIS's own Python into
a plugin-private folder); this module gives it the QGIS profile's folder, runs it as a
``QgsTask`` (the task manager shows progress and has the cancel button; the Python console
and the message log get pip's lines) and offers it in the message bar when the desktop
starts without onnxruntime or h5py. Nothing here opens a dialog from the worker thread: the
task reports back through its ``reported`` signal, emitted on the main thread.
"""

from __future__ import annotations

import importlib.util
import os

from qgis.core import Qgis, QgsApplication, QgsMessageLog, QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from .core.dependencies import (
    add_to_sys_path,
    dependency_folder,
    install,
    module_versions,
    requirements_for,
)
from .core.errors import Cancelled, LczError
from .core.feedback import Feedback

LOG_TAG = "Local Climate Zones"
NEEDED = {"onnxruntime": "runs the LCZ models", "h5py": "reads and writes patch files"}
"""The packages whose absence the desktop reports at start, and what each one does."""


def plugin_dependency_folder() -> str:
    """``<QGIS profile>/python/dependencies/lcz/py3XX`` (or under ``$LCZ_DEPENDENCIES``)."""
    profile = QgsApplication.qgisSettingsDirPath()
    return dependency_folder(os.path.join(profile, "python", "dependencies", "lcz"))


def load_dependency_folder() -> str:
    """Put the plugin's dependency folder on ``sys.path`` (when it exists): called when the
    plugin loads, before anything imports onnxruntime. Cheap: no import, no subprocess."""
    folder = plugin_dependency_folder()
    if os.path.isdir(folder):
        add_to_sys_path(folder)
    return folder


def missing_at_start() -> list[str]:
    return [name for name in NEEDED if importlib.util.find_spec(name) is None]


class TaskFeedback(Feedback):
    """The core's feedback, for a QgsTask: progress bar, cancel button, message log."""

    def __init__(self, task: QgsTask):
        self.task = task
        self.lines: list[str] = []

    def progress(self, percent):
        self.task.setProgress(percent)

    def is_cancelled(self):
        return self.task.isCanceled()

    def info(self, message):
        self.lines.append(message)
        QgsMessageLog.logMessage(message, LOG_TAG, Qgis.Info)

    def warning(self, message):
        self.lines.append(message)
        QgsMessageLog.logMessage(message, LOG_TAG, Qgis.Warning)


class InstallTask(QgsTask):
    """pip in the background; ``reported(ok, message)`` when it has ended (main thread)."""

    reported = pyqtSignal(bool, str)

    def __init__(self, modules: list[str], folder: str | None = None, pip_options=(),
                 requirements: list[str] | None = None):
        super().__init__(f"Installing {', '.join(modules)} for Local Climate Zones",
                         QgsTask.CanCancel)
        self.modules = list(modules)
        self.folder = folder or plugin_dependency_folder()
        self.pip_options = list(pip_options)
        self.requirements = requirements
        self.result = None
        self.error = ""
        self.message = ""
        self.feedback = TaskFeedback(self)

    def run(self):  # worker thread: no widgets here
        try:
            requirements = self.requirements or requirements_for(self.modules)
            self.result = install(requirements, self.folder, self.pip_options, self.feedback)
            return True
        except Cancelled:
            self.error = "Installation cancelled; nothing was installed."
        except LczError as exc:
            self.error = str(exc)
        except Exception as exc:  # a bug must reach the user, not vanish in the thread
            self.error = f"{type(exc).__name__}: {exc}"
        return False

    def finished(self, ok):  # main thread
        if ok:
            add_to_sys_path(self.folder)
            self.message = self.success_message()
        else:
            self.message = self.error or "Installation cancelled; nothing was installed."
        QgsMessageLog.logMessage(self.message, LOG_TAG, Qgis.Success if ok else Qgis.Critical)
        self.reported.emit(bool(ok), self.message)

    def success_message(self) -> str:
        versions = module_versions(self.modules)
        fine = [f"{name} {version}" for name, (version, _) in versions.items() if version]
        broken = [f"{name} ({problem})" for name, (version, problem) in versions.items()
                  if not version]
        text = (f"Installed into {self.folder}: {', '.join(fine) or 'nothing'}. The LCZ "
                f"algorithms can use them now.")
        if broken:
            text += (f" Not importable: {'; '.join(broken)}. Restart QGIS; if that does not "
                     f"help, run Check the LCZ environment (lcz:checkenvironment).")
        return text


class InstallOffer:
    """The message bar's "Install" offer and the task it starts (kept here so that neither
    is garbage-collected while pip runs). ``requirements``: pip requirements instead of those
    of ``missing`` (tests install a local wheel)."""

    def __init__(self, message_bar, missing: list[str], folder: str | None = None,
                 pip_options=(), include_openvino: bool = True,
                 requirements: list[str] | None = None):
        self.bar = message_bar
        self.missing = list(missing)
        self.modules = self.missing + (["openvino"] if include_openvino and importlib.util
                                       .find_spec("openvino") is None else [])
        self.folder, self.pip_options = folder, list(pip_options)
        self.requirements = requirements
        self.task = None
        self.item = None
        self.button = None

    def show(self):
        from qgis.PyQt.QtWidgets import QPushButton
        what = "; ".join(f"{name} ({NEEDED.get(name, 'optional')})" for name in self.missing)
        self.item = self.bar.createMessage(
            "Local Climate Zones", f"Not installed in QGIS's Python: {what}. Install "
            f"{', '.join(self.modules)} into the plugin's own folder now (pip, in the "
            f"background)?")
        self.button = QPushButton("Install")
        self.button.clicked.connect(self.start)
        self.item.layout().addWidget(self.button)
        self.bar.pushWidget(self.item, Qgis.Warning)
        return self.item

    def start(self):
        if self.task is not None:
            return self.task
        if self.item is not None:
            self.bar.popWidget(self.item)
        self.task = InstallTask(self.modules, self.folder, self.pip_options, self.requirements)
        self.task.reported.connect(self.report)
        QgsApplication.taskManager().addTask(self.task)
        self.bar.pushInfo("Local Climate Zones", "Installing in the background: see the task "
                          "manager (progress, cancel) and the log panel.")
        return self.task

    def report(self, ok: bool, message: str):
        if ok:
            self.bar.pushSuccess("Local Climate Zones", message)
        else:
            self.bar.pushCritical("Local Climate Zones", message)
