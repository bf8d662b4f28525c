"""Benchmark of LCZ inference: every engine's floor and end-to-end classify, MSMLA-18 and -50.

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
   and int8 checks on the validation city's patches, as a user's export would).

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

    python bench/bench_classify.py [--models msmla18,msmla50] [--scene-km 8] [--rounds 2]
        [--epochs N] [--engines cpu,openvino,openvino-int8,auto]
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
EPOCHS = {"msmla18": 10, "msmla50": 8}
"""Default training epochs: enough for a working classifier on the simulated cities within a
few minutes per model on two cores (the preparation is cached)."""
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
SAME_MAP = 99.0
"""Percent of cells with onnxruntime float32's class for "the same map" (the issue's bar)."""


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
    return paths


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
                steps: Steps) -> dict:
    """Train ``name`` on the training city's patches (early stopping on the validation city's)
    and export the best checkpoint; the run folder is renamed into place when both are done."""
    final = os.path.join(WORK, "runs", run_name)
    paths = {"run": final, "checkpoint": os.path.join(final, "best.pt"),
             "model": os.path.join(final, f"{name}.onnx")}
    if os.path.isdir(final):
        return paths
    folder = fresh_partial(final)
    steps.run(f"training {name.upper()} ({epochs} epoch{'s' * (epochs != 1)}, {PATCH} px, "
              f"{len(CHANNELS)} channels)",
              lambda: training("train", "--model", name, "--train", train["patches"],
                               "--val", validation["patches"], "--drop-unknown-validation",
                               "--bn-momentum", "0.9", "--epochs", str(epochs),
                               "--patience", str(epochs), "--seed", "0", "--out", folder,
                               "--no-progress", "--version", f"bench-{run_name}", echo=True))
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


def count_macs(path: str) -> int:
    """Multiply-accumulates of one patch in the graph's Conv and Gemm/MatMul nodes."""
    import onnx
    from onnx import shape_inference
    model = onnx.load(path)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
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


def child_floor(args) -> dict:
    log = EngineLog()
    patches = np.load(args.patches)
    batches = [patches[i:i + args.batch] for i in range(0, len(patches), args.batch)]
    start = time.perf_counter()
    if args.device == "torch":
        import torch

        from lcz_qgis_plugin.core.inference.engine import physical_cores
        from training.train import load_checkpoint, model_from_checkpoint
        torch.set_num_threads(physical_cores())
        model = model_from_checkpoint(load_checkpoint(args.checkpoint))

        def run(batch):
            with torch.inference_mode():
                return model(torch.from_numpy(batch)).numpy()
        provider = f"torch {torch.__version__}"
    elif args.device == "cpu:whole":  # onnxruntime as commonly run: one call per batch
        from lcz_qgis_plugin.core.inference.engine import Engine
        engine = Engine(args.model, "cpu")
        session, provider = engine.session, engine.provider
        name = session.get_inputs()[0].name

        def run(batch):
            return session.run(None, {name: batch})[0]
    else:
        from lcz_qgis_plugin.core.inference.engine import Engine
        engine = Engine(args.model, args.device, feedback=log)
        run, provider = engine.run, engine.provider
    load = time.perf_counter() - start
    outputs = [run(b) for b in batches]  # warm-up, and the result compared with the reference
    start = time.perf_counter()
    for i in range(args.batches):
        run(batches[i % len(batches)])
    seconds = time.perf_counter() - start
    logits = np.concatenate(outputs).astype(np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    np.save(args.out, probs)
    return {"seconds": seconds, "patches": args.batches * args.batch, "load": load,
            "peak_mb": peak_rss_mb(), "provider": provider, "log": log.lines}


def child_classify(args) -> dict:
    from lcz_qgis_plugin.core.inference.classify import classify
    from lcz_qgis_plugin.core.inference.engine import Engine
    log = EngineLog()
    start = time.perf_counter()
    engine = Engine(args.model, args.device, feedback=log)
    load = time.perf_counter() - start
    card = engine.card  # warm-up, as for the floor: first inferences allocate and compile
    warm = np.zeros((args.batch, len(card.channels), card.patch_size, card.patch_size),
                    np.float32)
    for _ in range(2):
        engine.run(warm)
    start = time.perf_counter()
    result = classify([args.stack], engine, args.out, batch_size=args.batch,
                      prefetch=bool(args.prefetch))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "patches": result.patches, "load": load,
            "peak_mb": peak_rss_mb(), "provider": result.provider, "log": log.lines}


