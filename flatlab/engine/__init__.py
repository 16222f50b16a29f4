"""The engine: n node models as one matrix, their gradient oracle, their evaluation objective.

>>> import torch
>>> from flatlab.engine import NodeStack, GradientOracle
>>> stack = NodeStack(torch.nn.Linear(3, 2), n=4, device="cpu")
>>> X = stack.initial_params()
>>> X.shape
torch.Size([4, 8])
>>> losses, G = GradientOracle(stack)(X, (torch.randn(4, 5, 3), torch.randint(0, 2, (4, 5))))
>>> losses.shape, G.shape
(torch.Size([4]), torch.Size([4, 8]))
"""

from flatlab.engine.allocator import reuse_freed_memory
from flatlab.engine.evaluate import Evaluation, evaluate, full_gradient
from flatlab.engine.layout import ParamLayout
from flatlab.engine.objective import Objective
from flatlab.engine.oracle import (
    DecayOracle,
    DenseMetricBlock,
    FunctionOracle,
    FusedMetricOracle,
    GradientOracle,
    LayeredOracle,
    MetricBlock,
    MetricOracle,
    Oracle,
    SAMOracle,
    sam_oracle,
)
from flatlab.engine.stack import LOSSES, NodeStack, resolve_device, resolve_dtype

__all__ = [
    "ParamLayout",
    "NodeStack",
    "GradientOracle",
    "FunctionOracle",
    "Oracle",
    "DecayOracle",
    "Objective",
    "Evaluation",
    "evaluate",
    "full_gradient",
    "resolve_device",
    "resolve_dtype",
    "LOSSES",
    "MetricOracle",
    "FusedMetricOracle",
    "LayeredOracle",
    "MetricBlock",
    "DenseMetricBlock",
    "reuse_freed_memory",
    "SAMOracle",
    "sam_oracle",
]
