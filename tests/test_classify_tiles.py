"""classify-tiles: the tile plan, a tile's cells against a whole-scene run (patch and dense
models), the Dask run on a real LocalCluster of worker processes against single-process
classify cell for cell, the manifest and resuming, a worker killed mid-tile, Ctrl+C on the
real command line, and the plugin never importing Dask."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest
from dense_testing import dense_card, pooled_model
from lcz_testing import (
    channel_names,
    conv_probe_model,
    identity_card,
    linear_probe_model,
    read,
    write_stack,
)
from osgeo import gdal

from lcz_qgis_plugin.core.cellgrid import make_grid
from lcz_qgis_plugin.core.commit import PARTIAL_MARK
from lcz_qgis_plugin.core.errors import InputError, LczError
from lcz_qgis_plugin.core.feedback import Feedback
from lcz_qgis_plugin.core.inference import classify_tiles as tiles_module
from lcz_qgis_plugin.core.inference.classify import classify
from lcz_qgis_plugin.core.inference.classify_tiles import classify_tiles
from lcz_qgis_plugin.core.inference.tile_plan import (
    MANIFEST,
    Manifest,
    make_plan,
    plan_record,
    sha256_of,
)
from lcz_qgis_plugin.core.lcz_classes import LCZ_CLASSES

try:
    import distributed
except ImportError:  # the tests that run Dask skip; the plan's tests run
    distributed = None
needs_dask = pytest.mark.skipif(distributed is None, reason="Dask is not installed: "
                                "make setup installs requirements.txt")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = channel_names(3)
X0, Y0 = 500000.0, 5000000.0
TILE_CELLS = 48  # the scene's 128 x 130 cells: 3 x 3 tiles, the last row and column narrower


def partial_files(folder) -> list[str]:
    return [os.path.join(base, name) for base, folders, files in os.walk(folder)
            for name in files + folders if PARTIAL_MARK in name]


def done_tiles(folder) -> dict:
    with open(os.path.join(folder, MANIFEST), encoding="utf-8") as f:
        tiles = json.load(f)["tiles"]
    return {tile_id: record for tile_id, record in tiles.items() if record["state"] == "done"}


def smooth_scene(height: int, width: int, seed: int, blur: int = 15) -> np.ndarray:
    """Noise blurred twice over ``blur`` pixels: regions of one class and borders between
    them, where a class is a close call."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(3, height + 2 * blur, width + 2 * blur))
    kernel = np.ones(blur) / blur
    for axis in (1, 2, 1, 2):
        noise = np.apply_along_axis(lambda v: np.convolve(v, kernel, "same"), axis, noise)
    return (noise[:, blur:-blur, blur:-blur] * 3.0).astype(np.float32)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 256 x 260 px stack, a small CNN (16 px patches, 20 m cells: 128 x 130 cells of six
    classes, about 0.2 s per tile of 48 x 48 cells) and its single-process classify run."""
    folder = tmp_path_factory.mktemp("tiles_scene")
    stack = write_stack(folder / "stack.tif", smooth_scene(260, 256, seed=3), NAMES)
    card = identity_card("conv", NAMES, 16, cell_size=20.0)
    model = conv_probe_model(folder / "conv.onnx", card, seed=5, width=32, logit_scale=10.0)
    whole = classify([stack], model, str(folder / "whole.tif"), device="cpu",
                     probabilities_output=str(folder / "whole_p.tif"),
                     confidence_output=str(folder / "whole_c.tif"))
    assert len(whole.class_counts) == 6
    return {"stack": stack, "model": model, "whole": whole, "folder": folder}


@pytest.fixture(scope="module")
def cluster():
    if distributed is None:
        pytest.skip("Dask is not installed: make setup installs requirements.txt")
    """One LocalCluster of 2 worker processes for the tests that pass --scheduler."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as local:
        yield local


