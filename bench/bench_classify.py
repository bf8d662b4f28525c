"""Benchmark of LCZ inference: every engine's floor and end-to-end classify, MSMLA-18 and -50.

One run prints, side by side for MSMLA-18 and MSMLA-50 (random weights, 13 channels, 48 px,
exported with training/export.py), for each engine:

- floor: the engine's ``run`` on pre-built batches of real patches cut from the bench scene,
  nothing else (PyTorch eager: ``model(batch)`` under ``torch.inference_mode``);
- end to end: ``core.classify.classify`` on the bench scene (read strips, cut patches, run
  batches, write the map), with the engine opened beforehand so that both measure the same
  work (the load time is printed on its own);
- patches/s, km²/min at 100 m cells (1 patch = 1 cell = 0.01 km²), percent of the machine's
  float32 peak, peak memory (VmHWM of the measuring process), and how far the engine's
  result is from onnxruntime float32 (same class on % of patches / cells; max |Δp|).

Peak float32 rate = physical cores × clock × 64 FLOP/cycle (AVX-512: 2 FMA units × 16 float32
lanes × 2 FLOP per FMA). The clock is /proc/cpuinfo's "cpu MHz" (the nominal clock under a
hypervisor; turbo would lower the percentages). FLOP per patch = 2 × the MACs of the graph's
Conv and Gemm nodes, counted from the ONNX file (DESIGN §5 quotes ≈ 169 M MACs for MSMLA-50,
≈ 75 M for MSMLA-18). bfloat16 and int8 engines run on other units (AVX512-BF16, AMX, VNNI)
whose peaks are higher; their percentages are still of the float32 peak, for comparison.

Every measurement runs in a fresh process (its own peak memory, no shared warm caches); the
engine runs two batches before timing starts, for the floor and end to end alike (first
inferences allocate and compile), and
the whole series is repeated ``--rounds`` times in alternating order (the build machines are
shared and noisy); rates are total patches / total seconds over the rounds.

int8: the models are quantized statically (onnxruntime.quantization, QDQ, per-channel int8
weights, uint8 activations) with real patches from the scene as calibration data; both
onnxruntime and OpenVINO run the QDQ file. They are floors only: int8 is not a DEVICE of
lcz:classify (see the README for why).

    python bench/bench_classify.py [--models msmla18,msmla50] [--scene-px 800] [--rounds 2]
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
KM2_PER_PATCH = 0.01  # one 100 m cell
# (label, lcz:classify DEVICE, end-to-end too?, prefetch)
ENGINES = [
    ("onnxruntime CPU f32", "cpu", True, True),
    ("OpenVINO f32", "openvino", True, True),
    ("OpenVINO f32, no prefetch", "openvino", True, False),
    ("OpenVINO bf16", "openvino-bf16", True, True),
    ("onnxruntime int8 (QDQ)", "cpu:int8", False, True),
    ("OpenVINO int8 (QDQ)", "openvino:int8", False, True),
    ("PyTorch eager f32", "torch", False, True),
]
REFERENCE = "onnxruntime CPU f32"


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM). Not getrusage's ru_maxrss: on Linux that
    keeps the parent's peak across fork and exec, so a child would report the parent's."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench_card(name: str):
    from lcz_qgis_plugin.core.contract import ModelCard
    n = len(CHANNELS)
    return ModelCard(name=name, version="bench-random", channels=CHANNELS, patch_size=PATCH,
                     scale=[1e-4] * 10 + [1.0] * 3, offset=[0.0] * n,
                     mean=[0.1] * 10 + [0.2, 5.0, 6.0], std=[0.05] * 10 + [0.2, 5.0, 4.0],
                     provenance={"note": "random weights, for benchmarks only"})


def torch_model(name: str):
    import torch
    from training.models import build_model
    torch.manual_seed(0)
    return build_model(name, channels=len(CHANNELS)).eval()


def make_model(name: str) -> str:
    from training.export import export_onnx
    path = os.path.join(WORK, f"{name}_13ch_48px_random.onnx")
    if not os.path.exists(path):
        export_onnx(torch_model(name), bench_card(name), path)
    return path


def make_int8(model: str, calibration: np.ndarray) -> str:
    """Static int8 quantization (QDQ) of ``model`` calibrated on real patches; keeps the LCZ
    metadata so the plugin's engine opens it."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process
    path = model.replace(".onnx", ".int8.onnx")
    if os.path.exists(path):
        return path

    class Patches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"patches": calibration[i:i + 16]}
                                 for i in range(0, len(calibration), 16)])

        def get_next(self):
            return next(self.batches, None)

    prepared = path + ".pre.onnx"
    quant_pre_process(model, prepared)
    quantize_static(prepared, path, Patches(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    per_channel=True)
    os.remove(prepared)
    source, quantized = onnx.load(model), onnx.load(path)
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(source.metadata_props)
    onnx.save(quantized, path)
    return path


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


def real_patches(stack: str, count: int, seed: int) -> np.ndarray:
    """``count`` normalised patches of cells spread over the scene, as the engine gets them."""
    from lcz_qgis_plugin.core.grid import make_grid
    from lcz_qgis_plugin.core.patches import StripReader
    from lcz_qgis_plugin.core.stacks import open_stacks
    card = bench_card("msmla50")
    (opened,) = open_stacks([stack], card.channels, card.pixel_size)
    grid = make_grid(opened.geotransform, opened.width, opened.height, card.cell_size,
                     card.patch_size, None)
    strip = StripReader(opened, card, grid).read(0, grid.rows)
    rows, cols = np.nonzero(strip.cell_valid)
    pick = np.random.default_rng(seed).choice(len(rows), size=count, replace=False)
    return strip.gather(rows[pick], cols[pick])


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

def open_engine(model: str, device: str):
    from lcz_qgis_plugin.core.engine import Engine
    if device.endswith(":int8"):
        return Engine(model.replace(".onnx", ".int8.onnx"), device.split(":")[0])
    return Engine(model, device)


def child_floor(args) -> dict:
    patches = np.load(args.patches)
    batches = [patches[i:i + args.batch] for i in range(0, len(patches), args.batch)]
    start = time.perf_counter()
    if args.device == "torch":
        import torch
        from lcz_qgis_plugin.core.engine import physical_cores
        torch.set_num_threads(physical_cores())
        model = torch_model(args.name)

        def run(batch):
            with torch.inference_mode():
                return model(torch.from_numpy(batch)).numpy()
        provider = f"torch {torch.__version__}"
    else:
        engine = open_engine(args.model, args.device)
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
            "peak_mb": peak_rss_mb(), "provider": provider}


