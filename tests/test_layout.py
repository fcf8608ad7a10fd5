"""The layout's contracts: one registry of figures, one module per figure holding its
whole definition, a library that knows no figure, and a figure package under a name of
nfstudy's own (``nfstudy_experiments``, the folder experiments/)."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest
import tomllib

import nfstudy_experiments
from nfstudy.cli import FIGURE_PACKAGE, RUN_PARAMETERS, figures_available, load_figure

ROOT = Path(__file__).resolve().parents[1]
# The application layer: it discovers figures from the registry (lazily, inside functions).
APP_LAYER = {"cli.py", "report.py", "__main__.py"}


def _imports(path: Path) -> list[tuple[str, bool]]:
    """Every module ``path`` imports, with whether the import is at module level."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.append((node.module or "", id(node) in top))
    return found


def test_the_library_knows_no_figure():
    """Nothing in nfstudy/ imports the figure package; the application layer only lazily."""
    for path in sorted((ROOT / "nfstudy").rglob("*.py")):
        for name, at_top in _imports(path):
            figure_package = name.split(".")[0] in (FIGURE_PACKAGE, "experiments")
            if path.name in APP_LAYER and path.parent.name == "nfstudy":
                assert not (figure_package and at_top), f"{path}: imports {name} at module level"
            else:
                assert not figure_package, f"{path}: the library imports the figure {name}"
    assert not (ROOT / "nfstudy" / "figures").exists()


def test_one_registry_of_figures():
    """FIGURES is the list; the notebooks (the Makefile's targets) and the CLI agree with it."""
    figures = nfstudy_experiments.FIGURES
    assert len(set(figures)) == len(figures) >= 9
    assert sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb")) == sorted(figures)
    modules = {p.stem for p in (ROOT / "experiments").glob("*.py") if not p.stem.startswith("_")}
    assert modules == set(figures)
    assert tuple(figures_available()) == figures
    with pytest.raises(ValueError, match="unknown figure 'fig9': choose one of fig1, fig2"):
        nfstudy_experiments.load("fig9")


@pytest.mark.parametrize("figure", nfstudy_experiments.FIGURES)
def test_a_figure_is_one_module(figure):
    module = load_figure(figure)
    assert module is nfstudy_experiments.load(figure)
    assert module.__doc__ and module.__doc__.strip()
    assert isinstance(module.TITLE, str) and module.TITLE
    assert dataclasses.is_dataclass(module.Params) and set(module.PROFILES) == {"paper", "quick"}
    assert all(isinstance(p, module.Params) for p in module.PROFILES.values())
    for name in ("run", "plot", "claims"):
        assert callable(getattr(module, name)), name
    assert module.TABLES and all(
        isinstance(columns, dict) and columns and all(isinstance(d, str) and d for d in columns.values())
        for columns in module.TABLES.values()
    )
    assert all("seed" not in columns for columns in module.TABLES.values())  # runs.save_table adds it


def test_the_figure_package_is_this_checkouts():
    """Not another checkout's (an editable install elsewhere), and not a top-level `experiments`."""
    assert Path(nfstudy_experiments.__file__).resolve() == ROOT / "experiments" / "__init__.py"
    assert nfstudy_experiments.load("fig7").__file__ == str(ROOT / "experiments" / "fig7.py")


def test_the_package_list_of_pyproject_is_every_package():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "nfstudy").rglob("__init__.py")}
    assert set(config["packages"]) == folders | {FIGURE_PACKAGE}
    assert config["package-dir"] == {FIGURE_PACKAGE: "experiments"}  # no generic top-level `experiments`


def test_notebooks_are_thin():
    """Each template imports its one figure module through the loader and nothing else of the figures."""
    for figure in nfstudy_experiments.FIGURES:
        cells = json.loads((ROOT / "notebooks" / f"{figure}.ipynb").read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        assert f'{figure} = load_figure("{figure}")' in code, figure
        assert "import experiments" not in code and "from experiments" not in code and "nfstudy_experiments" not in code


def test_every_notebook_exposes_every_parameter_of_its_experiment():
    """Read by papermill's own parser (a line it cannot parse, e.g. with a second '=' in a
    comment, silently loses its parameter); defaults: the quick profile, the rest None."""
    import nbformat
    import papermill as pm

    assert len(figures_available()) >= 2
    for figure in figures_available():
        path = str(ROOT / "notebooks" / f"{figure}.ipynb")
        assert nbformat.read(path, as_version=4).metadata["kernelspec"]["language"] == "python"
        found = pm.inspect_notebook(path)
        fields = {f.name for f in dataclasses.fields(nfstudy_experiments.load(figure).Params)}
        assert set(found) == fields | set(RUN_PARAMETERS), figure
        defaults = {name: p["default"] for name, p in found.items()}
        assert defaults["profile"] == '"quick"' and defaults["seed"] == "0" and defaults["device"] == '"auto"', figure
        assert {defaults[name] for name in fields | {"results_dir"}} == {"None"}, figure


def test_series_names_are_built_and_parsed_in_one_place():
    from nfstudy.series import network_of, series_name, split_agc, split_series

    assert series_name("none", True, "lr=0.1") == "none+agc@lr=0.1" and series_name("bn") == "bn"
    for norm, agc, tag in [("bn", False, ""), ("none", True, "lr=0.1"), ("nf", True, ""), ("ws", False, "0.003")]:
        network, found = split_series(series_name(norm, agc, tag))
        assert (split_agc(network), found) == ((norm, agc), tag)
        assert network_of(series_name(norm, agc, tag)) == series_name(norm, agc)
    # no other module takes a series name apart by hand
    for path in [*(ROOT / "nfstudy").rglob("*.py"), *(ROOT / "experiments").glob("*.py")]:
        if path.name != "series.py":
            text = path.read_text()
            assert 'partition("@")' not in text and "endswith(AGC_SUFFIX)" not in text, path
