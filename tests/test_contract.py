"""The model contract: writing metadata into ONNX, reading and validating it."""

import json

import numpy as np
import onnx
import pytest
from lcz_testing import channel_names, identity_card, linear_probe_model

from lcz_qgis_plugin.core.errors import ModelError
from lcz_qgis_plugin.core.inference.engine import Engine
from lcz_qgis_plugin.core.model.card import (
    MAX_METADATA_CHARS,
    PATCH_SCHEMA_VERSION,
    PREFIX,
    TEMPERATURE_RANGE,
    ModelCard,
    standardise,
)
from lcz_qgis_plugin.core.model.card_writer import write_model_card


def test_card_round_trips_through_an_onnx_file(tmp_path):
    card = identity_card("msmla18", channel_names(3), 8, provenance={"dataset": "toy", "oa": 0.9},
                         class_codes=[2, 5, 11, 17], temperature=1.7)
    path, *_ = linear_probe_model(tmp_path / "m.onnx", card)
    props = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert props[PREFIX + "schema_version"] == str(PATCH_SCHEMA_VERSION)
    assert json.loads(props[PREFIX + "channels"]) == card.channels
    assert props[PREFIX + "name"] == "msmla18"  # plain strings stay readable
    assert json.loads(props[PREFIX + "class_names"]) == ["Compact mid-rise", "Open mid-rise",
                                                         "Dense trees", "Water"]
    engine = Engine(path, device="cpu")
    assert engine.card == card
    assert engine.provider == "CPUExecutionProvider"


def test_writer_keeps_foreign_metadata_and_replaces_its_own(tmp_path):
    card = identity_card("a", channel_names(2), 6)
    path, *_ = linear_probe_model(tmp_path / "m.onnx", card)
    model = onnx.load(path)
    entry = model.metadata_props.add()
    entry.key, entry.value = "producer_note", "kept"
    card.version = "2"
    write_model_card(model, card, tmp_path / "m2.onnx")
    props = [(p.key, p.value) for p in onnx.load(tmp_path / "m2.onnx").metadata_props]
    assert ("producer_note", "kept") in props
    assert [v for k, v in props if k == PREFIX + "version"] == ["2"]


def test_writer_refuses_a_graph_that_contradicts_the_card(tmp_path):
    card = identity_card("a", channel_names(2), 6)
    path, *_ = linear_probe_model(tmp_path / "m.onnx", card)
    wrong = identity_card("a", channel_names(3), 6)
    with pytest.raises(ModelError, match="input shape"):
        write_model_card(path, wrong)


def test_standardise_is_the_normalisation_after_scaling():
    """Training and evaluation read values already scaled (raw * scale + offset) and
    standardise them; the plugin folds both steps into one gain and bias: the same input."""
    card = identity_card("m", channel_names(3), 4, scale=[1e-4, 2.0, 1.0],
                         offset=[0.0, -3.0, 0.5], mean=[0.1, 5.0, -2.0], std=[0.05, 4.0, 3.0])
    raw = np.random.default_rng(0).uniform(0, 3000, (5, 3, 4, 4)).astype(np.float32)
    scaled = (raw * np.float32(card.scale)[:, None, None]
              + np.float32(card.offset)[:, None, None])
    np.testing.assert_allclose(card.standardise(scaled), card.normalise(raw), rtol=1e-4,
                               atol=1e-4)
    np.testing.assert_array_equal(card.standardise(scaled),
                                  standardise(scaled, card.mean, card.std))


@pytest.mark.parametrize("kind", ["logits", "probabilities"])
@pytest.mark.parametrize("temperature", [1.0, 1.7])
def test_evaluation_uses_the_cards_calibrated_softmax(kind, temperature):
    """softmax(z / T), z = logits or log(probabilities): one rule for the plugin (float32)
    and the training package's evaluation (float64, from the scores it keeps for fitting T)."""
    from training.evaluate import scores_of
    from training.evaluate import softmax as evaluation_softmax
    card = identity_card("m", channel_names(2), 4, class_codes=[2, 8, 11], output_kind=kind,
                         temperature=temperature)
    z = np.random.default_rng(1).normal(size=(6, 3)) * 3
    expected = np.exp(z / temperature) / np.exp(z / temperature).sum(axis=1, keepdims=True)
    output = z if kind == "logits" else np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    output = output.astype(np.float32)
    p32, p64 = card.probabilities(output), card.probabilities(output, dtype=np.float64)
    assert p32.dtype == np.float32 and p64.dtype == np.float64
    np.testing.assert_allclose(p32, expected, atol=1e-5)
    np.testing.assert_allclose(p64, expected, atol=1e-5)  # z itself is in float32
    evaluated = evaluation_softmax(scores_of(output, card), card.temperature)
    np.testing.assert_allclose(evaluated, p64, rtol=1e-12, atol=1e-15)
    if temperature != 1.0 or kind == "logits":
        np.testing.assert_array_equal(evaluated, p64)


def valid_props():
    return identity_card("m", channel_names(2), 8).to_metadata_props()


