"""The installer (core/dependencies.py, installer.py, lcz:installdependencies): real pip runs
for this Python, offline, from wheels made in the test (tests/wheels.py)."""

import importlib
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from wheels import make_wheel

from lcz_qgis_plugin.core import dependencies
from lcz_qgis_plugin.core.dependencies import (
    DependencyError,
    constraints,
    install,
    python_interpreter,
    requirements_for,
)
from lcz_qgis_plugin.core.errors import Cancelled
from lcz_qgis_plugin.core.feedback import Feedback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def clean_path():
    """Restores sys.path and forgets the test modules: install() makes them importable."""
    saved = list(sys.path)
    yield
    sys.path[:] = saved
    for name in [n for n in sys.modules if n.startswith("lczdummy")]:
        del sys.modules[name]
    importlib.invalidate_caches()


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory):
    """a 1.0 needs b and numpy; b 2.0 and 3.0; c needs numpy >= 99; d 2.0 needs b >= 3,
    d 1.0 needs any b."""
    folder = tmp_path_factory.mktemp("wheels")
    make_wheel(folder, "lczdummy_a", "1.0", ["lczdummy_b", "numpy>=1"])
    make_wheel(folder, "lczdummy_b", "2.0")
    make_wheel(folder, "lczdummy_b", "3.0")
    make_wheel(folder, "lczdummy_c", "1.0", ["numpy>=99"])
    make_wheel(folder, "lczdummy_d", "1.0", ["lczdummy_b"])
    make_wheel(folder, "lczdummy_d", "2.0", ["lczdummy_b>=3"])
    return ["--no-index", "--find-links", str(folder)]


def contents(folder):
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def test_constraints_pin_numpy_and_every_installed_package():
    pins = constraints()
    assert f"numpy=={np.__version__}" in pins
    import onnx
    assert f"onnx=={onnx.__version__}" in pins
    assert not any(p.startswith("numpy==") and p != f"numpy=={np.__version__}" for p in pins)


def test_interpreter_is_this_python():
    done = subprocess.run([python_interpreter(), "-c", "import sys; print(sys.version)"],
                          capture_output=True, text=True)
    assert done.stdout.strip() == sys.version



def another_python_of_this_version() -> str | None:
    """A Python of this major.minor that is another build (pyenv, conda, a second install)."""
    import glob
    major, minor = sys.version_info[:2]
    for path in sorted(glob.glob(os.path.expanduser(
            f"~/.pyenv/versions/{major}.{minor}.*/bin/python{major}.{minor}"))
            + glob.glob(f"/opt/*/bin/python{major}.{minor}")):
        done = subprocess.run([path, "-c", "import sys; print(sys.version)"],
                              capture_output=True, text=True)
        if done.returncode == 0 and done.stdout.strip() != sys.version:
            return path
    return None


def test_a_python_of_the_same_version_first_on_path_is_not_taken():
    """Embedded in QGIS, Python sets sys.executable from PATH, where pyenv's python3 of the
    same version may come first; pip must still run with QGIS's own Python."""
    other = another_python_of_this_version()
    if other is None:
        pytest.skip("no second Python of this version here (pyenv or /opt) to put first")
    code = ("import sys; sys.executable = sys.argv[1]\n"
            "from lcz_qgis_plugin.core.dependencies import python_interpreter\n"
            "print(python_interpreter())")
    done = subprocess.run([sys.executable, "-c", code, other], capture_output=True, text=True,
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    assert done.returncode == 0, done.stderr[-2000:]
    chosen = done.stdout.strip().splitlines()[-1]
    assert chosen != other
    check = subprocess.run([chosen, "-c", "import sys; print(sys.version)"],
                           capture_output=True, text=True)
    assert check.stdout.strip() == sys.version

def test_onnxruntime_gpu_only_with_an_nvidia_gpu():
    assert requirements_for(["onnxruntime", "h5py"], gpu=False) == ["onnxruntime", "h5py"]
    assert requirements_for(["onnxruntime"], gpu=True) == ["onnxruntime-gpu"]
    with pytest.raises(DependencyError, match="unknown package torch"):
        requirements_for(["torch"])


def test_offline_install_adds_the_packages_and_leaves_numpy_alone(tmp_path, wheelhouse,
                                                                  clean_path):
    folder = str(tmp_path / "deps" / "py")
    result = install(["lczdummy_a"], folder, wheelhouse)
    assert result.installed == {"lczdummy_a": "1.0", "lczdummy_b": "3.0"}
    assert contents(folder) == ["lczdummy_a", "lczdummy_a-1.0.dist-info", "lczdummy_b",
                                "lczdummy_b-3.0.dist-info"]  # no second numpy, no staging
    assert folder in sys.path
    import lczdummy_a  # importable at once
    assert lczdummy_a.__file__.startswith(folder)
    assert contents(tmp_path / "deps") == ["py"]
    again = install(["lczdummy_a"], folder, wheelhouse)
    assert again.installed == {} and again.already == ["lczdummy_a"]


def test_a_package_needing_a_newer_numpy_is_refused(tmp_path, wheelhouse, clean_path):
    folder = tmp_path / "deps"
    with pytest.raises(DependencyError, match=rf"numpy {np.__version__} .* stay") as caught:
        install(["lczdummy_c"], str(folder), wheelhouse)
    assert "lczdummy-c 1.0 depends on numpy>=99" in str(caught.value)
    assert contents(folder) == []


def test_installed_packages_are_never_upgraded(tmp_path, wheelhouse, clean_path):
    """b 2.0 installed elsewhere on the path (as QGIS's packages are): pip keeps it and takes
    the d that works with it, instead of upgrading b."""
    site = tmp_path / "qgis" / "site-packages"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(site), *wheelhouse, "lczdummy_b==2.0"], check=True)
    sys.path.append(str(site))
    importlib.invalidate_caches()
    assert "lczdummy-b==2.0" in constraints()
    result = install(["lczdummy_d"], str(tmp_path / "deps"), wheelhouse)
    assert result.installed == {"lczdummy_d": "1.0"}


