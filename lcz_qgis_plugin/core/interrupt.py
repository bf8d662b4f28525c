"""Ctrl+C (SIGINT) and SIGTERM stop a headless run the way the Processing cancel button does.

While :func:`cancel_on_signals` is active in the main thread:

* the first SIGINT or SIGTERM calls the given ``cancel`` function (a
  ``QgsProcessingFeedback.cancel``, :meth:`.feedback.ConsoleFeedback.cancel`, or one that raises
  ``KeyboardInterrupt``). The run stops at its next cancel check, deletes its temporary files
  and ends with "cancelled; no output was written"; previous outputs stay as they were;
* a second signal is a hard stop: the signal's default action is restored and the signal sent
  again, so the process ends at once. Its temporary files (``.<name>.lcz-partial-<host>-<pid>-
  ...``) are removed by the next run writing into the same folder, or by
  ``python -m lcz_qgis_plugin.core clean-partials FOLDER``.

The handlers that were there before (``qgis_process`` has its own) are put back afterwards,
exactly, C-level ones included. Outside the main thread (QGIS desktop runs algorithms in
task threads, with its own cancel button) nothing is installed: Python only lets the main
thread handle signals. A signal the process was started to ignore (``nohup``, a background
job of a script) stays ignored.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
from collections.abc import Callable, Iterator

from .errors import Cancelled

CANCELLED = str(Cancelled())
"""The one line a cancelled run ends with, everywhere (Processing, both command lines)."""

CANCELLED_EXIT_STATUS = 130
"""Exit status of the command lines after a cancel (128 + SIGINT, as shells report Ctrl+C)."""

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM")
                     if hasattr(signal, name))


def _libc():
    """The C library, to save and restore handlers installed outside Python (None where it
    cannot be loaded, e.g. on Windows)."""
    try:
        return ctypes.CDLL(None, use_errno=True)
    except (OSError, TypeError):
        return None


_LIBC = _libc()
_SIGACTION_BYTES = 512  # larger than struct sigaction on every platform


def _save_raw(signum: int):
    """The signal's current C-level disposition as an opaque ``struct sigaction``, or None."""
    if _LIBC is None or not hasattr(_LIBC, "sigaction"):
        return None
    saved = ctypes.create_string_buffer(_SIGACTION_BYTES)
    if _LIBC.sigaction(signum, None, saved) != 0:
        return None
    return saved


def _restore_raw(signum: int, saved) -> None:
    if saved is not None:
        _LIBC.sigaction(signum, saved, None)


def raw_handler(signum: int) -> int | None:
    """Address of the C-level handler of ``signum`` (0: default, 1: ignored), or None where
    it cannot be read. ``sa_handler`` comes first in ``struct sigaction``."""
    raw = _save_raw(signum)
    return None if raw is None else (ctypes.c_void_p.from_buffer(raw).value or 0)


def _ignored(signum: int, raw) -> bool:
    """True when the signal is ignored (a process started by ``nohup``, or in the background
    by a script). The C-level disposition decides where it can be read: Python's own record
    does not see handlers installed outside Python."""
    if raw is not None:
        return (ctypes.c_void_p.from_buffer(raw).value or 0) == int(signal.SIG_IGN)
    return signal.getsignal(signum) == signal.SIG_IGN


_requested = threading.Event()


def stop_if_requested() -> None:
    """Raise ``KeyboardInterrupt`` when a stop signal came during :func:`cancel_on_signals`.

    For loops that cancel by exception (the training package): Python runs a signal handler
    at whatever bytecode comes next, and an exception raised there is lost when that is a
    finalizer or a weakref callback ("Exception ignored in ..."); the run would then go on to
    the end. Checked once per batch, the request is never lost."""
    if _requested.is_set():
        raise KeyboardInterrupt


class _Handler:
    """The first signal cancels, the second stops the process at once."""

    def __init__(self, cancel: Callable[[], None]):
        self.cancel = cancel
        self.received: list[int] = []

    def __call__(self, signum, frame) -> None:
        self.received.append(signum)
        if len(self.received) == 1:
            _requested.set()
            self.cancel()
            return
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


@contextlib.contextmanager
def cancel_on_signals(cancel: Callable[[], None],
                      signals: tuple[int, ...] = STOP_SIGNALS) -> Iterator[_Handler | None]:
    """Run the block with SIGINT and SIGTERM calling ``cancel`` (then a hard stop on a second
    signal); yields the handler (its ``received`` lists the signals), or None outside the main
    thread, where nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    handler = _Handler(cancel)
    _requested.clear()
    previous = {}
    try:
        for signum in signals:
            raw = _save_raw(signum)
            if _ignored(signum, raw):
                continue
            previous[signum] = (signal.signal(signum, handler), raw)
        yield handler
    finally:
        for signum, (python_handler, raw) in previous.items():
            # Python's record first (None: a handler installed outside Python), then the
            # exact C-level disposition that was there before.
            signal.signal(signum, python_handler if python_handler is not None
                          else signal.SIG_DFL)
            _restore_raw(signum, raw)
        _requested.clear()


def raise_keyboard_interrupt() -> None:
    """A ``cancel`` for code without cancel checks: SIGTERM then behaves like Ctrl+C."""
    raise KeyboardInterrupt