@pytest.mark.parametrize("change,message", [
    ({PREFIX + "schema_version": None}, "carries no LCZ model metadata"),
    ({PREFIX + "schema_version": "99"}, "Update the LCZ plugin"),
    ({PREFIX + "channels": None}, "lacks the metadata key 'lcz.channels'"),
    ({PREFIX + "channels": "[\"a\", \"a\"]"}, "more than once"),
    ({PREFIX + "channels": "S2:B02"}, "not valid JSON"),
    ({PREFIX + "mean": "[0.0]"}, "one number per channel"),
    ({PREFIX + "std": "[1.0, 0.0]"}, "must be positive"),
    ({PREFIX + "patch_size": "0"}, "positive integer"),
    ({PREFIX + "patch_size": "\"48\""}, "should be a whole number"),
    ({PREFIX + "class_codes": "[1, 18]"}, "not LCZ codes"),
    ({PREFIX + "class_codes": "[1, 1]"}, "lists a class twice"),
    ({PREFIX + "output_kind": "scores"}, "output_kind"),
    ({PREFIX + "temperature": "-1"}, "temperature"),
    ({PREFIX + "precision_checks": "[]"}, "should be a JSON object"),
    ({PREFIX + "precision_checks": '{"bfloat16": {"same_class": 1.5, "patches": 10}}'},
     "'bfloat16' needs 'same_class'"),
    ({PREFIX + "precision_checks": '{"bfloat16": {"same_class": 0.99}}'},
     "'bfloat16' needs 'same_class'"),
    # the bounds of issue 12 (model files are untrusted input), just beyond each
    ({PREFIX + "patch_size": "513"}, "'lcz.patch_size' is 513.*at most 512"),
    ({PREFIX + "temperature": "0.049"}, "'lcz.temperature' is 0.049.*from 0.05 to 20"),
    ({PREFIX + "temperature": "20.5"}, "'lcz.temperature' is 20.5"),
    ({PREFIX + "pixel_size": "1001"}, "'lcz.pixel_size' is 1001.*from 0.1 to 1000"),
    ({PREFIX + "cell_size": "9.5"}, "'lcz.cell_size' is 9.5.*at least the pixel size"),
    ({PREFIX + "cell_size": "100001"}, "'lcz.cell_size'"),
    ({PREFIX + "channels": json.dumps([f"c{i}" for i in range(257)]),
      PREFIX + "scale": json.dumps([1] * 257)}, "lists 257 channels; .* at most 256"),
    ({PREFIX + "channels": '["S2:B02", "S2:B03\\n"]'}, "channel name .* control characters"),
    ({PREFIX + "version": "v" * 201}, "'lcz.version' is 201 characters long"),
    ({PREFIX + "schema_version": "9" * 400}, "invalid metadata schema version a whole number"),
    ({PREFIX + "mean": "[1e10, 0]"}, "'lcz.mean' holds 10000000000.0; .*at most 1e\\+09"),
    ({PREFIX + "std": "[1e-10, 1]"}, "'lcz.std' must be positive .*at least 1e-09"),
    ({PREFIX + "class_codes": "[1, 2, 2, 3, 3]"}, "lists a class twice \\(2, 3\\)"),
    ({PREFIX + "provenance": '{"a": ' * 21 + "1" + "}" * 21}, "nests JSON more than 20"),
    ({PREFIX + "provenance": json.dumps({"note": "x" * MAX_METADATA_CHARS})},
     "more than the 1,000,000 a model card may hold"),
    ({PREFIX + "precision_checks": '{"bfloat16": {"same_class": 1, "patches": 10000000000}}'},
     "'patches' \\(a count from 1 to 1,000,000,000\\)"),
])
def test_invalid_metadata_is_refused_with_a_reason(change, message):
    props = valid_props()
    for key, value in change.items():
        if value is None:
            props.pop(key)
        else:
            props[key] = value
    with pytest.raises(ModelError, match=message) as info:
        ModelCard.from_metadata_props(props, source="the model x.onnx")
    assert "x.onnx" in str(info.value)
    assert len(str(info.value)) < 1000


def test_cards_at_the_bounds_stay_valid():
    """Every bound admits the largest real value: a card exactly at the limits round-trips."""
    names = [f"S2:B{i:03d}" + "x" * 190 for i in range(256)]
    card = identity_card("m" * 200, names, 512, pixel_size=0.1, cell_size=100_000.0,
                         class_codes=list(range(1, 18)), temperature=TEMPERATURE_RANGE[0],
                         provenance=json.loads('{"a": ' * 19 + "1" + "}" * 19),
                         mean=[-1e9] * 256, std=[1e-9] * 256)
    assert ModelCard.from_metadata_props(card.to_metadata_props()) == card
    card.temperature, card.pixel_size, card.cell_size = TEMPERATURE_RANGE[1], 1000.0, 1000.0
    assert ModelCard.from_metadata_props(card.to_metadata_props()) == card


def test_the_writer_refuses_what_the_reader_would():
    card = identity_card("a", channel_names(2), 6, provenance={"log": "x" * MAX_METADATA_CHARS})
    with pytest.raises(ModelError, match="more than the 1,000,000 a model card may hold"):
        card.to_metadata_props()
    card = identity_card("a", channel_names(2), 6, temperature=0.02)
    with pytest.raises(ModelError, match="'lcz.temperature' is 0.02"):
        card.to_metadata_props()


