"""The plugin's name and version, read from metadata.txt (the one source of both).

In the installed plugin metadata.txt sits in the plugin folder; in a source checkout it sits
at the repository root, one level up.
"""

from __future__ import annotations

import configparser
import functools
import os

_PLUGIN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.lru_cache(maxsize=1)
def plugin_metadata() -> dict[str, str]:
    for candidate in (os.path.join(_PLUGIN_DIR, "metadata.txt"),
                      os.path.join(os.path.dirname(_PLUGIN_DIR), "metadata.txt")):
        if os.path.isfile(candidate):
            parser = configparser.ConfigParser(interpolation=None)
            parser.read(candidate, encoding="utf-8")
            return dict(parser["general"])
    return {"name": "LCZ", "version": "unknown"}


def plugin_version() -> str:
    return plugin_metadata().get("version", "unknown")


def software_tag() -> str:
    """What outputs record as the software that wrote them."""
    return f"LCZ QGIS plugin {plugin_version()}"