def run_child(*argv) -> dict:
    done = subprocess.run([sys.executable, __file__, *map(str, argv)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f"benchmark child failed ({' '.join(map(str, argv))}):\n"
                         f"{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the run ---------------------------------------------------------------------------------

def prepare(args, names: list[str], int8: bool) -> dict:
    """Cities, stacks, patches, trained and exported models, int8 variants, floor patches."""
    steps = Steps()
    print("preparing (cached in build/bench):", flush=True)
    train = prepare_city("train", args.train_km, steps)
    validation = prepare_city("validation", args.val_km, steps)
    scene = prepare_city("scene", args.scene_km, steps)
    cities = (f"train{args.train_km:g}km-s{SEEDS['train']}"
              f"_val{args.val_km:g}km-s{SEEDS['validation']}")
    runs = {}
    for name in names:
        epochs = args.epochs or EPOCHS[name]
        runs[name] = train_model(name, epochs, train, validation,
                                 f"{name}_{PATCH}px_e{epochs}_{cities}", steps)
        runs[name]["epochs"] = epochs
    scene_key = os.path.basename(city_folder("scene", args.scene_km))
    for run in runs.values():  # patches normalised as each model's card says
        run["patches"] = os.path.join(run["run"], f"floor_{args.batch * 4}_{scene_key}.npy")
        if not os.path.exists(run["patches"]):
            partial = run["patches"] + ".partial.npy"
            np.save(partial, scene_patches(scene["stack"], run["model"], args.batch * 4,
                                           seed=1))
            os.replace(partial, run["patches"])
        if int8:
            run["int8"] = ensure_int8(run, train, validation, steps)
    if steps.times:
        print(f"  preparation: {time.perf_counter() - steps.start:.0f} s in all "
              f"(load average {os.getloadavg()[0]:.2f})")
        for what, seconds in steps.times.items():
            print(f"    {seconds:6.1f} s  {what}")
    else:
        print("  everything cached from an earlier run")
    return {"scene": scene, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", nargs="?", default="run", choices=["run", "classify", "floor"])
    parser.add_argument("--models", default="msmla18,msmla50")
    parser.add_argument("--scene-km", type=float, default=8.0,
                        help="side of the mapped city in km (default 8: 6,400 cells of 100 m)")
    parser.add_argument("--train-km", type=float, default=4.0,
                        help="side of the training city in km (default 4)")
    parser.add_argument("--val-km", type=float, default=2.0,
                        help="side of the validation city in km (default 2)")
    parser.add_argument("--epochs", type=int, default=0,
                        help="training epochs of every model (default: "
                             + ", ".join(f"{k} {v}" for k, v in EPOCHS.items()) + ")")
    parser.add_argument("--floor-patches", type=int, default=2560,
                        help="patches per floor measurement (default 2560)")
    parser.add_argument("--torch-patches", type=int, default=256,
                        help="patches per PyTorch eager floor (default 256: it is slow)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--engines", default="all",
                        help="comma-separated DEVICE ids of the rows, e.g. cpu,openvino,auto "
                             "(default all; cpu, the reference, is always measured)")
    # children
    parser.add_argument("--model")
    parser.add_argument("--checkpoint")
    parser.add_argument("--device")
    parser.add_argument("--stack")
    parser.add_argument("--patches")
    parser.add_argument("--batches", type=int)
    parser.add_argument("--prefetch", type=int, default=1)
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.mode == "classify":
        print(json.dumps(child_classify(args)))
        return
    if args.mode == "floor":
        print(json.dumps(child_floor(args)))
        return

    from lcz_qgis_plugin.core.inference.engine import import_openvino, physical_cores
    from lcz_qgis_plugin.core.inference.engine_choice import CACHE_ENV, cpu_features
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
    unknown = [n for n in names if n not in EPOCHS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; use {', '.join(EPOCHS)}")
    prepared = prepare(args, names, any("int8" in e[1] for e in engines))
    scene, runs = prepared["scene"], prepared["runs"]
    macs = {name: count_macs(runs[name]["model"]) for name in names}
    batches = max(1, args.floor_patches // args.batch)
    cores, ghz = physical_cores(), cpu_ghz()
    peak = cores * ghz * 1e9 * 64
    cpu_model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                      if line.startswith("model name")), "?")

    import onnxruntime
    import torch
    ov = import_openvino()
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
          f"PyTorch); {args.rounds} rounds in alternating order; load average "
          f"{os.getloadavg()[0]:.2f} at start", flush=True)

    tasks = [(name, engine) for name in names for engine in engines]
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
                    n = max(1, args.torch_patches // args.batch) if device == "torch" \
                        else batches
                    entry["floor"].append(run_child(
                        "floor", "--model", model, "--checkpoint", run["checkpoint"],
                        "--device", engine_device, "--patches", run["patches"],
                        "--batch", args.batch, "--batches", n, "--out", out + ".npy"))
                else:
                    entry["e2e"].append(run_child(
                        "classify", "--model", model, "--device", engine_device, "--stack",
                        scene["stack"], "--batch", args.batch, "--prefetch", int(prefetch),
                        "--out", out + ".tif"))
            print(f"  round {round_index + 1}: {name} {label} done "
                  f"(load average {os.getloadavg()[0]:.2f})", flush=True)
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (this machine's cores: "
          f"{os.cpu_count()})")
    report(names, engines, results, macs, peak, runs, scene)


def output_stem(name: str, device: str, prefetch: bool) -> str:
    return os.path.join(WORK, "out", f"{name}_{device.replace(':', '_')}_{prefetch}")


def rate(runs: list[dict]) -> float:
    return sum(r["patches"] for r in runs) / sum(r["seconds"] for r in runs) if runs else 0.0


def report(names, engines, results, macs, peak, runs, scene) -> None:
    from osgeo import gdal
    print()
    header = (f"{'engine':<27} {'floor p/s':>9} {'e2e p/s':>8} {'e2e/fl':>6} {'km2/min':>8} "
              f"{'% peak':>6} {'x ort':>5} {'load s':>6} {'MB floor':>8} {'MB e2e':>7} "
              f"{'same %':>7} {'max dp':>7}")
    for name in names:
        flop = 2 * macs[name]
        epoch, val_oa = best_validation(runs[name]["run"])
        print(f"{name.upper()}: {macs[name] / 1e6:.0f} M MACs = {flop / 1e6:.0f} MFLOP per "
              f"patch; float32 peak = {peak / flop:.0f} patches/s; trained "
              f"{runs[name]['epochs']} epochs, best epoch {epoch} (OA on the validation "
              f"city's training areas {100 * val_oa:.1f} %)")
        print(header)
        ref_floor = rate(results[(name, REFERENCE)]["floor"])
        ref_stem = output_stem(name, "cpu", True)
        ref_probs = np.load(ref_stem + ".npy")
        ref_map = gdal.Open(ref_stem + ".tif").ReadAsArray()
        best_floor = best_e2e = best_other_e2e = auto_e2e = 0.0
        best_label = best_other_label = REFERENCE
        decision = ""
        for label, device, e2e, prefetch in engines:
            entry = results[(name, label)]
            floor = rate(entry["floor"]) if prefetch else rate(
                results[(name, label.replace(", no prefetch", ""))]["floor"])
            end = rate(entry["e2e"])
            shown = end or floor
            out = output_stem(name, device, prefetch)
            delta = float("nan")
            if e2e:
                same = 100.0 * np.mean(gdal.Open(out + ".tif").ReadAsArray() == ref_map)
            else:
                same = float("nan")
            if os.path.exists(out + ".npy") and prefetch:
                probs = np.load(out + ".npy")
                delta = float(np.abs(probs - ref_probs).max())
                if not e2e:
                    same = 100.0 * np.mean(probs.argmax(1) == ref_probs.argmax(1))
            measured = entry["floor"] + entry["e2e"]
            load = np.mean([r["load"] for r in measured])
            mb_floor = max((r["peak_mb"] for r in entry["floor"]), default=float("nan"))
            mb_e2e = max((r["peak_mb"] for r in entry["e2e"]), default=float("nan"))
            if device == "auto":
                label = f"auto ({', '.join(sorted({r['provider'] for r in measured}))})"
                auto_e2e = end
                decision = next((line for r in measured for line in r.get("log", [])
                                 if "measured on this CPU against" in line
                                 and "the choice of" not in line), "") or next(
                    (line for r in measured for line in r.get("log", [])), "")
            if device in CLASSIFY_DEVICES and same >= SAME_MAP:
                if floor > best_floor:
                    best_floor, best_label = floor, label
                best_e2e = max(best_e2e, end)
                if device != "auto" and end > best_other_e2e:
                    best_other_e2e, best_other_label = end, label
            print(f"{label:<27} {floor:>9.1f} {end or float('nan'):>8.1f} "
                  f"{(end / floor if end else float('nan')):>6.3f} "
                  f"{shown * KM2_PER_PATCH * 60:>8.1f} {100 * shown * flop / peak:>6.1f} "
                  f"{floor / ref_floor:>5.2f} {load:>6.2f} {mb_floor:>8.0f} {mb_e2e:>7.0f} "
                  f"{same:>7.2f} {delta:>7.1e}")
        classes = len(np.unique(ref_map[ref_map > 0]))
        scores = truth_accuracy(ref_stem + ".tif", scene["truth"])
        whole = results.get((name, "onnxruntime f32 whole batch"))
        print(f"lcz:classify engines keeping >= {SAME_MAP:g} % of the onnxruntime cells: best "
              f"floor {best_label} = {best_floor / ref_floor:.2f} x onnxruntime"
              + (f" ({best_floor / rate(whole['floor']):.2f} x onnxruntime run one call per "
                 f"batch)" if whole else "")
              + f"; best end to end / best floor {best_e2e / best_floor:.3f}")
        if auto_e2e and best_other_e2e:
            print(f"auto end to end = {auto_e2e / best_other_e2e:.2f} x the best same-map "
                  f"engine's end to end ({best_other_label}, {best_other_e2e:.1f} patches/s)")
        if decision:
            print(f"Automatic's decision (its first process): {decision}")
        print(f"onnxruntime map: {classes} classes, OA {100 * scores['oa']:.1f} % (kappa "
              f"{scores['kappa']:.2f}) against the generated truth, {scores['samples']} "
              f"cells\n")
    print("floor: engine.run on pre-built batches of scene patches; e2e: classify with the "
          "engine already open; km2/min and % peak use e2e where measured, else the floor; "
          "x ort: floor / onnxruntime CPU floor; same %: cells (e2e) or patches (floor) with "
          "the onnxruntime f32 class; max dp: largest probability difference on the floor "
          "patches.")


if __name__ == "__main__":
    main()
