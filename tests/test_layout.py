"""The package's layout rules (docs/architecture.md), checked on the source: private names stay in their
subpackage, modules stay small, every subpackage exports a curated ``__all__``, the map matches the tree, figure
functions return a ``Figure``, and notebooks import only the stage packages."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "helpers"
MODULES = sorted(PACKAGE.rglob("*.py"))
SUBPACKAGES = sorted(p.parent.relative_to(ROOT).as_posix().replace("/", ".") for p in PACKAGE.glob("*/__init__.py"))
TOP_LEVEL = {"architecture", "hardware", "models", "io"}


def _subpackage(parts: list[str]) -> str | None:
    """``["helpers", "distill", "losses", "x"]`` -> ``"distill"``; a top-level module -> None."""
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()) else None


def _imports(path: Path):
    """(target module parts, imported names) of every ``from ... import`` in a module, resolved to absolute."""
    here = list(path.relative_to(ROOT).with_suffix("").parts)
    package = here[:-1] if path.name != "__init__.py" else here[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = base + (node.module.split(".") if node.module else [])
            else:
                target = (node.module or "").split(".")
            yield target, [a.name for a in node.names]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_private_name_crosses_a_subpackage(path):
    here = _subpackage(list(path.relative_to(ROOT).with_suffix("").parts))
    for target, names in _imports(path):
        if target[:1] != ["helpers"]:
            continue
        there = _subpackage(target)
        private_module = [p for p in target[1:] if p.startswith("_")]
        private_names = [n for n in names if n.startswith("_") and not n.startswith("__")]
        # a module importing a whole submodule by name (from helpers.x import _y) counts as a private name too
        if (private_module or private_names) and there != here:
            pytest.fail(f"{path.relative_to(ROOT)} imports private {private_module + private_names} from "
                        f"{'.'.join(target)}: make it public or move it into {there}")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_modules_stay_small(path):
    assert len(path.read_text().splitlines()) <= 330, f"{path.relative_to(ROOT)}: split it at a natural seam"


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_subpackages_export_a_curated_all(name):
    module = importlib.import_module(name)
    assert isinstance(getattr(module, "__all__", None), list) and module.__all__, f"{name} has no __all__"
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what it does not define: {missing}"
    assert len(set(module.__all__)) == len(module.__all__), f"{name}.__all__ lists a name twice"


def test_the_architecture_map_matches_the_tree():
    text = (ROOT / "docs" / "architecture.md").read_text()
    documented = set(re.findall(r"`(helpers/[\w/]+\.py)`", text))
    actual = {p.relative_to(ROOT).as_posix() for p in MODULES if p.name != "__init__.py" or p.parent == PACKAGE}
    assert documented == actual, f"missing from the map: {sorted(actual - documented)}; " \
                                 f"not in the tree: {sorted(documented - actual)}"


def test_figure_functions_return_a_figure_and_leave_no_pyplot_state():
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    for name in SUBPACKAGES:
        module = importlib.import_module(name)
        for fn_name in module.__all__:
            fn = getattr(module, fn_name)
            if fn_name.startswith("plot_") and callable(fn):
                ret = inspect.signature(fn).return_annotation
                assert ret in (Figure, "Figure"), f"{name}.{fn_name} must be annotated -> Figure, not {ret}"
    assert not plt.get_fignums()


def test_no_docstring_points_outside_the_repository():
    for path in MODULES:
        assert "DESIGN.md" not in path.read_text(), f"{path.relative_to(ROOT)} points at a file outside the repository"


def test_notebooks_import_only_the_stage_packages():
    allowed = {"helpers", *SUBPACKAGES, *(f"helpers.{m}" for m in TOP_LEVEL)}
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for cell in json.loads(nb.read_text())["cells"]:
            if cell["cell_type"] != "code":
                continue
            for line in "".join(cell["source"]).splitlines():
                m = re.match(r"\s*(?:from|import)\s+(helpers[\w.]*)", line)
                if m:
                    assert m.group(1) in allowed, f"{nb.name}: `{line.strip()}` reaches inside a stage package"


def test_the_repository_root_is_found_by_its_marker_not_by_depth(monkeypatch, tmp_path):
    from helpers import io
    from helpers.data import data_dir
    from helpers.workbook import runs_dir

    monkeypatch.delenv("WORKBOOK_ROOT", raising=False)
    monkeypatch.delenv("WORKBOOK_DATA", raising=False)
    monkeypatch.delenv("WORKBOOK_RUNS", raising=False)
    assert io.repo_root() == ROOT and data_dir() == ROOT / "data"
    monkeypatch.setenv("WORKBOOK_ROOT", str(tmp_path))
    monkeypatch.setenv("WORKBOOK_SCALE", "smoke")
    assert io.repo_root() == tmp_path and runs_dir() == tmp_path / "runs" / "smoke"