def test_an_upgrade_inside_the_folder_replaces_the_old_version(tmp_path, wheelhouse,
                                                               clean_path):
    folder = str(tmp_path / "deps")
    install(["lczdummy_b==2.0"], folder, wheelhouse)
    install(["lczdummy_b>=3"], folder, wheelhouse)
    assert contents(folder) == ["lczdummy_b", "lczdummy_b-3.0.dist-info"]


class SilentIndex:
    """A package index that accepts connections and never answers: pip waits on it."""

    def __init__(self):
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(8)
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/simple"
        self.connected = threading.Event()
        self.clients = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self.clients.append(client)
            self.connected.set()

    def close(self):
        for client in self.clients:
            client.close()
        self.server.close()


class CancelWhenAsked(Feedback):
    def __init__(self, event):
        self.event = event

    def is_cancelled(self):
        return self.event.is_set()


def pip_children() -> list[int]:
    """Child processes of this test process that run pip (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                command = f.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and b"pip" in command:
            found.append(int(entry))
    return found


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc to find pip")
def test_cancel_kills_pip_and_leaves_the_folder_as_it_was(tmp_path, clean_path):
    index = SilentIndex()
    cancel = threading.Event()
    threading.Thread(target=lambda: (index.connected.wait(60), cancel.set()),
                     daemon=True).start()
    folder = tmp_path / "deps"
    started = time.monotonic()
    try:
        with pytest.raises(Cancelled, match="nothing was installed"):
            install(["lczdummy_x"], str(folder), ["--index-url", index.url, "--timeout", "120",
                                                  "--retries", "0"], CancelWhenAsked(cancel))
    finally:
        index.close()
    assert cancel.is_set(), "pip never reached the index"
    assert time.monotonic() - started < 60
    assert pip_children() == []
    assert contents(folder) == []


def test_pip_failure_names_the_cause(tmp_path, clean_path):
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    with pytest.raises(DependencyError, match="found no wheel .* --find-links"):
        install(["lczdummy_nothing"], str(tmp_path / "deps"),
                ["--no-index", "--find-links", str(empty)])


def test_dependency_folder_is_per_python_and_follows_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("LCZ_DEPENDENCIES", raising=False)
    tag = f"py{sys.version_info[0]}{sys.version_info[1]}"
    assert dependencies.dependency_folder(str(tmp_path)) == str(tmp_path / tag)
    monkeypatch.setenv("LCZ_DEPENDENCIES", str(tmp_path / "shared"))
    assert dependencies.dependency_folder(str(tmp_path)) == str(tmp_path / "shared" / tag)


# --- in QGIS: the task, the message bar, the algorithm -----------------------------------------

def run_task(task, timeout=120):
    from qgis.core import QgsApplication, QgsTask
    from qgis.PyQt.QtCore import QCoreApplication
    reports = []
    task.reported.connect(lambda ok, message: reports.append((ok, message)))
    QgsApplication.taskManager().addTask(task)
    end = time.monotonic() + timeout
    while not reports and time.monotonic() < end:
        QCoreApplication.processEvents()
        time.sleep(0.02)
    assert reports, f"the task did not end (status {task.status()})"
    assert task.status() in (QgsTask.Complete, QgsTask.Terminated)
    return reports[0]


@pytest.mark.qgis
def test_install_task_runs_in_the_task_manager(qgis_app, tmp_path, wheelhouse, clean_path):
    from lcz_qgis_plugin.installer import InstallTask
    folder = str(tmp_path / "deps")
    task = InstallTask(["lczdummy_a"], folder, wheelhouse, requirements=["lczdummy_a"])
    progress = []
    task.progressChanged.connect(progress.append)
    ok, message = run_task(task)
    assert ok, message
    assert f"Installed into {folder}: lczdummy_a 1.0" in message
    assert progress and max(progress) == 100
    assert any("Successfully installed" in line for line in task.feedback.lines)


@pytest.mark.qgis
def test_cancelling_the_task_stops_pip(qgis_app, tmp_path, clean_path):
    from lcz_qgis_plugin.installer import InstallTask
    index = SilentIndex()
    task = InstallTask(["lczdummy_x"], str(tmp_path / "deps"),
                       ["--index-url", index.url, "--timeout", "120", "--retries", "0"],
                       requirements=["lczdummy_x"])
    threading.Thread(target=lambda: (index.connected.wait(60), task.cancel()),
                     daemon=True).start()
    try:
        ok, message = run_task(task)
    finally:
        index.close()
    assert not ok and "cancelled" in message
    assert pip_children() == []


@pytest.mark.qgis
def test_install_algorithm_with_nothing_missing(processing, tmp_path, monkeypatch):
    monkeypatch.setenv("LCZ_DEPENDENCIES", str(tmp_path))
    results = processing.run("lcz:installdependencies", {"INCLUDE_OPENVINO": True})
    assert results["INSTALLED"] == ""
    assert results["FOLDER"].startswith(str(tmp_path))


@pytest.mark.qgis
def test_install_algorithm_runs_pip_offline(processing, tmp_path, monkeypatch):
    """h5py asked for explicitly: pip resolves it for real (no index, an empty wheel folder)
    and finds it installed, so nothing is added."""
    import h5py
    empty = tmp_path / "wheels"
    empty.mkdir()
    monkeypatch.setenv("LCZ_DEPENDENCIES", str(tmp_path / "deps"))
    results = processing.run("lcz:installdependencies", {
        "PACKAGES": [1], "PIP_OPTIONS": f"--no-index --find-links '{empty}'"})
    assert results["INSTALLED"] == ""
    assert results["VERSIONS"] == f"h5py {h5py.__version__}"


MESSAGE_BAR_CHILD = """
import sys, time
sys.path[:0] = [{root!r}]
from qgis.core import QgsApplication
app = QgsApplication([], True)
app.initQgis()
from qgis.gui import QgsMessageBar
from qgis.PyQt.QtWidgets import QPushButton
from lcz_qgis_plugin.installer import InstallOffer
bar = QgsMessageBar()
offer = InstallOffer(bar, ["lczdummy_a"], {folder!r}, {options!r}, include_openvino=False,
                     requirements=["lczdummy_a"])
