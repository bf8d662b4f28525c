"""Shared fixtures: one real QgsApplication for the whole run (started on first use) and its
``processing`` module, a qgis_process.bin environment with the plugin installed from the ZIP
that `make package` makes, and the synthetic cities (each generated once per run).
"""

import os
import sys

import pytest
from lcz_testing import SyntheticCities

from tools import qgis_runner

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
QGIS_PROCESS = qgis_runner.QGIS_PROCESS
PROCESSING_PLUGINS = "/usr/share/qgis/python/plugins"


@pytest.fixture(scope="session")
def qgis_app():
    """A started QgsApplication with Processing and the lcz provider registered."""
    qgis_core = pytest.importorskip("qgis.core", reason="PyQGIS is not installed (make setup)")
    app = qgis_core.QgsApplication([], False)
    app.initQgis()
    if PROCESSING_PLUGINS not in sys.path:
        sys.path.append(PROCESSING_PLUGINS)
    from processing.core.Processing import Processing
    Processing.initialize()
    from lcz_qgis_plugin.plugin import LczPlugin
    plugin = LczPlugin()
    plugin.initProcessing()
    yield app
    plugin.unload()


@pytest.fixture(scope="session")
def processing(qgis_app):
    """QGIS's ``processing`` module (``processing.run``), with the lcz provider registered."""
    import processing
    return processing


@pytest.fixture(scope="session")
def synthetic_cities(tmp_path_factory):
    """The cache of tools.synthcity cities: ``synthetic_cities.city(seed, size_km)``,
    ``.with_stack(seed, size_km)`` and ``.private_copy(seed, size_km, folder)``."""
    return SyntheticCities(tmp_path_factory)


class QgisProcess(qgis_runner.QgisProcess):
    """qgis_process.bin with the plugin installed from the ZIP (what users install)."""

    def __init__(self, root):
        self.root = root
        super().__init__(root, from_zip=True)


@pytest.fixture(scope="session")
def qgis_process(tmp_path_factory):
    if not os.path.exists(QGIS_PROCESS):
        pytest.skip("qgis_process.bin is not installed (make setup installs QGIS)")
    return QgisProcess(tmp_path_factory.mktemp("qgis_process"))
