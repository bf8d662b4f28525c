"""Build the installable plugin: a folder QGIS can load and the ZIP "Install from ZIP" takes.

metadata.txt lives once, at the repository root; this script copies it (and LICENSE) into the
plugin folder it stages. The user manual (docs/*.md but the developer pages) goes in as HTML
pages, ``help/index.html`` and one page per topic, which the messages and the algorithms' help
pages point to. The ZIP holds only the plugin folder ``lcz_qgis_plugin/``.

    python3 tools/package_plugin.py --zip dist/lcz_qgis_plugin.zip
    python3 tools/package_plugin.py --folder build/plugins      # for QGIS_PLUGINPATH
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import sys
import zipfile

if __package__ in (None, ""):  # run as a script: python3 tools/package_plugin.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools import markdown_html  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN = "lcz_qgis_plugin"
EXTRA_FILES = ("metadata.txt", "LICENSE")
SKIP_DIRS = {"__pycache__"}
SKIP_SUFFIXES = (".pyc", ".pyo")
DOCS = os.path.join(ROOT, "docs")
DEVELOPER_PAGES = {"ARCHITECTURE.md", "development.md"}
HELP = "help"


def plugin_files():
    """(source path, path inside the plugin folder) of every file the plugin ships."""
    source = os.path.join(ROOT, PLUGIN)
    for folder, dirs, files in os.walk(source):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for name in sorted(files):
            if not name.endswith(SKIP_SUFFIXES):
                path = os.path.join(folder, name)
                yield path, os.path.relpath(path, source)
    for name in EXTRA_FILES:
        yield os.path.join(ROOT, name), name


def user_pages() -> list[str]:
    """The manual's pages the plugin ships (file names in docs/)."""
    return sorted(name for name in map(os.path.basename, glob.glob(os.path.join(DOCS, "*.md")))
                  if name not in DEVELOPER_PAGES)


def help_name(page: str) -> str:
    """The HTML page of a docs/ page: the manual's index (docs/README.md) is index.html."""
    return "index.html" if page == "README.md" else page[:-len(".md")] + ".html"


def help_link(target: str):
    """Where a link of a shipped page points in the plugin: another shipped page's HTML, an
    address on the web as it is, nothing (plain text) for a file the plugin does not ship."""
    if re.match(r"[a-z]+:", target) or target.startswith("#"):
        return target
    file, _, anchor = target.partition("#")
    if file not in user_pages():
        return None
    return help_name(file) + (f"#{anchor}" if anchor else "")


def help_pages():
    """(path inside the plugin folder, HTML) of every shipped manual page."""
    for page in user_pages():
        with open(os.path.join(DOCS, page), encoding="utf-8") as f:
            markdown = f.read()
        index = None if page == "README.md" else help_name("README.md")
        yield f"{HELP}/{help_name(page)}", markdown_html.page(markdown, help_link, index)


def stage_plugin(plugins_dir: str) -> str:
    """Copy the plugin into ``plugins_dir/lcz_qgis_plugin`` (replacing it); return that path."""
    target = os.path.join(plugins_dir, PLUGIN)
    shutil.rmtree(target, ignore_errors=True)
    for source, relative in plugin_files():
        destination = os.path.join(target, relative)
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        shutil.copy2(source, destination)
    for relative, text in help_pages():
        os.makedirs(os.path.dirname(os.path.join(target, relative)), exist_ok=True)
        with open(os.path.join(target, relative), "w", encoding="utf-8") as f:
            f.write(text)
    return target


def build_zip(zip_path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(zip_path)), exist_ok=True)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for source, relative in plugin_files():
            archive.write(source, f"{PLUGIN}/{relative}")
        for relative, text in help_pages():
            archive.writestr(f"{PLUGIN}/{relative}", text)
    return zip_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--zip", help="write the plugin ZIP here")
    parser.add_argument("--folder", help="stage the plugin folder into this plugins directory")
    args = parser.parse_args()
    if not (args.zip or args.folder):
        parser.error("give --zip and/or --folder")
    if args.zip:
        print(f"wrote {build_zip(args.zip)}")
    if args.folder:
        print(f"staged {stage_plugin(args.folder)}")


if __name__ == "__main__":
    main()
