"""The plugin object QGIS loads: it registers the ``lcz`` Processing provider.

``initProcessing`` is what ``qgis_process`` calls (it never calls ``initGui``); the desktop
calls ``initGui``, which does the same, so the provider exists in both. The plugin's own
dependency folder (packages installed by lcz:installdependencies) is put on ``sys.path`` as
soon as the plugin object exists, before anything imports onnxruntime.
"""

from qgis.core import QgsApplication

from .installer import InstallOffer, load_dependency_folder, missing_at_start
from .provider import LczProvider


class LczPlugin:
    def __init__(self, iface=None):
        self.iface = iface
        self.provider = None
        self.install_offer = None
        self.dependency_folder = load_dependency_folder()

    def initProcessing(self):  # noqa: N802 (QGIS API name)
        if self.provider is None:
            self.provider = LczProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802 (QGIS API name)
        self.initProcessing()
        missing = missing_at_start()
        if missing and self.iface is not None:
            self.install_offer = InstallOffer(self.iface.messageBar(), missing,
                                              self.dependency_folder)
            self.install_offer.show()

    def unload(self):
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
