"""Overlapping reading and writing with inference: a prefetch thread and a writer thread.

The engine is the expensive stage; reading strips, cutting patches and writing finished rows
are cheap but would otherwise leave the engine idle while they run (on a GPU they take longer
than the model). Each side stage runs on its own thread and talks to the main thread through
a bounded queue, so memory stays bounded: a stage that runs ahead blocks until the engine has
taken what it made.

Errors and cancel: an exception in a worker thread is handed to the main thread and raised
there, with its own type, message and traceback. When the main thread stops early (cancel,
error), :meth:`close` stops the worker at its next hand-over and joins it, so no thread
outlives the run and nothing writes to an output that is being deleted.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator

_ITEM, _END, _ERROR = "item", "end", "error"
_POLL_SECONDS = 0.05


class Prefetch:
    """Iterates ``items`` (typically a generator) on a worker thread, up to ``depth`` ahead.

    Use as a context manager; iterating yields the items in order, and re-raises in the
    caller an exception the generator raised."""

    def __init__(self, items: Iterable, depth: int = 4, name: str = "lcz-prefetch"):
        self._items = items
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def _put(self, message) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(message, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        iterator = iter(self._items)
        try:
            for item in iterator:
                if not self._put((_ITEM, item)):
                    return
            self._put((_END, None))
        except BaseException as exc:  # handed to the main thread, which raises it
            self._put((_ERROR, exc))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:  # run the generator's own cleanup on its thread
                close()

    def __iter__(self) -> Iterator:
        while True:
            try:
                kind, value = self._queue.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError("the prefetch thread stopped without a result") from None
                continue
            if kind == _END:
                return
            if kind == _ERROR:
                raise value
            yield value

    def close(self) -> None:
        """Stop the worker and wait for it (it finishes the item it is making)."""
        self._stop.set()
        self._thread.join()
        while not self._queue.empty():
            self._queue.get_nowait()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self) -> Prefetch:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class Background:
    """Runs submitted calls in order on one worker thread, at most ``depth`` waiting.

    An exception in a call is raised in the caller at its next :meth:`submit` or at
    :meth:`finish`; the calls after it are dropped."""

    def __init__(self, depth: int = 2, name: str = "lcz-writer"):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._failed = False  # stays set once the error was raised: later calls are dropped
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                call = self._queue.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                continue
            if call is None:
                return
            if not self._failed:
                try:
                    call()
                except BaseException as exc:  # raised in the caller
                    self._error, self._failed = exc, True

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def submit(self, function: Callable, *args) -> None:
        self._raise_error()
        while True:
            try:
                self._queue.put(lambda: function(*args), timeout=_POLL_SECONDS)
                return
            except queue.Full:
                self._raise_error()
                if not self._thread.is_alive():
                    raise RuntimeError("the writer thread stopped") from None

    def finish(self) -> None:
        """Wait until every submitted call ran; raise the first error among them."""
        self._queue.put(None)
        self._thread.join()
        self._raise_error()

    def close(self) -> None:
        """Stop after the call that is running, dropping the others; wait for the thread."""
        self._stop.set()
        self._thread.join()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


class Inline:
    """The same interface as :class:`Background`, running each call at once (no thread)."""

    alive = False

    def submit(self, function: Callable, *args) -> None:
        function(*args)

    def finish(self) -> None:
        pass

    def close(self) -> None:
        pass
