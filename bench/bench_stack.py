"""Benchmark of lcz:stacksentinel2's core: a full Sentinel-2 tile against the GDAL floor.

A Level-1C product is generated once into build/bench/ (a .SAFE folder with lossless,
1024 x 1024-tiled JP2s: B02, B03, B04, B08 at 10 m and B05, B06, B07, B8A, B11, B12 at 20 m;
baseline 05.09, so every DN carries the +1000 offset). Then, each in a fresh process so that
peak memory is its own:

- stack: ``core.sentinel2.stack_sentinel2`` on the product (the ten So2Sat bands, bilinear,
  offset removed, tiled DEFLATE UInt16 GeoTIFF with band names);
- floor: ``gdalbuildvrt -separate -tr 10 10 -r bilinear`` over the same ten JP2s, then
  ``gdal_translate`` to a GeoTIFF with the same creation options: the same decoding,
  resampling and writing, without offset removal, names or checks.

Peak memory is the child's VmHWM (for the floor: the largest of the two GDAL tools, read by a
wrapper through getrusage of its waited children). Both outputs are compared on a window: the
10 m bands must equal floor - 1000 exactly.

    python bench/bench_stack.py [--size 10980] [--keep]

``--size`` is the 10 m tile edge in pixels (a real tile: 10980; 2048 for a quick run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
WORK = os.path.join(ROOT, "build", "bench")
BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
NATIVE = {"B02": 10, "B03": 10, "B04": 10, "B08": 10}
JP2_OPTIONS = ["QUALITY=100", "REVERSIBLE=YES", "YCC=NO", "BLOCKXSIZE=1024",
               "BLOCKYSIZE=1024", "NBITS=15"]
TIFF_OPTIONS = ["TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256", "COMPRESS=DEFLATE",
                "ZLEVEL=6", "INTERLEAVE=BAND", "BIGTIFF=IF_SAFER", "PREDICTOR=2"]
X0, Y0 = 399960.0, 5100000.0  # a real tile origin (T33TVM-like)


def vm_hwm_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def band_values(band: str, size: int, row0: int, rows: int) -> np.ndarray:
    """Reflectance-like DNs (+1000 offset): smooth fields plus noise, different per band."""
    rng = np.random.default_rng(BANDS.index(band) * 100003 + row0)
    y = np.arange(row0, row0 + rows)[:, None]
    x = np.arange(size)[None, :]
    number = BANDS.index(band) + 1
    base = 1500 + 900 * np.sin(x / (97.0 + number)) * np.cos(y / (131.0 - number)) \
        + ((x // 211 + y // 173) % 5) * 300
    return (base + rng.integers(0, 120, size=(rows, size)) + 1000).astype(np.uint16)


def make_product(size: int) -> str:
    """The SAFE folder for a size x size (10 m) tile, written once."""
    from osgeo import gdal, osr
    from s2_product import MTD_TEMPLATE

    name = f"S2A_MSIL1C_20230704T100031_N0509_R122_T33TVM_{size}.SAFE"
    safe = os.path.join(WORK, name)
    if os.path.exists(os.path.join(safe, "done")):
        return safe
    shutil.rmtree(safe, ignore_errors=True)
    img = os.path.join(safe, "GRANULE", "L1C_T33TVM_A000000_20230704T100031", "IMG_DATA")
    os.makedirs(img)
    offsets = "\n".join(f'        <RADIO_ADD_OFFSET band_id="{i}">-1000</RADIO_ADD_OFFSET>'
                        for i in range(13))
    with open(os.path.join(safe, "MTD_MSIL1C.xml"), "w") as f:
        f.write(MTD_TEMPLATE.format(lvl="1C", date="2023-07-04", compact="20230704",
                                    baseline="05.09", q="QUANTIFICATION_VALUE",
                                    o="RADIO_ADD_OFFSET", offsets=offsets))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    gdal.SetCacheMax(256 * 2**20)
    for band in BANDS:
        res = NATIVE.get(band, 20)
        n = size * 10 // res
        started = time.perf_counter()
        tif = os.path.join(WORK, f"_{band}.tif")
        ds = gdal.GetDriverByName("GTiff").Create(tif, n, n, 1, gdal.GDT_UInt16,
                                                  ["TILED=YES", "COMPRESS=LZW"])
        ds.SetGeoTransform((X0, float(res), 0, Y0, 0, -float(res)))
        ds.SetProjection(srs.ExportToWkt())
        for row in range(0, n, 1024):
            rows = min(1024, n - row)
            ds.GetRasterBand(1).WriteArray(band_values(band, n, row, rows), 0, row)
        path = os.path.join(img, f"T33TVM_20230704T100031_{band}.jp2")
        # the copy is not kept: dropping it closes it, which writes the JP2
        gdal.GetDriverByName("JP2OpenJPEG").CreateCopy(path, ds, options=JP2_OPTIONS)
        ds = None
        os.remove(tif)
        print(f"  wrote {band} ({n} x {n} px) in {time.perf_counter() - started:.0f} s",
              file=sys.stderr, flush=True)
    open(os.path.join(safe, "done"), "w").close()
    return safe


def child_stack(args) -> dict:
    from lcz_qgis_plugin.core.preprocess.sentinel2 import stack_sentinel2
    out = os.path.join(WORK, "out", f"stack_{args.size}.tif")
    started = time.perf_counter()
    stack_sentinel2([args.product], out, bands=BANDS, resampling="bilinear")
    return {"seconds": time.perf_counter() - started, "peak_mb": vm_hwm_mb(), "output": out}


def child_floor(args) -> dict:
    """gdalbuildvrt + gdal_translate as command-line tools; peak of the two."""
    import glob
    import resource
    files = [glob.glob(os.path.join(args.product, "GRANULE", "*", "IMG_DATA",
                                    f"*_{band}.jp2"))[0] for band in BANDS]
    vrt = os.path.join(WORK, "out", f"floor_{args.size}.vrt")
    out = os.path.join(WORK, "out", f"floor_{args.size}.tif")
    started = time.perf_counter()
    subprocess.run(["gdalbuildvrt", "-q", "-separate", "-tr", "10", "10", "-r", "bilinear",
                    "-srcnodata", "0", "-vrtnodata", "0", vrt] + files, check=True)
    translate = ["gdal_translate", "-q", "--config", "GDAL_CACHEMAX", "256", vrt, out]
    for option in TIFF_OPTIONS:
        translate += ["-co", option]
    subprocess.run(translate, check=True)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    return {"seconds": seconds, "peak_mb": peak, "output": out}


def run_child(kind: str, args) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", kind, "--size", str(args.size),
                           "--product", args.product], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(stack: str, floor: str) -> dict:
    from osgeo import gdal
    a, b = gdal.Open(stack), gdal.Open(floor)
    n = min(1024, a.RasterXSize)
    ours = a.ReadAsArray(0, 0, n, n).astype(np.int32)
    base = b.ReadAsArray(0, 0, n, n).astype(np.int32) - 1000
    ten = [BANDS.index(x) for x in NATIVE]
    twenty = [i for i in range(len(BANDS)) if i not in ten]
    inner = (slice(None), slice(2, -2), slice(2, -2))
    return {"ten_m_equal": bool((ours[ten] == base[ten]).all()),
            "twenty_m_mean_abs_dn": float(np.abs(ours[twenty] - base[twenty])[inner].mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=10980, help="10 m tile edge in pixels")
    parser.add_argument("--keep", action="store_true", help="keep the outputs")
    parser.add_argument("--child", choices=("stack", "floor"), help=argparse.SUPPRESS)
    parser.add_argument("--product", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = (child_stack if args.child == "stack" else child_floor)(args)
        print(json.dumps(result))
        return
    os.makedirs(os.path.join(WORK, "out"), exist_ok=True)
    started = time.perf_counter()
    args.product = make_product(args.size)
    print(f"product ready ({time.perf_counter() - started:.0f} s): {args.product}",
          file=sys.stderr)
    stack = run_child("stack", args)
    floor = run_child("floor", args)
    agreement = compare(stack["output"], floor["output"])
    pixels = args.size * args.size
    report = {
        "tile_px": args.size, "bands": len(BANDS),
        "stack_seconds": round(stack["seconds"], 1), "floor_seconds": round(floor["seconds"], 1),
        "stack_over_floor": round(stack["seconds"] / floor["seconds"], 3),
        "stack_mpx_per_s": round(pixels * len(BANDS) / stack["seconds"] / 1e6, 1),
        "stack_peak_mb": round(stack["peak_mb"]), "floor_peak_mb": round(floor["peak_mb"]),
        **agreement,
    }
    print(json.dumps(report, indent=2))
    if not args.keep:
        for result in (stack, floor):
            for path in (result["output"], result["output"].replace(".tif", ".vrt")):
                if os.path.exists(path):
                    os.remove(path)


if __name__ == "__main__":
    main()
