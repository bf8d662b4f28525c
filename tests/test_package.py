"""Packaging and architecture guards: the ZIP holds only the plugin; the plugin never imports
torch, training never imports QGIS; heavy imports stay lazy."""

import ast
import configparser
import glob
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
    for key in ("name", "qgisMinimumVersion", "description", "about", "version", "author"):
        assert general.get(key), key
    assert general["icon"] == "icons/lcz.svg"


def test_metadata_has_no_placeholders_and_says_where_help_lives():
    """metadata.txt had a placeholder e-mail, homepage, repository and tracker
    (example.org, a repository that does not exist). The project has no public repository or
    address yet: the fields are left out (QGIS needs them only to publish on
    plugins.qgis.org, and shows a relative path as a broken link), and `about` says where
    the help is."""
    parser = configparser.ConfigParser()
    parser.read(os.path.join(ROOT, "metadata.txt"), encoding="utf-8")
    general = parser["general"]
    for key in ("email", "homepage", "repository", "tracker"):
        assert key not in general, f"{key} = {general.get(key)}: no placeholder, no guess"
    text = "\n".join(general.values())
    assert "example." not in text and "lcz-project" not in text
    assert "help/index.html" in general["about"] and "help/install.html" in general["about"]


def test_zip_carries_the_user_manual_as_help_pages(tmp_path):
    """The messages and help texts pointed to a README and docs/ pages the ZIP did not hold."""
    archive = build_zip(str(tmp_path / "lcz_qgis_plugin.zip"))
    with zipfile.ZipFile(archive) as z:
        names = set(z.namelist())
        index = z.read("lcz_qgis_plugin/help/index.html").decode()
    pages = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "docs", "*.md"))}
    for page in pages - {"README", "ARCHITECTURE", "development"}:
        assert f"lcz_qgis_plugin/help/{page}.html" in names, page
    assert not [n for n in names if n.endswith(("ARCHITECTURE.html", "development.html"))]
    assert '<a href="install.html">' in index and '<a href="classify.html">' in index
    assert 'href="development' not in index and 'href="../' not in index


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


def test_loading_the_provider_imports_no_engine_and_no_training_package():
    """QGIS loads the provider at start-up: onnxruntime and OpenVINO load on the first run,
    Dask only in classify-tiles, and torch never (the plugin does not use it)."""
    code = ("import sys, os\n"
            "from qgis.core import QgsApplication\n"
            "app = QgsApplication([], False); app.initQgis()\n"
            "from lcz_qgis_plugin.plugin import LczPlugin\n"
            "plugin = LczPlugin(); plugin.initProcessing()\n"
            "registry = QgsApplication.processingRegistry()\n"
            "print(registry.algorithmById('lcz:classify') is not None, sorted(m for m in "
            "('onnxruntime', 'openvino', 'dask', 'distributed', 'torch') if m in sys.modules))\n")
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env=env)
    assert done.stdout.strip().splitlines()[-1] == "True []", done.stderr[-2000:]