def assert_same_map(result, whole, probabilities=True) -> None:
    np.testing.assert_array_equal(read(result.output), read(whole.output))
    if probabilities:
        np.testing.assert_allclose(read(result.probabilities), read(whole.probabilities),
                                   atol=1e-6)
        np.testing.assert_allclose(read(result.confidence), read(whole.confidence), atol=1e-6)


# --- the plan ------------------------------------------------------------------------------

def test_tiles_cover_the_grid_once_on_the_cell_lattice(tmp_path):
    """An extent that starts inside a cell and 7-cell tiles over a 13 x 11 cell grid: the
    tiles cover every cell exactly once, their bounds lie on the raster's cell lattice, and
    each tile's EXTENT gives classify exactly its cells."""
    card = identity_card("probe", NAMES, 6, cell_size=30.0)
    model, *_ = linear_probe_model(tmp_path / "m.onnx", card)
    stack = write_stack(tmp_path / "s.tif", np.zeros((3, 100, 90), np.float32), NAMES,
                        origin=(X0 + 5.0, Y0))
    extent = (X0 + 5 + 2 * 30 + 11, Y0 - 14 * 30 + 2, X0 + 5 + 13 * 30 - 1, Y0 - 30 - 7)
    plan, _ = make_plan([stack], model, extent=extent, tile_cells=7)
    grid = plan.grid
    assert (grid.row0, grid.col0, grid.rows, grid.cols) == (1, 2, 13, 11)
    covered = np.zeros((grid.rows, grid.cols), int)
    for tile in plan.tiles():
        covered[tile.cell_row:tile.cell_row + tile.rows,
                tile.cell_col:tile.cell_col + tile.cols] += 1
        xmin, ymin, xmax, ymax = plan.bounds(tile)
        assert ((xmin - X0 - 5) / 30) % 1 == 0 and ((Y0 - ymax) / 30) % 1 == 0
        assert (xmax - xmin, ymax - ymin) == (tile.cols * 30, tile.rows * 30)
        sub = make_grid((X0 + 5, 10.0, 0, Y0, 0, -10.0), 90, 100, 30.0, 6,
                        plan.classify_extent(tile))
        assert (sub.row0, sub.col0, sub.rows, sub.cols) == (
            grid.row0 + tile.cell_row, grid.col0 + tile.cell_col, tile.rows, tile.cols)
    assert (covered == 1).all()
    assert [(t.rows, t.cols) for t in plan.tiles()] == [(7, 7), (7, 4), (6, 7), (6, 4)]
    assert plan.halo == 2  # half of a 6 px patch beyond a 3 px cell


def test_the_halo_is_half_a_patch_or_a_dense_models_overlap(tmp_path):
    stack = write_stack(tmp_path / "s.tif", np.zeros((3, 80, 80), np.float32), NAMES)
    patch, *_ = linear_probe_model(tmp_path / "p.onnx",
                                   identity_card("p", NAMES, 32, cell_size=100.0))
    dense = pooled_model(tmp_path / "d.onnx", dense_card("d", NAMES, receptive_field=5,
                                                         tile_multiple=2, cell_size=30.0))
    assert make_plan([stack], patch)[0].halo == 11  # 32 px patch, 10 px cell: 16 - 5
    assert make_plan([stack], dense)[0].halo == 4  # ceil(5 / 2) rounded up to 2 px


