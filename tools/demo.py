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

``--size-km`` and ``--epochs`` make a reduced run (the tests use one).
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="out", help="output folder (default: out)")
    parser.add_argument("--work", default=os.path.join(ROOT, "build", "demo"),
                        help="folder for intermediate files (default: build/demo)")
    parser.add_argument("--size-km", type=float, default=3.0, help="city size (default 3 km)")
    parser.add_argument("--seed", type=int, default=11, help="training city seed; the mapped "
                        "city uses seed + 1 (default 11)")
    parser.add_argument("--epochs", type=int, default=25, help="training epochs (default 25)")
    parser.add_argument("--patch", type=int, default=32, help="patch size in pixels (default 32)")
    args = parser.parse_args(argv)
    out, work = os.path.abspath(args.out), os.path.abspath(args.work)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(out, exist_ok=True)
    os.makedirs(work)
    step = Steps(7)

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
            "VALIDATION_FRACTION": 0,  # validation comes from the second city
            "OUTPUT": patches[role]})
        print(f"         {role}: {int(extracted['PATCHES'])} patches -> {patches[role]}",
              flush=True)
    map_city = cities["map"]

    step(f"training two MSMLA-18 models on the CPU ({args.epochs} epochs each): "
         f"with and without the ancillary channels")
    models = {}
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
        print(f"         {name}: {len(channels)} channels, trained in "
              f"{time.time() - started:.0f} s -> {models[name]}", flush=True)
        for line in exported.splitlines():
            if line.startswith("bfloat16 check"):
                print(f"         {line}", flush=True)

    step("mapping the third city with the plugin's graphical model "
         "lcz_map_from_downloads.model3 (qgis_process)")
    maps, engines = {}, {}
    for name, model in models.items():
        results = qp.run(os.path.join(qp.plugins, MODEL3), {
            "SENTINEL2": map_city.safe, "OSM": map_city.osm, "DSM": map_city.dsm,
            "DTM": map_city.dtm, "LCZ_MODEL": model,
            "classify:lcz_map": os.path.join(out, f"demo_lcz_map_{name}.tif"),
            "classify:lcz_confidence": os.path.join(out, f"demo_confidence_{name}.tif")})
        maps[name] = (results.get("classify:lcz_map")
                      or os.path.join(out, f"demo_lcz_map_{name}.tif"))
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
                                  f"LCZ map of the simulated test city ({name.replace('_', ' ')})")
            for name, lcz_map in maps.items()}
    write_quicklook(map_city.truth, os.path.join(out, "demo_truth.png"),
                    "Simulated truth of the test city")

    print()
    print(f"Outputs (in {out}):")
    for name in MODELS:
        print(f"  {name:<10} map {os.path.basename(maps[name])} (+ .qml), quick-look "
              f"{os.path.basename(pngs[name])}, report "
              f"{os.path.basename(scores[name]['OUTPUT_HTML'])}")
    print()
    print("Accuracy on the mapped city, seen neither in training nor in validation "
          "(simulated truth, every 100 m cell):")
    for name, label in (("ancillary", "Sentinel-2 + OSM + DSM"), ("s2_only", "Sentinel-2 only")):
        s = scores[name]
        print(f"  {label:<24} OA {format_percent(s['OA'])}, WA {format_percent(s['WA'])}, "
              f"kappa {s['KAPPA']:.2f}")
    with open(os.path.join(out, "demo_summary.json"), "w", encoding="utf-8") as f:
        json.dump({"note": "simulated cities (tools/synthcity.py), not measurements",
                   "size_km": args.size_km, "epochs": args.epochs, "seed": args.seed,
                   "models": models, "maps": maps, "engines": engines,
                   "scores": {k: {m: v[m] for m in ("OA", "WA", "KAPPA")}
                              for k, v in scores.items()}}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