def test_calibration_fits_only_temperatures_the_contract_accepts():
    """calibrate's search range is the contract's: a fitted T is never refused later, and a T
    at the bound is said, not silently stored."""
    pytest.importorskip("scipy")
    import numpy as np

    from training.evaluate import fit_temperature, temperature_bound_note
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 400)
    separable = np.zeros((400, 4))
    separable[np.arange(400), labels] = 1.0  # always right, barely confident: wants T -> 0
    noise = rng.normal(size=(400, 4)) * 1000  # confidently random: wants T -> infinity
    noisy = rng.normal(size=(400, 4))
    noisy[np.arange(400), labels] += 2.0
    low, high = TEMPERATURE_RANGE
    assert fit_temperature(separable, labels) == pytest.approx(low, rel=1e-3)
    assert fit_temperature(noise, labels) == pytest.approx(high, rel=1e-3)
    for z in (separable, noise):
        t = fit_temperature(z, labels)
        assert low <= t <= high and "model contract's bound" in temperature_bound_note(t)
    t = fit_temperature(noisy, labels)
    assert low < t < high and temperature_bound_note(t) is None


@pytest.mark.parametrize("check,passes", [
    (None, False),
    ({"same_class": 1.0, "patches": 551}, True),
    ({"same_class": 0.995, "patches": 200}, True),      # exactly the bar
    ({"same_class": 0.99, "patches": 551}, False),      # the same map on 99 % is not enough
    ({"same_class": 1.0, "patches": 50}, False),        # too few patches to tell
])
def test_precision_checks_round_trip_and_decide_bfloat16(tmp_path, check, passes):
    card = identity_card("a", channel_names(2), 6)
    if check:
        card.precision_checks = {"bfloat16": dict(check, data="val.h5")}
    path, *_ = linear_probe_model(tmp_path / "m.onnx", card)
    props = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert (PREFIX + "precision_checks" in props) == bool(check)  # absent unless measured
    read = Engine(path, device="cpu").card
    assert read == card
    assert read.passes_precision_check("bfloat16") is passes
    assert not read.passes_precision_check("int8")


def dense_card(**overrides) -> ModelCard:
    values = dict(model_kind="dense", output_stride=1, receptive_field=44, tile_multiple=8)
    values.update(overrides)
    return identity_card("unet", channel_names(3), 64, **values)


def test_a_dense_card_round_trips_as_schema_2_and_a_patch_card_stays_schema_1():
    props = dense_card().to_metadata_props()
    assert props[PREFIX + "schema_version"] == "2"
    assert props[PREFIX + "model_kind"] == "dense"
    read = ModelCard.from_metadata_props(props)
    assert read == dense_card() and read.is_dense and read.schema_version == 2
    assert read.input_shape == (None, 3, None, None)
    assert read.output_shape == (None, 17, None, None)
    patch = identity_card("p", channel_names(3), 8).to_metadata_props()
    assert PREFIX + "model_kind" not in patch and patch[PREFIX + "schema_version"] == "1"
    assert ModelCard.from_metadata_props(patch).model_kind == "patch"  # absent: patch


@pytest.mark.parametrize("change,message", [
    ({"model_kind": "tiles"}, "'lcz.model_kind' is 'tiles'"),
    ({"receptive_field": 0}, "'lcz.receptive_field' is 0; a dense model needs"),
    ({"output_stride": 3, "tile_multiple": 8}, "must be a multiple of 'lcz.output_stride'"),
    ({"tile_multiple": 10 ** 6}, "'lcz.tile_multiple' is 1000000"),
])
def test_dense_fields_are_bounded(change, message):
    props = dense_card().to_metadata_props()
    props.update({PREFIX + key: value if isinstance(value, str) else json.dumps(value)
                  for key, value in change.items()})
    with pytest.raises(ModelError, match=message):
        ModelCard.from_metadata_props(props)


def test_dense_fields_on_a_patch_card_and_a_dense_card_of_schema_1_are_refused():
    props = identity_card("p", channel_names(3), 8).to_metadata_props()
    with pytest.raises(ModelError, match="belong to dense models"):
        ModelCard.from_metadata_props({**props, PREFIX + "receptive_field": "40"})
    dense = {**dense_card().to_metadata_props(), PREFIX + "schema_version": "1"}
    with pytest.raises(ModelError, match="dense model's card must use metadata schema 2"):
        ModelCard.from_metadata_props(dense)


def test_shape_check_knows_both_kinds():
    card = dense_card()
    assert card.shape_mismatch(["N", 3, "H", "W"], ["N", 17, "H", "W"]) is None
    assert "output shape ['N', 17] does not match the card (N, 17, H, W)" in \
        card.shape_mismatch(["N", 3, "H", "W"], ["N", 17])
    patch = identity_card("p", channel_names(3), 8)
    assert "input shape ['N', 4, 8, 8] does not match the card (N, 3, 8, 8)" in \
        patch.shape_mismatch(["N", 4, 8, 8], ["N", 17])
