"""Training data: So2Sat h5 and patch-file reading, channel selection, splits, statistics,
class weights, loss, learning-rate schedules, augmentation and batch sharding."""

import h5py
import numpy as np
import pytest
import torch
from lcz_testing import RecordingFeedback
from torch.nn import functional as F
from training_data import (  # noqa: F401
    S2_NAMES,
    TOY_CODES,
    one_torch_thread,
    write_patch_file,
    write_so2sat,
)

from lcz_qgis_plugin.core.channels import SO2SAT_BANDS, SO2SAT_CHANNELS, default_scale
from lcz_qgis_plugin.core.model.card import ModelCard
from training import datasets as ds
from training.train import (
    TrainingError,
    learning_rate,
    load_config_file,
    make_config,
    soft_cross_entropy,
)


def test_so2sat_channels_are_chosen_by_name(tmp_path):
    path = write_so2sat(tmp_path / "s.h5", n=20, patch=8)
    source = ds.So2SatFile(path, ["S2:B04", "S1:VV_real", "S2:B12"])
    rows = np.array([1, 5, 6])
    x = source.read(rows)
    with h5py.File(path) as f:
        np.testing.assert_array_equal(x[:, 0], f["sen2"][rows][..., 2])
        np.testing.assert_array_equal(x[:, 1], f["sen1"][rows][..., 2])
        np.testing.assert_array_equal(x[:, 2], f["sen2"][rows][..., 9])
        np.testing.assert_array_equal(source.codes, f["label"][:].argmax(axis=1) + 1)
    assert source.card_scale == [1e-4, 1.0, 1e-4] and not source.has_soft_labels
    assert source.patch_size == 8


def test_so2sat_soft_labels_are_detected_and_used(tmp_path):
    path = write_so2sat(tmp_path / "s.h5", n=12, patch=8, soft=True)
    source = ds.So2SatFile(path)
    assert source.has_soft_labels
    classes = [2, 3, 8, 9, 11, 12]
    split = ds.make_split(source, None, classes, "training")
    reader = ds.BatchReader(source, split, np.zeros(10), np.ones(10), classes, soft_labels=True)
    _, labels, target = reader[np.arange(4)]
    np.testing.assert_allclose(target.sum(dim=1), 1.0, atol=1e-6)
    assert torch.equal(target.argmax(dim=1), labels)
    assert torch.allclose(target.max(dim=1).values, torch.tensor(0.75))


@pytest.mark.parametrize("keys,match", [
    (("sen2", "sen1"), "no 'label' dataset"),
    (("sen1", "label"), "no 'sen2' dataset, needed for channel S2:B02"),
])
def test_missing_h5_keys_are_named(tmp_path, keys, match):
    path = write_so2sat(tmp_path / "s.h5", n=8, patch=8, keys=keys)
    with pytest.raises(ds.DataError, match=match):
        ds.So2SatFile(path)


def test_unknown_channel_names_are_refused_with_the_choices(tmp_path):
    path = write_so2sat(tmp_path / "s.h5", n=8, patch=8)
    with pytest.raises(ds.DataError, match="'S2:B01' is not in So2Sat.*S2:B02"):
        ds.So2SatFile(path, ["S2:B01"])
    patches = write_patch_file(tmp_path / "p.h5", n=8, patch=8)
    with pytest.raises(ds.DataError, match="OSM:building_fraction not in"):
        ds.PatchFile(patches, ["S2:B02", "OSM:building_fraction"])


def test_patch_file_is_read_in_physical_units_with_its_split(tmp_path):
    path = write_patch_file(tmp_path / "p.h5", n=40, patch=8)
    source, rows = ds.open_source(path + "#validation")
    assert isinstance(source, ds.PatchFile) and source.channels == S2_NAMES
    assert source.card_scale == [1e-4] * 10
    with h5py.File(path) as f:
        expected_rows = np.flatnonzero(f["split"][:] == 1)
        np.testing.assert_allclose(source.read(rows[:3]),
                                   f["patches"][expected_rows[:3]] * 1e-4, rtol=1e-6)
    np.testing.assert_array_equal(rows, expected_rows)
    with pytest.raises(ds.DataError, match="unknown split 'val'"):
        ds.open_source(path + "#val")


def test_polygon_split_keeps_every_polygon_on_one_side():
    polygons = np.repeat(np.arange(30), 7)
    train, val = ds.polygon_split(polygons, 0.2, seed=3)
    assert not set(polygons[train]) & set(polygons[val])
    assert len(train) + len(val) == len(polygons)
    assert 0.2 <= len(val) / len(polygons) < 0.3


