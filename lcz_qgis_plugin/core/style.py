"""Styling of LCZ class maps: a GDAL colour table with category names (read by any GIS)
and a QGIS ``.qml`` sidecar (QGIS loads ``<name>.qml`` beside ``<name>.tif`` as the layer's
default style, so the map opens with the WUDAPT colours and a legend of class names).
"""

from __future__ import annotations

from xml.sax.saxutils import quoteattr

from osgeo import gdal

from .lcz_classes import LCZ_CLASSES, NODATA_CODE

NODATA_LABEL = "No data"
# the long elements of the QML, wrapped here so the style below stays readable
_QGIS_ELEMENT = ('<qgis version="3.22.0" styleCategories="AllStyleCategories" '
                 'hasScaleBasedVisibilityFlag="0" minScale="1e+08" maxScale="0">')
_RESAMPLING_ELEMENT = ('<resampling enabled="false" zoomedInResamplingMethod="nearestNeighbour" '
                       'zoomedOutResamplingMethod="nearestNeighbour" maxOversampling="2"/>')
_HUE_SATURATION_ELEMENT = ('<huesaturation saturation="0" grayscaleMode="0" invertColors="0" '
                           'colorizeOn="0" colorizeRed="255" colorizeGreen="128" '
                           'colorizeBlue="128" colorizeStrength="100"/>')


def colour_table() -> gdal.ColorTable:
    """Palette entries 0-17: 0 transparent (no data), 1-17 the WUDAPT colours."""
    table = gdal.ColorTable()
    table.SetColorEntry(NODATA_CODE, (0, 0, 0, 0))
    for lcz in LCZ_CLASSES:
        table.SetColorEntry(lcz.code, (*lcz.rgb, 255))
    return table


def category_names() -> list[str]:
    """GDAL category names indexed by pixel value (0 = no data)."""
    names = [""] * (max(c.code for c in LCZ_CLASSES) + 1)
    names[NODATA_CODE] = NODATA_LABEL
    for lcz in LCZ_CLASSES:
        names[lcz.code] = lcz.label
    return names


def class_map_qml() -> str:
    """A QGIS paletted-renderer style with one legend entry per LCZ class."""
    entries = "\n".join(
        f'        <paletteEntry value="{c.code}" color="{c.colour.lower()}" alpha="255" '
        f'label={quoteattr(c.label)}/>' for c in LCZ_CLASSES)
    return f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
{_QGIS_ELEMENT}
  <customproperties>
    <Option type="Map">
      <Option type="QString" name="identify/format" value="Value"/>
    </Option>
  </customproperties>
  <pipe>
    <provider>
      {_RESAMPLING_ELEMENT}
    </provider>
    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" nodataColor="">
      <rasterTransparency/>
      <minMaxOrigin>
        <limits>None</limits>
        <extent>WholeRaster</extent>
        <statAccuracy>Estimated</statAccuracy>
        <cumulativeCutLower>0.02</cumulativeCutLower>
        <cumulativeCutUpper>0.98</cumulativeCutUpper>
        <stdDevFactor>2</stdDevFactor>
      </minMaxOrigin>
      <colorPalette>
{entries}
      </colorPalette>
    </rasterrenderer>
    <brightnesscontrast brightness="0" contrast="0" gamma="1"/>
    {_HUE_SATURATION_ELEMENT}
    <rasterresampler maxOversampling="2"/>
    <resamplingStage>resamplingFilter</resamplingStage>
  </pipe>
  <blendMode>0</blendMode>
</qgis>
"""
