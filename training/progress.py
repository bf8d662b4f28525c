"""Progress bars of the training command line's long loops (evaluate, calibrate,
check-precision, the checks of export): a tqdm bar on stderr when stderr is a terminal, and
nothing otherwise, so that a log written to a file holds only the result lines."""

from __future__ import annotations

import sys

from lcz_qgis_plugin.core.feedback import is_terminal


def progress_bar(iterable, total: int, desc: str, enabled: bool | None = None):
    """``iterable`` with a tqdm bar of ``total`` steps; ``enabled`` None: only on a
    terminal (and only when tqdm is installed)."""
    if enabled is None:
        enabled = is_terminal(sys.stderr)
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False, file=sys.stderr,
                dynamic_ncols=True)