@pytest.mark.parametrize("kind", ["patch", "dense"])
def test_each_tile_equals_the_same_cells_of_a_whole_run(tmp_path, kind):
    """In one process, no Dask: each tile's classify (its extent; real pixels beyond it,
    reflection only at the raster's edge) against the whole scene's map."""
    data = np.random.default_rng(5).normal(size=(3, 96, 90)).astype(np.float32)
    stack = write_stack(tmp_path / "s.tif", data, NAMES)
    if kind == "patch":
        card = identity_card("probe", NAMES, 12, cell_size=30.0)
        model, *_ = linear_probe_model(tmp_path / "m.onnx", card, seed=5)
        options = {}
    else:
        card = dense_card("net", NAMES, receptive_field=5, tile_multiple=2, cell_size=30.0,
                          classes=[1, 2, 3, 5, 6, 8, 11, 14])
        model = pooled_model(tmp_path / "m.onnx", card, seed=6)
        options = {"tile_size": 20}
    whole = classify([stack], model, str(tmp_path / "whole.tif"), device="cpu",
                     probabilities_output=str(tmp_path / "wp.tif"), **options)
    classes, probs = read(whole.output), read(whole.probabilities)
    plan, _ = make_plan([stack], model, tile_cells=7)
    assert len(plan.tiles()) == 25
    for tile in plan.tiles():
        part = classify([stack], model, str(tmp_path / f"{tile.id}.tif"), device="cpu",
                        extent=plan.classify_extent(tile),
                        probabilities_output=str(tmp_path / f"{tile.id}_p.tif"), **options)
        rows = slice(tile.cell_row, tile.cell_row + tile.rows)
        cols = slice(tile.cell_col, tile.cell_col + tile.cols)
        np.testing.assert_array_equal(read(part.output), classes[rows, cols])
        np.testing.assert_allclose(read(part.probabilities), probs[:, rows, cols], atol=1e-6)


# --- the manifest --------------------------------------------------------------------------

def test_a_manifest_of_another_plan_is_refused_unless_restarted(tmp_path):
    card = identity_card("probe", NAMES, 6, cell_size=30.0)
    model, *_ = linear_probe_model(tmp_path / "m.onnx", card, seed=1)
    stack = write_stack(tmp_path / "s.tif", np.ones((3, 60, 60), np.float32), NAMES)
    plan, _ = make_plan([stack], model, tile_cells=8)
    record = plan_record([stack], model, plan, outputs=["classes"])
    manifest = Manifest.open(str(tmp_path), record, plan.tiles())
    manifest.save()
    assert Manifest.open(str(tmp_path), record, plan.tiles()).tiles == manifest.tiles
    other_tiles, _ = make_plan([stack], model, tile_cells=5)
    changed = {
        "tile size": plan_record([stack], model, other_tiles, outputs=["classes"]),
        "outputs asked for": plan_record([stack], model, plan,
                                         outputs=["classes", "probabilities"]),
    }
    linear_probe_model(tmp_path / "m.onnx", card, seed=2)  # the same name, other weights
    changed["model file"] = plan_record([stack], model, plan, outputs=["classes"])
    for words, new in changed.items():
        with pytest.raises(InputError, match=rf"another plan: .*{words}.*--restart"):
            Manifest.open(str(tmp_path), new, plan.tiles())
        assert Manifest.open(str(tmp_path), new, plan.tiles(), restart=True).finished() == 0
    with open(tmp_path / MANIFEST, "w") as f:
        f.write("{ half a manifest")
    with pytest.raises(LczError, match="cannot be read.*--restart"):
        Manifest.open(str(tmp_path), record, plan.tiles())
    assert partial_files(tmp_path) == []


# --- on a LocalCluster ---------------------------------------------------------------------

@pytest.mark.slow
@needs_dask
def test_local_cluster_map_equals_single_process_classify(scene, tmp_path):
    out = tmp_path / "out"
    result = classify_tiles([scene["stack"]], scene["model"], out, probabilities=True,
                            confidence=True, tile_cells=TILE_CELLS, workers=2, device="cpu",
                            dashboard_address=":0", progress_bar=False)
    assert (result.tiles, result.tiles_run, result.cells) == (9, 9, 128 * 130)
    assert_same_map(result, scene["whole"])
    assert result.class_counts == scene["whole"].class_counts
    mosaic = gdal.Open(result.output)
    band = mosaic.GetRasterBand(1)
    assert band.GetColorTable().GetColorEntry(11)[:3] == LCZ_CLASSES[10].rgb
    assert band.GetCategoryNames()[17] == LCZ_CLASSES[16].label
    assert band.GetOverviewCount() == 1 and os.path.exists(result.output + ".ovr")
    assert mosaic.GetGeoTransform() == gdal.Open(scene["whole"].output).GetGeoTransform()
    assert (out / "lcz.qml").exists()
    probabilities = gdal.Open(result.probabilities)
    assert probabilities.GetRasterBand(2).GetDescription() == LCZ_CLASSES[1].name
    assert probabilities.GetRasterBand(2).GetMetadataItem("LCZ_CODE") == "2"
    records = done_tiles(out)
    assert len(records) == 9
    for record in records.values():
        for entry in record["files"].values():
            path = out / entry["name"]
            assert sha256_of(path) == entry["sha256"]
            assert gdal.Open(str(path)).GetMetadataItem("LAYOUT", "IMAGE_STRUCTURE") == "COG"
    assert partial_files(out) == []
    again = classify_tiles([scene["stack"]], scene["model"], out, probabilities=True,
                           confidence=True, tile_cells=TILE_CELLS, workers=2, device="cpu",
                           progress_bar=False)
    assert (again.tiles_run, again.tiles_skipped) == (0, 9)
    assert_same_map(again, scene["whole"])


