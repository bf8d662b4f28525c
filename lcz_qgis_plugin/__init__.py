"""Local Climate Zones (LCZ) QGIS plugin.

QGIS calls :func:`classFactory`; everything QGIS-specific is imported inside it, so that
``lcz_qgis_plugin.core`` (the QGIS-free core) can be imported by scripts and by the training
package without QGIS.
"""


def classFactory(iface):  # noqa: N802 (QGIS API name)
    from .plugin import LczPlugin
    return LczPlugin(iface)
