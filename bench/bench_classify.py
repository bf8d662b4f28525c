"""Benchmark of LCZ inference: every engine's floor and end-to-end classify, MSMLA-18 and -50
and a dense model (U-Net) side by side.

The models are **trained** and the scene is a **generated city** with a known truth, so that
"same map as onnxruntime float32" is measured on what a user would see: a real classifier's
close calls, not the extreme logits of random weights with randomised BatchNorm statistics.

Preparation (cached in ``build/bench``; a step whose output exists is skipped, and every step
writes under a temporary name and renames, so an interrupted run leaves nothing that looks
finished):

1. three simulated cities (tools/synthcity.py, a simulation, not a measurement): one to train
   on (``--train-km``, 4 km), one whose training areas validate (``--val-km``, 2 km), and the
   mapped scene (``--scene-km``, 8 km: 80 x 80 = 6,400 cells of 100 m);
2. each city prepared into the 13-channel stack of ``make demo`` (ten Sentinel-2 bands,
   OSM:building_fraction, DSM:height, OSM:impervious_fraction) with the plugin's QGIS-free
   core: stack_sentinel2, rasterize_osm, prepare_dsm, build_stack (what lcz:stacksentinel2,
   lcz:rasterizeosm, lcz:preparedsm and lcz:buildstack run);
3. 48 px patches around the training areas' cells of the training and validation cities
   (core.extract.extract_patches);
4. MSMLA-18 and MSMLA-50 trained on the CPU (``python -m training train`` in a child
   process, ``--epochs`` epochs, the demo's options) and exported (``python -m training
   export``, which also writes each model's calibrated int8 variant and records the bfloat16
   and int8 checks on the validation city's patches, as a user's export would);
5. for the dense model (``unet``): 128 px tiles with per-pixel label masks from the same
   training areas of the training and validation cities (extract_patches with
   ``samples="tiles"``, what lcz:extractpatches SAMPLES=1 runs), a U-Net trained with the
   dense defaults (``python -m training train --model unet``; ``--unet-depth`` and
   ``--unet-width`` choose its size) and exported (a dense card; no int8 variant, no
   precision checks).

Then one run prints, side by side for MSMLA-18 and MSMLA-50, for each engine:

- floor: the engine's ``run`` on pre-built batches of patches cut from the scene, nothing
  else (PyTorch eager: the trained checkpoint's ``model(batch)`` under
  ``torch.inference_mode``);
- end to end: ``core.classify.classify`` on the scene stack (read strips, cut patches, run
  batches, write the map), with the engine opened beforehand so that both measure the same
  work (the load time is printed on its own); the ``auto`` row is lcz:classify's automatic
  DEVICE, labelled with the engine it chose, and its decision is printed (the benchmark gives
  it a fresh decision cache, so its first process measures the candidates: that is in its
  load time);
- patches/s, km²/min at 100 m cells (1 patch = 1 cell = 0.01 km²), percent of the machine's
  float32 peak, peak memory (VmHWM of the measuring process), and how far the engine's
  result is from onnxruntime float32 (same class on % of cells (end to end) or patches
  (floor); max |Δp|);
- and, per model, the onnxruntime map's overall accuracy against the scene's generated truth,
  which shows the model is a working classifier.

Then the side-by-side table of the three models on the lcz:classify engines: km²/min end to
end, the ratio to MSMLA-18 on the same engine, OA against the generated truth, same cells as
the model's onnxruntime float32 map, peak memory; the issue's target (dense ≥ 10 × MSMLA-18's
km²/min end to end on the CPU, OA no more than 2 points below) is checked on the same engine
and on each model's fastest engine that keeps its own float32 map; and a memory check: each
model mapping the scene and four copies of it one below the other (four times the cells),
peak memory of both.

A dense model's floor runs batches of whole tiles cut from the scene (BATCH_SIZE / 16 tiles
per call, as lcz:classify does); its rates count the 100 m cells of the tiles' kept cores
(a tile of 448 px with 64 px overlaps keeps 320 x 320 px = 1,024 cells), so km²/min compare
with the patch models' directly. The int8 rows and "one call per batch" apply to patch
models only.

The header names the CPU's features that decide the engines: AMX, AVX512-BF16, VNNI.

Peak float32 rate = physical cores × clock × 64 FLOP/cycle (AVX-512: 2 FMA units × 16 float32
lanes × 2 FLOP per FMA). The clock is /proc/cpuinfo's "cpu MHz" (the nominal clock under a
hypervisor; turbo would lower the percentages). FLOP per patch = 2 × the MACs of the graph's
Conv and Gemm nodes, counted from the ONNX file (≈ 169 M MACs for MSMLA-50, ≈ 75 M for
MSMLA-18). bfloat16 and int8 engines run on other units (AVX512-BF16, AMX, VNNI)
whose peaks are higher; their percentages are still of the float32 peak, for comparison.

Every measurement runs in a fresh process (its own peak memory, no shared warm caches); the
engine runs two batches before timing starts, for the floor and end to end alike (first
inferences allocate and compile), and the whole series is repeated ``--rounds`` times in
alternating order (the build machines are shared and noisy); rates are total patches / total
seconds over the rounds.

int8: the int8 variant ``python -m training export`` writes beside each model (static
quantization with onnxruntime.quantization, QDQ, per-channel int8 weights, uint8 activations,
calibrated on 256 patches of the training city): DEVICE OpenVINO int8 of lcz:classify, end to
end like the other DEVICE rows; onnxruntime running the same file is a floor for comparison.

    python bench/bench_classify.py [--models msmla18,msmla50,unet] [--scene-km 8] [--rounds 2]
        [--epochs N] [--engines cpu,openvino-bf16 | all] [--tile-size PX]
        [--unet-depth 2] [--unet-width 16] [--unet-stride 2] [--memory-models msmla18,unet]
        [--memory-engines cpu]

The defaults (``make bench``) measure onnxruntime float32 (the reference) and OpenVINO
bfloat16 (Automatic's choice for a patch model on a CPU with AVX512-BF16) and check memory
with onnxruntime: a few minutes of measuring once the preparation is cached; ``--engines all``
adds every other row (about a quarter of an hour on two cores).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from tools.demo import MODELS  # noqa: E402

WORK = os.path.join(ROOT, "build", "bench")
CHANNELS = MODELS["ancillary"]
"""The demo's 13 channels: ten Sentinel-2 bands, OSM:building_fraction, DSM:height,
OSM:impervious_fraction."""
PATCH = 48
KM2_PER_PATCH = 0.01  # one 100 m cell
SEEDS = {"train": 3, "validation": 4, "scene": 5}
"""synthcity seeds of the three cities: independent layouts."""
EPOCHS = {"msmla18": 10, "msmla50": 4, "unet": 40}
"""Default training epochs: enough for a working classifier on the simulated cities within a
few minutes per model on two cores (the preparation is cached). MSMLA-50 gets fewer (about
3.5 min per epoch on two cores): its speed does not depend on them, its OA is informative."""
DENSE = ("unet",)
"""The dense models (tiles with label masks in, class scores per pixel out)."""
TILE = 128
"""Edge of the dense model's training tiles (lcz:extractpatches' default TILE_SIZE)."""
# (label, lcz:classify DEVICE, end-to-end too?, prefetch)
ENGINES = [
    ("onnxruntime CPU f32", "cpu", True, True),
    ("onnxruntime f32 whole batch", "cpu:whole", False, True),
    ("OpenVINO f32", "openvino", True, True),
    ("OpenVINO f32, no prefetch", "openvino", True, False),
    ("OpenVINO bf16", "openvino-bf16", True, True),
    ("OpenVINO int8", "openvino-int8", True, True),
    ("auto", "auto", True, True),
    ("onnxruntime int8 (QDQ)", "cpu:int8", False, True),
    ("PyTorch eager f32", "torch", False, True),
]
REFERENCE = "onnxruntime CPU f32"
CLASSIFY_DEVICES = ("cpu", "openvino", "openvino-bf16", "openvino-int8", "auto")
"""The rows that are lcz:classify DEVICE choices (the others are for comparison)."""
PATCH_ONLY = ("cpu:whole", "cpu:int8", "openvino-int8")
"""Rows a dense model has no counterpart for: one call per batch is how it always runs, and
it has no int8 variant."""
MEMORY_CHECK_CACHE_MB = 16
"""GDAL's block cache in the memory check (see :func:`memory_check`)."""
SAME_MAP = 99.0
"""Percent of cells with onnxruntime float32's class for "the same map" (the issue's bar)."""


