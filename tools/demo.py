"""`make demo`: an LCZ map end to end through qgis_process, with nothing downloaded.

1. Simulates a 3 x 3 km Sentinel-2-like scene (10 bands, 10 m, UTM 33N) whose 100 m cells
   have known LCZ classes: pixels are mixtures of material spectra (roofs, asphalt, metal
   roofs, trees, grass, soil, water) with noise. This is a simulation, not a measurement.
2. Builds a small *spectral-rules* ONNX model following the plugin's model contract: it
   averages the reflectances of the cell, computes NDVI, MNDWI, NDBI and brightness, and
   picks the nearest class centroid. It stands in for a trained MSMLA until one is trained
   (the training package exports those with the same contract).
3. Installs the plugin into an isolated QGIS profile and runs
   ``qgis_process.bin --json run lcz:classify`` on the scene.
4. Prints where the styled map (GeoTIFF + .qml + colour table), the probabilities and the
   confidence are, and the overall accuracy against the simulated truth.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from lcz_qgis_plugin.core.contract import ModelCard  # noqa: E402
from lcz_qgis_plugin.core.lcz_classes import lcz_class  # noqa: E402
from tools.package_plugin import stage_plugin  # noqa: E402

BANDS = ("02", "03", "04", "05", "06", "07", "08", "8A", "11", "12")
CHANNELS = [f"S2:B{b}" for b in BANDS]
B03, B04, B08, B11 = (BANDS.index(b) for b in ("03", "04", "08", "11"))

# Reflectance of B02 ... B12 (rough laboratory-like shapes, enough for a simulation)
MATERIALS = {
    "water":   [.060, .050, .030, .020, .015, .012, .010, .010, .005, .003],
    "tree":    [.030, .050, .030, .080, .250, .320, .350, .360, .160, .070],
    "grass":   [.040, .080, .050, .120, .300, .360, .380, .390, .240, .120],
    "soil":    [.100, .130, .170, .200, .230, .250, .270, .280, .330, .280],
    "asphalt": [.080, .090, .100, .110, .120, .120, .130, .130, .150, .140],
    "roof":    [.140, .160, .190, .210, .230, .240, .250, .260, .300, .270],
    "metal":   [.250, .270, .280, .290, .300, .300, .310, .310, .320, .300],
}
# Share of each material in the 10 m pixels of a cell of each LCZ class
COMPOSITION = {
    2: {"roof": .60, "asphalt": .35, "grass": .05},
    6: {"roof": .30, "asphalt": .20, "grass": .30, "tree": .20},
    8: {"metal": .60, "asphalt": .35, "grass": .05},
    11: {"tree": .95, "grass": .05},
    14: {"grass": .95, "soil": .05},
    16: {"soil": .95, "grass": .05},
    17: {"water": 1.0},
}
CODES = sorted(COMPOSITION)
CELLS, STRIDE, PATCH = 30, 10, 32


def layout(rng) -> np.ndarray:
    """30 x 30 cells: a river, a compact core, suburbs, an industrial zone, forest, fields."""
    cells = np.full((CELLS, CELLS), 14)
    cells[:, :9] = 11                                   # forest in the west
    cells[18:, 20:] = 16                                # bare soil (a quarry) in the south-east
    cells[8:22, 10:24] = 6                              # open low-rise suburbs
    cells[11:18, 13:20] = 2                             # compact core
    cells[2:8, 20:28] = 8                               # industrial estate
    river = (np.arange(CELLS) * 0.35 + 3).astype(int)
    for row in range(CELLS):
        cells[row, river[row] + 8:river[row] + 10] = 17  # a river crossing the scene
    scattered = rng.random((CELLS, CELLS)) < 0.04
    cells[scattered & (cells == 14)] = 11              # copses in the fields
    return cells


def simulate_scene(cells: np.ndarray, rng) -> np.ndarray:
    """Reflectance, bands x rows x cols, from per-pixel material draws plus sensor noise."""
    names = list(MATERIALS)
    spectra = np.array([MATERIALS[n] for n in names])
    size = cells.shape[0] * STRIDE
    per_pixel = np.repeat(np.repeat(cells, STRIDE, axis=0), STRIDE, axis=1)
    material = np.zeros((size, size), int)
    for code, mix in COMPOSITION.items():
        where = per_pixel == code
        shares = np.array([mix.get(n, 0.0) for n in names])
        material[where] = rng.choice(len(names), size=where.sum(), p=shares / shares.sum())
    reflectance = spectra[material].transpose(2, 0, 1)
    reflectance *= rng.normal(1.0, 0.05, size=(1, size, size))  # illumination / texture
    reflectance += rng.normal(0.0, 0.005, size=reflectance.shape)  # sensor noise
    return np.clip(reflectance, 0.0, 1.0)


def features(reflectance: np.ndarray) -> np.ndarray:
    """NDVI, MNDWI, NDBI and brightness of mean spectra (..., 10)."""
    b3, b4, b8, b11 = (reflectance[..., i] for i in (B03, B04, B08, B11))
    return np.stack([(b8 - b4) / (b8 + b4), (b3 - b11) / (b3 + b11), (b11 - b8) / (b11 + b8),
                     reflectance.mean(axis=-1)], axis=-1)


def spectral_rules_model(path: str) -> str:
    """Nearest-centroid classifier in index space, as an ONNX graph following the contract."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from lcz_qgis_plugin.core.contract_writer import write_model_card

    centroids = np.array([features(np.array([sum(share * np.array(MATERIALS[m])
                                                 for m, share in COMPOSITION[c].items())]))[0]
                          for c in CODES], np.float32)
    scale = np.array([1 / 0.15, 1 / 0.15, 1 / 0.15, 1 / 0.04], np.float32) ** 2
    lo, hi = (PATCH - STRIDE) // 2, (PATCH + STRIDE) // 2

    def const(name, value, dtype=np.float32):
        return numpy_helper.from_array(np.asarray(value, dtype), name)

    def band(name, index):
        return helper.make_node("Gather", ["mean", f"i{index}"], [name], axis=1)

    def ratio(name, a, b):
        return [helper.make_node("Sub", [a, b], [name + "_n"]),
                helper.make_node("Add", [a, b], [name + "_d"]),
                helper.make_node("Div", [name + "_n", name + "_d"], [name])]

    nodes = [
        helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["cell"]),
        helper.make_node("ReduceMean", ["cell"], ["mean4"], axes=[2, 3], keepdims=0),
        helper.make_node("Identity", ["mean4"], ["mean"]),
        band("b3", B03), band("b4", B04), band("b8", B08), band("b11", B11),
        *ratio("ndvi", "b8", "b4"), *ratio("mndwi", "b3", "b11"), *ratio("ndbi", "b11", "b8"),
        helper.make_node("ReduceMean", ["mean"], ["bright"], axes=[1], keepdims=0),
        *[helper.make_node("Unsqueeze", [n, "ax1"], [n + "_c"])
          for n in ("ndvi", "mndwi", "ndbi", "bright")],
        helper.make_node("Concat", ["ndvi_c", "mndwi_c", "ndbi_c", "bright_c"], ["f"], axis=1),
        helper.make_node("Unsqueeze", ["f", "ax1"], ["f3"]),
        helper.make_node("Sub", ["f3", "centroids"], ["diff"]),
        helper.make_node("Mul", ["diff", "diff"], ["sq"]),
        helper.make_node("Mul", ["sq", "scale"], ["wsq"]),
        helper.make_node("ReduceSum", ["wsq", "ax2"], ["dist"], keepdims=0),
        helper.make_node("Neg", ["dist"], ["logits"]),
    ]
    inits = [const("starts", [lo, lo], np.int64), const("ends", [hi, hi], np.int64),
             const("axes", [2, 3], np.int64), const("ax1", [1], np.int64),
             const("ax2", [2], np.int64), const("centroids", centroids[None]),
             const("scale", scale[None, None])]
    inits += [const(f"i{i}", i, np.int64) for i in (B03, B04, B08, B11)]  # scalar: N
    graph = helper.make_graph(
        nodes, "spectral_rules",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 10, PATCH, PATCH])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", len(CODES)])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    card = ModelCard(
        name="spectral-rules", version="demo-1", channels=CHANNELS, patch_size=PATCH,
        scale=[1e-4] * 10, offset=[0.0] * 10, mean=[0.0] * 10, std=[1.0] * 10,
        pixel_size=10.0, cell_size=100.0, class_codes=CODES, output_kind="logits",
        provenance={"kind": "hand-made nearest-centroid rules on NDVI/MNDWI/NDBI/brightness",
                    "purpose": "make demo, until a trained model is available"})
    write_model_card(model, card, path)
    return path


