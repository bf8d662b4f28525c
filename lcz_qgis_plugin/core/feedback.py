"""How the core reports progress and learns about cancellation, without knowing QGIS.

The Processing adapters wrap a ``QgsProcessingFeedback`` in a :class:`Feedback`; scripts and
the command line use :class:`ConsoleFeedback`.
"""

from __future__ import annotations

import sys


class Feedback:
    """Silent feedback that is never cancelled. Subclass and override what you need."""

    def progress(self, percent: float) -> None:
        """Overall progress, 0-100."""

    def is_cancelled(self) -> bool:
        return False

    def info(self, message: str) -> None:
        """A line for the log."""

    def warning(self, message: str) -> None:
        """Something the user should look at; the run goes on."""

    def table(self, lines: list[str]) -> None:
        """Log lines whose columns line up in a fixed-width font (a table padded with spaces);
        a log shown in a proportional font can show them in a fixed-width one."""
        for line in lines:
            self.info(line)


class ConsoleFeedback(Feedback):
    """Prints log lines to stderr and progress in 10 % steps. :meth:`cancel` (called by the
    command line on Ctrl+C or SIGTERM, see :mod:`.interrupt`) makes the run stop at its next
    cancel check."""

    def __init__(self, stream=None):
        self._stream = stream or sys.stderr
        self._last_decile = -1
        self._cancelled = False

    def cancel(self) -> None:
        """Ask the run to stop; safe to call from a signal handler."""
        self._cancelled = True

    def is_cancelled(self) -> bool:
        return self._cancelled

    def progress(self, percent: float) -> None:
        decile = int(percent // 10)
        if decile > self._last_decile:
            self._last_decile = decile
            print(f"  {decile * 10:3d} %", file=self._stream, flush=True)

    def info(self, message: str) -> None:
        print(message, file=self._stream, flush=True)

    def warning(self, message: str) -> None:
        print(f"WARNING: {message}", file=self._stream, flush=True)
