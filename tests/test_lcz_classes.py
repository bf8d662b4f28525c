"""The LCZ class table: codes, aliases and colours in one place."""

import pytest

from lcz_qgis_plugin.core.lcz_classes import (
    BUILT_CODES,
    LCZ_CLASSES,
    NATURAL_CODES,
    lcz_class,
    parse_lcz_code,
)


def test_seventeen_classes_with_wudapt_colours():
    assert [c.code for c in LCZ_CLASSES] == list(range(1, 18))
    assert BUILT_CODES == tuple(range(1, 11)) and NATURAL_CODES == tuple(range(11, 18))
    assert lcz_class(1).colour == "#8C0000" and lcz_class(17).colour == "#6A6AFF"
    assert lcz_class(11).letter == "A" and lcz_class(11).name == "Dense trees"
    assert lcz_class(15).rgb == (0, 0, 0)
    assert len({c.colour for c in LCZ_CLASSES}) == 17


@pytest.mark.parametrize("label,code", [
    (1, 1), ("10", 10), (11, 11), (17, 17), (101, 11), ("107", 17), ("A", 11), ("g", 17),
    (" C ", 13), (14.0, 14), ("104.0", 14), ("LCZ 3", 3), ("LCZE", 15),
])
def test_all_three_codings_are_understood(label, code):
    assert parse_lcz_code(label) == code


@pytest.mark.parametrize("label", [0, 18, 100, 108, "H", "", 3.5, None, True, "urban"])
def test_unknown_labels_are_refused(label):
    with pytest.raises(ValueError, match="LCZ"):
        parse_lcz_code(label)
