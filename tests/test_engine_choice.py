"""The Automatic device's CPU engine: the candidates that keep the map, measured once per model
file, CPU and engine versions, cached in the user's cache folder; the int8 variant beside a
model (DEVICE OpenVINO int8); and no CUDA probe where no NVIDIA driver exists. Real engines
and real ONNX models throughout; the cache folder is a temporary one ($LCZ_CACHE_DIR)."""

import json
import os

import numpy as np
import onnx
import pytest
from lcz_testing import RecordingFeedback, channel_names, conv_probe_model, identity_card

from lcz_qgis_plugin.core.errors import ModelError
from lcz_qgis_plugin.core.inference import engine_choice
from lcz_qgis_plugin.core.inference.engine import (
    CPU,
    OPENVINO_BF16,
    OPENVINO_F32,
    OPENVINO_INT8,
    Engine,
    clear_engine_cache,
    cpu_runs_bfloat16,
    import_openvino,
)
from lcz_qgis_plugin.core.model.card import ModelCard
from lcz_qgis_plugin.core.model.card_writer import write_model_card

pytestmark = pytest.mark.skipif(import_openvino() is None,
                                reason="openvino is not installed in this Python")

PASSED = {"same_class": 0.999, "patches": 900, "data": "val.h5"}


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """A cache folder of this test's own, and no loaded session from an earlier test."""
    folder = tmp_path / "user-cache"
    monkeypatch.setenv(engine_choice.CACHE_ENV, str(folder))
    clear_engine_cache()
    yield folder
    clear_engine_cache()


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    """A small CNN (3 channels, 8 px) and its int8 (QDQ) variant, quantized for real."""
    from training.precision import quantize_int8
    folder = tmp_path_factory.mktemp("choice")
    card = identity_card("cnn", channel_names(3), 8, cell_size=40.0)
    model = conv_probe_model(folder / "cnn.onnx", card, seed=2)
    patches = np.random.default_rng(0).normal(size=(64, 3, 8, 8)).astype(np.float32)
    variant = quantize_int8(model, patches, str(folder / "cnn.int8.onnx"))
    return folder, model, variant


def with_checks(probe, path, **checks) -> str:
    """A copy of the probe model whose card records ``checks`` (by precision)."""
    folder, model, _ = probe
    card = ModelCard.from_metadata_props({p.key: p.value for p in onnx.load(model).metadata_props})
    card.precision_checks = checks
    write_model_card(model, card, str(path))
    return str(path)


def int8_check(variant, **overrides):
    return dict(PASSED, file=os.path.basename(variant),
                sha256=engine_choice.file_sha256(variant), **overrides)


def choices(cache) -> dict:
    with open(cache / engine_choice.CACHE_FILE) as f:
        return json.load(f)["choices"]


def automatic(model):
    log = RecordingFeedback()
    engine = Engine(model, "auto", feedback=log)
    (line,) = [line for line in log.lines if "Automatic:" in line]
    return engine, line


# --- measured once, cached, measured again when the model changes ------------------------------

def test_first_use_measures_the_engines_that_keep_the_map_and_caches_the_choice(probe, cache):
    folder, model, _ = probe
    engine, line = automatic(model)
    assert engine.provider in (CPU, OPENVINO_F32)  # no passed check: float32 engines only
    assert "measured on this CPU against" in line
    (entry,) = choices(cache).values()
    assert set(entry["rates"]) == {"cpu", "openvino"}
    assert entry["engine"] == max(entry["rates"], key=entry["rates"].get)
    assert {CPU: "cpu", OPENVINO_F32: "openvino"}[engine.provider] == entry["engine"]
    (key,) = choices(cache)
    assert key.startswith(engine_choice.file_sha256(model))
    assert engine_choice.cpu_info()["name"] in key and "onnxruntime" in key
    assert "bf16:" in line and "int8: the model has no int8 variant" in line


def test_a_cache_hit_does_not_measure_again(probe, cache):
    folder, model, _ = probe
    first, _ = automatic(model)
    before = (cache / engine_choice.CACHE_FILE).read_bytes()
    clear_engine_cache()  # as a new QGIS session would start
    again, line = automatic(model)
    assert again.provider == first.provider
    assert "the choice of" in line and str(cache) in line
    assert (cache / engine_choice.CACHE_FILE).read_bytes() == before  # nothing measured


def test_a_changed_model_file_is_measured_again(probe, cache, tmp_path):
    copy = with_checks(probe, tmp_path / "m.onnx")
    automatic(copy)
    card = ModelCard.from_metadata_props({p.key: p.value for p in onnx.load(copy).metadata_props})
    card.version = "2"  # the file is rewritten: another hash
    write_model_card(copy, card, copy)
    clear_engine_cache()
    _, line = automatic(copy)
    assert "the choice of" not in line and "measured on this CPU" in line
    assert len(choices(cache)) == 2


