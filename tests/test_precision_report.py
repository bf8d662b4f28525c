"""The precision check lines of ``python -m training export`` / ``check-precision`` say what
they mean: a share that passed over too few patches reads as "too few", not as "below"."""

from training.precision import describe

CHECK = {"data": "patches.h5#validation", "max_probability_difference": 0.004}


def test_a_full_share_over_too_few_patches_reads_as_too_few():
    line = describe(dict(CHECK, same_class=1.0, patches=33))
    assert "100.00 % of 33 patches" in line
    assert "only 33 patches: too few to trust (at least 200 needed)" in line
    assert "below" not in line and "will not use it" in line


def test_a_low_share_reads_as_below_the_required_share():
    line = describe(dict(CHECK, same_class=0.97, patches=4096))
    assert "below the required 99.5 % of same classes" in line
    assert "too few" not in line


def test_both_shortfalls_are_named_and_a_pass_says_passes():
    both = describe(dict(CHECK, same_class=0.9, patches=10), "bfloat16")
    assert "below the required 99.5 %" in both and "only 10 patches" in both
    passed = describe(dict(CHECK, same_class=0.999, patches=512))
    assert "passes:" in passed and "below" not in passed and "too few" not in passed


def test_a_dense_check_counts_cells_and_names_its_pixels():
    line = describe(dict(CHECK, same_class=1.0, patches=13, unit="cells", cells=13,
                         pixels=1352, pixel_same_class=0.999))
    assert "100.00 % of 13 cells of patches.h5#validation, 99.90 % of its 1352 labelled " \
           "pixels" in line
    assert "only 13 cells: too few to trust (at least 200 needed)" in line
    assert "patches:" not in line and "will not use it" in line
