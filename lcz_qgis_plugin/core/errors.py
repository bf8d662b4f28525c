"""Exceptions of the QGIS-free core.

Every message names the problem and the fix, because the Processing adapters show it to the
user unchanged (as a ``QgsProcessingException``) and the command line prints it as is.
"""


class LczError(Exception):
    """Base class: a problem the user can act on."""


class InputError(LczError):
    """An input raster, extent or parameter cannot be used as given."""


class ModelError(LczError):
    """The model file is missing, unreadable or does not follow the model contract."""


class OutputError(LczError):
    """An output cannot be created or written (disk full, permissions ...)."""


class EngineError(LczError):
    """The inference engine (onnxruntime) is missing or cannot run as asked."""


class Cancelled(LczError):
    """The user cancelled (the cancel button, Ctrl+C, SIGTERM); the run's temporary files have
    been removed and previous outputs left as they were. Every cancel says the same line."""

    def __init__(self, message: str = "cancelled; no output was written"):
        super().__init__(message)
