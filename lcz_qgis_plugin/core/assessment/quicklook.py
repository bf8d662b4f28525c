"""A PNG quick-look of an LCZ map: WUDAPT colours and a legend of the classes present.

For reports, e-mails and README pages, where a GeoTIFF cannot be shown. The map is read at
most ``max_pixels`` wide (GDAL overview-style decimation), so a country-sized map gives a
quick-look without being read whole. matplotlib is imported lazily: it comes with QGIS on
Debian (python3-matplotlib) and with the QGIS installers, but the rest of the plugin does not
need it.
"""

from __future__ import annotations

import os

import numpy as np
from osgeo import gdal

from ..commit import Commit
from ..errors import InputError, OutputError
from ..lcz_classes import LCZ_CLASSES, NODATA_CODE


def write_quicklook(lcz_map: str, png: str, title: str = "", max_pixels: int = 1200) -> str:
    """Render ``lcz_map`` (class codes 1-17, 0 = no data) to ``png``; returns ``png``."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
        from matplotlib.colors import ListedColormap
        from matplotlib.patches import Patch
    except ImportError as exc:
        raise OutputError(f"matplotlib is needed for the PNG quick-look but is not installed "
                          f"({exc}); install python3-matplotlib or skip the quick-look.") from None
    ds = gdal.Open(os.fspath(lcz_map))
    if ds is None:
        raise InputError(f"cannot open the LCZ map {lcz_map}")
    band = ds.GetRasterBand(1)
    step = max(1, int(np.ceil(max(ds.RasterXSize, ds.RasterYSize) / max_pixels)))
    codes = band.ReadAsArray(buf_xsize=max(1, ds.RasterXSize // step),
                             buf_ysize=max(1, ds.RasterYSize // step),
                             resample_alg=gdal.GRIORA_NearestNeighbour)
    colours = ["#ffffff"] + [c.colour for c in LCZ_CLASSES]  # index = code, 0 white
    present = [c for c in LCZ_CLASSES if (codes == c.code).any()]
    height, width = codes.shape
    figure, axes = plt.subplots(figsize=(8, 8 * height / max(width, 1) + 0.8), dpi=120)
    axes.imshow(np.where((codes >= 1) & (codes <= 17), codes, NODATA_CODE),
                cmap=ListedColormap(colours), vmin=-0.5, vmax=17.5, interpolation="nearest")
    axes.set_axis_off()
    if title:
        axes.set_title(title)
    axes.legend(handles=[Patch(facecolor=c.colour, edgecolor="#444444",
                               label=f"{c.letter}  {c.name}") for c in present],
                loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9,
                title="LCZ")
    try:
        with Commit(inputs=[os.fspath(lcz_map)]) as files:
            files.save_with(os.fspath(png), lambda temp: figure.savefig(
                temp, format="png", bbox_inches="tight"), "quick-look")
    finally:
        plt.close(figure)
    return png