@pytest.mark.slow
@needs_dask
def test_a_changed_or_missing_tile_runs_again(scene, cluster, tmp_path):
    out = tmp_path / "out"
    run = dict(probabilities=True, confidence=True, tile_cells=TILE_CELLS, device="cpu",
               scheduler=cluster.scheduler_address, progress_bar=False)
    classify_tiles([scene["stack"]], scene["model"], out, **run)
    first = done_tiles(out)
    with open(out / first["r0001_c0001"]["files"]["classes"]["name"], "r+b") as f:
        f.seek(-1, os.SEEK_END)
        byte = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([byte[0] ^ 1]))
    os.remove(out / first["r0002_c0000"]["files"]["confidence"]["name"])
    warnings = []

    class Warnings(Feedback):
        def warning(self, message):
            warnings.append(message)

    again = classify_tiles([scene["stack"]], scene["model"], out, feedback=Warnings(), **run)
    assert (again.tiles_run, again.tiles_skipped) == (2, 7)
    assert any("r0001_c0001" in w and "checksum" in w for w in warnings), warnings
    assert any("r0002_c0000" in w and "missing" in w for w in warnings), warnings
    assert_same_map(again, scene["whole"])
    assert partial_files(out) == []


@pytest.mark.slow
@needs_dask
def test_each_worker_loads_the_model_once(scene, cluster, tmp_path):
    """Nine tiles on two workers: each worker opens one engine and loads one session, and
    keeps them for its next tiles."""
    model = tmp_path / "copy.onnx"  # a file no earlier run on this cluster has loaded
    with open(scene["model"], "rb") as src, open(model, "wb") as dst:
        dst.write(src.read())
    with distributed.Client(cluster) as client:
        before = client.run(tiles_module.engine_loads)
        classify_tiles([scene["stack"]], model, tmp_path / "out", tile_cells=TILE_CELLS,
                       device="cpu", scheduler=cluster.scheduler_address, progress_bar=False)
        after = client.run(tiles_module.engine_loads)
        pids = client.run(os.getpid)
    tiles_by_pid = {}
    for record in done_tiles(tmp_path / "out").values():
        pid = int(record["worker"].rsplit(":", 1)[1])
        tiles_by_pid[pid] = tiles_by_pid.get(pid, 0) + 1
    assert sum(tiles_by_pid.values()) == 9 and max(tiles_by_pid.values()) >= 2
    for worker, pid in pids.items():
        engines = after[worker][0] - before[worker][0]
        sessions = after[worker][1] - before[worker][1]
        ran = tiles_by_pid.get(pid, 0)
        assert (engines, sessions) == ((1, 1) if ran else (0, 0)), (worker, ran)


