"""The layering the README promises, read from the source (ast): the core runs without QGIS
(scripts, the command line, qgis_process workers), training runs without QGIS (a GPU server),
the plugin runs without PyTorch (a user's QGIS); and functions stay short enough to read."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_FUNCTION_LINES = 80

# being split in issue 13; remove as they are split
PENDING_SPLIT: set[str] = set()

QT_AND_QGIS = ("qgis", "PyQt4", "PyQt5", "PyQt6")


def modules(package: str) -> list[str]:
    """Paths (relative to the repository) of every .py file under ``package``."""
    found = []
    for base, folders, files in os.walk(os.path.join(ROOT, package)):
        folders[:] = sorted(f for f in folders if f != "__pycache__")
        found += [os.path.relpath(os.path.join(base, f), ROOT) for f in sorted(files)
                  if f.endswith(".py")]
    assert found, f"no module found under {package}"
    return found


def parse(path: str) -> ast.Module:
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return ast.parse(f.read(), path)


def imported(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, module name) of every import, at the top or inside a function."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append((node.lineno, node.module))
    return names


def imports_of(package: str, forbidden: tuple[str, ...]) -> list[str]:
    """``path:line imports name`` for each import of a ``forbidden`` top-level package."""
    return [f"{path}:{line} imports {name}" for path in modules(package)
            for line, name in imported(parse(path)) if name.split(".")[0] in forbidden]


def test_imported_finds_every_form_of_import():
    tree = ast.parse("import qgis.core\nfrom qgis.PyQt import QtCore\nimport os, PyQt5\n"
                     "from . import qgis\ndef f():\n    from torch import nn\n")
    assert sorted(imported(tree)) == [(1, "qgis.core"), (2, "qgis.PyQt"), (3, "PyQt5"),
                                      (3, "os"), (6, "torch")]


def test_core_imports_neither_qgis_nor_qt():
    assert imports_of("lcz_qgis_plugin/core", QT_AND_QGIS) == []


def test_training_does_not_import_qgis():
    assert imports_of("training", ("qgis",)) == []


def test_plugin_does_not_import_torch():
    assert imports_of("lcz_qgis_plugin", ("torch", "torchvision")) == []


def function_lengths(package: str) -> dict[str, int]:
    """``path:qualified name`` -> lines (def to last line) of every function and method."""
    lengths = {}

    def visit(node, path, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    lengths[f"{path}:{name}"] = child.end_lineno - child.lineno + 1
                visit(child, path, name + ".")
            else:
                visit(child, path, prefix)

    for package_path in modules(package):
        visit(parse(package_path), package_path, "")
    return lengths


@pytest.fixture(scope="module")
def lengths():
    return {**function_lengths("lcz_qgis_plugin/core"), **function_lengths("training")}


def test_no_function_is_longer_than_80_lines(lengths):
    too_long = {name: n for name, n in lengths.items()
                if n > MAX_FUNCTION_LINES and name not in PENDING_SPLIT}
    assert too_long == {}, f"split these functions (at most {MAX_FUNCTION_LINES} lines)"


def test_pending_split_lists_only_functions_still_too_long(lengths):
    done = sorted(name for name in PENDING_SPLIT if lengths.get(name, 0) <= MAX_FUNCTION_LINES)
    assert done == [], "split (or gone): remove them from PENDING_SPLIT"
