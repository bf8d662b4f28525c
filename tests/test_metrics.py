"""LCZ metrics checked against confusion matrices worked out by hand."""

import math

import numpy as np
import pytest

from lcz_qgis_plugin.core.assessment import metrics
from lcz_qgis_plugin.core.assessment.metrics import accuracy_scores, calibration, confusion_matrix


def test_wa_weights_are_the_symmetric_bechtel_matrix():
    w = metrics.WA_WEIGHTS
    assert w.shape == (17, 17)
    assert np.array_equal(w, w.T)
    assert np.all(np.diag(w) == 1)
    assert w[0, 1] == 0.92 and w[0, 13] == 0 and w[14, 7] == 0.50 and w[16, 15] == 0.92


def test_confusion_matrix_skips_nodata_and_orders_rows_by_reference():
    ref = np.array([1, 1, 2, 17, 0, 5, 3])
    pred = np.array([1, 2, 2, 17, 4, 0, 101])  # 0 and 101 are not codes: pairs skipped
    cm = confusion_matrix(ref, pred)
    assert cm.sum() == 4
    assert cm[0, 0] == 1 and cm[0, 1] == 1 and cm[1, 1] == 1 and cm[16, 16] == 1


def test_scores_of_a_hand_made_matrix():
    # 10 samples: reference 1 (x4): predicted 1,1,1,2 ; reference 2 (x2): 2,1 ;
    # reference A=11 (x3): 11,11,14 ; reference G=17 (x1): predicted 1.
    ref = [1, 1, 1, 1, 2, 2, 11, 11, 11, 17]
    pred = [1, 1, 1, 2, 2, 1, 11, 11, 14, 1]
    s = accuracy_scores(confusion_matrix(ref, pred))
    assert s["samples"] == 10
    assert s["oa"] == pytest.approx(6 / 10)
    # WA: correct 6*1 + (1->2) .92 + (2->1) .92 + (11->14) .67 + (17->1) 0
    assert s["wa"] == pytest.approx((6 + 0.92 + 0.92 + 0.67) / 10)
    # built block: rows/cols 1-10 hold 1->1 x3, 1->2, 2->2, 2->1: 4/6
    assert s["oa_bu"] == pytest.approx(4 / 6)
    # natural block: 11->11 x2, 11->14: 2/3 (17->1 crosses blocks)
    assert s["oa_n"] == pytest.approx(2 / 3)
    # built/natural: only 17->1 is wrong
    assert s["oa_built_vs_natural"] == pytest.approx(9 / 10)
    # kappa: po=.6; row sums 1:4 2:2 11:3 17:1 ; col sums 1:5 2:2 11:2 14:1
    pe = (4 * 5 + 2 * 2 + 3 * 2) / 100
    assert s["kappa"] == pytest.approx((0.6 - pe) / (1 - pe))
    # F1: class 1 tp3 fp2 fn1 -> 6/9; class 2 tp1 fp1 fn1 -> .5; 11: tp2 fp0 fn1 -> .8;
    # 14: tp0 fp1 -> 0; 17: tp0 fn1 -> 0
    assert s["f1"]["1"] == pytest.approx(6 / 9)
    assert s["f1"]["2"] == pytest.approx(0.5)
    assert s["f1"]["11"] == pytest.approx(0.8)
    assert s["f1"]["14"] == 0 and s["f1"]["17"] == 0
    assert math.isnan(s["f1"]["5"])
    assert s["f1_macro"] == pytest.approx((6 / 9 + 0.5 + 0.8 + 0 + 0) / 5)
    assert s["f1_weighted"] == pytest.approx((4 * 6 / 9 + 2 * 0.5 + 3 * 0.8 + 0) / 10)
    assert s["support"]["1"] == 4


def test_perfect_map_and_empty_blocks():
    s = accuracy_scores(confusion_matrix([3, 3, 6], [3, 3, 6]))
    assert s["oa"] == 1 and s["wa"] == 1 and s["kappa"] == 1 and s["oa_bu"] == 1
    assert math.isnan(s["oa_n"])


def test_calibration_by_hand():
    # 4 bins of width .25: samples at .1 (wrong), .6 (right), .6 (wrong), .9 (right)
    c = calibration([0.1, 0.6, 0.6, 0.9], [False, True, False, True], bins=4)
    # bin0: conf .1 acc 0 gap .1 (1 sample); bin2: conf .6 acc .5 gap .1 (2); bin3: .9 vs 1 gap .1
    assert c["ece"] == pytest.approx((0.1 + 2 * 0.1 + 0.1) / 4)
    assert c["mce"] == pytest.approx(0.1)
    assert c["table"][1]["samples"] == 0 and math.isnan(c["table"][1]["accuracy"])
    assert c["bins"] == 4
    assert calibration([1.0, 0.0], [True, False], bins=10)["ece"] == pytest.approx(0)


def test_format_percent():
    assert metrics.format_percent(0.871) == "87.1 %"
    assert metrics.format_percent(float("nan")) == "n/a"