def write_stack(path: str, reflectance: np.ndarray) -> str:
    from osgeo import gdal, osr
    bands, rows, cols = reflectance.shape
    ds = gdal.GetDriverByName("GTiff").Create(path, cols, rows, bands, gdal.GDT_UInt16,
                                              ["COMPRESS=DEFLATE", "TILED=YES"])
    ds.SetGeoTransform((452000.0, 10.0, 0.0, 5102000.0, 0.0, -10.0))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    ds.SetProjection(srs.ExportToWkt())
    for i, name in enumerate(CHANNELS):
        band = ds.GetRasterBand(i + 1)
        band.SetDescription(name)
        band.SetNoDataValue(0)
        band.WriteArray(np.clip(np.round(reflectance[i] * 10000), 1, 65535).astype(np.uint16))
    ds = None
    return path


def qgis_process_env(work: str) -> dict:
    plugins, profile = os.path.join(work, "plugins"), os.path.join(work, "profile")
    shutil.rmtree(profile, ignore_errors=True)
    os.makedirs(profile)
    stage_plugin(plugins)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", QGIS_PLUGINPATH=plugins,
               QGIS_CUSTOM_CONFIG_PATH=profile,
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    exe = shutil.which("qgis_process.bin") or "/usr/bin/qgis_process.bin"
    subprocess.run([exe, "plugins", "enable", "lcz_qgis_plugin"], env=env, check=True,
                   capture_output=True)
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description="LCZ demo through qgis_process")
    parser.add_argument("--out", default="out", help="output folder (default: out)")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    out = os.path.abspath(args.out)
    work = os.path.join(ROOT, "build", "demo")
    os.makedirs(out, exist_ok=True)
    os.makedirs(work, exist_ok=True)
    rng = np.random.default_rng(args.seed)

    print("1/3 simulating a 3 x 3 km Sentinel-2-like scene with known LCZ ...", flush=True)
    truth = layout(rng)
    stack = write_stack(os.path.join(out, "demo_s2_stack.tif"), simulate_scene(truth, rng))
    model = spectral_rules_model(os.path.join(out, "demo_spectral_rules.onnx"))

    print("2/3 running lcz:classify through qgis_process.bin ...", flush=True)
    env = qgis_process_env(work)
    outputs = {name: os.path.join(out, f"demo_{name}.tif")
               for name in ("lcz_map", "probabilities", "confidence")}
    command = [shutil.which("qgis_process.bin") or "/usr/bin/qgis_process.bin", "--json",
               "run", "lcz:classify", "--", f"INPUT={stack}", f"MODEL={model}", "DEVICE=0",
               f"OUTPUT={outputs['lcz_map']}",
               f"OUTPUT_PROBABILITIES={outputs['probabilities']}",
               f"OUTPUT_CONFIDENCE={outputs['confidence']}"]
    print("   " + " ".join(command[:4]) + " -- INPUT=... MODEL=... OUTPUT=...", flush=True)
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"qgis_process failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    results = json.loads(done.stdout)["results"]

    print("3/3 checking the map against the simulated truth ...", flush=True)
    from osgeo import gdal
    lcz_map = gdal.Open(results["OUTPUT"]).ReadAsArray()
    accuracy = float((lcz_map == truth).mean())
    print()
    print(f"LCZ map (styled: colour table + {os.path.basename(outputs['lcz_map'])[:-4]}.qml): "
          f"{results['OUTPUT']}")
    print(f"class probabilities: {results['OUTPUT_PROBABILITIES']}")
    print(f"confidence:          {results['OUTPUT_CONFIDENCE']}")
    print(f"execution provider:  {results['EXECUTION_PROVIDER']}")
    print(f"overall accuracy against the simulated truth: {accuracy:.1%} "
          f"({lcz_map.size} cells of 100 m; the rules come from the simulation's own spectra, "
          f"so this checks the pipeline, not a model)")
    for code in CODES:
        mask = truth == code
        print(f"  LCZ {lcz_class(code).letter:>2} {lcz_class(code).name:<20} "
              f"{mask.sum():4d} cells, {float((lcz_map[mask] == code).mean()):.0%} correct")


if __name__ == "__main__":
    main()