def applies(name: str, device: str) -> bool:
    """Whether the engine row ``device`` is measured for model ``name``."""
    return name not in DENSE or device not in PATCH_ONLY


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM). Not getrusage's ru_maxrss: on Linux that
    keeps the parent's peak across fork and exec, so a child would report the parent's."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --- preparation: cities, stacks, patches, trained models ------------------------------------

class Steps:
    """Timed preparation lines; ``times`` keeps each step's seconds for the summary."""

    def __init__(self):
        self.start, self.times = time.perf_counter(), {}

    def run(self, what: str, action):
        print(f"  [{time.perf_counter() - self.start:5.0f} s] {what} ...", flush=True)
        started = time.perf_counter()
        result = action()
        self.times[what] = time.perf_counter() - started
        return result


def fresh_partial(final: str) -> str:
    """An empty ``<final>.partial`` folder, renamed to ``final`` once complete."""
    partial = final + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    return partial


def city_folder(role: str, size_km: float) -> str:
    return os.path.join(WORK, "cities", f"{role}_seed{SEEDS[role]}_{size_km:g}km")


def city_files(folder: str) -> dict:
    """The files of a generated and prepared city (synthcity.json names them)."""
    with open(os.path.join(folder, "synthcity.json"), encoding="utf-8") as f:
        files = json.load(f)["files"]
    paths = {key: os.path.join(folder, name) for key, name in files.items()}
    paths["stack"] = os.path.join(folder, "stack.tif")
    paths["patches"] = os.path.join(folder, f"patches_{PATCH}px.h5")
    paths["tiles"] = os.path.join(folder, f"tiles_{TILE}px.h5")
    return paths


def ensure_tiles(role: str, city: dict, steps: Steps) -> None:
    """The dense model's training data: tiles with per-pixel label masks from the city's
    training areas (what lcz:extractpatches SAMPLES=1 runs). extract_patches commits its file
    only when complete, so an existing file is a finished one."""
    from lcz_qgis_plugin.core.training_data.extraction import extract_patches
    if os.path.exists(city["tiles"]):
        return
    result = steps.run(
        f"{TILE} px tiles with label masks from the {role} city's training areas "
        f"(extract_patches, samples='tiles')",
        lambda: extract_patches(city["stack"], city["training_areas"], city["tiles"],
                                class_field="lcz", samples="tiles", tile_size=TILE,
                                seed=SEEDS[role]))
    print(f"           {result.patches} tiles, "
          f"{sum(sum(c.values()) for c in result.counts.values())} labelled pixels",
          flush=True)


def prepare_city(role: str, size_km: float, steps: Steps) -> dict:
    """Generate the city, prepare its 13-channel stack with the plugin's core (the functions
    behind lcz:stacksentinel2, lcz:rasterizeosm, lcz:preparedsm, lcz:buildstack) and, for the
    training and validation cities, extract 48 px patches around the training areas' cells.
    All of it in ``<folder>.partial``, renamed when complete."""
    from lcz_qgis_plugin.core.preprocess.buildstack import build_stack
    from lcz_qgis_plugin.core.preprocess.dsm import prepare_dsm
    from lcz_qgis_plugin.core.preprocess.osm import rasterize_osm
    from lcz_qgis_plugin.core.preprocess.sentinel2 import stack_sentinel2
    from lcz_qgis_plugin.core.training_data.extraction import extract_patches
    from tools import synthcity

    final = city_folder(role, size_km)
    if os.path.isdir(final):
        return city_files(final)
    folder = fresh_partial(final)
    name = f"{role} city ({size_km:g} km, seed {SEEDS[role]})"
    city = steps.run(f"simulating the {name}",
                     lambda: synthcity.generate(folder, SEEDS[role], size_km))
    layers = os.path.join(folder, "layers")
    os.makedirs(layers)
    s2, osm, heights = (os.path.join(layers, n) for n in ("s2.tif", "osm.tif", "heights.tif"))

    def stack():
        stack_sentinel2([city.safe], s2)
        rasterize_osm(s2, osm, osm_file=city.osm)
        prepare_dsm(city.dsm, s2, heights, dtm=city.dtm)
        build_stack(None, [s2, osm, heights], os.path.join(folder, "stack.tif"),
                    channels=CHANNELS)
    steps.run(f"13-channel stack of the {role} city (stack_sentinel2, rasterize_osm, "
              f"prepare_dsm, build_stack)", stack)
    if role != "scene":
        result = steps.run(
            f"{PATCH} px patches from the {role} city's training areas (extract_patches)",
            lambda: extract_patches(os.path.join(folder, "stack.tif"), city.training_areas,
                                    os.path.join(folder, f"patches_{PATCH}px.h5"),
                                    class_field="lcz", patch_size=PATCH, seed=SEEDS[role]))
        print(f"           {result.patches} patches of {len(result.counts)} classes",
              flush=True)
    os.replace(folder, final)
    return city_files(final)


