"""The plugin object QGIS loads: it registers the ``lcz`` Processing provider.

``initProcessing`` is what ``qgis_process`` calls (it never calls ``initGui``); the desktop
calls ``initGui``, which does the same, so the provider exists in both.
"""

from qgis.core import QgsApplication

from .provider import LczProvider


class LczPlugin:
    def __init__(self, iface=None):
        self.iface = iface
        self.provider = None

    def initProcessing(self):  # noqa: N802 (QGIS API name)
        if self.provider is None:
            self.provider = LczProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802 (QGIS API name)
        self.initProcessing()

    def unload(self):
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
