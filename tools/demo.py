"""`make demo`: the WUDAPT loop end to end on simulated cities, with nothing downloaded.

1. Simulates three different cities (tools/synthcity.py; a simulation, not a measurement),
   each with a Sentinel-2 L2A product, an OpenStreetMap extract, a DSM and DTM, training
   areas and the true LCZ of every 100 m cell: one to train on, one whose training areas
   validate (early stopping), one to map. A small city has one or two training areas per
   class, too few to hold whole areas out of the same city.
2. Prepares the training and validation cities with the plugin's algorithms through
   ``qgis_process.bin``: lcz:stacksentinel2, lcz:rasterizeosm, lcz:preparedsm, lcz:buildstack
   (a channel list, as no model exists yet).
3. lcz:extractpatches: patches around the cells inside the training areas.
4. Trains two small MSMLA-18 models on the CPU (``python -m training train``): one on the
   ten Sentinel-2 bands plus the ancillary channels, one on the Sentinel-2 bands alone; exports
   both to ONNX (``python -m training export``).
5. Maps the *third* city with the graphical model shipped with the plugin
   (lcz_qgis_plugin/models/lcz_map_from_downloads.model3: Sentinel-2 product + OSM + DSM/DTM
   -> LCZ map) run headless, once per model.
6. lcz:assessaccuracy against the third city's truth; writes the styled map (GeoTIFF + .qml),
   a PNG quick-look with a legend and the HTML reports into the output folder, and prints the
   overall accuracy with and without the ancillary channels.

The dense model (a U-Net, class scores per 20 m block of pixels) goes the same way beside
MSMLA-18: tiles with per-pixel label masks from the same training areas (lcz:extractpatches
SAMPLES=1), two U-Nets trained (``python -m training train --model unet --depth 2
--output-stride 2``, with and without the ancillary channels), exported, mapped with the same
graphical model and assessed; the last table prints every model's accuracy and its training
and mapping times.

``--size-km``, ``--epochs`` and ``--dense-epochs`` make a reduced run (the tests use one).

Progress: every step prints a numbered line when it starts and its duration when it ends, the
plugin's algorithms one line each with their time, training one line per epoch (losses,
validation accuracy, time left) and, when both stdout and stderr are a terminal, a bar per
epoch; a table of the steps' times comes before the final accuracy table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from osgeo import gdal  # noqa: E402

from lcz_qgis_plugin.core.assessment.metrics import format_percent  # noqa: E402
from lcz_qgis_plugin.core.assessment.quicklook import write_quicklook  # noqa: E402
from lcz_qgis_plugin.core.channels import SO2SAT_CHANNELS  # noqa: E402
from lcz_qgis_plugin.core.feedback import format_duration, is_terminal  # noqa: E402
from tools import synthcity  # noqa: E402
from tools.qgis_runner import QgisProcess  # noqa: E402

MODEL3 = os.path.join("lcz_qgis_plugin", "models", "lcz_map_from_downloads.model3")
"""The graphical model, relative to the plugins folder: the demo runs the installed copy."""
S2_CHANNELS = list(SO2SAT_CHANNELS)
ANCILLARY = ["OSM:building_fraction", "DSM:height", "OSM:impervious_fraction"]
MODELS = {"ancillary": S2_CHANNELS + ANCILLARY, "s2_only": S2_CHANNELS}
LABELS = {"ancillary": "Sentinel-2 + OSM + DSM", "s2_only": "Sentinel-2 only"}
DENSE_PREFIX = "unet_"
"""The dense models' names: ``unet_ancillary``, ``unet_s2_only`` (channels as in MODELS)."""
DENSE_OPTIONS = ("--depth", "2", "--width", "16", "--output-stride", "2")
"""The demo's U-Net: two levels, one class per 2 x 2 pixels (20 m; it divides the 100 m
cell), a receptive field of 46 px, about the 48 px context of a patch model: README
"Patch or dense model?" gives its speed and accuracy beside MSMLA-18's."""
INDENT = " " * 9
LIVE = is_terminal(sys.stdout) and is_terminal(sys.stderr)
"""Both on a terminal: the training's batch bars are shown (its stderr goes straight there)."""


