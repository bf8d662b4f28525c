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

The dense model (a U-Net, class scores per pixel) goes the same way beside MSMLA-18: tiles
with per-pixel label masks from the same training areas (lcz:extractpatches SAMPLES=1),
two U-Nets trained with the dense defaults (``python -m training train --model unet``, with
and without the ancillary channels), exported, mapped with the same graphical model and
assessed; the last table prints every model's accuracy and its training and mapping times.

``--size-km``, ``--epochs`` and ``--dense-epochs`` make a reduced run (the tests use one).
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


class Steps:
    """Numbered, timed progress lines."""

    def __init__(self, total: int):
        self.total, self.number, self.start = total, 0, time.time()

    def __call__(self, text: str):
        self.number += 1
        print(f"[{time.time() - self.start:6.0f} s] {self.number}/{self.total} {text}",
              flush=True)


def prepare(qp: QgisProcess, city, folder: str) -> dict:
    """Sentinel-2 stack, OSM layers and heights of one city on the stack's 10 m grid."""
    os.makedirs(folder, exist_ok=True)
    s2 = qp.run("lcz:stacksentinel2", {"INPUT": city.safe,
                                        "OUTPUT": os.path.join(folder, "s2_stack.tif")})["OUTPUT"]
    osm = qp.run("lcz:rasterizeosm", {"OSM_FILE": city.osm, "REFERENCE": s2,
                                       "OUTPUT": os.path.join(folder, "osm.tif")})["OUTPUT"]
    heights = qp.run("lcz:preparedsm", {"DSM": city.dsm, "DTM": city.dtm, "REFERENCE": s2,
                                         "OUTPUT": os.path.join(folder, "heights.tif")})["OUTPUT"]
    return {"s2": s2, "osm": osm, "heights": heights}


