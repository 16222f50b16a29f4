"""The layers of flatlab depend downwards only (docs/architecture.md).

Every ``import`` of a flatlab module (at the top of a file or inside a function) is read from
the source with ``ast``, and so are the two ways around an import statement: attribute access
through ``import flatlab`` (``flatlab.experiment.run``, which the package's lazy ``__getattr__``
would load) and ``importlib.import_module("flatlab....")`` calls, whose module name must be a
literal outside the package's own ``__init__``. A module may import its own package and the
layers below it, never a layer above. ``topology`` and ``theory`` need nothing of torch.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "flatlab"

#: layer rank of each top-level part of flatlab (lower ranks may not import higher ones)
RANK = {"errors": 0, "slurm_options": 0, "seeds": 0.5, "topology": 1, "theory": 2, "data": 3,
        "models": 3, "engine": 3, "comm": 4, "curvature": 5, "algorithms": 6, "measures": 6,
        "experiment": 7, "results": 8, "plots": 8, "demo": 9, "studies": 9, "cli": 10,
        "__main__": 11,
        "__init__": 11}
TORCH_FREE = ("topology", "theory", "errors", "seeds", "slurm_options")


def _part(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    return rel.parts[0]


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, imported module)`` for every import in a file, relative imports resolved."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                pkg = list(path.relative_to(ROOT.parent).with_suffix("").parts[:-node.level])
                base = ".".join(pkg + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base == "flatlab":  # from flatlab import x: x is the part
                out += [(node.lineno, f"flatlab.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, base))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif _is_import_module(node):
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant):
                name = arg.value
            elif (isinstance(arg, ast.JoinedStr) and arg.values
                  and isinstance(arg.values[0], ast.Constant)
                  and arg.values[0].value.startswith("flatlab.")):
                name = arg.values[0].value.rstrip(".")  # f"flatlab.studies.{name}": a module
            else:                                       # of flatlab.studies, whichever it is
                name = "<computed>"
            out.append((node.lineno, f"importlib:{name}"))
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id == "flatlab":
            out.append((node.lineno, f"flatlab.{node.attr}"))
    return out


def _is_import_module(node: ast.AST) -> bool:
    """Whether ``node`` calls ``importlib.import_module`` (or ``import_module`` imported)."""
    if not isinstance(node, ast.Call):
        return False
    f = node.func
    return (isinstance(f, ast.Attribute) and f.attr == "import_module"
            or isinstance(f, ast.Name) and f.id == "import_module")


FILES = sorted(ROOT.rglob("*.py"))


def test_every_part_has_a_layer():
    assert {_part(p) for p in FILES} <= set(RANK)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_run_down_the_layers(path):
    src = _part(path)
    found = _imports(path)
    computed = [f"line {line}" for line, mod in found if mod == "importlib:<computed>"]
    assert not computed, (f"{path.relative_to(ROOT)} imports a module whose name is computed "
                          f"beyond a literal prefix: {computed}")
    found = [(line, mod.removeprefix("importlib:")) for line, mod in found]
    up = [f"line {line}: {mod}" for line, mod in found
          if mod.startswith("flatlab.") and (tgt := mod.split(".")[1]) != src
          and tgt in RANK and RANK[tgt] >= RANK[src]]
    assert not up, f"{path.relative_to(ROOT)} ({src}) imports up or across the layers: {up}"
    if src in TORCH_FREE:
        torch = [f"line {line}: {mod}" for line, mod in found
                 if mod.split(".")[0] == "torch"]
        assert not torch, f"{path.relative_to(ROOT)} must not need torch: {torch}"


def test_the_blind_spots_are_seen(tmp_path):
    """An import through attribute access on ``flatlab`` or through ``importlib`` is found."""
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("import importlib\nimport flatlab\n\n\ndef f():\n"
                      "    flatlab.experiment.run\n"
                      "    importlib.import_module('flatlab.plots')\n"
                      "    importlib.import_module(name)\n"
                      "    importlib.import_module(f'flatlab.studies.{name}')\n")
    assert set(_imports(sneaky)) >= {(2, "flatlab"), (6, "flatlab.experiment"),
                                     (7, "importlib:flatlab.plots"), (8, "importlib:<computed>"),
                                     (9, "importlib:flatlab.studies")}


#: Modules a function may import, and why: an optional dependency (TensorBoard, submitit,
#: PyHessian, mnist1d, scikit-learn), a POSIX-only module (fcntl, resource), a dependency slow to
#: import that one rarely used function needs (networkx, scipy), or matplotlib, whose backend
#: only the entry points (the demo, ``python -m flatlab.studies``) may choose. Every flatlab
#: module is imported at the top of the file that needs it, so that a file's dependencies are
#: read at its top, with the two exceptions of LAZY_FILES.
LAZY_OK = {"tensorboard", "torch.utils.tensorboard", "fcntl", "resource", "submitit", "pyhessian",
           "mnist1d", "sklearn", "networkx", "scipy", "matplotlib"}
#: Files whose functions import flatlab modules, and why.
LAZY_FILES = {
    "cli.py": "`flatlab --help` and a refused argument answer in a fraction of a second: a "
              "subcommand imports torch and its layers only when it runs",
    "__init__.py": "the package's lazy attributes (`flatlab.simulate`) load on first access",
}


def _allowed(module: str) -> bool:
    return module.split(".")[0] in LAZY_OK or module in LAZY_OK


@pytest.mark.parametrize("path", sorted(p for p in ROOT.rglob("*.py")
                                        if p.relative_to(ROOT).as_posix() not in LAZY_FILES),
                         ids=lambda p: p.relative_to(ROOT).as_posix())
def test_imports_at_module_level(path):
    lazy = []
    for fn in ast.walk(ast.parse(path.read_text())):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and not _allowed(node.module or ""):
                    lazy.append(f"line {node.lineno}: {node.module}")
                elif isinstance(node, ast.Import):
                    lazy += [f"line {node.lineno}: {a.name}" for a in node.names
                             if not _allowed(a.name)]
    assert not lazy, f"{path.relative_to(ROOT)} imports inside functions: {lazy}"


#: The concerns of flatlab/experiment in their order (docs/architecture.md, "The floor plan of
#: experiment/"): a module imports only modules of its own concern or of an earlier one.
CONCERNS = {"io": 0, "config": 0, "schedules": 0,
            "assemble": 1, "loop": 1, "hooks": 1, "rundir": 1, "ranks": 1, "tensorboard": 1,
            "runner": 1,
            "many": 2, "sweep": 2, "slurm": 2, "results": 2,
            "evidence": 3, "study": 3}


def test_the_floor_plan_of_experiment_lists_every_module():
    names = {p.stem for p in (ROOT / "experiment").glob("*.py")} - {"__init__"}
    assert names == set(CONCERNS)


@pytest.mark.parametrize("name", sorted(CONCERNS))
def test_experiment_modules_import_their_own_concern_or_earlier(name):
    upward = []
    for line, other in _experiment_modules(ROOT / "experiment" / f"{name}.py"):
        if CONCERNS[other] > CONCERNS[name]:
            upward.append(f"line {line}: {other}")
    assert not upward, f"experiment/{name}.py imports a later concern: {upward}"


def _experiment_modules(path: Path) -> list[tuple[int, str]]:
    """``(line, module of experiment/)`` of every import of one, in any of its spellings."""
    out = []
    for line, mod in _imports(path):
        parts = mod.split(".")
        if parts[:2] == ["flatlab", "experiment"] and len(parts) > 2:
            out.append((line, parts[2]))
    for node in ast.walk(ast.parse(path.read_text())):  # from flatlab.experiment import X
        if isinstance(node, ast.ImportFrom) and node.module == "flatlab.experiment":
            out += [(node.lineno, a.name) for a in node.names if a.name in CONCERNS]
    return out


def test_the_floor_plan_test_sees_every_spelling(tmp_path):
    p = tmp_path / "io.py"
    p.write_text("from flatlab.experiment import study, load_config\n"
                 "import flatlab.experiment.many\nfrom flatlab.experiment.sweep import x\n")
    assert sorted(_experiment_modules(p)) == [(1, "study"), (2, "many"), (3, "sweep")]
