"""Every tensor factory call in ``flatlab/`` states the device it creates on.

A factory without ``device=`` creates on the default device, the CPU. On a GPU such a tensor,
combined with the node stack's tensors (iterates, gradients, mixer outputs), either raises
("expected all tensors to be on the same device") or, as an index, is copied over silently and
syncs the host with the device. Stating the device, ``device="cpu"`` for what lives on the host
or ``device=<tensor>.device`` for what joins the run's tensors, makes the intent visible and
reviewable; this scan keeps every new call explicit. A ``**kwargs`` call counts as stating it.
"""

from __future__ import annotations

import ast
import pathlib

FACTORIES = {"zeros", "ones", "empty", "full", "arange", "eye", "tensor", "randn", "rand",
             "randint", "linspace", "as_tensor", "randperm", "normal", "logspace"}
PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "flatlab"


def _without_device(path: pathlib.Path) -> list[int]:
    """Lines of the ``torch.<factory>(...)`` calls in ``path`` that pass no ``device=``."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in FACTORIES and isinstance(node.func.value, ast.Name) \
                and node.func.value.id == "torch":
            if not {k.arg for k in node.keywords} & {"device", None}:
                lines.append(node.lineno)
    return lines


def test_the_scan_sees_the_package():
    assert len(list(PACKAGE.rglob("*.py"))) > 10


def test_every_factory_call_states_its_device():
    root = PACKAGE.parent
    missing = [f"{p.relative_to(root)}:{line}" for p in sorted(PACKAGE.rglob("*.py"))
               for line in _without_device(p)]
    assert not missing, ("tensor factory calls without device= (add device=\"cpu\" for host "
                         "data, or the device of the tensors they join):\n  "
                         + "\n  ".join(missing))


def test_the_scan_flags_a_missing_device(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import torch\n"
                 "a = torch.zeros(3)\n"
                 "b = torch.zeros(3, device='cpu')\n"
                 "c = torch.ones(3, **kw)\n"
                 "d = torch.as_tensor([1], dtype=torch.int64)\n")
    assert _without_device(f) == [2, 5]