def training(*args: str) -> str:
    """``python -m training ...`` in a child process (torch stays out of this one); its
    printed output."""
    command = [sys.executable, "-m", "training", *args]
    done = subprocess.run(command, cwd=ROOT, text=True, capture_output=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def extract_tiles(qp: QgisProcess, stacks: dict, cities: dict, work: str, args) -> dict:
    """lcz:extractpatches SAMPLES=1: tiles with a per-pixel label mask for the dense model,
    from the training areas of the training and validation cities. The tile edge is
    ``--tile`` px, or the largest multiple of 8 px the city holds when it is smaller."""
    tile = min(args.tile, int(args.size_km * 1000 / 10) // 8 * 8)
    tiles = {}
    for role in ("train", "validation"):
        tiles[role] = os.path.join(work, f"tiles_{role}.h5")
        extracted = qp.run("lcz:extractpatches", {
            "INPUT": stacks[role], "TRAINING_AREAS": cities[role].training_areas,
            "CLASS_FIELD": "lcz", "SAMPLES": 1, "TILE_SIZE": tile, "SEED": args.seed,
            "OUTPUT": tiles[role]})
        print(f"         {role}: {int(extracted['PATCHES'])} tiles of {tile} px -> "
              f"{tiles[role]}", flush=True)
    return tiles


def train_dense(tiles: dict, work: str, out: str, args) -> tuple[dict, dict]:
    """Two U-Nets with the dense defaults (with and without the ancillary channels), each
    exported; returns (model files, training + export seconds) by name."""
    models, seconds = {}, {}
    for name, channels in MODELS.items():
        key = DENSE_PREFIX + name
        run_dir = os.path.join(work, "runs", key)
        started = time.time()
        training("train", "--model", "unet", "--train", tiles["train"],
                 "--val", tiles["validation"], "--channels", ",".join(channels),
                 "--epochs", str(args.dense_epochs), "--patience", str(args.dense_epochs),
                 "--seed", str(args.seed), "--out", run_dir, "--drop-unknown-validation",
                 "--no-progress", "--version", f"demo-{key}")
        models[key] = os.path.join(out, f"demo_{key}.onnx")
        training("export", "--checkpoint", os.path.join(run_dir, "best.pt"),
                 "--out", models[key])
        seconds[key] = time.time() - started
        print(f"         {key}: {len(channels)} channels, trained in {seconds[key]:.0f} s "
              f"-> {models[key]}", flush=True)
    return models, seconds


def model_label(name: str) -> str:
    """``MSMLA-18 (patches)`` or ``U-Net (dense)``, then the channels."""
    dense = name.startswith(DENSE_PREFIX)
    kind = "U-Net (dense)" if dense else "MSMLA-18 (patches)"
    return f"{kind:<19} {LABELS[name[len(DENSE_PREFIX):] if dense else name]}"


def print_results(scores: dict, times: dict, engines: dict) -> None:
    """The last table: every model's accuracy on the mapped city, its training time (with
    export) and its mapping time (the graphical model: preparing the city's stack, then
    lcz:classify)."""
    print("Accuracy on the mapped city, seen neither in training nor in validation "
          "(simulated truth, every 100 m cell), and each model's times:")
    print(f"  {'model':<19} {'channels':<24} {'OA':>7} {'WA':>7} {'kappa':>5} "
          f"{'train':>6} {'map':>5}  engine")
    for name, s in scores.items():
        print(f"  {model_label(name):<44} {format_percent(s['OA']):>7} "
              f"{format_percent(s['WA']):>7} {s['KAPPA']:>5.2f} {times[name]['train']:>5.0f}s "
              f"{times[name]['map']:>4.0f}s  {engines[name]}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="out", help="output folder (default: out)")
    parser.add_argument("--work", default=os.path.join(ROOT, "build", "demo"),
                        help="folder for intermediate files (default: build/demo)")
    parser.add_argument("--size-km", type=float, default=3.0, help="city size (default 3 km)")
    parser.add_argument("--seed", type=int, default=11, help="training city seed; the mapped "
                        "city uses seed + 1 (default 11)")
    parser.add_argument("--epochs", type=int, default=25, help="training epochs (default 25)")
    parser.add_argument("--dense-epochs", type=int, default=60,
                        help="training epochs of the dense U-Nets (default 60)")
    parser.add_argument("--tile", type=int, default=128,
                        help="tile size in pixels of the dense model's training tiles "
                             "(default 128)")
    parser.add_argument("--patch", type=int, default=32, help="patch size in pixels (default 32)")
    args = parser.parse_args(argv)
    out, work = os.path.abspath(args.out), os.path.abspath(args.work)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(out, exist_ok=True)
    os.makedirs(work)
    step = Steps(9)

    step(f"simulating three {args.size_km:g} x {args.size_km:g} km cities (seeds {args.seed}, "
         f"{args.seed + 1}, {args.seed + 2}; a simulation, see tools/synthcity.py)")
    cities = {role: synthcity.generate(os.path.join(work, f"city_{role}"), args.seed + k,
                                       args.size_km)
              for k, role in enumerate(("train", "validation", "map"))}

    step("preparing the training and validation cities: lcz:stacksentinel2, lcz:rasterizeosm, "
         "lcz:preparedsm, lcz:buildstack (qgis_process)")
    qp = QgisProcess(os.path.join(work, "qgis"))
    stacks = {}
    for role in ("train", "validation"):
        layers = prepare(qp, cities[role], os.path.join(work, f"{role}_layers"))
        stacks[role] = qp.run("lcz:buildstack", {
            "CHANNEL_LIST": ",".join(MODELS["ancillary"]),
            "INPUT": [layers["s2"], layers["osm"], layers["heights"]],
            "OUTPUT": os.path.join(work, f"{role}_layers", "stack.vrt")})["OUTPUT"]

    step("lcz:extractpatches from the training areas of both cities")
    patches = {}
    for role in ("train", "validation"):
        patches[role] = os.path.join(work, f"patches_{role}.h5")
        extracted = qp.run("lcz:extractpatches", {
            "INPUT": stacks[role], "TRAINING_AREAS": cities[role].training_areas,
            "CLASS_FIELD": "lcz", "PATCH_SIZE": args.patch, "SEED": args.seed,
            "OUTPUT": patches[role]})
        print(f"         {role}: {int(extracted['PATCHES'])} patches -> {patches[role]}",
              flush=True)
    map_city = cities["map"]

    step("lcz:extractpatches SAMPLES=1: tiles with per-pixel label masks from the training "
         "areas of both cities (for the dense U-Net)")
    tiles = extract_tiles(qp, stacks, cities, work, args)

    step(f"training two MSMLA-18 models on the CPU ({args.epochs} epochs each): "
         f"with and without the ancillary channels")
    models, times = {}, {}
    for name, channels in MODELS.items():
        run_dir = os.path.join(work, "runs", name)
        started = time.time()
        training("train", "--model", "msmla18", "--train", patches["train"],
                 "--val", patches["validation"], "--channels", ",".join(channels),
                 "--epochs", str(args.epochs), "--patience", str(args.epochs),
                 "--bn-momentum", "0.9", "--seed", str(args.seed), "--out", run_dir,
                 "--drop-unknown-validation",
                 "--no-progress", "--version", f"demo-{name}")
        models[name] = os.path.join(out, f"demo_msmla18_{name}.onnx")
        exported = training("export", "--checkpoint", os.path.join(run_dir, "best.pt"),
                            "--out", models[name])
        times[name] = {"train": time.time() - started}
        print(f"         {name}: {len(channels)} channels, trained in "
              f"{times[name]['train']:.0f} s -> {models[name]}", flush=True)
        for line in exported.splitlines():
            if line.startswith("bfloat16 check"):
                print(f"         {line}", flush=True)

    step(f"training two dense U-Nets on the CPU ({args.dense_epochs} epochs each, the dense "
         f"defaults): with and without the ancillary channels")
    dense_models, dense_seconds = train_dense(tiles, work, out, args)
    models.update(dense_models)
    times.update({name: {"train": seconds} for name, seconds in dense_seconds.items()})

    step("mapping the third city with the plugin's graphical model "
         "lcz_map_from_downloads.model3 (qgis_process)")
    maps, engines = {}, {}
    for name, model in models.items():
        started = time.time()
        results = qp.run(os.path.join(qp.plugins, MODEL3), {
            "SENTINEL2": map_city.safe, "OSM": map_city.osm, "DSM": map_city.dsm,
            "DTM": map_city.dtm, "LCZ_MODEL": model,
            "classify:lcz_map": os.path.join(out, f"demo_lcz_map_{name}.tif"),
            "classify:lcz_confidence": os.path.join(out, f"demo_confidence_{name}.tif")})
        maps[name] = (results.get("classify:lcz_map")
                      or os.path.join(out, f"demo_lcz_map_{name}.tif"))
        times[name]["map"] = time.time() - started
        engines[name] = gdal.Open(maps[name]).GetMetadataItem("LCZ_EXECUTION_PROVIDER")
        print(f"         {name}: mapped on {engines[name]} (lcz:classify, DEVICE Automatic)",
              flush=True)

    step("lcz:assessaccuracy against the mapped city's simulated truth")
    scores = {}
    for name, lcz_map in maps.items():
        report = qp.run("lcz:assessaccuracy", {
            "INPUT": lcz_map, "REFERENCE_RASTER": map_city.truth,
            "OUTPUT_HTML": os.path.join(out, f"demo_accuracy_{name}.html")})
        scores[name] = report

    step("writing the PNG quick-looks")
    pngs = {name: write_quicklook(lcz_map, os.path.splitext(lcz_map)[0] + ".png",
                                  f"LCZ map of the simulated test city "
                                  f"({model_label(name).split(' ', 1)[0]}, "
                                  f"{LABELS[name.removeprefix(DENSE_PREFIX)]})")
            for name, lcz_map in maps.items()}
    write_quicklook(map_city.truth, os.path.join(out, "demo_truth.png"),
                    "Simulated truth of the test city")

    print()
    print(f"Outputs (in {out}):")
    for name in maps:
        print(f"  {name:<14} map {os.path.basename(maps[name])} (+ .qml), quick-look "
              f"{os.path.basename(pngs[name])}, report "
              f"{os.path.basename(scores[name]['OUTPUT_HTML'])}")
    print()
    print_results(scores, times, engines)
    with open(os.path.join(out, "demo_summary.json"), "w", encoding="utf-8") as f:
        json.dump({"note": "simulated cities (tools/synthcity.py), not measurements",
                   "size_km": args.size_km, "epochs": args.epochs,
                   "dense_epochs": args.dense_epochs, "seed": args.seed,
                   "models": models, "maps": maps, "engines": engines,
                   "seconds": times,
                   "scores": {k: {m: v[m] for m in ("OA", "WA", "KAPPA")}
                              for k, v in scores.items()}}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
