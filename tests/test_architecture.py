"""The layers of flatlab depend downwards only (docs/architecture.md).

Every ``import`` of a flatlab module (at the top of a file or inside a function) is read from
the source with ``ast``; a module may import its own package and the layers below it, never a
layer above. ``topology`` and ``theory`` need nothing of torch.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "flatlab"

#: layer rank of each top-level part of flatlab (lower ranks may not import higher ones)
RANK = {"errors": 0, "seeds": 0.5, "topology": 1, "theory": 2, "data": 3, "models": 3,
        "engine": 3, "comm": 4, "curvature": 5, "algorithms": 6, "measures": 6,
        "experiment": 7, "results": 8, "plots": 8, "demo": 9, "studies": 9, "cli": 10,
        "__main__": 11,
        "__init__": 11}
TORCH_FREE = ("topology", "theory", "errors", "seeds")


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
    return out


FILES = sorted(ROOT.rglob("*.py"))


def test_every_part_has_a_layer():
    assert {_part(p) for p in FILES} <= set(RANK)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_run_down_the_layers(path):
    src = _part(path)
    up = [f"line {line}: {mod}" for line, mod in _imports(path)
          if mod.startswith("flatlab.") and (tgt := mod.split(".")[1]) != src
          and tgt in RANK and RANK[tgt] >= RANK[src]]
    assert not up, f"{path.relative_to(ROOT)} ({src}) imports up or across the layers: {up}"
    if src in TORCH_FREE:
        torch = [f"line {line}: {mod}" for line, mod in _imports(path)
                 if mod.split(".")[0] == "torch"]
        assert not torch, f"{path.relative_to(ROOT)} must not need torch: {torch}"