class Steps:
    """Numbered, timed progress lines: a line when a step starts, its duration when it ends,
    and a table of every step's time (:meth:`finish`)."""

    def __init__(self, total: int):
        self.total, self.number, self.start = total, 0, time.time()
        self.times: list[tuple[str, float]] = []  # (short name, seconds) of each step done
        self._current: tuple[str, float] | None = None

    def __call__(self, text: str, short: str):
        self._end_step()
        self.number += 1
        self._current = (short, time.time())
        print(f"[{time.time() - self.start:6.0f} s] {self.number}/{self.total} {text}",
              flush=True)

    def _end_step(self):
        if self._current is not None:
            short, began = self._current
            self.times.append((short, time.time() - began))
            print(f"{INDENT}step {len(self.times)} took {format_duration(self.times[-1][1])}",
                  flush=True)
            self._current = None

    def finish(self):
        """End the last step and print the time of each and the total."""
        self._end_step()
        print()
        print("Time per step:")
        for number, (short, seconds) in enumerate(self.times, start=1):
            print(f"  {number}/{self.total} {short:<40} {format_duration(seconds):>12}")
        print(f"      {'total':<40} {format_duration(time.time() - self.start):>12}",
              flush=True)


def timed(qp: QgisProcess, algorithm: str, parameters: dict, what: str) -> dict:
    """``qp.run`` with a line saying what runs, ended by its time when it is done."""
    print(f"{INDENT}{what} ...", end="", flush=True)
    began = time.time()
    results = qp.run(algorithm, parameters)
    print(f" {format_duration(time.time() - began)}", flush=True)
    return results


def prepare(qp: QgisProcess, city, folder: str, role: str) -> dict:
    """Sentinel-2 stack, OSM layers and heights of one city on the stack's 10 m grid."""
    os.makedirs(folder, exist_ok=True)
    s2 = timed(qp, "lcz:stacksentinel2", {
        "INPUT": city.safe, "OUTPUT": os.path.join(folder, "s2_stack.tif")},
        f"{role}: lcz:stacksentinel2")["OUTPUT"]
    osm = timed(qp, "lcz:rasterizeosm", {
        "OSM_FILE": city.osm, "REFERENCE": s2, "OUTPUT": os.path.join(folder, "osm.tif")},
        f"{role}: lcz:rasterizeosm")["OUTPUT"]
    heights = timed(qp, "lcz:preparedsm", {
        "DSM": city.dsm, "DTM": city.dtm, "REFERENCE": s2,
        "OUTPUT": os.path.join(folder, "heights.tif")}, f"{role}: lcz:preparedsm")["OUTPUT"]
    return {"s2": s2, "osm": osm, "heights": heights}


def training(*args: str) -> str:
    """``python -m training ...`` in a child process (torch stays out of this one): its
    lines are shown, indented, as they come (one per epoch while training), and returned.
    Its stderr goes to the same lines, or straight to the terminal when :data:`LIVE`
    (tqdm bars); each line shown then first clears the bar's line."""
    command = [sys.executable, "-u", "-m", "training", *args]
    process = subprocess.Popen(command, cwd=ROOT, text=True, stdout=subprocess.PIPE,
                               stderr=None if LIVE else subprocess.STDOUT)
    lines = []
    for line in process.stdout:
        lines.append(line)
        print(("\r\x1b[K" if LIVE else "") + INDENT + line.rstrip(), flush=True)
    if process.wait() != 0:
        sys.exit(f"{' '.join(command)} failed (exit status {process.returncode}):\n"
                 + "".join(lines)[-3000:])
    return "".join(lines)


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="out", help="output folder (default: out)")
    parser.add_argument("--work", default=os.path.join(ROOT, "build", "demo"),
                        help="folder for intermediate files (default: build/demo)")
    parser.add_argument("--size-km", type=float, default=3.0, help="city size (default 3 km)")
    parser.add_argument("--seed", type=int, default=11, help="training city seed; the mapped "
                        "city uses seed + 1 (default 11)")
    parser.add_argument("--epochs", type=int, default=25, help="training epochs (default 25)")
    parser.add_argument("--dense-epochs", type=int, default=40,
                        help="training epochs of the dense U-Nets (default 40)")
    parser.add_argument("--tile", type=int, default=128,
                        help="edge in pixels of the dense model's training tiles (default 128)")
    parser.add_argument("--patch", type=int, default=32, help="patch size in pixels (default 32)")
    return parser.parse_args(argv)