def child_classify(args) -> dict:
    from lcz_qgis_plugin.core.classify import classify
    start = time.perf_counter()
    engine = open_engine(args.model, args.device)
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
            "peak_mb": peak_rss_mb(), "provider": result.provider}


def run_child(*argv) -> dict:
    done = subprocess.run([sys.executable, __file__, *map(str, argv)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f"benchmark child failed ({' '.join(map(str, argv))}):\n"
                         f"{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the run ---------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", nargs="?", default="run", choices=["run", "classify", "floor"])
    parser.add_argument("--models", default="msmla18,msmla50")
    parser.add_argument("--scene-px", type=int, default=800,
                        help="side of the generated scene in 10 m pixels (default 800: "
                             "6,400 patches at 100 m cells)")
    parser.add_argument("--floor-patches", type=int, default=2560,
                        help="patches per floor measurement (default 2560)")
    parser.add_argument("--torch-patches", type=int, default=256,
                        help="patches per PyTorch eager floor (default 256: it is slow)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--engines", default="all",
                        help="comma-separated labels' DEVICE ids, e.g. cpu,openvino (default all)")
    # children
    parser.add_argument("--model")
    parser.add_argument("--name")
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

    from lcz_qgis_plugin.core.engine import import_openvino, physical_cores
    os.makedirs(os.path.join(WORK, "out"), exist_ok=True)
    engines = [e for e in ENGINES if args.engines == "all"
               or e[1] in args.engines.split(",")]
    if import_openvino() is None:
        print("openvino is not installed: its rows are skipped")
        engines = [e for e in engines if "openvino" not in e[1]]
    names = args.models.split(",")
    cores, ghz = physical_cores(), cpu_ghz()
    peak = cores * ghz * 1e9 * 64
    cpu_model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                      if line.startswith("model name")), "?")
    stack = make_stack(args.scene_px)
    patches_file = os.path.join(WORK, "floor_patches.npy")
    n_floor = args.batch * 4
    np.save(patches_file, real_patches(stack, n_floor, seed=1))
    calibration = real_patches(stack, 128, seed=2)
    models, macs = {}, {}
    for name in names:
        models[name] = make_model(name)
        macs[name] = count_macs(models[name])
        if any(e[1].endswith(":int8") for e in engines):
            make_int8(models[name], calibration)
    batches = max(1, args.floor_patches // args.batch)

    import onnxruntime
    import torch
    ov = import_openvino()
    print(f"LCZ inference benchmark: {cpu_model}, {cores} physical cores at {ghz:.2f} GHz "
          f"(float32 peak {peak / 1e9:.0f} GFLOP/s), onnxruntime {onnxruntime.__version__}, "
          f"openvino {ov.__version__.split('-')[0] if ov else '-'}, torch {torch.__version__}")
    print(f"scene {args.scene_px} x {args.scene_px} px, 100 m cells; batch {args.batch}; "
          f"floors: {batches * args.batch} patches ({args.torch_patches} for PyTorch); "
          f"{args.rounds} rounds in alternating order; load average "
          f"{os.getloadavg()[0]:.2f} at start", flush=True)

    tasks = [(name, engine) for name in names for engine in engines]
    results: dict = {}
    for round_index in range(args.rounds):
        order = tasks if round_index % 2 == 0 else tasks[::-1]
        for name, (label, device, e2e, prefetch) in order:
            key = (name, label)
            out = os.path.join(WORK, "out", f"{name}_{device.replace(':', '_')}"
                                            f"_{prefetch}")
            entry = results.setdefault(key, {"floor": [], "e2e": []})
            steps = [("floor", None)] + ([("e2e", None)] if e2e else [])
            if round_index % 2:
                steps.reverse()
            for step, _ in steps:
                if step == "floor" and not prefetch:
                    continue  # the same engine as its prefetching row
                if step == "floor":
                    n = max(1, args.torch_patches // args.batch) if device == "torch" \
                        else batches
                    entry["floor"].append(run_child(
                        "floor", "--model", models[name], "--name", name, "--device", device,
                        "--patches", patches_file, "--batch", args.batch, "--batches",
                        n, "--out", out + ".npy"))
                else:
                    entry["e2e"].append(run_child(
                        "classify", "--model", models[name], "--device", device, "--stack",
                        stack, "--batch", args.batch, "--prefetch", int(prefetch),
                        "--out", out + ".tif"))
            print(f"  round {round_index + 1}: {name} {label} done "
                  f"(load average {os.getloadavg()[0]:.2f})", flush=True)
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (this machine's cores: "
          f"{os.cpu_count()})")
    report(names, engines, results, macs, peak, models, args)


def rate(runs: list[dict]) -> float:
    return sum(r["patches"] for r in runs) / sum(r["seconds"] for r in runs) if runs else 0.0


def report(names, engines, results, macs, peak, models, args) -> None:
    from osgeo import gdal
    print()
    header = (f"{'engine':<27} {'floor p/s':>9} {'e2e p/s':>8} {'e2e/fl':>6} {'km2/min':>8} "
              f"{'% peak':>6} {'x ort':>5} {'load s':>6} {'MB floor':>8} {'MB e2e':>7} "
              f"{'same %':>7} {'max dp':>7}")
    for name in names:
        flop = 2 * macs[name]
        print(f"{name.upper()}: {macs[name] / 1e6:.0f} M MACs = {flop / 1e6:.0f} MFLOP per "
              f"patch; float32 peak = {peak / flop:.0f} patches/s")
        print(header)
        ref_floor = rate(results[(name, REFERENCE)]["floor"])
        ref_probs = np.load(os.path.join(WORK, "out", f"{name}_cpu_True.npy"))
        ref_map = gdal.Open(os.path.join(WORK, "out", f"{name}_cpu_True.tif")).ReadAsArray()
        best_floor = best_e2e = 0.0
        for label, device, e2e, prefetch in engines:
            entry = results[(name, label)]
            floor = rate(entry["floor"]) if prefetch else rate(
                results[(name, label.replace(", no prefetch", ""))]["floor"])
            end = rate(entry["e2e"])
            shown = end or floor
            out = os.path.join(WORK, "out", f"{name}_{device.replace(':', '_')}_{prefetch}")
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
            runs = entry["floor"] + entry["e2e"]
            load = np.mean([r["load"] for r in runs])
            mb_floor = max((r["peak_mb"] for r in entry["floor"]), default=float("nan"))
            mb_e2e = max((r["peak_mb"] for r in entry["e2e"]), default=float("nan"))
            if device != "torch" and device.split(":")[-1] != "int8":
                best_floor = max(best_floor, floor)
                best_e2e = max(best_e2e, end)
            print(f"{label:<27} {floor:>9.1f} {end or float('nan'):>8.1f} "
                  f"{(end / floor if end else float('nan')):>6.3f} "
                  f"{shown * KM2_PER_PATCH * 60:>8.1f} {100 * shown * flop / peak:>6.1f} "
                  f"{floor / ref_floor:>5.2f} {load:>6.2f} {mb_floor:>8.0f} {mb_e2e:>7.0f} "
                  f"{same:>7.2f} {delta:>7.1e}")
        classes = len(np.unique(ref_map[ref_map > 0]))
        print(f"best end to end / best floor (lcz:classify engines): "
              f"{best_e2e / best_floor:.3f}; best floor / onnxruntime floor: "
              f"{best_floor / ref_floor:.2f}; the onnxruntime map has {classes} classes\n")
    print("floor: engine.run on pre-built batches of real patches; e2e: classify with the "
          "engine already open; km2/min and % peak use e2e where measured, else the floor; "
          "x ort: floor / onnxruntime CPU floor; same %: cells (e2e) or patches (floor) with "
          "the onnxruntime f32 class; max dp: largest probability difference on the floor "
          "patches.")


if __name__ == "__main__":
    main()
