"""The model contract: writing metadata into ONNX, reading and validating it."""

import json

import onnx
import pytest

from lcz_qgis_plugin.core.contract import PREFIX, SCHEMA_VERSION, ModelCard
from lcz_qgis_plugin.core.contract_writer import write_model_card
from lcz_qgis_plugin.core.engine import Engine
from lcz_qgis_plugin.core.errors import ModelError
from lcz_testing import channel_names, identity_card, linear_probe_model


def test_card_round_trips_through_an_onnx_file(tmp_path):
    card = identity_card("msmla18", channel_names(3), 8, provenance={"dataset": "toy", "oa": 0.9},
                         class_codes=[2, 5, 11, 17], temperature=1.7)
    path, *_ = linear_probe_model(tmp_path / "m.onnx", card)
    props = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert props[PREFIX + "schema_version"] == str(SCHEMA_VERSION)
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
