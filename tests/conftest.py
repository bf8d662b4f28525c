"""Shared fixtures: one real QgsApplication for the whole run (started on first use), and a
qgis_process.bin environment with the plugin installed from the ZIP that `make package` makes.
"""

import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
QGIS_PROCESS = shutil.which("qgis_process.bin") or "/usr/bin/qgis_process.bin"
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


class QgisProcess:
    """Runs ``qgis_process.bin`` with an isolated profile and the plugin from the ZIP."""

    def __init__(self, root):
        from tools.package_plugin import build_zip
        self.root = root
        self.plugins = root / "plugins"
        self.profile = root / "profile"
        self.profile.mkdir()
        archive = build_zip(str(root / "lcz_qgis_plugin.zip"))
        with zipfile.ZipFile(archive) as z:
            z.extractall(self.plugins)
        self.env = dict(os.environ, QT_QPA_PLATFORM="offscreen",
                        QGIS_PLUGINPATH=str(self.plugins),
                        QGIS_CUSTOM_CONFIG_PATH=str(self.profile),
                        PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
        enabled = self.call("plugins", "enable", "lcz_qgis_plugin")
        assert enabled.returncode == 0, enabled.stdout + enabled.stderr

    def call(self, *args, env=None, timeout=600):
        return subprocess.run([QGIS_PROCESS, *args], capture_output=True, text=True,
                              env=env or self.env, timeout=timeout)

    def run_json(self, algorithm, parameters: dict, env=None):
        """``qgis_process.bin --json run ALG -- KEY=VALUE ...``; returns (process, json|None)."""
        args = ["--json", "run", algorithm, "--"]
        for key, value in parameters.items():
            for item in value if isinstance(value, list) else [value]:
                args.append(f"{key}={item}")
        done = self.call(*args, env=env)
        try:
            return done, json.loads(done.stdout)
        except json.JSONDecodeError:
            return done, None


@pytest.fixture(scope="session")
def qgis_process(tmp_path_factory):
    if not os.path.exists(QGIS_PROCESS):
        pytest.skip("qgis_process.bin is not installed (make setup installs QGIS)")
    return QgisProcess(tmp_path_factory.mktemp("qgis_process"))