@pytest.mark.slow
@needs_dask
def test_a_worker_killed_mid_tile_costs_only_that_tile(scene, cluster, tmp_path):
    """SIGKILL to the process of a worker while it runs a tile: the scheduler runs that tile
    again on another worker, and the map is still the single-process map."""
    out = tmp_path / "out"
    answer = {}

    def run():
        try:
            answer["result"] = classify_tiles(
                [scene["stack"]], scene["model"], out, probabilities=True, confidence=True,
                tile_cells=TILE_CELLS, device="cpu", scheduler=cluster.scheduler_address,
                progress_bar=False)
        except BaseException as exc:  # noqa: BLE001 (reported by the assertion below)
            answer["error"] = exc

    with distributed.Client(cluster) as client:
        pids = client.run(os.getpid)
        runner = threading.Thread(target=run)
        runner.start()
        killed = None
        deadline = time.monotonic() + 60
        while killed is None and time.monotonic() < deadline and runner.is_alive():
            busy = {w: keys for w, keys in client.processing().items()
                    if any(str(k).startswith("lcz-tile-") for k in keys)}
            # a worker holding a tile once the plan is written (waiting for a finished tile
            # as well lost the race on a loaded machine: the run ended first)
            if busy and os.path.exists(out / MANIFEST):
                worker, keys = next(iter(busy.items()))
                time.sleep(0.05)  # well inside a tile of ~0.2 s
                os.kill(pids[worker], signal.SIGKILL)
                killed = (pids[worker], [str(k).split("-")[2] for k in keys])
            time.sleep(0.005)
        runner.join(120)
    assert killed is not None, "no tile was seen running"
    assert "error" not in answer, answer.get("error")
    result = answer["result"]
    assert_same_map(result, scene["whole"])
    records = done_tiles(out)
    assert len(records) == 9
    pid, lost = killed
    assert all(not records[tile]["worker"].endswith(f":{pid}") for tile in lost), lost
    assert partial_files(out) == []


