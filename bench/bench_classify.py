"""Benchmark of lcz:classify's core: end-to-end speed against the engine floor, and memory.

For each scene size a 13-band UInt16 stack (tiled, DEFLATE, like a real input stack) is
generated once into build/bench/, and an MSMLA model (random weights, 13 channels, 48 px) is
exported to ONNX. Then, each in a fresh process so that peak memory is its own:

- end to end: ``core.classify.classify`` on the whole scene (read strips, build windows, run
  batches, write the map), patches per second;
- engine floor: the same model's ``session.run`` on the same number of pre-built batches of
  the same size, half before and half after the end-to-end run (the machine is noisy).

The ratio end-to-end / floor says how much the pipeline around the model costs. By default
both scenes classify the same number of patches: the 2,000 px scene at the usual 100 m cells,
the 8,000 px scene at 400 m cells (a full 8,000 px scene at 100 m is 640,000 patches, most
of an hour for MSMLA-50 on two cores). The larger scene therefore reads 16x the pixels per
patch, the harder case for the pipeline, and its peak memory compares scene sizes at equal
work: it must stay flat.

    python bench/bench_classify.py [--model msmla50] [--sizes 2000:100,8000:400] [--batch 64]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
WORK = os.path.join(ROOT, "build", "bench")
CHANNELS = [f"S2:B{b}" for b in ("02", "03", "04", "05", "06", "07", "08", "8A", "11", "12")] \
    + ["OSM:building_fraction", "DSM:height", "LC:land_cover"]
PATCH = 48


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM). Not getrusage's ru_maxrss: on Linux that
    keeps the parent's peak across fork and exec, so a child would report the parent's."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_model(name: str) -> str:
    import torch
    from lcz_qgis_plugin.core.contract import ModelCard
    from training.export import export_onnx
    from training.models import build_model

    path = os.path.join(WORK, f"{name}_13ch_48px_random.onnx")
    if os.path.exists(path):
        return path
    torch.manual_seed(0)
    model = build_model(name, channels=len(CHANNELS))
    n = len(CHANNELS)
    card = ModelCard(name=name, version="bench-random", channels=CHANNELS, patch_size=PATCH,
                     scale=[1e-4] * 10 + [1.0] * 3, offset=[0.0] * n,
                     mean=[0.1] * 10 + [0.2, 5.0, 6.0], std=[0.05] * 10 + [0.2, 5.0, 4.0],
                     provenance={"note": "random weights, for benchmarks only"})
    return export_onnx(model, card, path)


def make_stack(size: int) -> str:
    """A size x size px, 13-band UInt16 stack at 10 m, written block by block."""
    from osgeo import gdal, osr

    path = os.path.join(WORK, f"stack_{size}.tif")
    if os.path.exists(path):
        return path
    gdal.SetCacheMax(128 * 2**20)
    temp = path + ".partial.tif"
    ds = gdal.GetDriverByName("GTiff").Create(
        temp, size, size, len(CHANNELS), gdal.GDT_UInt16,
        ["TILED=YES", "COMPRESS=DEFLATE", "ZLEVEL=1", "BIGTIFF=IF_SAFER", "INTERLEAVE=BAND"])
    ds.SetGeoTransform((500000.0, 10.0, 0.0, 5100000.0, 0.0, -10.0))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    ds.SetProjection(srs.ExportToWkt())
    rng = np.random.default_rng(size)
    for number, name in enumerate(CHANNELS, start=1):
        band = ds.GetRasterBand(number)
        band.SetDescription(name)
        band.SetNoDataValue(0)
        for row in range(0, size, 512):
            rows = min(512, size - row)
            y = (np.arange(row, row + rows) // 37)[:, None]
            x = (np.arange(size) // 53)[None, :]
            base = ((x * 7 + y * 13 + number * 5) % 23) * 60 + 300
            noise = rng.integers(0, 200, size=(rows, size))
            band.WriteArray((base + noise).astype(np.uint16), 0, row)
    ds = None
    os.replace(temp, path)
    return path


def child_classify(args) -> dict:
    from lcz_qgis_plugin.core.classify import classify
    out = os.path.join(WORK, "out", f"lcz_{os.getpid()}.tif")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    start = time.perf_counter()
    result = classify([args.stack], args.model, out, cell_size=args.cell, device="cpu",
                      batch_size=args.batch)
    seconds = time.perf_counter() - start
    os.remove(out)
    return {"seconds": seconds, "patches": result.patches, "peak_mb": peak_rss_mb(),
            "provider": result.provider}


def child_floor(args) -> dict:
    from lcz_qgis_plugin.core.engine import Engine
    engine = Engine(args.model, device="cpu")
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(args.batch, len(CHANNELS), PATCH, PATCH)).astype(np.float32)
               for _ in range(4)]
    engine.run(batches[0])  # warm-up, as classify's first batch would be
    start = time.perf_counter()
    for i in range(args.batches):
        engine.run(batches[i % len(batches)])
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "patches": args.batches * args.batch, "peak_mb": peak_rss_mb()}


def run_child(*argv) -> dict:
    done = subprocess.run([sys.executable, __file__, *map(str, argv)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", nargs="?", default="run", choices=["run", "classify", "floor"])
    parser.add_argument("--model", default="msmla50", help="msmla50 or msmla18, or an .onnx")
    parser.add_argument("--sizes", default="2000:100,8000:400",
                        help="scene_px:cell_m pairs (default 2000:100,8000:400: 40,000 "
                             "patches each; the larger scene reads 16x the pixels per patch)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--stack")
    parser.add_argument("--cell", type=float)
    parser.add_argument("--batches", type=int)
    args = parser.parse_args()
    if args.mode == "classify":
        print(json.dumps(child_classify(args)))
        return
    if args.mode == "floor":
        print(json.dumps(child_floor(args)))
        return

    os.makedirs(WORK, exist_ok=True)
    model = args.model if args.model.endswith(".onnx") else make_model(args.model)
    print(f"lcz:classify benchmark - model {os.path.basename(model)}, batch {args.batch}, "
          f"CPU provider, {os.cpu_count()} CPUs")
    rows = []
    for item in args.sizes.split(","):
        size, cell = (float(v) for v in item.split(":"))
        size = int(size)
        t = time.perf_counter()
        stack = make_stack(size)
        made = time.perf_counter() - t
        print(f"  scene {size} x {size} px ({os.path.getsize(stack) / 2**20:.0f} MiB on disk, "
              f"ready in {made:.0f} s), cells of {cell:g} m ...", flush=True)
        e2e = run_child("classify", "--stack", stack, "--model", model, "--cell", cell,
                        "--batch", args.batch)
        n_batches = -(-e2e["patches"] // args.batch)
        first = run_child("floor", "--model", model, "--batch", args.batch,
                          "--batches", n_batches // 2)
        second = run_child("floor", "--model", model, "--batch", args.batch,
                           "--batches", n_batches - n_batches // 2)
        floor_rate = (first["patches"] + second["patches"]) / (first["seconds"]
                                                               + second["seconds"])
        e2e_rate = e2e["patches"] / e2e["seconds"]
        rows.append((size, cell, e2e["patches"], e2e_rate, floor_rate, e2e["peak_mb"],
                     max(first["peak_mb"], second["peak_mb"])))
    print()
    print(f"{'scene px':>11} {'cell m':>7} {'patches':>8} {'e2e p/s':>9} {'floor p/s':>10} "
          f"{'e2e/floor':>9} {'peak MB e2e':>12} {'peak MB floor':>14}")
    for size, cell, patches, e2e_rate, floor_rate, peak, floor_peak in rows:
        print(f"{f'{size}x{size}':>11} {cell:>7g} {patches:>8d} {e2e_rate:>9.1f} "
              f"{floor_rate:>10.1f} {e2e_rate / floor_rate:>9.3f} {peak:>12.0f} "
              f"{floor_peak:>14.0f}")
    if len(rows) > 1:
        print(f"\npeak memory, largest / smallest scene: {rows[-1][5] / rows[0][5]:.2f}")


if __name__ == "__main__":
    main()
