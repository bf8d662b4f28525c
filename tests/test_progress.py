"""Progress wherever a user waits (issue 15, item 4).

- Every Processing algorithm says in the log when it starts each stage (reading inputs,
  rasterizing, classifying, writing, saving ...), in order: through processing.run with a
  recording QgsProcessingFeedback, and in the QGIS-free core with RecordingFeedback.
- The command lines: a tqdm bar on a terminal, plain 10 % lines in a pipe or a log file
  (ConsoleFeedback); the training CLI's line per epoch with the time left.
"""

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import numpy as np
import pytest
from lcz_testing import RecordingFeedback, identity_card, linear_probe_model, write_stack
from training_data import write_patch_file

from lcz_qgis_plugin.core.feedback import ConsoleFeedback, format_duration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, QT_QPA_PLATFORM="offscreen", PYTHONPATH=ROOT)
CHANNELS = ["S2:B02", "OSM:building_fraction", "DSM:height"]

# Stage lines of each run, in the order they must come (regular expressions matched at the
# start of a log line); other lines may come between them.
STAGES = {
    "stacksentinel2": [r"Reading the Sentinel-2 input\(s\) S2B_MSIL2A_\S+\.SAFE \.\.\.",
                       r"Stacking B02, ", r"Writing the stack in 1 block\(s\) of up to",
                       r"Saving the Sentinel-2 stack \S+s2\.tif\.$"],
    "rasterizeosm": [r"Reading OpenStreetMap features for 100 x 100 px",
                     r"Features inside the grid: building \d+",
                     r"Rasterizing 1 block\(s\) of up to 256 x 256 px, 10 x 10 sub-pixels",
                     r"Saving the OSM raster \S+osm\.tif\.$"],
    "preparedsm": [r"Reading the DSM dsm\.tif and the DTM dtm\.tif \.\.\.",
                   r"DSM pixel 2 m, grid 10 m", r"Computing heights above ground in 2 block",
                   r"Saving the height raster \S+heights\.tif\.$",
                   r"heights above ground of the \d+ valid fine pixels"],
    "buildstack_tif": [r"Reading the band names of s2\.tif, osm\.tif, heights\.tif \.\.\.",
                       r"channel list \(3 channels\): S2:B02 <- s2\.tif band 1",
                       r"Copying 3 channel\(s\) in 1 block\(s\)",
                       r"Saving the model input stack \S+stack\.tif\.$"],
    "buildstack_vrt": [r"Reading the band names of", r"channel list \(3 channels\)",
                       r"Saving the model input stack \S+stack\.vrt\.$"],
    "extractpatches": [r"Reading the input stack stack\.tif", r"\d+ training areas, input stack",
                       r"Extracting the patches of \d+ cells, in strips of up to",
                       r"Wrote \d+ patches to \S+patches\.h5", r"Saving the patch file"],
    "extracttiles": [r"Reading the input stack stack\.tif", r"\d+ training areas, input stack",
                     r"Labelling the pixels inside the training areas",
                     r"Writing the tiles over the training areas", r"Wrote \d+ tiles of 32 px",
                     r"Saving the patch file \S+tiles\.h5\.$"],
    "classify": [r"Loading the model probe\.onnx \.\.\.", r"Model: probe",
                 r"Output grid: 10 x 10 cells", r"Classifying 3 strip\(s\) \.\.\.",
                 r"Majority filter, radius 1", r"Saving the class map output \S+lcz\.tif\.$",
                 r"Classified 100 of 100 cells"],
    "assess_raster": [r"Reading the LCZ map lcz\.tif and the reference lcz_truth\.tif \.\.\.",
                      r"Reference pixels", r"Comparing 10 x 10 map cells with the reference",
                      r"\d+ cells assessed: OA", r"Saving the accuracy report \S+raster\.html\.$"],
    "assess_areas": [r"Reading the LCZ map lcz\.tif and the reference training_areas\.gpkg",
                     r"Comparing 10 x 10 map cells with the reference",
                     r"\d+ cells assessed: OA", r"Saving the accuracy report \S+areas\.html\.$"],
}
# The Processing adapters read vector layers themselves (through the feature source), and say
# so before the core's first line.
ADAPTER_FIRST = {"extractpatches": r"Reading the training areas \S+training_areas\.gpkg \.\.\.",
                 "extracttiles": r"Reading the training areas \S+training_areas\.gpkg \.\.\.",
                 "assess_areas": r"Reading the reference areas \S+training_areas\.gpkg \.\.\."}