def training(*args: str, echo: bool = False) -> None:
    """``python -m training ...`` in a child process (the benchmark's own process stays free of
    the training's threads and memory)."""
    command = [sys.executable, "-m", "training", *args]
    child = subprocess.Popen(command, cwd=ROOT, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
    lines = []
    for line in child.stdout:
        lines.append(line)
        if echo:
            print("           " + line.rstrip(), flush=True)
    if child.wait() != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{''.join(lines[-40:])}")


def train_model(name: str, epochs: int, train: dict, validation: dict, run_name: str,
                steps: Steps, unet: tuple[int, int, int] = (2, 16, 2)) -> dict:
    """Train ``name`` on the training city's patches (a dense model: its tiles), early
    stopping on the validation city's, and export the best checkpoint; the run folder is
    renamed into place when both are done. ``unet``: the U-Net's (depth, width, output
    stride)."""
    final = os.path.join(WORK, "runs", run_name)
    paths = {"run": final, "checkpoint": os.path.join(final, "best.pt"),
             "model": os.path.join(final, f"{name}.onnx")}
    if os.path.isdir(final):
        return paths
    folder = fresh_partial(final)
    dense = name in DENSE
    data = "tiles" if dense else "patches"
    options = ["--depth", str(unet[0]), "--width", str(unet[1]), "--output-stride",
               str(unet[2])] if dense else []
    what = (f"depth {unet[0]}, width {unet[1]}, output stride {unet[2]}, {TILE} px tiles"
            if dense else f"{PATCH} px")
    steps.run(f"training {name.upper()} ({epochs} epoch{'s' * (epochs != 1)}, {what}, "
              f"{len(CHANNELS)} channels)",
              lambda: training("train", "--model", name, "--train", train[data],
                               "--val", validation[data], "--drop-unknown-validation",
                               "--bn-momentum", "0.9", "--epochs", str(epochs),
                               "--patience", str(epochs), "--seed", "0", "--out", folder,
                               *options, "--no-progress", "--version", f"bench-{run_name}",
                               echo=True))
    steps.run(f"exporting {name.upper()} to ONNX",
              lambda: training("export", "--checkpoint", os.path.join(folder, "best.pt"),
                               "--out", os.path.join(folder, f"{name}.onnx")))
    os.replace(folder, final)
    return paths


def best_validation(run: str) -> tuple[int, float]:
    """(epoch, validation OA) of the run's best epoch (lowest validation loss), from log.csv."""
    import csv
    with open(os.path.join(run, "log.csv"), encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    best = min(rows, key=lambda r: float(r["val_loss"]))
    return int(best["epoch"]), float(best["val_oa"])


def ensure_int8(run: dict, train: dict, validation: dict, steps: Steps) -> str:
    """The model's int8 variant, named in its card; a run exported before ``export`` wrote
    one gets it from ``python -m training check-precision`` (the same calibration and check
    as the export's)."""
    from lcz_qgis_plugin.core.model.card_file import read_model_card
    model = run["model"]
    check = read_model_card(model).precision_checks.get("int8")
    if check is None:
        steps.run(f"int8 variant of {os.path.basename(model)} (check-precision)",
                  lambda: training("check-precision", "--model", model, "--data",
                                   validation["patches"], "--calibration-data",
                                   train["patches"], "--precisions", "int8"))
        check = read_model_card(model).precision_checks["int8"]
    return os.path.join(os.path.dirname(model), check["file"])


def scene_patches(stack: str, model: str, count: int, seed: int) -> np.ndarray:
    """``count`` normalised patches of cells spread over the scene, as the engine gets them."""
    from lcz_qgis_plugin.core.cellgrid import make_grid
    from lcz_qgis_plugin.core.inference.strips import StripReader
    from lcz_qgis_plugin.core.preprocess.buildstack import read_model_card
    from lcz_qgis_plugin.core.stacks import open_stacks
    card = read_model_card(model)
    (opened,) = open_stacks([stack], card.channels, card.pixel_size)
    grid = make_grid(opened.geotransform, opened.width, opened.height, card.cell_size,
                     card.patch_size, None)
    strip = StripReader(opened, card, grid).read(0, grid.rows)
    rows, cols = np.nonzero(strip.cell_valid)
    pick = np.random.default_rng(seed).choice(len(rows), size=count, replace=False)
    return strip.gather(rows[pick], cols[pick])


def read_card(model: str):
    from lcz_qgis_plugin.core.model.card_file import read_model_card
    return read_model_card(model)


def dense_layout(model: str, tile_size: int = 0):
    """(card, tile layout, 100 m cells in one tile's kept core) of a dense model."""
    from lcz_qgis_plugin.core.inference.tiles import make_layout
    card = read_card(model)
    layout = make_layout(card, tile_size or None)
    return card, layout, int(round(layout.step * card.pixel_size / card.cell_size)) ** 2


def scene_tiles(stack: str, model: str, count: int, tile_size: int) -> np.ndarray:
    """Up to ``count`` normalised tiles of the scene, row by row from the top, as lcz:classify
    hands them to the engine (reflected at the raster's edges)."""
    from lcz_qgis_plugin.core.cellgrid import make_grid
    from lcz_qgis_plugin.core.inference.dense import DensePlan, TileReader
    from lcz_qgis_plugin.core.stacks import open_stacks
    card, layout, _ = dense_layout(model, tile_size)
    (opened,) = open_stacks([stack], card.channels, card.pixel_size)
    grid = make_grid(opened.geotransform, opened.width, opened.height, card.cell_size, 1, None)
    plan = DensePlan(layout, grid, 1)
    reader = TileReader(opened, card, plan, 0.5)
    places = [(row, col) for row in plan.tile_rows for col in plan.tile_cols][:count]
    return np.stack([reader.batch(row, [col])[0][0] for row, col in places])


def truth_accuracy(lcz_map: str, truth: str) -> dict:
    """Overall accuracy and kappa of a map against the generated truth, cell by cell (both
    are 100 m rasters of the same grid)."""
    from osgeo import gdal

    from lcz_qgis_plugin.core.assessment.metrics import accuracy_scores, confusion_matrix
    mapped, known = gdal.Open(lcz_map), gdal.Open(truth)
    if (mapped.RasterXSize, mapped.RasterYSize) != (known.RasterXSize, known.RasterYSize) or \
            not np.allclose(mapped.GetGeoTransform(), known.GetGeoTransform()):
        raise SystemExit(f"the map {lcz_map} is not on the grid of the truth {truth}")
    return accuracy_scores(confusion_matrix(known.ReadAsArray(), mapped.ReadAsArray()))


def count_macs(path: str, tile: int = 0) -> int:
    """Multiply-accumulates of one patch (a dense model: one tile of ``tile`` px) in the
    graph's Conv and Gemm/MatMul nodes."""
    import onnx
    from onnx import shape_inference
    model = onnx.load(path)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[0].dim_value = 1
    if tile:
        dims[2].dim_value = dims[3].dim_value = tile
    model = shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(model.graph.value_info) + list(model.graph.output)
              + list(model.graph.input)}
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    macs = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            out, w = shapes[node.output[0]], weights[node.input[1]]
            macs += int(np.prod(out)) * int(np.prod(w[1:]))
        elif node.op_type in ("Gemm", "MatMul") and node.input[1] in weights:
            out, w = shapes[node.output[0]], weights[node.input[1]]
            macs += int(np.prod(out)) * int(np.prod(w)) // max(out[-1], 1)
    return macs


def cpu_ghz() -> float:
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("cpu MHz"):
                return float(line.split(":")[1]) / 1000.0
    return float("nan")


# --- the measuring children ------------------------------------------------------------------

class EngineLog:
    """The engine's log lines (the Automatic device's decision), returned to the parent."""

    def __init__(self):
        self.lines = []

    def info(self, message):
        self.lines.append(message)

    def warning(self, message):
        self.lines.append(f"WARNING: {message}")


def floor_runner(args, log: EngineLog):
    """(run(batch) -> raw output, provider) of the floor's engine."""
    if args.device == "torch":
        import torch

        from lcz_qgis_plugin.core.inference.engine import physical_cores
        from training.train import load_checkpoint, model_from_checkpoint
        torch.set_num_threads(physical_cores())
        model = model_from_checkpoint(load_checkpoint(args.checkpoint))

        def run(batch):
            with torch.inference_mode():
                return model(torch.from_numpy(batch)).numpy()
        return run, f"torch {torch.__version__}"
    from lcz_qgis_plugin.core.inference.engine import Engine
    if args.device == "cpu:whole":  # onnxruntime as commonly run: one call per batch
        engine = Engine(args.model, "cpu")
        session = engine.session
        name = session.get_inputs()[0].name
        return (lambda batch: session.run(None, {name: batch})[0]), engine.provider
    engine = Engine(args.model, args.device, feedback=log)
    if engine.card.is_dense:
        engine.use_tile_size(np.load(args.patches, mmap_mode="r").shape[-1])
    return engine.run, engine.provider


def floor_probabilities(outputs: list[np.ndarray], model: str) -> np.ndarray:
    """Class probabilities ``M x K`` of the floor's raw outputs, to compare engines: one row
    per patch, or for a dense model per 8th pixel of every 8th row of each tile."""
    from lcz_qgis_plugin.core.inference.engine import to_pixel_probabilities
    card = read_card(model)
    if card.is_dense:
        size = outputs[0].shape[-1]
        probs = np.concatenate([to_pixel_probabilities(o, card, size)[:, ::8, ::8]
                                for o in outputs])
        return probs.reshape(-1, card.n_classes).astype(np.float64)
    logits = np.concatenate(outputs).astype(np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return probs / probs.sum(axis=1, keepdims=True)


def child_floor(args) -> dict:
    """The engine's ``run`` alone on pre-built batches; a dense model's rate counts the cells
    of the tiles' kept cores."""
    log = EngineLog()
    patches = np.load(args.patches)
    batches = [patches[i:i + args.batch] for i in range(0, len(patches), args.batch)]
    start = time.perf_counter()
    run, provider = floor_runner(args, log)
    load = time.perf_counter() - start
    outputs = [run(b) for b in batches]  # warm-up, and the result compared with the reference
    start = time.perf_counter()
    done = 0
    for i in range(args.batches):
        batch = batches[i % len(batches)]
        run(batch)
        done += len(batch)
    seconds = time.perf_counter() - start
    np.save(args.out, floor_probabilities(outputs, args.model))
    dense = args.model.endswith(".onnx") and read_card(args.model).is_dense
    per_sample = dense_layout(args.model, patches.shape[-1])[2] if dense else 1
    return {"seconds": seconds, "patches": done * per_sample, "load": load,
            "peak_mb": peak_rss_mb(), "provider": provider, "log": log.lines}


def child_classify(args) -> dict:
    """``classify`` on the scene with the engine opened (and, for a dense model, compiled for
    its tile size) and warmed up beforehand."""
    from lcz_qgis_plugin.core.inference.classify import classify
    from lcz_qgis_plugin.core.inference.engine import Engine
    from lcz_qgis_plugin.core.inference.tiles import make_layout, tiles_per_batch
    log = EngineLog()
    start = time.perf_counter()
    engine = Engine(args.model, args.device, feedback=log)
    card = engine.card
    if card.is_dense:
        size = make_layout(card, args.tile_size or None).tile
        engine.use_tile_size(size)
        shape = (tiles_per_batch(args.batch), card.n_channels, size, size)
    else:
        shape = (args.batch, card.n_channels, card.patch_size, card.patch_size)
    load = time.perf_counter() - start
    warm = np.zeros(shape, np.float32)  # as for the floor: first inferences allocate, compile
    for _ in range(2):
        engine.run(warm)
    start = time.perf_counter()
    result = classify([args.stack], engine, args.out, batch_size=args.batch,
                      prefetch=bool(args.prefetch), tile_size=args.tile_size or None)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "patches": result.patches, "load": load,
            "peak_mb": peak_rss_mb(), "provider": result.provider, "log": log.lines}


def run_child(*argv, env: dict | None = None) -> dict:
    done = subprocess.run([sys.executable, __file__, *map(str, argv)], capture_output=True,
                          text=True, env=dict(os.environ, **(env or {})))
    if done.returncode != 0:
        raise SystemExit(f"benchmark child failed ({' '.join(map(str, argv))}):\n"
                         f"{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the run ---------------------------------------------------------------------------------

def prepare(args, names: list[str], int8: bool) -> dict:
    """Cities, stacks, patches (tiles), trained and exported models, int8 variants, floor
    samples."""
    steps = Steps()
    print("preparing (cached in build/bench):", flush=True)
    train = prepare_city("train", args.train_km, steps)
    validation = prepare_city("validation", args.val_km, steps)
    scene = prepare_city("scene", args.scene_km, steps)
    if any(name in DENSE for name in names):
        ensure_tiles("train", train, steps)
        ensure_tiles("validation", validation, steps)
    cities = (f"train{args.train_km:g}km-s{SEEDS['train']}"
              f"_val{args.val_km:g}km-s{SEEDS['validation']}")
    runs = {}
    for name in names:
        epochs = args.epochs or EPOCHS[name]
        size = (f"d{args.unet_depth}w{args.unet_width}s{args.unet_stride}_{TILE}px"
                if name in DENSE else f"{PATCH}px")
        runs[name] = train_model(name, epochs, train, validation,
                                 f"{name}_{size}_e{epochs}_{cities}", steps,
                                 (args.unet_depth, args.unet_width, args.unet_stride))
        runs[name]["epochs"] = epochs
    scene_key = os.path.basename(city_folder("scene", args.scene_km))
    for name, run in runs.items():  # normalised as each model's card says
        run["patches"] = floor_samples(name, run, scene, scene_key, args)
        if int8 and name not in DENSE:
            run["int8"] = ensure_int8(run, train, validation, steps)
    if steps.times:
        print(f"  preparation: {time.perf_counter() - steps.start:.0f} s in all "
              f"(load average {os.getloadavg()[0]:.2f})")
        for what, seconds in steps.times.items():
            print(f"    {seconds:6.1f} s  {what}")
    else:
        print("  everything cached from an earlier run")
    return {"scene": scene, "runs": runs}


def floor_samples(name: str, run: dict, scene: dict, scene_key: str, args) -> str:
    """The floor's input, cut from the scene once: ``4 x batch`` patches, or a dense model's
    tiles (up to 16)."""
    if name in DENSE:
        tile = dense_layout(run["model"], args.tile_size)[1].tile
        path = os.path.join(run["run"], f"floor_tiles{tile}_{scene_key}.npy")
        cut = lambda: scene_tiles(scene["stack"], run["model"], 16, tile)  # noqa: E731
    else:
        path = os.path.join(run["run"], f"floor_{args.batch * 4}_{scene_key}.npy")
        cut = lambda: scene_patches(scene["stack"], run["model"], args.batch * 4,  # noqa: E731
                                    seed=1)
    if not os.path.exists(path):
        partial = path + ".partial.npy"
        np.save(partial, cut())
        os.replace(partial, path)
    return path


def mosaic_scene(stack: str, rows: int = 4, cols: int = 1) -> str:
    """A mosaic of ``rows`` x ``cols`` copies of the scene stack (a VRT beside it, the copies
    placed one below the other and side by side): the same pixels, ``rows`` x ``cols`` times
    as many cells, for the memory check."""
    from osgeo import gdal
    path = os.path.splitext(stack)[0] + f"_mosaic{rows}x{cols}.vrt"
    if os.path.exists(path):
        return path
    src = gdal.Open(stack)
    x0, dx, _, y0, _, dy = src.GetGeoTransform()
    width, height = src.RasterXSize * dx, src.RasterYSize * -dy
    parts = []
    for i in range(rows):
        for j in range(cols):
            part = os.path.splitext(stack)[0] + f"_part{i}{j}.vrt"
            gdal.Translate(part, src, format="VRT", outputBounds=[
                x0 + j * width, y0 - i * height, x0 + (j + 1) * width, y0 - (i + 1) * height])
            parts.append(part)
    mosaic = gdal.BuildVRT(path + ".partial.vrt", parts)
    for band in range(1, src.RasterCount + 1):
        mosaic.GetRasterBand(band).SetDescription(src.GetRasterBand(band).GetDescription())
    mosaic = None
    os.replace(path + ".partial.vrt", path)
    return path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", nargs="?", default="run", choices=["run", "classify", "floor"])
    parser.add_argument("--models", default="msmla18,msmla50,unet")
    parser.add_argument("--scene-km", type=float, default=8.0,
                        help="side of the mapped city in km (default 8: 6,400 cells of 100 m)")
    parser.add_argument("--train-km", type=float, default=4.0,
                        help="side of the training city in km (default 4)")
    parser.add_argument("--val-km", type=float, default=2.0,
                        help="side of the validation city in km (default 2)")
    parser.add_argument("--epochs", type=int, default=0,
                        help="training epochs of every model (default: "
                             + ", ".join(f"{k} {v}" for k, v in EPOCHS.items()) + ")")
    parser.add_argument("--unet-depth", type=int, default=2, help="U-Net levels (default 2)")
    parser.add_argument("--unet-width", type=int, default=16,
                        help="U-Net channels of the first level (default 16)")
    parser.add_argument("--unet-stride", type=int, default=2,
                        help="U-Net output stride (default 2: one class per 20 m; it must "
                             "divide the 10 px of a 100 m cell)")
    parser.add_argument("--tile-size", type=int, default=0,
                        help="dense model: lcz:classify's TILE_SIZE in px (default 0: "
                             "automatic)")
    parser.add_argument("--floor-patches", type=int, default=1280,
                        help="patches per floor measurement (default 1280)")
    parser.add_argument("--floor-tiles", type=int, default=32,
                        help="dense model: tiles per floor measurement (default 32)")
    parser.add_argument("--torch-patches", type=int, default=256,
                        help="patches per PyTorch eager floor (default 256: it is slow)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--engines", default="cpu,openvino-bf16",
                        help="comma-separated DEVICE ids of the rows, e.g. cpu,openvino,auto, "
                             "or all (default cpu,openvino-bf16; cpu, the reference, is "
                             "always measured)")
    parser.add_argument("--memory-models", default="msmla18,unet",
                        help="models of the memory check (default msmla18,unet)")
    parser.add_argument("--memory-engines", default="cpu",
                        help="DEVICE ids of the memory check (scene and four copies of it "
                             "one below the other); empty: no check (default cpu)")
    # children
    for option in ("--model", "--checkpoint", "--device", "--stack", "--patches", "--out"):
        parser.add_argument(option)
    parser.add_argument("--batches", type=int)
    parser.add_argument("--prefetch", type=int, default=1)
    args = parser.parse_args()
    unknown = [n for n in args.models.split(",") if n not in EPOCHS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; use {', '.join(EPOCHS)}")
    return args


def main() -> None:
    args = parse_args()
    if args.mode in ("classify", "floor"):
        child = child_classify if args.mode == "classify" else child_floor
        print(json.dumps(child(args)))
        return

    from lcz_qgis_plugin.core.inference.engine import import_openvino
    from lcz_qgis_plugin.core.inference.engine_choice import CACHE_ENV
    os.makedirs(os.path.join(WORK, "out"), exist_ok=True)
    # a decision cache of this run's own: Automatic measures in its first process, as on a
    # user's first run, whatever earlier runs decided
    os.environ[CACHE_ENV] = os.path.join(WORK, "choices", time.strftime("%Y%m%d-%H%M%S"))
    engines = [e for e in ENGINES if args.engines == "all" or e[0] == REFERENCE
               or e[1] in args.engines.split(",")]
    if import_openvino() is None:
        print("openvino is not installed: its rows are skipped")
        engines = [e for e in engines if "openvino" not in e[1]]
    names = args.models.split(",")
    prepared = prepare(args, names, any("int8" in e[1] for e in engines))
    scene, runs = prepared["scene"], prepared["runs"]
    macs = {name: macs_per_cell(name, runs[name]["model"], args.tile_size) for name in names}
    peak = print_header(args)
    results = measure(args, names, engines, runs, scene)
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (this machine's cores: "
          f"{os.cpu_count()})")
    report(names, engines, results, macs, peak, runs, scene, args.tile_size)
    side_by_side(names, engines, results, scene)
    memory_check(args, names, runs, scene)


def macs_per_cell(name: str, model: str, tile_size: int) -> float:
    """MACs per patch, or a dense model's per 100 m cell of a tile's kept core."""
    if name not in DENSE:
        return count_macs(model)
    _, layout, cells = dense_layout(model, tile_size)
    return count_macs(model, layout.tile) / cells


def print_header(args) -> float:
    """The machine, the versions, the scene; returns the float32 peak (FLOP/s)."""
    import onnxruntime
    import torch

    from lcz_qgis_plugin.core.inference.engine import import_openvino, physical_cores
    from lcz_qgis_plugin.core.inference.engine_choice import cpu_features
    cores, ghz = physical_cores(), cpu_ghz()
    peak = cores * ghz * 1e9 * 64
    cpu_model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                      if line.startswith("model name")), "?")
    ov = import_openvino()
    batches = max(1, args.floor_patches // args.batch)
    print()
    print(f"LCZ inference benchmark: {cpu_model}, {cores} physical cores at {ghz:.2f} GHz "
          f"(float32 peak {peak / 1e9:.0f} GFLOP/s), onnxruntime {onnxruntime.__version__}, "
          f"openvino {ov.__version__.split('-')[0] if ov else '-'}, torch {torch.__version__}")
    print(f"CPU features: {cpu_features()}")
    rows = int(round(args.scene_km * 10))
    print(f"scene: simulated city of {args.scene_km:g} x {args.scene_km:g} km (seed "
          f"{SEEDS['scene']}), {rows} x {rows} cells of 100 m; models trained on a "
          f"{args.train_km:g} km city, validated on a {args.val_km:g} km one; batch "
          f"{args.batch}; floors: {batches * args.batch} patches ({args.torch_patches} for "
          f"PyTorch), {args.floor_tiles} tiles for a dense model; {args.rounds} rounds in "
          f"alternating order; {time.strftime('%Y-%m-%d %H:%M %Z')}, load average "
          f"{os.getloadavg()[0]:.2f} at start", flush=True)
    return peak


def measure(args, names: list[str], engines: list, runs: dict, scene: dict) -> dict:
    """Every (model, engine) row's floor and end-to-end runs, each in a fresh process, the
    rounds in alternating order."""
    from lcz_qgis_plugin.core.inference.tiles import tiles_per_batch
    tasks = [(name, engine) for name in names for engine in engines if applies(name, engine[1])]
    results: dict = {}
    for round_index in range(args.rounds):
        order = tasks if round_index % 2 == 0 else tasks[::-1]
        for name, (label, device, e2e, prefetch) in order:
            run = runs[name]
            model = run["int8"] if device.endswith(":int8") else run["model"]
            engine_device = device if device == "cpu:whole" else device.split(":")[0]
            out = output_stem(name, device, prefetch)
            entry = results.setdefault((name, label), {"floor": [], "e2e": []})
            steps = ["floor"] + (["e2e"] if e2e else [])
            if round_index % 2:
                steps.reverse()
            for step in steps:
                if step == "floor" and not prefetch:
                    continue  # the same engine as its prefetching row
                if step == "floor":
                    batch = tiles_per_batch(args.batch) if name in DENSE else args.batch
                    budget = (args.floor_tiles if name in DENSE else args.torch_patches
                              if device == "torch" else batch * max(1, args.floor_patches
                                                                    // args.batch))
                    if device == "torch" and name in DENSE:
                        budget = max(batch, args.floor_tiles // 8)
                    entry["floor"].append(run_child(
                        "floor", "--model", model, "--checkpoint", run["checkpoint"],
                        "--device", engine_device, "--patches", run["patches"],
                        "--batch", batch, "--batches", max(1, budget // batch),
                        "--out", out + ".npy"))
                else:
                    entry["e2e"].append(run_child(
                        "classify", "--model", model, "--device", engine_device, "--stack",
                        scene["stack"], "--batch", args.batch, "--prefetch", int(prefetch),
                        "--tile-size", args.tile_size, "--out", out + ".tif"))
            print(f"  round {round_index + 1}: {name} {label} done "
                  f"(load average {os.getloadavg()[0]:.2f})", flush=True)
    return results


def output_stem(name: str, device: str, prefetch: bool) -> str:
    return os.path.join(WORK, "out", f"{name}_{device.replace(':', '_')}_{prefetch}")


def rate(runs: list[dict]) -> float:
    return sum(r["patches"] for r in runs) / sum(r["seconds"] for r in runs) if runs else 0.0


def km2_per_min(per_second: float) -> float:
    return per_second * KM2_PER_PATCH * 60


def report(names, engines, results, macs, peak, runs, scene, tile_size) -> None:
    print()
    for name in names:
        print_model_header(name, macs[name], peak, runs[name], tile_size)
        report_model(name, [e for e in engines if applies(name, e[1])], results,
                     macs[name], peak, scene)
    print("floor: engine.run on pre-built batches of scene patches (a dense model: tiles); "
          "e2e: classify with the engine already open; p/s: patches (cells) per second; "
          "km2/min and % peak use e2e where measured, else the floor; x ort: floor / "
          "onnxruntime CPU floor; same %: cells (e2e) or patches (floor; a dense model: "
          "pixels) with the onnxruntime f32 class; max dp: largest probability difference on "
          "the floor's samples.")


def print_model_header(name: str, macs: float, peak: float, run: dict, tile_size: int) -> None:
    epoch, val_oa = best_validation(run["run"])
    trained = (f"trained {run['epochs']} epochs, best epoch {epoch} (OA on the validation "
               f"city's training areas {100 * val_oa:.1f} %"
               + (", per labelled pixel)" if name in DENSE else ")"))
    flop = 2 * macs
    if name in DENSE:
        card, layout, cells = dense_layout(run["model"], tile_size)
        print(f"{name.upper()} (depth {card.tile_multiple.bit_length() - 1}, output stride "
              f"{card.output_stride}, receptive field {card.receptive_field} px): "
              f"{layout.describe()}, {cells} cells of 100 m kept per tile; "
              f"{macs * cells / 1e6:.0f} M MACs per tile = {flop / 1e6:.1f} MFLOP "
              f"per kept cell; float32 peak = {peak / flop:.0f} cells/s; {trained}")
    else:
        print(f"{name.upper()}: {macs / 1e6:.0f} M MACs = {flop / 1e6:.0f} MFLOP per patch; "
              f"float32 peak = {peak / flop:.0f} patches/s; {trained}")


def row_figures(name: str, label: str, device: str, e2e: bool, prefetch: bool, results,
                reference: tuple) -> dict:
    """The figures of one engine row: rates, agreement with onnxruntime float32, memory."""
    from osgeo import gdal
    entry = results[(name, label)]
    floor = rate(entry["floor"]) if prefetch else rate(
        results[(name, label.replace(", no prefetch", ""))]["floor"])
    end = rate(entry["e2e"])
    out = output_stem(name, device, prefetch)
    ref_probs, ref_map = reference
    same = (100.0 * np.mean(gdal.Open(out + ".tif").ReadAsArray() == ref_map) if e2e
            else float("nan"))
    delta = float("nan")
    if os.path.exists(out + ".npy") and prefetch:
        probs = np.load(out + ".npy")
        delta = float(np.abs(probs - ref_probs).max())
        if not e2e:
            same = 100.0 * np.mean(probs.argmax(1) == ref_probs.argmax(1))
    measured = entry["floor"] + entry["e2e"]
    return {"floor": floor, "end": end, "same": same, "delta": delta, "measured": measured,
            "load": np.mean([r["load"] for r in measured]),
            "mb_floor": max((r["peak_mb"] for r in entry["floor"]), default=float("nan")),
            "mb_e2e": max((r["peak_mb"] for r in entry["e2e"]), default=float("nan"))}


def automatic_decision(measured: list[dict]) -> str:
    return next((line for r in measured for line in r.get("log", [])
                 if "measured on this CPU against" in line and "the choice of" not in line),
                "") or next((line for r in measured for line in r.get("log", [])), "")


def report_model(name, engines, results, macs, peak, scene) -> None:
    """One model's engine table and the lines under it."""
    from osgeo import gdal
    flop = 2 * macs
    print(f"{'engine':<27} {'floor p/s':>9} {'e2e p/s':>8} {'e2e/fl':>6} {'km2/min':>8} "
          f"{'% peak':>6} {'x ort':>5} {'load s':>6} {'MB floor':>8} {'MB e2e':>7} "
          f"{'same %':>7} {'max dp':>7}")
    ref_floor = rate(results[(name, REFERENCE)]["floor"])
    ref_stem = output_stem(name, "cpu", True)
    reference = (np.load(ref_stem + ".npy"), gdal.Open(ref_stem + ".tif").ReadAsArray())
    best = {"floor": 0.0, "label": REFERENCE, "e2e": 0.0, "other": 0.0,
            "other_label": REFERENCE, "auto": 0.0, "decision": ""}
    for label, device, e2e, prefetch in engines:
        row = row_figures(name, label, device, e2e, prefetch, results, reference)
        floor, end, shown = row["floor"], row["end"], row["end"] or row["floor"]
        if device == "auto":
            label = f"auto ({', '.join(sorted({r['provider'] for r in row['measured']}))})"
            best["auto"], best["decision"] = end, automatic_decision(row["measured"])
        if device in CLASSIFY_DEVICES and row["same"] >= SAME_MAP:
            if floor > best["floor"]:
                best["floor"], best["label"] = floor, label
            best["e2e"] = max(best["e2e"], end)
            if device != "auto" and end > best["other"]:
                best["other"], best["other_label"] = end, label
        print(f"{label:<27} {floor:>9.1f} {end or float('nan'):>8.1f} "
              f"{(end / floor if end else float('nan')):>6.3f} "
              f"{km2_per_min(shown):>8.1f} {100 * shown * flop / peak:>6.1f} "
              f"{floor / ref_floor:>5.2f} {row['load']:>6.2f} {row['mb_floor']:>8.0f} "
              f"{row['mb_e2e']:>7.0f} {row['same']:>7.2f} {row['delta']:>7.1e}")
    whole = results.get((name, "onnxruntime f32 whole batch"))
    print(f"lcz:classify engines keeping >= {SAME_MAP:g} % of the onnxruntime cells: best "
          f"floor {best['label']} = {best['floor'] / ref_floor:.2f} x onnxruntime"
          + (f" ({best['floor'] / rate(whole['floor']):.2f} x onnxruntime run one call per "
             f"batch)" if whole else "")
          + f"; best end to end / best floor {best['e2e'] / best['floor']:.3f}")
    if best["auto"] and best["other"]:
        print(f"auto end to end = {best['auto'] / best['other']:.2f} x the best same-map "
              f"engine's end to end ({best['other_label']}, {best['other']:.1f} "
              f"{'cells' if name in DENSE else 'patches'}/s)")
    if best["decision"]:
        print(f"Automatic's decision (its first process): {best['decision']}")
    scores = truth_accuracy(ref_stem + ".tif", scene["truth"])
    print(f"onnxruntime map: {len(np.unique(reference[1][reference[1] > 0]))} classes, OA "
          f"{100 * scores['oa']:.1f} % (kappa {scores['kappa']:.2f}) against the generated "
          f"truth, {scores['samples']} cells\n")


def side_by_side(names, engines, results, scene) -> None:
    """The issue's table: each model on each lcz:classify engine, km²/min end to end against
    MSMLA-18 on the same engine, OA against the generated truth, memory; then the target."""
    from osgeo import gdal
    rows = [e for e in engines if e[2] and e[3] and e[1] in CLASSIFY_DEVICES]
    figures = {}
    for name in names:
        ref_map = gdal.Open(output_stem(name, "cpu", True) + ".tif").ReadAsArray()
        for label, device, _, _ in rows:
            if not applies(name, device):
                continue
            entry, stem = results[(name, label)], output_stem(name, device, True)
            lcz_map = gdal.Open(stem + ".tif").ReadAsArray()
            providers = sorted({r["provider"] for r in entry["e2e"]})
            figures[(name, device)] = {
                "label": f"auto ({', '.join(providers)})" if device == "auto" else label,
                "km2": km2_per_min(rate(entry["e2e"])),
                "oa": 100 * truth_accuracy(stem + ".tif", scene["truth"])["oa"],
                "same": 100.0 * np.mean(lcz_map == ref_map),
                "mb": max(r["peak_mb"] for r in entry["e2e"])}
    print("Side by side: km2/min end to end (lcz:classify on the scene, engine open), OA "
          "against the generated truth, same cells as the model's own onnxruntime f32 map")
    print(f"{'model':<8} {'engine':<27} {'km2/min':>8} {'x MSMLA18':>9} {'OA %':>6} "
          f"{'same %':>7} {'peak MB':>8}")
    for (name, device), f in figures.items():
        base = figures.get(("msmla18", device))
        ratio = f["km2"] / base["km2"] if base else float("nan")
        print(f"{name.upper():<8} {f['label']:<27} {f['km2']:>8.1f} {ratio:>9.2f} "
              f"{f['oa']:>6.1f} {f['same']:>7.2f} {f['mb']:>8.0f}")
    for name in names:
        if name in DENSE and ("msmla18", "cpu") in figures:
            print_target(name, figures)


def print_target(name: str, figures: dict) -> None:
    """The issue's target for dense model ``name``: >= 10 x MSMLA-18's km²/min end to end, OA
    no more than 2 points below, on the same engine and engine against best engine."""
    def fastest(model):
        kept = {d: f for (m, d), f in figures.items() if m == model and f["same"] >= SAME_MAP}
        device = max(kept, key=lambda d: kept[d]["km2"])
        return kept[device]

    same_engine = [f"{figures[(name, d)]['label'].split(' (')[0]} "
                   f"{figures[(name, d)]['km2'] / figures[('msmla18', d)]['km2']:.1f}x"
                   for (m, d) in figures if m == name and ("msmla18", d) in figures]
    dense, patch = fastest(name), fastest("msmla18")
    speed = dense["km2"] / patch["km2"]
    oa_gap = figures[(name, "cpu")]["oa"] - figures[("msmla18", "cpu")]["oa"]
    met = speed >= 10 and oa_gap >= -2
    print(f"Target (dense >= 10 x MSMLA-18 km2/min end to end on the CPU, OA no more than 2 "
          f"points below): {name.upper()} on the same engine: {', '.join(same_engine)}; "
          f"fastest same-map engine of each: {dense['label']} {dense['km2']:.0f} km2/min vs "
          f"{patch['label']} {patch['km2']:.0f}: {speed:.1f}x; OA (onnxruntime maps) "
          f"{figures[(name, 'cpu')]['oa']:.1f} % vs {figures[('msmla18', 'cpu')]['oa']:.1f} % "
          f"({oa_gap:+.1f} points): {'met' if met else 'NOT met'}.\n")


def memory_check(args, names: list[str], runs: dict, scene: dict) -> None:
    """Peak memory mapping the scene and a mosaic of four copies of it one below the other
    (four times the cells, the same pixels, the same width), each in a fresh process: it
    should not grow with the scene. (Memory grows with a scene's width: one strip of cells,
    or one row of tiles, is held at a time.) GDAL's block cache is set to
    :data:`MEMORY_CHECK_CACHE_MB`: lcz:classify caps it at 256 MB, and below that cap it fills
    with the scene's blocks, which would hide whether anything else grows. A patch model's
    strip of cells also grows with a small scene, up to its budget (256 MB), then stays."""
    devices = [d for d in args.memory_engines.split(",") if d]
    if not devices:
        return
    mosaic = mosaic_scene(scene["stack"])
    cells = int(round(args.scene_km * 10)) ** 2
    print(f"Memory check: the scene ({cells} cells) and four copies of it one below the other "
          f"({4 * cells} cells), one run each, fresh processes, GDAL's block cache "
          f"{MEMORY_CHECK_CACHE_MB} MB (lcz:classify's cap is 256 MB; below it the cache grows "
          f"with the scene) (load average {os.getloadavg()[0]:.2f})")
    print(f"{'model':<8} {'engine':<10} {'km2/min':>8} {'x4 km2/min':>10} {'peak MB':>8} "
          f"{'x4 peak MB':>10} {'growth':>7}")
    for name in [n for n in names if n in args.memory_models.split(",")]:
        for device in devices:
            measured = [run_child("classify", "--model", runs[name]["model"], "--device",
                                  device, "--stack", stack, "--batch", args.batch,
                                  "--tile-size", args.tile_size, "--out",
                                  output_stem(name, f"{device}_memory{i}", True) + ".tif",
                                  env={"GDAL_CACHEMAX": str(MEMORY_CHECK_CACHE_MB)})
                        for i, stack in enumerate((scene["stack"], mosaic))]
            small, large = measured
            print(f"{name.upper():<8} {device:<10} {km2_per_min(rate([small])):>8.1f} "
                  f"{km2_per_min(rate([large])):>10.1f} {small['peak_mb']:>8.0f} "
                  f"{large['peak_mb']:>10.0f} "
                  f"{100 * (large['peak_mb'] / small['peak_mb'] - 1):>+6.0f}%")


if __name__ == "__main__":
    main()
