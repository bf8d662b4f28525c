"""The ``lcz`` Processing provider ("Local Climate Zones")."""

import os

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .algorithms import all_algorithms
from .core.about import plugin_version

ICON = os.path.join(os.path.dirname(__file__), "icons", "lcz.svg")


class LczProvider(QgsProcessingProvider):
    def id(self):
        return "lcz"

    def name(self):
        return "Local Climate Zones"

    def longName(self):  # noqa: N802 (QGIS API name)
        return f"Local Climate Zones (LCZ) {plugin_version()}"

    def icon(self):
        return QIcon(ICON)

    def svgIconPath(self):  # noqa: N802 (QGIS API name)
        return ICON

    def versionInfo(self):  # noqa: N802 (QGIS API name)
        return plugin_version()

    def loadAlgorithms(self):  # noqa: N802 (QGIS API name)
        for algorithm in all_algorithms():
            self.addAlgorithm(algorithm)

    def supportedOutputRasterLayerExtensions(self):  # noqa: N802 (QGIS API name)
        return ["tif"]
