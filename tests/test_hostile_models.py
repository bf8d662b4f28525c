"""Model files are untrusted input: hostile model cards and broken files end in one short
message naming the problem and the fix, quickly, for every DEVICE and through every entry
point (core, core CLI, qgis_process), leaving inputs untouched and no output behind."""

import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from lcz_testing import channel_names, identity_card, write_stack
from onnx import TensorProto, helper, numpy_helper

from lcz_qgis_plugin.core.errors import EngineError, ModelError
from lcz_qgis_plugin.core.inference.engine import CUDA, DEVICES, Engine, available_providers
from lcz_qgis_plugin.core.inference.fp16 import float16_model_bytes
from lcz_qgis_plugin.core.model.card_file import check_model_file
from lcz_qgis_plugin.core.model.card_writer import write_model_card

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = channel_names(2)
EXPORT_FIX = "python -m training export"
ONNX_FIX = "Export it again"
MILLION = 10 ** 6


def pooling_model(path, card) -> str:
    """logits = mean over the patch of each channel @ W: the patch's height and width are
    dynamic, so the graph accepts any patch size a card claims (as a crafted model would)."""
    weights = np.random.default_rng(0).normal(size=(card.n_channels, card.n_classes))
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("Gemm", ["flat", "W"], ["y"])], "pooling",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                       ["N", card.n_channels, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", card.n_classes])],
        [numpy_helper.from_array(weights.astype(np.float32), "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    write_model_card(model, card, os.fspath(path))
    return os.fspath(path)


def hostile_model(path, changes: dict) -> str:
    """A valid tiny model whose ``lcz.*`` metadata is then changed as given, written with
    onnx directly (the card writer would refuse it)."""
    pooling_model(path, identity_card("probe", NAMES, 8))
    model = onnx.load(os.fspath(path))
    props = {p.key: p.value for p in model.metadata_props}
    props.update(changes)
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, os.fspath(path))
    return os.fspath(path)


def nested(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


BIG = "1" + "0" * 400  # 10^400: a whole number no float holds
# id: (lcz.* changes, what the message must name)
CARDS = {
    "channels-1e6": ({"lcz.channels": json.dumps([f"S2:B{i}" for i in range(MILLION)])},
                     "lcz.channels"),
    "channels-300": ({"lcz.channels": json.dumps([f"c{i}" for i in range(300)])},
                     "'lcz.channels' lists 300 channels"),
    "patch-4096": ({"lcz.patch_size": "4096"}, "'lcz.patch_size' is 4096"),
    "patch-1e400": ({"lcz.patch_size": BIG}, "'lcz.patch_size'"),
    "patch-5000-digits": ({"lcz.patch_size": "1" + "0" * 5000}, "'lcz.patch_size'"),
    "temperature-1e-300": ({"lcz.temperature": "1e-300"}, "'lcz.temperature' is 1e-300"),
    "temperature-1e300": ({"lcz.temperature": "1e300"}, "'lcz.temperature' is 1e+300"),
    "provenance-depth-100000": ({"lcz.provenance": nested(100_000)}, "'lcz.provenance'"),
    "classes-1e6": ({"lcz.class_codes": json.dumps(list(range(1, MILLION + 1)))},
                    "lcz.class_codes"),
    "classes-40": ({"lcz.class_codes": json.dumps(list(range(1, 41)))},
                   "'lcz.class_codes' lists 40 classes"),
    "scale-nan": ({"lcz.scale": "[NaN, 1.0]"}, "'lcz.scale' holds nan"),
    "mean-infinity": ({"lcz.mean": "[0.0, Infinity]"}, "'lcz.mean' holds inf"),
    "offset-overflow": ({"lcz.offset": "[-1e400, 0.0]"}, "'lcz.offset' holds -inf"),
    "mean-1e400-whole": ({"lcz.mean": f"[{BIG}, 0]"}, "'lcz.mean' holds inf"),
    "std-huge": ({"lcz.std": "[1e300, 1.0]"}, "'lcz.std' holds 1e+300"),
    "std-zero": ({"lcz.std": "[0.0, 1.0]"}, "'lcz.std' must be positive"),
    "pixel-size-tiny": ({"lcz.pixel_size": "1e-300"}, "'lcz.pixel_size'"),
    "cell-size-huge": ({"lcz.cell_size": "1e300"}, "'lcz.cell_size'"),
    "name-100000-chars": ({"lcz.name": "x" * 100_000}, "'lcz.name' is 100,000 characters"),
    "precision-patches-1e400": (
        {"lcz.precision_checks": json.dumps({"bfloat16": {"same_class": 0.999,
                                                          "patches": 10 ** 400}})},
        "'lcz.precision_checks' entry 'bfloat16'"),
    "precision-share-1e300": (
        {"lcz.precision_checks": json.dumps({"bfloat16": {"same_class": 1e300,
                                                          "patches": 500}})},
        "'lcz.precision_checks' entry 'bfloat16'"),
    "precision-1000-entries": (
        {"lcz.precision_checks": json.dumps({f"p{i}": {"same_class": 1, "patches": 500}
                                             for i in range(1000)})},
        "'lcz.precision_checks' holds 1,000 entries"),
}


def has_cuda() -> bool:
    return CUDA in available_providers()


def digest(*paths) -> list[str]:
    return [hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths]


def assert_short_and_named(message: str, *named: str) -> None:
    assert len(message) < 1000, message[:2000]
    assert "Traceback" not in message
    for part in named:
        assert part in message, message


@pytest.fixture(scope="module")
def cards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    return {case: hostile_model(folder / f"{case}.onnx", changes)
            for case, (changes, _) in CARDS.items()}


@pytest.mark.parametrize("case", CARDS)
def test_hostile_card_is_refused_quickly_with_a_short_message(cards, case):
    path, named = cards[case], CARDS[case][1]
    before = digest(path)
    for load in (check_model_file, lambda p: Engine(p, device="cpu")):
        started = time.perf_counter()
        with pytest.raises(ModelError) as info:
            load(path)
        assert time.perf_counter() - started < 2.0  # a quadratic check takes minutes here
        assert_short_and_named(str(info.value), named, path, EXPORT_FIX)
    assert digest(path) == before


def test_channel_duplicates_are_counted_in_linear_time():
    card = identity_card("probe", ["S2:B02"] * MILLION, 8)
    started = time.perf_counter()
    with pytest.raises(ModelError) as info:
        card.validate()
    assert time.perf_counter() - started < 2.0
    assert_short_and_named(str(info.value), "'lcz.channels' lists 1,000,000 channels")
    card = identity_card("probe", ["S2:B02", "S2:B03"] * 128, 8)
    with pytest.raises(ModelError, match="names 'S2:B02', 'S2:B03' more than once"):
        card.validate()


# --- broken files ----------------------------------------------------------------------------

def _random_bytes(folder, good):
    path = folder / "random.onnx"
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    return path, "not a valid ONNX model"


def _truncated(folder, good):
    path = folder / "truncated.onnx"
    data = open(good, "rb").read()
    path.write_bytes(data[:len(data) // 2])
    return path, "not a valid ONNX model"


def _corrupt_inside_the_graph(folder, good):
    """Top-level structure and card intact, a graph input's bytes broken: only a full parse
    (onnxruntime, onnx.load in the float16 conversion) sees it."""
    model = onnx.load(good)
    graph = model.graph.SerializeToString() + _field(11, b"\xff\xff\xff")
    model.ClearField("graph")
    path = folder / "corrupt_graph.onnx"
    path.write_bytes(model.SerializeToString() + _field(7, graph))
    return path, "not a valid ONNX model"


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    out, length = bytearray([number << 3 | 2]), len(payload)
    while length >= 0x80:
        out.append(length & 0x7F | 0x80)
        length >>= 7
    out.append(length)
    return bytes(out) + payload


def _external(folder, good, location: str, name: str):
    """The model with its weights in external data at ``location`` (relative to its folder)."""
    model = onnx.load(good)
    inner = folder / name
    inner.mkdir()
    onnx.save(model, inner / "m.onnx", save_as_external_data=True, location="m.data",
              size_threshold=0)
    model = onnx.load(inner / "m.onnx", load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, inner / "m.onnx")
    return inner / "m.onnx"


def _external_outside(folder, good):
    path = _external(folder, good, "../secret.data", "outside")
    os.replace(path.parent / "m.data", folder / "secret.data")
    return path, "outside its own folder"


def _external_absolute(folder, good):
    path = _external(folder, good, str(folder / "abs.data"), "absolute")
    os.replace(path.parent / "m.data", folder / "abs.data")
    return path, "outside its own folder"


def _external_link_out(folder, good):
    path = _external(folder, good, "m.data", "link")
    os.replace(path.parent / "m.data", folder / "linked.data")
    os.symlink(folder / "linked.data", path.parent / "m.data")
    return path, "outside its own folder"


def _external_missing(folder, good):
    path = _external(folder, good, "gone.data", "missing")
    return path, "'gone.data', which is not a file in"


def _constant_outside(folder, good):
    """External data on a Constant node's tensor (an attribute), not an initializer."""
    value = numpy_helper.from_array(np.ones((1, 17), np.float32), "bias")
    value.data_location = TensorProto.EXTERNAL
    entry = value.external_data.add()
    entry.key, entry.value = "location", "../../etc/passwd"
    value.ClearField("raw_data")
    model = onnx.load(good)
    model.graph.node.insert(0, helper.make_node("Constant", [], ["unused"], value=value))
    path = folder / "constant.onnx"
    onnx.save(model, path)
    return path, "outside its own folder"


FILES = {"random-bytes": _random_bytes, "truncated": _truncated,
         "corrupt-inside-graph": _corrupt_inside_the_graph,
         "external-outside": _external_outside, "external-absolute": _external_absolute,
         "external-link-out": _external_link_out, "external-missing": _external_missing,
         "constant-external-outside": _constant_outside}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("files")
    good = pooling_model(folder / "good.onnx", identity_card("probe", NAMES, 8))
    return {case: make(folder, good) for case, make in FILES.items()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", FILES)
def test_broken_model_file_is_refused_for_every_device(files, case, device):
    path, named = files[case]
    before = digest(path)
    if case == "corrupt-inside-graph" and device.startswith("cuda") and not has_cuda():
        # only a full parse sees this damage; without CUDA the device is the first problem
        with pytest.raises(EngineError, match="DEVICE is CUDA"):
            Engine(path, device=device)
        return
    if case == "corrupt-inside-graph" and device == "openvino-int8":
        # the int8 device runs the int8 file the card names, never this graph: the missing
        # variant is the first problem, refused with its own fix
        with pytest.raises(ModelError, match="has no int8 variant.*check-precision"):
            Engine(path, device=device)
        assert digest(path) == before
        return
    with pytest.raises(ModelError) as info:
        Engine(path, device=device)
    assert_short_and_named(str(info.value), named, str(path))
    assert ONNX_FIX in str(info.value) or EXPORT_FIX in str(info.value)
    assert digest(path) == before


@pytest.mark.parametrize("case", FILES)
def test_float16_conversion_refuses_broken_files(files, case):
    """The DEVICE cuda-fp16 conversion (runs before any GPU session; called directly here,
    as this machine may have no GPU): protobuf's DecodeError and onnx's own external-data
    errors used to escape as tracebacks."""
    path, named = files[case]
    with pytest.raises(ModelError) as info:
        float16_model_bytes(str(path))
    assert_short_and_named(str(info.value), str(path))
    assert named in str(info.value) or case == "corrupt-inside-graph"
    assert ONNX_FIX in str(info.value) or EXPORT_FIX in str(info.value)


def test_external_data_in_the_model_folder_still_runs(tmp_path):
    good = pooling_model(tmp_path / "good.onnx", identity_card("probe", NAMES, 8))
    path = _external(tmp_path, good, "m.data", "inside")
    x = np.random.default_rng(1).normal(size=(3, 2, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(Engine(path, device="cpu").probabilities(x),
                               Engine(good, device="cpu").probabilities(x), rtol=1e-6)
    onnx.checker.check_model(onnx.load_from_string(float16_model_bytes(str(path))))


# --- through the command lines ----------------------------------------------------------------

CLI_CASES = ["channels-1e6", "patch-4096", "patch-1e400", "temperature-1e-300",
             "temperature-1e300", "provenance-depth-100000", "classes-1e6", "std-zero",
             "precision-patches-1e400"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stack")
    scene = np.random.default_rng(3).normal(size=(2, 40, 40)).astype(np.float32)
    return write_stack(folder / "stack.tif", scene, NAMES)


def core_cli(*args):
    return subprocess.run([sys.executable, "-m", "lcz_qgis_plugin.core", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def assert_cli_refuses(model, stack, out, named, device="cpu"):
    before = digest(model, stack)
    done = core_cli("classify", "--input", stack, "--model", model, "--device", device,
                    "--output", out / "lcz.tif", "--probabilities", out / "p.tif")
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr
    assert len([line for line in lines if line.startswith("error:")]) == 1
    assert_short_and_named(lines[-1], "error: ", named)
    assert digest(model, stack) == before
    assert os.listdir(out) == []


@pytest.mark.parametrize("case", CLI_CASES)
def test_core_cli_refuses_hostile_cards(cards, stack, tmp_path, case):
    assert_cli_refuses(cards[case], stack, tmp_path, CARDS[case][1])


@pytest.mark.parametrize("case,device", [("random-bytes", "cpu"), ("truncated", "openvino"),
                                         ("external-outside", "cuda-fp16"),
                                         ("corrupt-inside-graph", "cpu")])
def test_core_cli_refuses_broken_files(files, stack, tmp_path, case, device):
    path, named = files[case]
    assert_cli_refuses(path, stack, tmp_path, named, device)


@pytest.mark.qgis_process
@pytest.mark.parametrize("case", ["patch-1e400", "external-outside"])
def test_qgis_process_refuses_hostile_models(qgis_process, cards, files, stack, tmp_path,
                                             case):
    model, named = (files[case] if case in files else (cards[case], CARDS[case][1]))
    before = digest(model, stack)
    done, _ = qgis_process.run_json("lcz:classify", {
        "INPUT": stack, "MODEL": str(model), "DEVICE": 0,
        "OUTPUT": str(tmp_path / "lcz.tif")})
    said = done.stdout + done.stderr
    assert done.returncode != 0
    assert named in said and "Traceback" not in said
    assert digest(model, stack) == before
    assert os.listdir(tmp_path) == []
