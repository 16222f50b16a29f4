"""The notebooks run end to end (small sizes) and their .py and .ipynb halves agree."""

import ast
import os
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.py"))


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_paired_ipynb_matches_the_script(path):
    ipynb = path.with_suffix(".ipynb")
    assert ipynb.exists(), f"run: jupytext --sync {path}"
    script = jupytext.read(path)
    paired = nbformat.read(ipynb, as_version=4)
    assert [(c.cell_type, c.source) for c in script.cells] == [
        (c.cell_type, c.source) for c in paired.cells
    ], f"{ipynb.name} is out of date: run jupytext --sync {path}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes_and_shows_its_figures(path, monkeypatch, tmp_path):
    """Executed in a Jupyter kernel as a user opens it: with the kernel's own (inline) backend,
    not ``MPLBACKEND=Agg``, so a library that switched the backend at import would leave the
    cells that draw without an image, as it once did."""
    monkeypatch.setenv("FLATLAB_NOTEBOOK_SMALL", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    nb = jupytext.read(path)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    drawing = [c for c in code if "plt.show()" in c.source]
    blank = [c.source.splitlines()[0] for c in drawing
             if not any("image/png" in o.get("data", {}) for o in c.get("outputs", []))]
    assert not blank, f"cells that draw but show no image: {blank}"


#: Names a Jupyter kernel defines and a plain ``python`` does not.
KERNEL_ONLY = {"display", "get_ipython", "In", "Out", "_", "__", "___"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_as_a_plain_script(path):
    """``python notebooks/NAME.py`` works too: the kernel run above executes every cell, so
    what is left to check is that no cell uses a name only a kernel defines, or a magic."""
    tree = ast.parse(path.read_text())  # a %magic would not even parse
    bound = {a.asname or a.name.split(".")[0] for n in ast.walk(tree)
             if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    bound |= {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign)
              for t in n.targets if isinstance(t, ast.Name)}
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)
            and isinstance(n.ctx, ast.Load)}
    assert not (used & KERNEL_ONLY) - bound, f"{path.name} uses {(used & KERNEL_ONLY) - bound}"
