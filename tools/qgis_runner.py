"""Runs the plugin's algorithms headless with ``qgis_process.bin``, as users script them.

The plugin is installed into a private plugin folder and enabled in an isolated QGIS profile
(``QGIS_CUSTOM_CONFIG_PATH``), so neither the user's QGIS settings nor an installed copy of
the plugin play a part. Used by ``make demo`` and by the tests.

Debian's ``qgis_process`` wrapper is broken on bookworm (it passes ``--noversioncheck``), so
the binary ``qgis_process.bin`` is called directly.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile

from tools.package_plugin import build_zip, stage_plugin

QGIS_PROCESS = shutil.which("qgis_process.bin") or "/usr/bin/qgis_process.bin"


class QgisProcessError(RuntimeError):
    """qgis_process.bin ended with an error; the message holds the end of its output."""


class QgisProcess:
    """qgis_process.bin with the plugin installed in ``work``/plugins and a fresh profile.

    ``from_zip``: install from the ZIP that `make package` builds (what users install),
    instead of a copy of the source folder.
    """

    def __init__(self, work: str, from_zip: bool = False):
        work = os.fspath(work)
        self.plugins = os.path.join(work, "plugins")
        self.profile = os.path.join(work, "profile")
        shutil.rmtree(self.profile, ignore_errors=True)
        os.makedirs(self.profile)
        if from_zip:
            archive = build_zip(os.path.join(work, "lcz_qgis_plugin.zip"))
            shutil.rmtree(os.path.join(self.plugins, "lcz_qgis_plugin"), ignore_errors=True)
            with zipfile.ZipFile(archive) as z:
                z.extractall(self.plugins)
        else:
            stage_plugin(self.plugins)
        self.env = dict(os.environ, QT_QPA_PLATFORM="offscreen", QGIS_PLUGINPATH=self.plugins,
                        QGIS_CUSTOM_CONFIG_PATH=self.profile,
                        PATH=os.path.dirname(sys.executable) + os.pathsep
                        + os.environ.get("PATH", ""))
        enabled = self.call("plugins", "enable", "lcz_qgis_plugin")
        if enabled.returncode != 0:
            raise QgisProcessError("could not enable the plugin in qgis_process:\n"
                                   + enabled.stdout + enabled.stderr)

    def call(self, *args, env=None, timeout=None) -> subprocess.CompletedProcess:
        return subprocess.run([QGIS_PROCESS, *args], capture_output=True, text=True,
                              env=env or self.env, timeout=timeout)

    @staticmethod
    def arguments(algorithm: str, parameters: dict) -> list[str]:
        """``--json run ALG -- KEY=VALUE ...`` (lists repeat the key, as qgis_process wants)."""
        args = ["--json", "run", algorithm, "--"]
        for key, value in parameters.items():
            for item in value if isinstance(value, (list, tuple)) else [value]:
                args.append(f"{key}={item}")
        return args

    def run_json(self, algorithm: str, parameters: dict, env=None, timeout=None):
        """Runs one algorithm (or a .model3 file); returns (process, parsed JSON or None)."""
        done = self.call(*self.arguments(algorithm, parameters), env=env, timeout=timeout)
        try:
            return done, json.loads(done.stdout)
        except json.JSONDecodeError:
            return done, None

    def run(self, algorithm: str, parameters: dict, timeout=None) -> dict:
        """Runs one algorithm and returns its results; raises QgisProcessError on failure."""
        done, answer = self.run_json(algorithm, parameters, timeout=timeout)
        if done.returncode != 0 or answer is None:
            raise QgisProcessError(f"qgis_process {algorithm} failed (exit {done.returncode}):\n"
                                   f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
        return answer["results"]