def assert_stages_in_order(lines: list[str], stages: list[str]):
    """Each pattern matches a later line than the one before."""
    position = 0
    for pattern in stages:
        for index in range(position, len(lines)):
            if re.match(pattern, lines[index]):
                position = index + 1
                break
        else:
            pytest.fail(f"no line matching {pattern!r} after line {position} of:\n"
                        + "\n".join(lines))


def probe_model(folder) -> str:
    card = identity_card("probe", CHANNELS, 8)
    return linear_probe_model(os.path.join(folder, "probe.onnx"), card, seed=2)[0]


# -- the core, QGIS-free ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def core_lines(synthetic_cities, tmp_path_factory):
    """Every core function of the algorithms run once on a 1 km city: log lines by run."""
    from lcz_qgis_plugin.core.assessment.accuracy import assess_accuracy
    from lcz_qgis_plugin.core.inference.classify import classify
    from lcz_qgis_plugin.core.preprocess.buildstack import build_stack
    from lcz_qgis_plugin.core.preprocess.dsm import prepare_dsm
    from lcz_qgis_plugin.core.preprocess.osm import rasterize_osm
    from lcz_qgis_plugin.core.preprocess.sentinel2 import stack_sentinel2
    from lcz_qgis_plugin.core.training_data.extraction import extract_patches
    city = synthetic_cities.city(31, 1.0)
    folder = str(tmp_path_factory.mktemp("core_stages"))
    path = lambda name: os.path.join(folder, name)  # noqa: E731
    logs = {}

    def run(name, function, *args, **kwargs):
        logs[name] = RecordingFeedback()
        function(*args, feedback=logs[name], **kwargs)

    run("stacksentinel2", stack_sentinel2, [city.safe], path("s2.tif"))
    run("rasterizeosm", rasterize_osm, path("s2.tif"), path("osm.tif"), osm_file=city.osm)
    run("preparedsm", prepare_dsm, city.dsm, path("s2.tif"), path("heights.tif"), dtm=city.dtm)
    layers = [path("s2.tif"), path("osm.tif"), path("heights.tif")]
    run("buildstack_tif", build_stack, None, layers, path("stack.tif"), channels=CHANNELS)
    run("buildstack_vrt", build_stack, None, layers, path("stack.vrt"), channels=CHANNELS)
    run("extractpatches", extract_patches, path("stack.tif"), city.training_areas,
        path("patches.h5"), class_field="lcz", patch_size=8)
    run("extracttiles", extract_patches, path("stack.tif"), city.training_areas,
        path("tiles.h5"), class_field="lcz", samples="tiles", tile_size=32)
    run("classify", classify, [path("stack.tif")], probe_model(folder), path("lcz.tif"),
        majority_radius=1, device="cpu")
    run("assess_raster", assess_accuracy, path("lcz.tif"), reference_raster=city.truth,
        report=path("raster.html"))
    run("assess_areas", assess_accuracy, path("lcz.tif"), reference_areas=city.training_areas,
        class_field="lcz", report=path("areas.html"))
    return {name: feedback.infos for name, feedback in logs.items()}


@pytest.mark.parametrize("name", list(STAGES))
def test_core_functions_log_a_line_at_each_stage(core_lines, name):
    assert_stages_in_order(core_lines[name], STAGES[name])


# -- the algorithms through processing.run -----------------------------------------------------