def test_polygon_split_is_the_extraction_rule_per_class():
    """--val-fraction holds out polygons as lcz:extractpatches does (one rule): per class,
    sized in patches, at least one validation polygon for a class with two polygons, the
    same polygons for the same seed; a class with one polygon stays in training, said so."""
    from lcz_qgis_plugin.core.training_data.extraction import split_polygons
    sizes = {0: 2, 1: 9, 2: 3, 3: 5, 4: 8, 5: 1, 6: 6, 7: 4, 8: 7}
    polygons = np.repeat(list(sizes), list(sizes.values()))
    codes = np.repeat([2, 2, 2, 8, 8, 8, 8, 11, 17], list(sizes.values()))
    codes[1] = 17  # one patch of polygon 0 (its other patch is class 2)
    feedback = RecordingFeedback()
    train, val = ds.polygon_split(polygons, 0.3, 5, codes, feedback)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(len(polygons)))
    held = set(polygons[val].tolist())
    assert not held & set(polygons[train].tolist())
    assert held & {0, 1, 2} and held & {3, 4, 5, 6} and not held & {7, 8}
    expected = split_polygons({2: [0, 1, 2], 8: [3, 4, 5, 6], 11: [7], 17: [8]}, 0.3, 0.0,
                              np.random.default_rng(5), RecordingFeedback(), sizes)
    assert held == {p for p, s in expected.items() if s == 1}
    assert any("A (1), G (1)" in line for line in feedback.warnings)  # LCZ 11, 17


def test_batches_are_standardised_by_the_model_cards_rule(tmp_path):
    """The model sees in training what the plugin gives it: the card's (value - mean) / std,
    bit for bit."""
    path = write_patch_file(tmp_path / "p.h5", n=12, patch=8)
    source, rows = ds.open_source(path)
    split = ds.make_split(source, rows, list(TOY_CODES), "training")
    mean, std = ds.channel_statistics(source, split.rows)
    card = ModelCard(name="m", channels=source.channels, patch_size=8, scale=source.card_scale,
                     offset=source.card_offset, mean=[float(v) for v in mean],
                     std=[float(v) for v in std], class_codes=list(TOY_CODES))
    x, _, _ = ds.BatchReader(source, split, mean, std, list(TOY_CODES))[np.arange(5)]
    expected = card.standardise(source.read(split.rows[:5]))
    np.testing.assert_array_equal(x.numpy(), expected)
    with h5py.File(path) as f:  # and the plugin's gain and bias on the raw DN give the same
        raw = f["patches"][split.rows[:5]]
    np.testing.assert_allclose(card.normalise(raw), expected, rtol=1e-5, atol=1e-5)


def test_so2sat_channel_names_and_scales_are_the_cores():
    assert ds.S2_CHANNELS == list(SO2SAT_CHANNELS) == [f"S2:{b}" for b in SO2SAT_BANDS]
    assert [default_scale(c) for c in ("S2:B8A", "s2:b02", "S1:VV_real", "DSM:height")] == \
        [1e-4, 1e-4, 1.0, 1.0]


def test_class_weights_are_inverse_frequencies():
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
    # w_c = N / (K n_c) = 10 / (3 * [6, 3, 1])
    np.testing.assert_allclose(ds.class_weights(labels, 3), [10 / 18, 10 / 9, 10 / 3],
                               rtol=1e-6)
    with pytest.raises(ds.DataError, match="no training sample"):
        ds.class_weights(labels, 4)


def test_an_empty_requested_class_is_refused_by_name():
    with pytest.raises(ds.DataError, match=r"7 \(Lightweight low-rise\) have no training"):
        ds.choose_classes(np.array([2, 8, 11]), [2, 7, 8, 11], "train.h5")
    assert ds.choose_classes(np.array([11, 2, 2]), None, "x") == [2, 11]


def test_channel_statistics_match_numpy(tmp_path):
    path = write_so2sat(tmp_path / "s.h5", n=30, patch=8)
    source = ds.So2SatFile(path)
    rows = np.arange(3, 27)
    mean, std = ds.channel_statistics(source, rows, chunk=7)
    with h5py.File(path) as f:
        x = f["sen2"][3:27].astype(np.float64)
    np.testing.assert_allclose(mean, x.mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(std, x.std(axis=(0, 1, 2)), rtol=1e-4)


def test_weighted_soft_cross_entropy_equals_torch_for_hard_labels():
    torch.manual_seed(0)
    logits, labels = torch.randn(9, 4), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 3])
    w = torch.tensor([0.5, 1.0, 2.0, 4.0])
    onehot = F.one_hot(labels, 4).float()
    assert torch.allclose(soft_cross_entropy(logits, onehot, w),
                          F.cross_entropy(logits, labels, weight=w))
    assert torch.allclose(soft_cross_entropy(logits, onehot), F.cross_entropy(logits, labels))
    soft = torch.softmax(torch.randn(9, 4), dim=1)
    expected = -(soft * torch.log_softmax(logits, 1)).sum(1).mean()
    assert torch.allclose(soft_cross_entropy(logits, soft), expected)