def stacks_of(qp: QgisProcess, cities: dict, work: str) -> dict:
    """The model input stack (a VRT of the ancillary channel list) of the training and the
    validation city."""
    stacks = {}
    for role in ("train", "validation"):
        layers = prepare(qp, cities[role], os.path.join(work, f"{role}_layers"), role)
        stacks[role] = timed(qp, "lcz:buildstack", {
            "CHANNEL_LIST": ",".join(MODELS["ancillary"]),
            "INPUT": [layers["s2"], layers["osm"], layers["heights"]],
            "OUTPUT": os.path.join(work, f"{role}_layers", "stack.vrt")},
            f"{role}: lcz:buildstack")["OUTPUT"]
    return stacks


def patch_files(qp: QgisProcess, stacks: dict, cities: dict, work: str, args) -> dict:
    """lcz:extractpatches on the training and the validation city."""
    patches = {}
    for role in ("train", "validation"):
        patches[role] = os.path.join(work, f"patches_{role}.h5")
        extracted = timed(qp, "lcz:extractpatches", {
            "INPUT": stacks[role], "TRAINING_AREAS": cities[role].training_areas,
            "CLASS_FIELD": "lcz", "PATCH_SIZE": args.patch, "SEED": args.seed,
            "VALIDATION_FRACTION": 0,  # validation comes from the second city
            "OUTPUT": patches[role]}, f"{role}: lcz:extractpatches")
        print(f"{INDENT}{role}: {int(extracted['PATCHES'])} patches -> {patches[role]}",
              flush=True)
    return patches


