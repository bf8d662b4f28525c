"""The commit protocol (core/commit.py): outputs appear complete or not at all, the previous
file survives every failure, inputs are recognised by file identity, stale partial files of
killed runs are swept. Real files, real processes, a real file-size limit."""

import os
import subprocess
import sys

import pytest

from lcz_qgis_plugin.core.commit import (
    PARTIAL_MARK,
    Commit,
    is_partial,
    partial_path,
    sweep_partials,
)
from lcz_qgis_plugin.core.errors import InputError, OutputError


def listing(folder):
    return sorted(os.listdir(folder))


def test_an_output_appears_only_at_commit_and_replaces_the_old_file(tmp_path):
    final = tmp_path / "report.html"
    final.write_text("old")
    with Commit() as commit:
        temp = commit.write_text(str(final), "new")
        assert final.read_text() == "old"
        assert os.path.basename(temp).startswith(".report.html" + PARTIAL_MARK)
        assert temp.endswith(".html")
    assert final.read_text() == "new"
    assert listing(tmp_path) == ["report.html"]


def test_an_error_inside_the_block_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    final = tmp_path / "map.tif"
    final.write_bytes(b"good map")
    with pytest.raises(RuntimeError):
        with Commit() as commit:
            commit.write_bytes(str(final), b"half")
            raise RuntimeError("engine failed")
    assert final.read_bytes() == b"good map"
    assert listing(tmp_path) == ["map.tif"]


def test_sidecars_move_with_their_file_and_stale_ones_go(tmp_path):
    final = tmp_path / "lcz.tif"
    final.write_bytes(b"old")
    (tmp_path / "lcz.tif.aux.xml").write_text("<old statistics/>")
    (tmp_path / "lcz.qml").write_text("old style")
    with Commit() as commit:
        commit.write_bytes(str(final), b"new")
        commit.write_sidecar_text(str(final), str(tmp_path / "lcz.qml"), "new style")
    assert final.read_bytes() == b"new"
    assert (tmp_path / "lcz.qml").read_text() == "new style"
    assert not (tmp_path / "lcz.tif.aux.xml").exists()  # it described the old file
    assert listing(tmp_path) == ["lcz.qml", "lcz.tif"]


def test_an_output_that_is_an_input_through_a_symlinked_folder_is_refused(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    stack = data / "stack.tif"
    stack.write_bytes(b"input")
    os.symlink(data, tmp_path / "link")
    commit = Commit(inputs=[str(stack)])
    with pytest.raises(InputError, match="same file as the input .*link"):
        commit.reserve(str(tmp_path / "link" / "stack.tif"), "class map")
    hard = tmp_path / "hard.tif"
    os.link(stack, hard)
    with pytest.raises(InputError, match="hard.tif is the same file as the input"):
        commit.reserve(str(hard), "class map")
    assert stack.read_bytes() == b"input"


def test_an_output_that_a_vrt_input_reads_is_refused(tmp_path):
    from osgeo import gdal
    source = tmp_path / "source.tif"
    ds = gdal.GetDriverByName("GTiff").Create(str(source), 4, 4, 1)
    ds.SetGeoTransform((0, 10, 0, 0, 0, -10))
    ds = None
    gdal.BuildVRT(str(tmp_path / "inner.vrt"), [str(source)])
    gdal.BuildVRT(str(tmp_path / "outer.vrt"), [str(tmp_path / "inner.vrt")])
    commit = Commit(inputs=[str(tmp_path / "outer.vrt")])
    with pytest.raises(InputError, match="source.tif is the same file as the input .*outer.vrt"):
        commit.reserve(str(source), "stack")


def test_two_outputs_on_one_file_are_refused(tmp_path):
    commit = Commit()
    commit.reserve(str(tmp_path / "a.tif"))
    with pytest.raises(InputError, match="two outputs point at the same file"):
        commit.reserve(str(tmp_path / "sub" / ".." / "a.tif"))
    commit.discard()
    assert listing(tmp_path) == []  # reserving writes nothing


def test_a_destination_folder_that_cannot_be_created_is_an_output_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot create the folder"):
        Commit().reserve(str(blocker / "sub" / "out.tif"), "class map")


def test_partials_of_dead_processes_are_swept_and_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    mine = partial_path(str(tmp_path / "map.tif"))
    theirs = mine.replace(f"-{os.getpid()}-", f"-{dead}-")
    for path in (mine, theirs):
        open(path, "w").close()
    os.mkdir(theirs.replace("map.tif", "scratch"))
    assert is_partial(mine) and is_partial(theirs)
    removed = sweep_partials(str(tmp_path))
    assert sorted(map(os.path.basename, removed)) == sorted(
        [os.path.basename(theirs), os.path.basename(theirs.replace("map.tif", "scratch"))])
    assert listing(tmp_path) == [os.path.basename(mine)]


CHILD = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
from lcz_qgis_plugin.core.commit import Commit
from lcz_qgis_plugin.core.errors import OutputError
try:
    with Commit() as commit:
        commit.write_bytes(sys.argv[1], b"x" * 100000, "report")
except OutputError as exc:
    print("error:", exc, file=sys.stderr)
    sys.exit(2)
"""


def test_a_full_disk_keeps_the_previous_file_and_leaves_no_partial(tmp_path):
    final = tmp_path / "report.html"
    final.write_text("previous report")
    done = subprocess.run([sys.executable, "-c", CHILD, str(final)], capture_output=True,
                          text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert done.returncode == 2, done.stderr
    assert "File too large" in done.stderr and "free some space" in done.stderr
    assert "Nothing was replaced" in done.stderr
    assert final.read_text() == "previous report"
    assert listing(tmp_path) == ["report.html"]


def test_a_dropped_output_keeps_its_previous_file_and_the_rest_is_committed(tmp_path):
    """A check of one output failed (the int8 variant of an export): it is given up, the
    other outputs of the run still go in place."""
    variant, model = tmp_path / "m.int8.onnx", tmp_path / "m.onnx"
    variant.write_text("previous variant")
    with Commit() as commit:
        commit.write_text(str(variant), "new variant")
        commit.write_text(str(model), "new model")
        commit.drop(str(variant))
    assert variant.read_text() == "previous variant" and model.read_text() == "new model"
    assert listing(tmp_path) == ["m.int8.onnx", "m.onnx"]