@pytest.fixture(scope="module")
def processing_lines(processing, synthetic_cities, tmp_path_factory):
    """Every algorithm through processing.run once, on a 1 km city: log lines by run."""
    from qgis.core import QgsProcessingFeedback

    class Recording(QgsProcessingFeedback):
        def __init__(self):
            super().__init__()
            self.lines = []

        def pushInfo(self, info):  # noqa: N802 (QGIS API name)
            self.lines.append(info)

    city = synthetic_cities.city(31, 1.0)
    folder = str(tmp_path_factory.mktemp("processing_stages"))
    path = lambda name: os.path.join(folder, name)  # noqa: E731
    logs = {}

    def run(name, algorithm, parameters):
        logs[name] = Recording()
        processing.run(f"lcz:{algorithm}", parameters, feedback=logs[name])

    run("stacksentinel2", "stacksentinel2", {"INPUT": city.safe, "OUTPUT": path("s2.tif")})
    run("rasterizeosm", "rasterizeosm", {"OSM_FILE": city.osm, "REFERENCE": path("s2.tif"),
                                         "OUTPUT": path("osm.tif")})
    run("preparedsm", "preparedsm", {"DSM": city.dsm, "DTM": city.dtm,
                                     "REFERENCE": path("s2.tif"), "OUTPUT": path("heights.tif")})
    layers = [path("s2.tif"), path("osm.tif"), path("heights.tif")]
    for kind in ("tif", "vrt"):
        run(f"buildstack_{kind}", "buildstack", {"CHANNEL_LIST": ",".join(CHANNELS),
                                                 "INPUT": layers, "OUTPUT": path(f"stack.{kind}")})
    common = {"INPUT": path("stack.tif"), "TRAINING_AREAS": city.training_areas,
              "CLASS_FIELD": "lcz"}
    run("extractpatches", "extractpatches", {**common, "PATCH_SIZE": 8,
                                             "OUTPUT": path("patches.h5")})
    run("extracttiles", "extractpatches", {**common, "SAMPLES": 1, "TILE_SIZE": 32,
                                           "OUTPUT": path("tiles.h5")})
    run("classify", "classify", {"INPUT": [path("stack.tif")], "MODEL": probe_model(folder),
                                 "MAJORITY_RADIUS": 1, "OUTPUT": path("lcz.tif")})
    run("assess_raster", "assessaccuracy", {"INPUT": path("lcz.tif"),
                                            "REFERENCE_RASTER": city.truth,
                                            "OUTPUT_HTML": path("raster.html")})
    run("assess_areas", "assessaccuracy", {"INPUT": path("lcz.tif"), "CLASS_FIELD": "lcz",
                                           "REFERENCE_AREAS": city.training_areas,
                                           "OUTPUT_HTML": path("areas.html")})
    return {name: feedback.lines for name, feedback in logs.items()}


@pytest.mark.qgis
@pytest.mark.parametrize("name", list(STAGES))
def test_algorithms_log_a_line_at_each_stage(processing_lines, name):
    stages = STAGES[name]
    if name in ADAPTER_FIRST:
        stages = [ADAPTER_FIRST[name], *stages]
    assert_stages_in_order(processing_lines[name], stages)


# -- the command lines -------------------------------------------------------------------------