def tile_files(qp: QgisProcess, stacks: dict, cities: dict, work: str, args) -> dict:
    """lcz:extractpatches SAMPLES=1: tiles with a per-pixel label mask for the dense model,
    from the training areas of the training and validation cities. The tile edge is
    ``--tile`` px, or the largest multiple of 8 px the city holds when it is smaller."""
    tile = min(args.tile, int(args.size_km * 1000 / 10) // 8 * 8)
    tiles = {}
    for role in ("train", "validation"):
        tiles[role] = os.path.join(work, f"tiles_{role}.h5")
        extracted = timed(qp, "lcz:extractpatches", {
            "INPUT": stacks[role], "TRAINING_AREAS": cities[role].training_areas,
            "CLASS_FIELD": "lcz", "SAMPLES": 1, "TILE_SIZE": tile, "SEED": args.seed,
            "VALIDATION_FRACTION": 0, "OUTPUT": tiles[role]},
            f"{role}: lcz:extractpatches SAMPLES=1")
        print(f"{INDENT}{role}: {int(extracted['PATCHES'])} tiles of {tile} px -> "
              f"{tiles[role]}", flush=True)
    return tiles


def trained_models(patches: dict, work: str, out: str, args,
                   dense: bool = False) -> tuple[dict, dict]:
    """Train and export both models (``python -m training``), MSMLA-18 on patches or, with
    ``dense``, U-Nets on tiles: (.onnx paths, training + export seconds) by name."""
    models, seconds = {}, {}
    for number, (channel_set, channels) in enumerate(MODELS.items(), start=1):
        name = DENSE_PREFIX + channel_set if dense else channel_set
        run_dir = os.path.join(work, "runs", name)
        started = time.time()
        print(f"{INDENT}model {number}/{len(MODELS)}, {name}: {len(channels)} channels, "
              f"python -m training train", flush=True)
        epochs = str(args.dense_epochs if dense else args.epochs)
        model = ("--model", "unet", *DENSE_OPTIONS) if dense else \
            ("--model", "msmla18", "--bn-momentum", "0.9")
        training("train", *model, "--train", patches["train"],
                 "--val", patches["validation"], "--channels", ",".join(channels),
                 "--epochs", epochs, "--patience", epochs,
                 "--seed", str(args.seed), "--out", run_dir,
                 "--drop-unknown-validation", *(() if LIVE else ("--no-progress",)),
                 "--version", f"demo-{name}")
        models[name] = os.path.join(out, f"demo_{'' if dense else 'msmla18_'}{name}.onnx")
        print(f"{INDENT}model {number}/{len(MODELS)}, {name}: python -m training export "
              f"(ONNX, bfloat16 and int8 checks)", flush=True)
        training("export", "--checkpoint", os.path.join(run_dir, "best.pt"),
                 "--out", models[name])
        seconds[name] = time.time() - started
        print(f"{INDENT}{name}: {len(channels)} channels, trained and exported in "
              f"{format_duration(seconds[name])} -> {models[name]}", flush=True)
    return models, seconds


def lcz_maps(qp: QgisProcess, models: dict, city, out: str) -> tuple[dict, dict, dict]:
    """The shipped .model3 on the third city, once per model: (maps, engines, seconds) by
    name; the seconds are the whole graphical model's (the city's stack, then lcz:classify)."""
    maps, engines, seconds = {}, {}, {}
    for name, model in models.items():
        began = time.time()
        results = timed(qp, os.path.join(qp.plugins, MODEL3), {
            "SENTINEL2": city.safe, "OSM": city.osm, "DSM": city.dsm,
            "DTM": city.dtm, "LCZ_MODEL": model,
            "classify:lcz_map": os.path.join(out, f"demo_lcz_map_{name}.tif"),
            "classify:lcz_confidence": os.path.join(out, f"demo_confidence_{name}.tif")},
            f"{name}: lcz_map_from_downloads.model3")
        maps[name] = (results.get("classify:lcz_map")
                      or os.path.join(out, f"demo_lcz_map_{name}.tif"))
        seconds[name] = time.time() - began
        engines[name] = gdal.Open(maps[name]).GetMetadataItem("LCZ_EXECUTION_PROVIDER")
        print(f"{INDENT}{name}: mapped on {engines[name]} (lcz:classify, DEVICE Automatic)",
              flush=True)
    return maps, engines, seconds


def main(argv=None) -> int:
    args = parse_arguments(argv)
    out, work = os.path.abspath(args.out), os.path.abspath(args.work)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(out, exist_ok=True)
    os.makedirs(work)
    step = Steps(9)

    step(f"simulating three {args.size_km:g} x {args.size_km:g} km cities (seeds {args.seed}, "
         f"{args.seed + 1}, {args.seed + 2}; a simulation, see tools/synthcity.py)",
         "simulating three cities")
    cities = {role: synthcity.generate(os.path.join(work, f"city_{role}"), args.seed + k,
                                       args.size_km)
              for k, role in enumerate(("train", "validation", "map"))}

    step("preparing the training and validation cities: lcz:stacksentinel2, lcz:rasterizeosm, "
         "lcz:preparedsm, lcz:buildstack (qgis_process)", "preparing two cities")
    qp = QgisProcess(os.path.join(work, "qgis"))
    stacks = stacks_of(qp, cities, work)

    step("lcz:extractpatches from the training areas of both cities", "extracting patches")
    patches = patch_files(qp, stacks, cities, work, args)
    map_city = cities["map"]

    step("lcz:extractpatches SAMPLES=1: tiles with per-pixel label masks from the training "
         "areas of both cities (for the dense U-Net)", "extracting tiles")
    tiles = tile_files(qp, stacks, cities, work, args)

    step(f"training two MSMLA-18 models on the CPU ({args.epochs} epochs each): "
         f"with and without the ancillary channels", "training and exporting two MSMLA-18")
    models, seconds = trained_models(patches, work, out, args)

    step(f"training two dense U-Nets on the CPU ({args.dense_epochs} epochs each, depth 2, "
         f"output stride 2): with and without the ancillary channels",
         "training and exporting two U-Nets")
    dense_models, dense_seconds = trained_models(tiles, work, out, args, dense=True)
    models.update(dense_models)
    seconds.update(dense_seconds)

    step("mapping the third city with the plugin's graphical model "
         "lcz_map_from_downloads.model3 (qgis_process)", "mapping the third city")
    maps, engines, map_seconds = lcz_maps(qp, models, map_city, out)
    times = {name: {"train": seconds[name], "map": map_seconds[name]} for name in models}

    step("lcz:assessaccuracy against the mapped city's simulated truth", "assessing accuracy")
    scores = {name: timed(qp, "lcz:assessaccuracy", {
        "INPUT": lcz_map, "REFERENCE_RASTER": map_city.truth,
        "OUTPUT_HTML": os.path.join(out, f"demo_accuracy_{name}.html")},
        f"{name}: lcz:assessaccuracy") for name, lcz_map in maps.items()}

    step("writing the PNG quick-looks", "writing the quick-looks")
    pngs = {name: write_quicklook(lcz_map, os.path.splitext(lcz_map)[0] + ".png",
                                  f"LCZ map of the simulated test city ({model_label(name)})")
            for name, lcz_map in maps.items()}
    write_quicklook(map_city.truth, os.path.join(out, "demo_truth.png"),
                    "Simulated truth of the test city")
    step.finish()
    print_results(out, maps, pngs, scores, times, engines)
    with open(os.path.join(out, "demo_summary.json"), "w", encoding="utf-8") as f:
        json.dump({"note": "simulated cities (tools/synthcity.py), not measurements",
                   "size_km": args.size_km, "epochs": args.epochs,
                   "dense_epochs": args.dense_epochs, "seed": args.seed,
                   "models": models, "maps": maps, "engines": engines, "seconds": times,
                   "scores": {k: {m: v[m] for m in ("OA", "WA", "KAPPA")}
                              for k, v in scores.items()}}, f, indent=2)
    return 0


def model_label(name: str) -> str:
    """``MSMLA-18, Sentinel-2 only`` or ``U-Net (dense), Sentinel-2 + OSM + DSM``."""
    dense = name.startswith(DENSE_PREFIX)
    return (f"{'U-Net (dense)' if dense else 'MSMLA-18'}, "
            f"{LABELS[name.removeprefix(DENSE_PREFIX)]}")


def print_results(out: str, maps: dict, pngs: dict, scores: dict, times: dict,
                  engines: dict) -> None:
    """The outputs, then the accuracy table: every model's accuracy on the mapped city, its
    training time (with the export) and its mapping time (the graphical model: the city's
    stack, then lcz:classify)."""
    print()
    print(f"Outputs (in {out}):")
    for name in maps:
        print(f"  {name:<14} map {os.path.basename(maps[name])} (+ .qml), quick-look "
              f"{os.path.basename(pngs[name])}, report "
              f"{os.path.basename(scores[name]['OUTPUT_HTML'])}")
    print()
    print("Accuracy on the mapped city, seen neither in training nor in validation "
          "(simulated truth, every 100 m cell), and each model's times:")
    print(f"  {'model':<39} {'OA':>7} {'WA':>7} {'kappa':>5} {'train':>8} {'map':>8}  engine")
    for name, s in scores.items():
        print(f"  {model_label(name):<39} {format_percent(s['OA']):>7} "
              f"{format_percent(s['WA']):>7} {s['KAPPA']:>5.2f} "
              f"{format_duration(times[name]['train']):>8} "
              f"{format_duration(times[name]['map']):>8}  {engines[name]}")


if __name__ == "__main__":
    sys.exit(main())
