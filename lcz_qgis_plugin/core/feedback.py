"""How the core reports progress and learns about cancellation, without knowing QGIS.

The Processing adapters wrap a ``QgsProcessingFeedback`` in a :class:`Feedback`; scripts and
the command line use :class:`ConsoleFeedback`.
"""

from __future__ import annotations

import os
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
    """Prints log lines to stderr and progress: a tqdm bar (percent, elapsed, time left) when
    the stream is a terminal and tqdm is installed, otherwise a line at every 10 %, so that a
    log written to a file stays readable. :meth:`cancel` (called by the command line on Ctrl+C
    or SIGTERM, see :mod:`.interrupt`) makes the run stop at its next cancel check."""

    def __init__(self, stream=None, bar: bool | None = None):
        self._stream = stream or sys.stderr
        self._last_decile = -1
        self._cancelled = False
        self._use_bar = is_terminal(self._stream) if bar is None else bar
        self._bar = None
        self._bar_done = False

    def cancel(self) -> None:
        """Ask the run to stop; safe to call from a signal handler."""
        self._cancelled = True

    def is_cancelled(self) -> bool:
        return self._cancelled

    def progress(self, percent: float) -> None:
        if self._use_bar and self._show_on_bar(percent):
            return
        decile = int(percent // 10)
        if decile > self._last_decile:
            self._last_decile = decile
            print(f"  {decile * 10:3d} %", file=self._stream, flush=True)

    def _show_on_bar(self, percent: float) -> bool:
        """Move the bar to ``percent`` (a new bar after 100 % or when it went back: a new
        stage); False when tqdm is not installed."""
        value = min(100.0, max(0.0, float(percent)))
        if self._bar is None and value >= 100.0 and self._bar_done:
            return True  # 100 % again: the bar that reached it stays as it is
        if self._bar is None:
            try:
                from tqdm import tqdm
            except ImportError:
                self._use_bar = False
                return False
            self._bar = tqdm(total=100, file=self._stream, dynamic_ncols=True,
                             bar_format="{percentage:3.0f} %|{bar}| [{elapsed} elapsed, "
                                        "{remaining} left]")
        if value < self._bar.n:
            self._bar.reset(total=100)
        self._bar.update(value - self._bar.n)
        self._bar_done = value >= 100.0
        if self._bar_done:  # the lines after it need no bar below them
            self.close()
        return True

    def close(self) -> None:
        """End the progress bar (its last state stays on the screen)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def info(self, message: str) -> None:
        self._print(message)

    def warning(self, message: str) -> None:
        self._print(f"WARNING: {message}")

    def _print(self, text: str) -> None:
        """A line above the bar (tqdm redraws the bar below it), or a plain line."""
        if self._bar is not None:
            self._bar.write(text, file=self._stream)
        else:
            print(text, file=self._stream, flush=True)


def is_terminal(stream) -> bool:
    """True when ``stream`` is an interactive terminal (not a file or a pipe)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or closed
        return False


def format_duration(seconds: float) -> str:
    """``48 s``, ``2 min 03 s``, ``1 h 02 min``: a duration as a person reads it."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def describe_files(paths, limit: int = 3) -> str:
    """Short names of the files a run reads, for a log line: ``a.tif, b.tif and 4 more``."""
    names = [os.path.basename(os.path.normpath(os.fspath(p).split("|")[0])) for p in paths]
    if len(names) <= limit:
        return ", ".join(names)
    return f"{', '.join(names[:limit])} and {len(names) - limit} more"
