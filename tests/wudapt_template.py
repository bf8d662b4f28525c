"""KML/KMZ files laid out like the WUDAPT training-area template, written as plain text.

The template is a Document with one Folder per LCZ class (most of them empty in a real
file), placemarks named after their class (``1`` ... ``10``, ``A`` ... ``G``), and the
region of interest: a folder ``ROI`` holding a placemark ``ROI``.
"""

from __future__ import annotations

import os
import zipfile

from lcz_testing import ORIGIN, UTM33
from osgeo import osr

CLASS_LABELS = [str(i) for i in range(1, 11)] + list("ABCDEFG")


def cell_ring(row: int, col: int, rows: int = 1, cols: int = 1, cell: float = 100.0,
              origin=ORIGIN, inset: float = 10.0) -> list[tuple[float, float]]:
    """Corners (projected) of cells (row, col) ... (row+rows-1, col+cols-1), inset."""
    xa, ya = origin[0] + col * cell + inset, origin[1] - row * cell - inset
    xb, yb = origin[0] + (col + cols) * cell - inset, origin[1] - (row + rows) * cell + inset
    return [(xa, ya), (xb, ya), (xb, yb), (xa, yb)]


def _lonlat(ring, epsg: int) -> str:
    source = osr.SpatialReference()
    source.ImportFromEPSG(epsg)
    source.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    wgs84 = osr.SpatialReference()
    wgs84.ImportFromEPSG(4326)
    wgs84.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    points = osr.CoordinateTransformation(source, wgs84).TransformPoints(list(ring) + [ring[0]])
    return " ".join(f"{lon:.9f},{lat:.9f},0" for lon, lat, *_ in points)


def placemark(name: str | None, ring, epsg: int = UTM33) -> str:
    tag = f"<name>{name}</name>" if name is not None else ""
    return (f"<Placemark>{tag}<Polygon><outerBoundaryIs><LinearRing><coordinates>"
            f"{_lonlat(ring, epsg)}</coordinates></LinearRing></outerBoundaryIs></Polygon>"
            f"</Placemark>")


def write_wudapt_template(path, areas, *, roi=None, roi_folder: str | None = "ROI",
                          roi_name: str | None = "ROI", others=(), kmz: bool = False,
                          epsg: int = UTM33, document: str = "doc.kml") -> str:
    """Write ``path`` (.kml, or .kmz holding the KML as ``document``).

    ``areas``: [(class label, ring)] in EPSG ``epsg``, each put in its class's folder
    ``LCZ <label>``; the other class folders stay empty. ``roi``: the ROI ring, in a folder
    ``roi_folder`` (None: at the document's root) as a placemark named ``roi_name``.
    ``others``: [(label, ring)] in a folder 'other' (labels that are no LCZ class).
    """
    folders = []
    if roi is not None:
        mark = placemark(roi_name, roi, epsg)
        folders.append(f"<Folder><name>{roi_folder}</name>{mark}</Folder>" if roi_folder
                       else mark)
    for label in CLASS_LABELS:
        marks = "".join(placemark(name, ring, epsg) for name, ring in areas if name == label)
        folders.append(f"<Folder><name>LCZ {label}</name>{marks}</Folder>")
    if others:
        marks = "".join(placemark(name, ring, epsg) for name, ring in others)
        folders.append(f"<Folder><name>other</name>{marks}</Folder>")
    text = ('<?xml version="1.0" encoding="UTF-8"?>\n<kml xmlns="http://www.opengis.net/kml/'
            '2.2"><Document><name>WUDAPT training areas</name>' + "".join(folders)
            + "</Document></kml>\n")
    path = os.fspath(path)
    if kmz:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(document, text)
    else:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return path
