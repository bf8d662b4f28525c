"""Majority (mode) filter for LCZ class maps, the usual clean-up of per-cell classifications.

Each cell takes the most frequent class in the ``(2r+1) x (2r+1)`` cells around it. No-data
cells keep no-data and do not vote. Ties keep the cell's own class when it is among the most
frequent, otherwise the lowest code wins, so the result does not depend on processing order.
"""

from __future__ import annotations

import numpy as np

from ..lcz_classes import NODATA_CODE


def majority_filter(classes: np.ndarray, radius: int) -> np.ndarray:
    """Filtered copy of a 2-D class array (codes > 0, 0 = no data)."""
    if radius <= 0:
        return classes.copy()
    height, width = classes.shape
    size = 2 * radius + 1
    best_code = np.zeros(classes.shape, dtype=classes.dtype)
    best_count = np.zeros(classes.shape, dtype=np.int64)
    own_count = np.zeros(classes.shape, dtype=np.int64)
    for code in np.unique(classes):
        if code == NODATA_CODE:
            continue
        padded = np.pad(classes == code, radius)
        integral = np.zeros((height + 2 * radius + 1, width + 2 * radius + 1), dtype=np.int64)
        np.cumsum(np.cumsum(padded, axis=0, dtype=np.int64), axis=1, out=integral[1:, 1:])
        counts = (integral[size:, size:] - integral[:-size, size:]
                  - integral[size:, :-size] + integral[:-size, :-size])
        better = counts > best_count
        best_code[better] = code
        best_count[better] = counts[better]
        mine = classes == code
        own_count[mine] = counts[mine]
    result = np.where(own_count == best_count, classes, best_code)
    result[classes == NODATA_CODE] = NODATA_CODE
    return result


def filter_band(source, target, radius: int, rows_per_block: int, on_block=None) -> np.ndarray:
    """Stream the filter from one GDAL band to another, ``rows_per_block`` rows at a time,
    reading ``radius`` extra rows above and below each block. Returns the class histogram
    (``bincount`` of the filtered codes)."""
    height, width = source.YSize, source.XSize
    histogram = np.zeros(256, dtype=np.int64)
    for row in range(0, height, rows_per_block):
        top, bottom = max(0, row - radius), min(height, row + rows_per_block + radius)
        block = source.ReadAsArray(0, top, width, bottom - top)
        rows = min(rows_per_block, height - row)
        filtered = majority_filter(block, radius)[row - top:row - top + rows]
        target.WriteArray(filtered, 0, row)
        histogram += np.bincount(filtered.ravel(), minlength=256)
        if on_block is not None:
            on_block(row + rows, height)
    return histogram
