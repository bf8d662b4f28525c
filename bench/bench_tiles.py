"""Benchmark of classify-tiles on Dask against single-process classify of the same scene.

The scene is bench_classify's mapped city (a **simulation**, tools/synthcity.py: 8 km, 80 x 80
= 6,400 cells of 100 m, the demo's 13 channels), prepared with the plugin's core and cached in
``build/bench`` (``make bench`` prepares it in its first step). The model is bench_classify's
trained MSMLA-18 when it is there, else an untrained MSMLA-18 exported here (the same graph,
so the same speed; its map is not a classification).

Rows, every run in this process, one after the other:

- single-process ``classify`` (the engine on all of this machine's cores);
- ``classify_tiles`` on a ``LocalCluster`` of 1 worker (the same engine threads) and of
  2 workers (the cores shared), tiles of ``--tile-cells``; the cluster is started before the
  run and its start-up time is printed on its own;
- cells/s, the speed-up against the single process, and for 1 worker the overhead per tile:
  (classify-tiles seconds - classify seconds) / tiles, what cutting the scene into tiles
  costs (scheduling, each tile's set-up and halo, the COG files, the manifest, the mosaic);
- Dask's own overhead per task: 500 empty tasks through the same cluster's scheduler;
- the output size: per cell (the single-process outputs written as one COG each) and per
  tile file (what the tiles add over that: headers, blocks cut at tile edges); and the
  extrapolation to a country of 36 million cells on 100 workers (docs/country.md).

    python bench/bench_tiles.py [--tile-cells 20] [--scene-km 8]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

COUNTRY_CELLS = 36e6
COUNTRY_WORKERS = 100


def scene_stack(scene_km: float) -> str:
    from bench_classify import Steps, prepare_city
    return prepare_city("scene", scene_km, Steps())["stack"]


def model_file(folder: str) -> tuple[str, str]:
    """(bench_classify's trained MSMLA-18, "trained"), else an untrained export."""
    from bench_classify import CHANNELS, PATCH, WORK
    trained = sorted(glob.glob(os.path.join(WORK, "runs", f"msmla18_{PATCH}px_*",
                                            "msmla18.onnx")))
    if trained:
        return trained[-1], "trained (bench_classify)"
    import torch

    from lcz_qgis_plugin.core.model.card import ModelCard
    from training.export import export_onnx
    from training.models import build_model
    torch.manual_seed(0)
    n = len(CHANNELS)
    card = ModelCard(name="msmla18", channels=list(CHANNELS), patch_size=PATCH,
                     scale=[1e-4] * 10 + [1.0] * (n - 10), offset=[0.0] * n,
                     mean=[0.1] * 10 + [0.0] * (n - 10), std=[0.1] * 10 + [1.0] * (n - 10),
                     version="bench-untrained")
    path = os.path.join(folder, "msmla18_untrained.onnx")
    export_onnx(build_model("msmla18", n), card, path)
    return path, "untrained (speed only)"


KINDS = {"classes": "lcz", "probabilities": "probabilities", "confidence": "confidence"}


def output_sizes(folder: str, single, work: str, tiles: int) -> tuple[dict, dict]:
    """(bytes per cell, bytes per tile file) of each output: the single-process output as one
    COG gives the bytes per cell; the tiles' total minus that, per tile, what a tile adds."""
    from lcz_qgis_plugin.core.inference.classify_tiles import write_cog
    cells = single.rows * single.cols
    per_cell, per_file = {}, {}
    sources = {"classes": single.output, "probabilities": single.probabilities,
               "confidence": single.confidence}
    for kind, prefix in KINDS.items():
        whole = os.path.join(work, f"whole_{kind}.tif")
        write_cog(sources[kind], whole, kind, whole)
        total = sum(os.path.getsize(p)
                    for p in glob.glob(os.path.join(folder, "tiles", f"{prefix}_*.tif")))
        per_cell[kind] = os.path.getsize(whole) / cells
        per_file[kind] = max(0.0, (total - os.path.getsize(whole)) / max(1, tiles - 1))
    return per_cell, per_file


def noop(x):
    return x


def task_overhead(client, tasks: int = 500) -> float:
    """Seconds per empty task through the scheduler (submit, run, gather), all at once."""
    started = time.perf_counter()
    futures = client.map(noop, range(tasks), pure=False)
    client.gather(futures)
    return (time.perf_counter() - started) / tasks


def run_tiles(stack: str, model: str, out: str, workers: int, threads: int,
              tile_cells: int) -> dict:
    import distributed

    from lcz_qgis_plugin.core.inference.classify_tiles import classify_tiles
    started = time.perf_counter()
    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster:
        with distributed.Client(cluster) as client:
            startup = time.perf_counter() - started
            begun = time.perf_counter()
            result = classify_tiles([stack], model, out, probabilities=True, confidence=True,
                                    tile_cells=tile_cells, device="cpu", threads=threads,
                                    scheduler=cluster.scheduler_address, progress_bar=False)
            seconds = time.perf_counter() - begun
            per_task = task_overhead(client)
    with open(os.path.join(out, "manifest.json"), encoding="utf-8") as f:
        in_tiles = sum(r["seconds"] for r in json.load(f)["tiles"].values())
    return {"seconds": seconds, "startup": startup, "result": result, "per_task": per_task,
            "in_tiles": in_tiles}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tile-cells", type=int, default=20,
                        help="tile edge in cells (default 20: 16 tiles of the 8 km scene)")
    parser.add_argument("--scene-km", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2,
                        help="every run this many times, in alternating order; the fastest "
                             "counts (the build machines are shared and noisy)")
    args = parser.parse_args()
    from lcz_qgis_plugin.core.inference.engine import Engine, physical_cores
    cores = physical_cores()
    print("classify-tiles benchmark: preparing (cached in build/bench)", flush=True)
    stack = scene_stack(args.scene_km)
    work = tempfile.mkdtemp(prefix="bench_tiles_", dir=os.path.join(ROOT, "build"))
    try:
        model, kind = model_file(work)
        Engine(model, "cpu", cores)  # loaded once before timing, as a worker keeps it
        best: dict = {}
        for number in range(args.rounds):
            order = ["single", 1, 2] if number % 2 == 0 else [2, 1, "single"]
            for what in order:
                run = (run_single(stack, model, work, cores) if what == "single" else
                       run_tiles(stack, model, os.path.join(work, f"tiles{what}_{number}"),
                                 what, max(1, cores // what), args.tile_cells))
                print(f"  round {number + 1}: {what}: {run['seconds']:.1f} s", flush=True)
                if what not in best or run["seconds"] < best[what]["seconds"]:
                    best[what] = run
        single = best["single"]["result"]
        sizes = output_sizes(best[1]["result"].folder, single, work, best[1]["result"].tiles)
        report(single, best["single"]["seconds"], {w: best[w] for w in (1, 2)}, kind, cores,
               args, sizes)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_single(stack: str, model: str, work: str, cores: int) -> dict:
    from lcz_qgis_plugin.core.inference.classify import classify
    started = time.perf_counter()
    result = classify([stack], model, os.path.join(work, "single.tif"), device="cpu",
                      threads=cores, probabilities_output=os.path.join(work, "p.tif"),
                      confidence_output=os.path.join(work, "c.tif"))
    return {"seconds": time.perf_counter() - started, "result": result}


def report(single, single_s: float, runs: dict, kind: str, cores: int, args,
           sizes: tuple[dict, dict]) -> None:
    cells = single.rows * single.cols
    tiles = runs[1]["result"].tiles
    print(f"\nscene {single.cols} x {single.rows} = {cells} cells of {single.cell_size:g} m, "
          f"MSMLA-18 {kind}, {tiles} tiles of up to {args.tile_cells} x {args.tile_cells} "
          f"cells, {cores} physical cores, load average {os.getloadavg()[0]:.2f}")
    print(f"{'run':34s} {'threads':>8s} {'seconds':>8s} {'cells/s':>8s} {'speed-up':>8s} "
          f"{'overhead/tile':>14s} {'cluster start':>13s}")
    print(f"{'classify, one process':34s} {cores:8d} {single_s:8.1f} "
          f"{cells / single_s:8.0f} {1.0:8.2f} {'-':>14s} {'-':>13s}")
    for workers, run in runs.items():
        threads = max(1, cores // workers)
        overhead = ((run["seconds"] - single_s) / tiles if workers == 1 else None)
        print(f"{f'classify-tiles, {workers} worker(s)':34s} {threads:8d} "
              f"{run['seconds']:8.1f} {cells / run['seconds']:8.0f} "
              f"{single_s / run['seconds']:8.2f} "
              f"{f'{overhead * 1000:.0f} ms' if overhead is not None else '-':>14s} "
              f"{run['startup']:12.1f}s")
    one = runs[1]
    print(f"1 worker, of the overhead per tile: "
          f"{(one['in_tiles'] - single_s) / tiles * 1000:.0f} ms inside the tiles (each "
          f"tile's set-up and halo, the COG files, the worker's model load), "
          f"{(one['seconds'] - one['in_tiles']) / tiles * 1000:.0f} ms outside (scheduling, "
          f"manifest, mosaic)")
    per_task = min(run["per_task"] for run in runs.values())
    print(f"Dask scheduler: {per_task * 1000:.2f} ms per empty task (500 tasks)")
    per_cell, per_file = sizes
    print("output: " + ", ".join(f"{k} {per_cell[k]:.2f} B per cell + {per_file[k] / 1e3:.1f} "
                                 f"kB per tile" for k in per_cell))
    extrapolate(per_task, runs[1], single_s, cells, tiles, sizes)


def extrapolate(per_task: float, one: dict, single_s: float, cells: int, tiles: int,
                sizes: tuple[dict, dict]) -> None:
    """A country of 36 million cells on 100 workers, from the rates measured here."""
    overhead = max(0.0, (one["seconds"] - single_s) / tiles)
    print(f"\nextrapolated to {COUNTRY_CELLS / 1e6:.0f} million cells on {COUNTRY_WORKERS} "
          f"workers, each as fast as this machine:")
    rate = cells / single_s  # cells/s of one worker as fast as this machine
    for tile_cells in (512, 256, 128):
        n = int(-(-COUNTRY_CELLS // tile_cells ** 2))
        rounds = -(-n // COUNTRY_WORKERS)
        tile_s = tile_cells ** 2 / rate + overhead
        print(f"  tiles of {tile_cells}: {n} tiles ({n / COUNTRY_WORKERS:.1f} per worker); "
              f"scheduler {n * per_task:.1f} s in all; {rounds} tile(s) of "
              f"{tile_s / 60:.1f} min on the busiest worker: {rounds * tile_s / 60:.0f} min "
              f"(perfect balance: {COUNTRY_CELLS / rate / COUNTRY_WORKERS / 60:.0f} min)")
    per_cell, per_file = sizes
    n = int(-(-COUNTRY_CELLS // 512 ** 2))
    size = {k: per_cell[k] * COUNTRY_CELLS + per_file[k] * n for k in per_cell}
    print("  output (tiles of 512): " + ", ".join(f"{k} {v / 1e9:.2f} GB"
                                                   for k, v in size.items())
          + f"; {sum(size.values()) / 1e9:.2f} GB in all")


if __name__ == "__main__":
    main()