def cli(*args, **popen):
    return subprocess.Popen([sys.executable, "-m", "lcz_qgis_plugin.core", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, **popen)


TILES_FOR_CTRL_C, CTRL_C_TILES = 16, 72
"""Tiles of 16 cells: 8 x 9 tiles of the 128 x 130-cell scene, a run of several seconds, so
that Ctrl+C comes after the manifest's first save (once a second) and before the last tile
(with 20 tiles the whole run took 1.3 s and the signal could come too late)."""


@pytest.mark.slow
@needs_dask
def test_ctrl_c_keeps_the_finished_tiles_and_a_rerun_runs_only_the_rest(scene, tmp_path):
    """SIGINT to the command's whole process group (what Ctrl+C in a terminal does) once a
    tile is finished: status 130, the finished tiles kept with their checksums, no partial
    file, no worker left running; the same command again runs only the other tiles."""
    import psutil
    out = tmp_path / "out"
    args = ("classify-tiles", "--input", scene["stack"], "--model", scene["model"], "--out",
            out, "--tile-cells", TILES_FOR_CTRL_C, "--workers", 2, "--device", "cpu",
            "--probabilities", "--confidence")
    process = cli(*args, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if os.path.exists(out / MANIFEST) and done_tiles(out):
            break
        time.sleep(0.05)
    children = psutil.Process(process.pid).children(recursive=True)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    finished = len(done_tiles(out))
    assert 1 <= finished < CTRL_C_TILES
    assert stderr.strip().splitlines()[-1] == (
        f"cancelled; {finished} of {CTRL_C_TILES} tiles are finished; run the same command "
        f"again to continue")
    assert partial_files(out) == [] and not (out / "lcz.vrt").exists()
    psutil.wait_procs(children, timeout=10)
    assert [c.pid for c in children if c.is_running() and c.status() != "zombie"] == []
    pids = {f"-{c.pid}-" for c in children}
    assert [name for name in os.listdir(tempfile.gettempdir()) if PARTIAL_MARK in name
            and any(pid in name for pid in pids)] == []  # the workers' scratch folders
    rerun = cli(*args)
    stdout, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr
    answer = json.loads(stdout)
    assert (answer["tiles_run"], answer["tiles_skipped"]) == (CTRL_C_TILES - finished, finished)
    result = tiles_module.TilesResult(out, answer["output"], answer["probabilities"],
                                      answer["confidence"], CTRL_C_TILES, 0, 0, 0, 0.0, 0.0)
    assert_same_map(result, scene["whole"])
    assert partial_files(out) == []


def test_command_line_errors_are_one_line(scene, tmp_path):
    process = cli("classify-tiles", "--input", scene["stack"], "--model", scene["model"],
                  "--out", tmp_path / "out", "--workers", 0)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2
    assert stderr.strip().splitlines() == ["error: --workers must be at least 1 (got 0)."]
    process = cli("classify-tiles", "--input", scene["stack"], "--model", scene["model"],
                  "--out", scene["stack"])
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2 and "is a file; give a folder" in stderr


@needs_dask
def test_an_unreachable_scheduler_is_named(scene, tmp_path, monkeypatch):
    monkeypatch.setattr(tiles_module, "SCHEDULER_TIMEOUT_S", 2)
    with pytest.raises(LczError, match=r"cannot reach the Dask scheduler at "
                                       r"tcp://127\.0\.0\.1:9.*leave --scheduler out"):
        classify_tiles([scene["stack"]], scene["model"], tmp_path / "out",
                       scheduler="tcp://127.0.0.1:9", progress_bar=False)


# --- Dask only where it is used ------------------------------------------------------------

def test_the_core_and_its_tile_modules_do_not_import_dask():
    code = ("import sys, lcz_qgis_plugin.core, lcz_qgis_plugin.core.__main__\n"
            "from lcz_qgis_plugin.core import classify\n"
            "import lcz_qgis_plugin.core.inference.classify_tiles\n"
            "print(sorted(m for m in ('dask', 'distributed') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT)
    assert done.stdout.strip() == "[]", done.stderr


@pytest.mark.slow
@needs_dask
def test_a_tile_of_no_data_only_is_written_as_no_data(cluster, tmp_path):
    """A tile over no-data only (the sea of a country) is a tile of no-data cells, not an
    error; the mosaic equals the whole-scene map."""
    card = identity_card("probe", NAMES, 4, cell_size=20.0)
    model, *_ = linear_probe_model(tmp_path / "m.onnx", card, seed=3)
    data = np.random.default_rng(1).normal(size=(3, 64, 64)).astype(np.float32)
    data[:, :40, :40] = -99.0
    stack = write_stack(tmp_path / "s.tif", data, NAMES, nodata=-99.0)
    whole = classify([stack], model, str(tmp_path / "whole.tif"), device="cpu")
    result = classify_tiles([stack], model, tmp_path / "out", tile_cells=16, device="cpu",
                            scheduler=cluster.scheduler_address, progress_bar=False)
    assert (result.tiles, result.tiles_run) == (4, 4)
    classes = read(result.output)
    assert (classes[:16, :16] == 0).all() and classes[21:, 21:].all()
    np.testing.assert_array_equal(classes, read(whole.output))
    assert result.class_counts == whole.class_counts


@pytest.mark.slow
@needs_dask
def test_restart_with_another_plan_replaces_the_earlier_tiles(scene, cluster, tmp_path):
    out = tmp_path / "out"
    run = dict(device="cpu", scheduler=cluster.scheduler_address, progress_bar=False)
    classify_tiles([scene["stack"]], scene["model"], out, tile_cells=TILE_CELLS,
                   probabilities=True, **run)
    with pytest.raises(InputError, match=r"another plan: the tile size \(48 before, 64 now\); "
                                         r"the outputs asked for .*--restart"):
        classify_tiles([scene["stack"]], scene["model"], out, tile_cells=64, **run)
    result = classify_tiles([scene["stack"]], scene["model"], out, tile_cells=64,
                            restart=True, **run)
    assert (result.tiles, result.tiles_run) == (6, 6)
    assert sorted(os.listdir(out / "tiles")) == [f"lcz_r000{i}_c000{j}.tif"
                                                 for i in range(3) for j in range(2)]
    assert not (out / "probabilities.vrt").exists()
    np.testing.assert_array_equal(read(result.output), read(scene["whole"].output))