def on_a_terminal(command: list[str], columns: int = 100, **kwargs) -> tuple[int, str]:
    """Run ``command`` with stderr on a pseudo-terminal (stdout discarded): (status, what
    the terminal received)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=slave, **kwargs)
    os.close(slave)
    received = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        received += chunk
    os.close(master)
    return process.wait(timeout=120), received.decode(errors="replace")


@pytest.fixture(scope="module")
def small_scene(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_scene")
    scene = np.random.default_rng(3).normal(size=(3, 120, 120)).astype(np.float32)
    stack = write_stack(folder / "stack.tif", scene, CHANNELS)
    return folder, stack, probe_model(str(folder))


def classify_command(folder, stack, model, name):
    return [sys.executable, "-m", "lcz_qgis_plugin.core", "classify", "--input", stack,
            "--model", model, "--output", str(folder / f"{name}.tif"), "--device", "cpu",
            "--batch-size", "8"]


def test_core_cli_shows_a_bar_on_a_terminal(small_scene):
    folder, stack, model = small_scene
    status, screen = on_a_terminal(classify_command(folder, stack, model, "tty"), env=ENV,
                                   cwd=ROOT)
    assert status == 0, screen
    assert re.search(r"\r100 %\|█+\| \[\d\d:\d\d elapsed, \d\d:\d\d left\]", screen), screen
    assert not re.search(r"^\s+\d+ %$", screen, re.M)  # no 10 % lines
    # log lines stay whole lines above the bar (tqdm clears the bar's line before each)
    assert re.search(r"\r\nClassifying 3 strip\(s\) \.\.\.\r\n", screen), screen
    assert screen.count("100 %|") == 1, screen  # the bar ends at 100 %; lines after are plain


def test_core_cli_prints_plain_10_percent_lines_into_a_pipe(small_scene):
    folder, stack, model = small_scene
    done = subprocess.run(classify_command(folder, stack, model, "pipe"), capture_output=True,
                          text=True, env=ENV, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr and "█" not in done.stderr
    steps = re.findall(r"^\s+(\d+) %$", done.stderr, re.M)
    assert steps[-1] == "100" and len(steps) >= 5, done.stderr


def test_console_feedback_bar_and_lines(tmp_path):
    with open(tmp_path / "log.txt", "w+") as log:  # a file: 10 % lines
        feedback = ConsoleFeedback(log)
        for percent in (0, 5, 12, 50, 100):
            feedback.progress(percent)
        feedback.info("done")
        feedback.close()
        log.seek(0)
        assert log.read() == "    0 %\n   10 %\n   50 %\n  100 %\ndone\n"
    with open(tmp_path / "bar.txt", "w+") as screen:  # a bar, asked for explicitly
        feedback = ConsoleFeedback(screen, bar=True)
        feedback.progress(40)
        feedback.warning("careful")
        feedback.progress(20)  # went back: a new stage starts a new bar
        feedback.progress(100)
        feedback.close()
        screen.seek(0)
        text = screen.read()
    assert "WARNING: careful\n" in text and "100 %|" in text and "left]" in text


def test_format_duration():
    assert [format_duration(s) for s in (0.4, 48, 59.6, 123, 3599, 3720)] == [
        "0 s", "48 s", "1 min 00 s", "2 min 03 s", "59 min 59 s", "1 h 02 min"]


EPOCH_LINE = (r"epoch {n}/{total}: train loss \d+\.\d{{4}} OA [01]\.\d{{3}} \| val loss "
              r"\d+\.\d{{4}} OA [01]\.\d{{3}}( \(best\))? \| \d+ s, \d+ s elapsed, {left} "
              r"(\d+ min )?\d+ s left$")


@pytest.mark.parametrize("epochs, patience, first_left", [(2, 15, "about"), (3, 1, "at most")])
def test_training_prints_each_epoch_with_the_time_left(tmp_path, capsys, epochs, patience,
                                                      first_left):
    """One line per epoch: epoch/total, losses, accuracies, its time, the run's time and the
    time left ("at most" when early stopping may end the run sooner)."""
    from training.cli import main
    data = write_patch_file(tmp_path / "p.h5", n=48, patch=8)
    assert main(["train", "--train", f"{data}#train", "--val", f"{data}#validation",
                 "--epochs", str(epochs), "--patience", str(patience), "--out",
                 str(tmp_path / "run"), "--bn-momentum", "0.5", "--batch-size", "16",
                 "--no-progress", "--device", "cpu", "--threads", "1"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch")]
    assert re.match(EPOCH_LINE.format(n=1, total=epochs, left=first_left), lines[0]), lines
    if patience > epochs:  # no early stop: every epoch runs, the last has nothing left
        assert len(lines) == epochs
        assert re.match(EPOCH_LINE.format(n=epochs, total=epochs, left="about"), lines[-1])
        assert lines[-1].endswith("about 0 s left"), lines[-1]