def test_learning_rate_schedules():
    paper = make_config()
    assert (paper.optimizer, paper.lr, paper.decay, paper.batch_size, paper.patience) == \
        ("adam", 0.002, 0.004, 32, 15)
    assert learning_rate(paper, 0, 0) == 0.002
    assert learning_rate(paper, 250, 3) == pytest.approx(0.002 / 2)  # Keras: lr/(1+decay*t)
    code = make_config(overrides={"setup": "authors-code"})
    assert code.optimizer == "nadam"
    assert learning_rate(code, 999, 4) == pytest.approx(0.001)
    assert learning_rate(code, 999, 5) == pytest.approx(0.001 * 0.004)


def test_config_file_and_overrides(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('[train]\nmodel = "msmla50"\nepochs = 7\nlr = 0.01\n')
    config = make_config(load_config_file(str(toml)), {"epochs": 3, "lr": None})
    assert (config.model, config.epochs, config.lr) == ("msmla50", 3, 0.01)
    bad = tmp_path / "bad.json"
    bad.write_text('{"epochz": 3}')
    with pytest.raises(TrainingError, match="unknown key.*epochz"):
        load_config_file(str(bad))


def test_train_options_are_the_config_fields():
    """Each TrainConfig field is a command-line option (but the two config-file-only ones),
    with its switch style; lists are split at commas; unset options stay None."""
    from training.cli import build_parser
    from training.config import TrainConfig, given_options
    parser = build_parser()
    train_parser = parser._subparsers._group_actions[0].choices["train"]
    flags = {a.dest for a in train_parser._actions} - {"help", "config", "resume"}
    assert set(TrainConfig.fields()) - flags == {"step_every", "step_factor"}
    assert flags <= set(TrainConfig.fields())
    args = parser.parse_args([
        "train", "--model", "sen2lcz", "--no-class-weights", "--no-soft-labels", "--augment",
        "--drop-unknown-validation", "--no-progress", "--classes", "2, 8", "--channels",
        "S2:B02,S2:B03", "--val-fraction", "0.3", "--epochs", "7", "--amp", "off"])
    given = given_options(args)
    assert (given["class_weights"], given["soft_labels"], given["augment"]) == \
        (False, False, True)
    assert given["drop_unknown_validation"] is True and given["progress"] is False
    assert given["classes"] == [2, 8] and given["channels"] == ["S2:B02", "S2:B03"]
    assert (given["val_fraction"], given["epochs"], given["lr"]) == (0.3, 7, None)
    config = make_config({"lr": 0.01, "epochs": 3}, given)
    assert (config.model, config.lr, config.epochs, config.amp) == ("sen2lcz", 0.01, 7, "off")
    assert make_config(None, given_options(parser.parse_args(["train"]))) == make_config()
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--progress"])  # only --no-progress exists


def test_flips_and_rotations_only_rearrange_each_patch():
    torch.manual_seed(1)
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4).repeat(8, 1, 1, 1)
    y = ds.flip_rotate(x)
    assert not torch.equal(x, y)
    for a, b in zip(x, y):
        variants = [torch.rot90(v, k, dims=(-2, -1)) for v in (a, a.flip(-1)) for k in range(4)]
        assert any(torch.equal(b, v) for v in variants)


def test_batches_are_sorted_and_ranks_share_the_data_without_overlap():
    ranks = [list(ds.ShardedBatches(103, 10, shuffle=True, seed=4, rank=r, world=2))
             for r in range(2)]
    assert len(ranks[0]) == len(ranks[1])
    seen = [np.concatenate(r) for r in ranks]
    assert not set(seen[0]) & set(seen[1]) and len(seen[0]) == len(seen[1]) == 51
    assert all(np.all(np.diff(b) > 0) for r in ranks for b in r)
    evaluation = [np.concatenate(list(ds.ShardedBatches(103, 10, False, rank=r, world=2,
                                                         even=False))) for r in range(2)]
    assert sorted(np.concatenate(evaluation).tolist()) == list(range(103))


def test_validation_classes_unknown_to_the_model_are_refused_or_dropped(tmp_path, capsys):
    """Validation areas from another city may hold classes the training city lacks."""
    path = write_so2sat(tmp_path / "s.h5", n=12, patch=8)
    source = ds.So2SatFile(path)
    present = sorted(set(source.codes.tolist()))
    classes = present[1:]  # the first class is unknown to this "model"
    with pytest.raises(ds.DataError, match="--drop-unknown-validation"):
        ds.make_split(source, None, classes, "validation")
    split = ds.make_split(source, None, classes, "validation", drop_unknown=True)
    kept = source.codes[split.rows]
    assert present[0] not in kept and len(kept) == int((source.codes != present[0]).sum())
    assert [classes[i] for i in split.labels] == kept.tolist()
    assert "left out" in capsys.readouterr().out
