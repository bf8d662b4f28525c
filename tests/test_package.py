"""Packaging and architecture guards: the ZIP holds only the plugin; the plugin never imports
torch, training never imports QGIS; heavy imports stay lazy."""

import ast
import configparser
import os
import subprocess
import sys
import zipfile

from tools.package_plugin import build_zip

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_zip_holds_only_the_plugin_with_the_root_metadata(tmp_path):
    archive = build_zip(str(tmp_path / "lcz_qgis_plugin.zip"))
    with zipfile.ZipFile(archive) as z:
        names = z.namelist()
        metadata = z.read("lcz_qgis_plugin/metadata.txt").decode()
    assert all(n.startswith("lcz_qgis_plugin/") for n in names)
    assert "lcz_qgis_plugin/__init__.py" in names and "lcz_qgis_plugin/LICENSE" in names
    assert "lcz_qgis_plugin/icons/lcz.svg" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in names if "/tests/" in n or "/training/" in n]
    with open(os.path.join(ROOT, "metadata.txt"), encoding="utf-8") as f:
        assert metadata == f.read()
    parser = configparser.ConfigParser()
    parser.read_string(metadata)
    general = parser["general"]
    assert general["hasProcessingProvider"] == "yes"
    for key in ("name", "qgisMinimumVersion", "description", "about", "version", "author",
                "email", "repository"):
        assert general.get(key), key
    assert general["icon"] == "icons/lcz.svg"


def imported_modules(folder):
    for base, _, files in os.walk(os.path.join(ROOT, folder)):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(base, name)
                with open(path, encoding="utf-8") as f:
                    tree = ast.parse(f.read(), path)
                for node in ast.walk(tree):
                    if isinstance(node, ast.Import):
                        yield path, [a.name for a in node.names]
                    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                        yield path, [node.module]


def test_plugin_never_imports_torch_and_training_never_imports_qgis():
    plugin = [(p, m) for p, mods in imported_modules("lcz_qgis_plugin") for m in mods
              if m.split(".")[0] in ("torch", "training")]
    training = [(p, m) for p, mods in imported_modules("training") for m in mods
                if m.split(".")[0] in ("qgis", "processing")]
    assert plugin == [] and training == []


def test_core_is_qgis_free_and_onnxruntime_is_lazy():
    code = ("import sys, lcz_qgis_plugin.core.inference.classify, lcz_qgis_plugin.core.model.card\n"
            "print(sorted(m for m in ('qgis', 'onnxruntime', 'torch') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.stdout.strip() == "[]", done.stderr


def test_loading_the_provider_does_not_import_onnxruntime():
    code = ("import sys, os\n"
            "from qgis.core import QgsApplication\n"
            "app = QgsApplication([], False); app.initQgis()\n"
            "from lcz_qgis_plugin.plugin import LczPlugin\n"
            "plugin = LczPlugin(); plugin.initProcessing()\n"
            "registry = QgsApplication.processingRegistry()\n"
            "print(registry.algorithmById('lcz:classify') is not None, "
            "'onnxruntime' in sys.modules)\n")
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env=env)
    assert done.stdout.strip().splitlines()[-1] == "True False", done.stderr[-2000:]
