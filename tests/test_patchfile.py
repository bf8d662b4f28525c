"""The patch-file schema: round trip, atomic writing, clear refusals."""

import os

import h5py
import numpy as np
import pytest

from lcz_qgis_plugin.core.errors import InputError
from lcz_qgis_plugin.core.training_data.patch_file import (
    PatchFileInfo,
    PatchWriter,
    open_patch_file,
)


def _info():
    return PatchFileInfo(channels=["S2:B02", "S2:B03"], patch_size=8, pixel_size=10,
                         cell_size=100, scale=[1e-4, 1e-4], offset=[0, 0], crs="EPSG:32633",
                         source={"stack": "city.tif"})


def test_round_trip(tmp_path):
    path = str(tmp_path / "p.h5")
    rng = np.random.default_rng(0)
    patches = rng.random((5, 2, 8, 8), dtype=np.float32)
    with PatchWriter(path, _info(), split=True) as w:
        w.append(patches[:3], [1, 2, 17], [7, 7, 8], np.zeros((3, 2)), split=[0, 0, 1])
        w.append(patches[3:], [11, 3], [9, 9], np.ones((2, 2)), split=[2, 2])
    f, info = open_patch_file(path)
    with f:
        assert info.count == 5 and info.channels == ["S2:B02", "S2:B03"] and info.has_split
        assert not info.has_soft_labels and info.source == {"stack": "city.tif"}
        np.testing.assert_array_equal(f["patches"][:], patches)
        np.testing.assert_array_equal(f["labels"][:], [1, 2, 17, 11, 3])
        np.testing.assert_array_equal(f["split"][:], [0, 0, 1, 2, 2])
    assert os.listdir(tmp_path) == ["p.h5"]


def test_error_inside_writer_leaves_nothing(tmp_path):
    path = str(tmp_path / "p.h5")
    with pytest.raises(ValueError, match="LCZ codes"):
        with PatchWriter(path, _info()) as w:
            w.append(np.zeros((1, 2, 8, 8)), [18], [0], [[0, 0]])
    assert os.listdir(tmp_path) == []


def test_refuses_files_of_another_schema(tmp_path):
    path = str(tmp_path / "so2sat.h5")
    with h5py.File(path, "w") as f:
        f["sen2"] = np.zeros((1, 32, 32, 10))
    with pytest.raises(InputError, match="not an lcz patch file"):
        open_patch_file(path)
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(InputError, match="cannot be read as HDF5"):
        open_patch_file(str(tmp_path / "text.h5"))
    with pytest.raises(InputError, match="not found"):
        open_patch_file(str(tmp_path / "none.h5"))
