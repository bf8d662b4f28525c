"""Build the installable plugin: a folder QGIS can load and the ZIP "Install from ZIP" takes.

metadata.txt lives once, at the repository root; this script copies it (and LICENSE) into the
plugin folder it stages. The ZIP holds only the plugin folder ``lcz_qgis_plugin/``.

    python3 tools/package_plugin.py --zip dist/lcz_qgis_plugin.zip
    python3 tools/package_plugin.py --folder build/plugins      # for QGIS_PLUGINPATH
"""

from __future__ import annotations

import argparse
import os
import shutil
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN = "lcz_qgis_plugin"
EXTRA_FILES = ("metadata.txt", "LICENSE")
SKIP_DIRS = {"__pycache__"}
SKIP_SUFFIXES = (".pyc", ".pyo")


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


def stage_plugin(plugins_dir: str) -> str:
    """Copy the plugin into ``plugins_dir/lcz_qgis_plugin`` (replacing it); return that path."""
    target = os.path.join(plugins_dir, PLUGIN)
    shutil.rmtree(target, ignore_errors=True)
    for source, relative in plugin_files():
        destination = os.path.join(target, relative)
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        shutil.copy2(source, destination)
    return target


def build_zip(zip_path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(zip_path)), exist_ok=True)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for source, relative in plugin_files():
            archive.write(source, f"{PLUGIN}/{relative}")
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