def test_a_broken_cache_file_is_measured_over(probe, cache):
    cache.mkdir()
    (cache / engine_choice.CACHE_FILE).write_text("{not json")
    _, line = automatic(probe[1])
    assert "measured on this CPU" in line and len(choices(cache)) == 1


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(engine_choice.CACHE_ENV, str(tmp_path / "a"))
    assert engine_choice.cache_path() == str(tmp_path / "a" / engine_choice.CACHE_FILE)
    monkeypatch.delenv(engine_choice.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert engine_choice.cache_folder() == str(tmp_path / "xdg" / "lcz")


# --- bfloat16 and int8 ---------------------------------------------------------------------

@pytest.mark.skipif(not cpu_runs_bfloat16() or engine_choice.cpu_has_amx(),
                    reason="needs a CPU that executes bfloat16 without AMX, like the build "
                           "machine")
def test_without_amx_bfloat16_is_chosen_only_when_measured_faster(probe, cache, tmp_path):
    """The issue's CPU: AVX512-BF16 without AMX, where bfloat16 can be slower than float32.
    A passed check makes it a candidate, the measurement decides."""
    model = with_checks(probe, tmp_path / "bf16.onnx", bfloat16=PASSED)
    engine, line = automatic(model)
    (entry,) = choices(cache).values()
    rates = entry["rates"]
    assert set(rates) == {"cpu", "openvino", "openvino-bf16"}  # float32 measured too
    float32 = max(rates["cpu"], rates["openvino"])
    if engine.provider == OPENVINO_BF16:
        assert rates["openvino-bf16"] >= engine_choice.REDUCED_MARGIN * float32
    else:
        assert engine.provider in (CPU, OPENVINO_F32)
        assert "OpenVINO bf16" in line and "x" in line  # its measured ratio is logged


def test_features_settle_bfloat16_on_amx_only():
    assert engine_choice.cpu_has_amx() == ("amx_bf16" in engine_choice.cpu_info()["flags"])
    features = engine_choice.cpu_features()
    assert "AMX" in features and "AVX512-BF16" in features and "VNNI" in features


def test_pick_keeps_the_exact_engine_within_the_margin():
    reduced = {"openvino-bf16", "openvino-int8"}
    assert engine_choice.pick({"cpu": 440, "openvino": 590, "openvino-bf16": 370},
                              reduced) == "openvino"
    assert engine_choice.pick({"cpu": 440, "openvino": 590, "openvino-int8": 830},
                              reduced) == "openvino-int8"
    assert engine_choice.pick({"openvino": 590, "openvino-int8": 600}, reduced) == "openvino"


def test_a_passed_int8_variant_is_a_candidate_and_runs_as_int8(probe, cache, tmp_path):
    folder, model, variant = probe
    copy = with_checks(probe, folder / "with_int8.onnx", int8=int8_check(variant))
    engine, line = automatic(copy)
    (entry,) = choices(cache).values()
    assert "openvino-int8" in entry["rates"]
    assert entry["engine"] == engine_choice.pick(entry["rates"], {"openvino-int8"})
    forced = Engine(copy, "openvino-int8")
    assert forced.provider == OPENVINO_INT8
    assert forced.card.precision_checks["int8"]["file"] == "cnn.int8.onnx"  # the model's card
    x = np.random.default_rng(1).normal(size=(67, 3, 8, 8)).astype(np.float32)
    ref = Engine(copy, "cpu").probabilities(x)
    got = forced.probabilities(x)
    assert np.abs(got - ref).max() < 0.2 and not np.array_equal(got, ref)  # int8, not f32


def test_int8_device_refuses_a_model_without_its_variant(probe, tmp_path):
    folder, model, variant = probe
    with pytest.raises(ModelError, match="DEVICE is OpenVINO int8, but the model has no int8 "
                                         "variant.*check-precision.*Automatic or CPU"):
        Engine(model, "openvino-int8")
    elsewhere = with_checks(probe, tmp_path / "moved.onnx", int8=int8_check(variant))
    with pytest.raises(ModelError, match="its int8 variant cnn.int8.onnx is not beside it"):
        Engine(elsewhere, "openvino-int8")
    (tmp_path / "cnn.int8.onnx").write_bytes(open(model, "rb").read())  # another file
    with pytest.raises(ModelError, match="not the int8 variant its card lists"):
        Engine(elsewhere, "openvino-int8")
    _, line = automatic(elsewhere)  # Automatic leaves it out and says why
    assert "int8: cnn.int8.onnx beside it is not the int8 variant" in line


def test_int8_that_failed_its_check_is_forced_only_by_the_device(probe, cache):
    folder, model, variant = probe
    copy = with_checks(probe, folder / "failed_int8.onnx",
                       int8=int8_check(variant, same_class=0.95))
    _, line = automatic(copy)
    assert "int8: its check kept only 95.00 % of 900 patches" in line
    assert "openvino-int8" not in next(iter(choices(cache).values()))["rates"]
    log = RecordingFeedback()
    assert Engine(copy, "openvino-int8", feedback=log).provider == OPENVINO_INT8
    assert "Automatic would not" in log.lines[-1]


@pytest.mark.parametrize("entry,why", [
    ({"file": "m.int8.onnx"}, "needs 'file'"),
    ({"file": "../m.int8.onnx", "sha256": "0" * 64}, "needs 'file'"),
    ({"file": "m.int8.onnx", "sha256": "xyz"}, "needs 'file'"),
])
def test_the_card_names_its_int8_variant_by_file_name_and_hash(entry, why):
    card = identity_card("m", channel_names(2), 6)
    card.precision_checks = {"int8": dict(PASSED, **entry)}
    with pytest.raises(ModelError, match=why):
        card.to_metadata_props()
    card.precision_checks = {"int8": dict(PASSED, file="m.int8.onnx", sha256="ab" * 32)}
    assert card.passes_precision_check("int8")


# --- lcz:classify --------------------------------------------------------------------------

def test_classify_offers_int8_as_the_last_device_choice(qgis_app, probe, tmp_path):
    """DEVICE 6 runs the int8 variant; a model without one is refused with the fix; the
    earlier indices keep their meaning."""
    import processing
    from lcz_testing import write_stack
    from qgis.core import QgsProcessingException

    from lcz_qgis_plugin.algorithms.classify import DEVICE_LABELS
    from lcz_qgis_plugin.core.inference.engine import DEVICES
    assert DEVICES[:6] == ("auto", "cuda", "cpu", "openvino", "openvino-bf16", "cuda-fp16")
    assert DEVICES[6] == "openvino-int8" and len(DEVICE_LABELS) == len(DEVICES)
    assert "int8" in DEVICE_LABELS[6]
    folder, model, variant = probe
    copy = with_checks(probe, folder / "classify_int8.onnx", int8=int8_check(variant))
    scene = np.random.default_rng(4).normal(size=(3, 40, 40)).astype(np.float32)
    stack = write_stack(tmp_path / "stack.tif", scene, channel_names(3))
    results = processing.run("lcz:classify", {"INPUT": [stack], "MODEL": copy, "DEVICE": 6,
                                              "OUTPUT": str(tmp_path / "lcz.tif")})
    assert results["EXECUTION_PROVIDER"] == OPENVINO_INT8
    with pytest.raises(QgsProcessingException, match="no int8 variant.*check-precision"):
        processing.run("lcz:classify", {"INPUT": [stack], "MODEL": model, "DEVICE": 6,
                                        "OUTPUT": str(tmp_path / "none.tif")})
    assert not (tmp_path / "none.tif").exists()


def test_an_int8_model_runs_on_one_stream_copies(probe):
    """Two OpenVINO streams sometimes compiled an int8 model that was wrong in every run
    (see _OpenVinoBackend); the int8 model is compiled once per core, one stream each, and a
    quantized file is recognised as int8 whatever DEVICE asked for."""
    folder, model, variant = probe
    engine = Engine(variant, "openvino", threads=2)
    assert engine.provider == OPENVINO_INT8
    compiled = engine.backend.compiled
    assert len(compiled) == 2
    assert all(int(c.get_property("NUM_STREAMS")) == 1 for c in compiled)
    x = np.random.default_rng(5).normal(size=(9, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(engine.run(x), Engine(variant, "openvino", threads=1).run(x),
                               atol=1e-5)
    assert len(Engine(model, "openvino").backend.compiled) == 1  # float32: one, on streams


def test_a_candidate_that_cannot_run_is_left_out(probe, cache, tmp_path):
    """An int8 variant OpenVINO cannot read (here: not an ONNX file, with its hash recorded)
    does not stop the Automatic device; the others are measured and the log says why."""
    folder, model, _ = probe
    broken = tmp_path / "m.int8.onnx"
    broken.write_bytes(b"not an onnx model" * 100)
    copy = with_checks(probe, tmp_path / "m.onnx", int8=int8_check(str(broken)))
    engine, line = automatic(copy)
    assert engine.provider in (CPU, OPENVINO_F32)
    assert "OpenVINO int8 left out: OpenVINO" in line and "cannot read the model" in line
    assert set(next(iter(choices(cache).values()))["rates"]) == {"cpu", "openvino"}
