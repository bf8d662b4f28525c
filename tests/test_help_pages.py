"""Help that travels with the plugin: every pointer to the manual in what users read (messages,
help texts, the shipped graphical model, metadata.txt) names a page the plugin ZIP holds, and
each algorithm's Help page links to its installed manual page."""

import ast
import glob
import json
import os
import re
import subprocess
import sys
import zipfile

import pytest

from tools.markdown_html import page
from tools.package_plugin import build_zip, help_link

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POINTER = re.compile(r"help/([\w.-]+\.html)(?:#([\w-]+))?")
STALE = re.compile(r"README|docs/|\.md\b")


def user_strings(path: str) -> list[str]:
    """The string constants of a module that users can read: every one but the bare string
    statements (docstrings, attribute notes), which only developers read."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    notes = {id(node.value) for node in ast.walk(tree)
             if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in notes]


def texts_users_read() -> dict[str, str]:
    """Where -> text, for every message and help text of the plugin."""
    texts = {}
    for path in glob.glob(os.path.join(ROOT, "lcz_qgis_plugin", "**", "*.py"), recursive=True):
        for number, text in enumerate(user_strings(path)):
            texts[f"{os.path.relpath(path, ROOT)} #{number}"] = text
    for name in ("metadata.txt", "lcz_qgis_plugin/models/lcz_map_from_downloads.model3"):
        with open(os.path.join(ROOT, name), encoding="utf-8") as f:
            texts[name] = f.read()
    return texts


@pytest.fixture(scope="module")
def zip_names(tmp_path_factory):
    archive = build_zip(str(tmp_path_factory.mktemp("zip") / "lcz_qgis_plugin.zip"))
    with zipfile.ZipFile(archive) as z:
        return {name: z.read(name).decode() for name in z.namelist()
                if name.endswith(".html")}


def test_every_pointer_to_the_manual_names_a_page_in_the_zip(zip_names):
    """Messages said "the plugin's README, section ..." and "docs/....md": neither is in the
    ZIP. They now name help/PAGE.html (and a section's anchor); both must exist."""
    texts = texts_users_read()
    stale = [f"{where}: {text[:120]!r}" for where, text in texts.items()
             if STALE.search(text) and where != "metadata.txt"]
    assert not stale, stale
    pointers = [(where, match.group(1), match.group(2)) for where, text in texts.items()
                for match in POINTER.finditer(text)]
    assert len(pointers) >= 6, pointers  # the scan finds them
    missing = []
    for where, target, anchor in pointers:
        html = zip_names.get(f"lcz_qgis_plugin/help/{target}")
        if html is None:
            missing.append(f"{where}: help/{target} is not in the ZIP")
        elif anchor and f'id="{anchor}"' not in html:
            missing.append(f"{where}: help/{target} has no section #{anchor}")
    assert not missing, missing


def test_links_between_manual_pages_reach_a_page_and_a_section(zip_names):
    broken = []
    for name, html in zip_names.items():
        for target in re.findall(r'href="([^"]+)"', html):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            other = zip_names.get(f"lcz_qgis_plugin/help/{file}") if file else html
            if other is None or (anchor and f'id="{anchor}"' not in other):
                broken.append(f"{name}: {target}")
    assert not broken, broken


def test_the_converter_renders_what_the_manual_uses():
    markdown = ("# Title with `code`\n\nA *word*, **bold**, `a|b` and [a page](install.md#x),"
                " [the README](../README.md) and [the web](https://qgis.org).\n\n"
                "- item one\n  continued\n\n  ```bash\n  run --this\n  ```\n- item two\n"
                "  - nested\n\n| a | b |\n|---|---|\n| `x|y` | 2 |\n\n> quoted\n")
    html = page(markdown, help_link)
    assert '<h1 id="title-with-code">Title with <code>code</code></h1>' in html
    assert "<em>word</em>" in html and "<strong>bold</strong>" in html
    assert '<a href="install.html#x">a page</a>' in html
    assert "the README" in html and "../README" not in html
    assert '<a href="https://qgis.org">the web</a>' in html
    assert "<li>item one continued\n<pre><code>run --this</code></pre></li>" in html \
        or "<li><p>item one continued</p>\n<pre><code>run --this</code></pre></li>" in html
    assert "<ul><li>nested</li></ul>" in html
    assert "<td><code>x|y</code></td><td>2</td>" in html
    assert "<blockquote><p>quoted</p></blockquote>" in html


INSTALLED_HELP = """
import sys
sys.path.insert(0, sys.argv[1])
sys.path.append("/usr/share/qgis/python/plugins")
from qgis.core import QgsApplication
from qgis.PyQt.QtCore import QUrl
app = QgsApplication([], False)
app.initQgis()
import lcz_qgis_plugin
from lcz_qgis_plugin.plugin import LczPlugin
assert lcz_qgis_plugin.__file__.startswith(sys.argv[1]), lcz_qgis_plugin.__file__
plugin = LczPlugin()
plugin.initProcessing()
import json
pages = {}
for algorithm in QgsApplication.processingRegistry().providerById("lcz").algorithms():
    with open(QUrl(algorithm.helpUrl()).toLocalFile(), encoding="utf-8") as f:
        pages[algorithm.name()] = f.read()
print("PAGES " + json.dumps(pages))
"""


@pytest.mark.qgis
def test_each_algorithms_help_page_links_to_its_installed_manual_page(tmp_path):
    """The Help button opened the same text as the dialog's side panel, from a temporary
    folder; it now also links to the algorithm's page of the manual installed with the
    plugin (from the ZIP)."""
    archive = build_zip(str(tmp_path / "lcz_qgis_plugin.zip"))
    plugins = tmp_path / "plugins"
    with zipfile.ZipFile(archive) as z:
        z.extractall(plugins)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    done = subprocess.run([sys.executable, "-c", INSTALLED_HELP, str(plugins)],
                          capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    pages = json.loads(done.stdout.split("PAGES ", 1)[1])
    assert len(pages) == 7, sorted(pages)
    for name, text in pages.items():
        links = re.findall(r"<a href='(file://[^'#]+)(?:#([\w-]+))?'>", text)
        assert links, f"{name}: no link to the manual"
        path, anchor = links[0]
        path = path[len("file://"):]
        assert path.startswith(str(plugins / "lcz_qgis_plugin" / "help")), path
        with open(path, encoding="utf-8") as f:
            manual = f.read()
        assert not anchor or f'id="{anchor}"' in manual, (name, anchor)