offer.show()
buttons = [b for b in offer.item.findChildren(QPushButton) if b.text() == "Install"]
print("button", len(buttons), flush=True)
buttons[0].click()
end = time.monotonic() + 120
while offer.task.status() not in (offer.task.Complete, offer.task.Terminated) \\
        and time.monotonic() < end:
    app.processEvents()
    time.sleep(0.02)
for _ in range(20):
    app.processEvents()
print("message", bar.currentItem().text(), flush=True)
import lczdummy_a
print("imported", lczdummy_a.__file__, flush=True)
app.exitQgis()
"""


@pytest.mark.qgis
def test_message_bar_install_button_installs(tmp_path, wheelhouse):
    """The desktop's offer (a real QgsMessageBar, GUI QgsApplication offscreen, in a child
    process): the Install button starts the task, and the bar says what was installed."""
    pytest.importorskip("qgis.gui", reason="PyQGIS is not installed (make setup installs QGIS)")
    folder = str(tmp_path / "deps")
    code = MESSAGE_BAR_CHILD.format(root=ROOT, folder=folder, options=wheelhouse)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, QT_QPA_PLATFORM="offscreen"))
    assert "button 1" in done.stdout, done.stdout + done.stderr
    assert f"message Installed into {folder}: lczdummy_a 1.0" in done.stdout, \
        done.stdout + done.stderr
    assert f"imported {folder}" in done.stdout


def test_openvino_telemetry_is_left_out():
    """openvino lists openvino-telemetry, which sends usage statistics from QGIS without
    asking; OpenVINO runs without it. The plan made from pip's report leaves it out (for real:
    the Debian 13 run of tools/qgis_matrix.py checks the folder)."""
    from lcz_testing import RecordingFeedback
    report = {"version": "1", "install": [
        {"metadata": {"name": name, "version": version}, "requested": name == "openvino",
         "download_info": {"url": f"https://files.example/{name}-{version}.whl"}}
        for name, version in (("openvino", "2026.4.1"), ("openvino-telemetry", "2025.2.0"),
                              ("numpy", "2.2.4"))]}
    feedback = RecordingFeedback()
    plan = dependencies.planned(report, feedback)
    assert [item["name"] for item in plan] == ["openvino", "numpy"]
    assert "Leaving out openvino-telemetry 2025.2.0" in feedback.log
