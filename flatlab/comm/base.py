"""The mixer interface: the only way data moves between nodes.

A mixer offers four things (DESIGN.md §3): ``mix(X, t)`` (``W_t X`` for the rows this process
holds), ``exchange(M, t)`` (per-edge messages), ``mean(X)`` (the exact network average) and
``stats`` (messages and bytes sent so far, per node). Algorithms see nothing else, so the
simulated mixer and a distributed one are interchangeable.

Counting convention (the same for every mixer):

- ``mix``: node ``j`` sends its row to each out-neighbour ``i ≠ j`` with ``w_ij ≠ 0`` in round
  ``t``: one message of ``row.numel() * itemsize`` bytes each.
- ``exchange``: one message per directed edge ``(j → i)`` of round ``t``, counted at the sender.
- ``mean``: a ring all-reduce, ``2(n − 1)`` messages per node carrying ``2(n − 1)/n`` of the row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["CommStats"]


@dataclass
class CommStats:
    """Messages and bytes sent so far, per node (``[n]`` int64 tensors on the CPU)."""

    messages: torch.Tensor
    bytes: torch.Tensor

    @classmethod
    def zeros(cls, n: int) -> CommStats:
        """No traffic yet."""
        return cls(torch.zeros(n, dtype=torch.int64), torch.zeros(n, dtype=torch.int64))

    def total_bytes(self) -> int:
        """Bytes sent by all nodes together."""
        return int(self.bytes.sum())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors to checkpoint."""
        return {"messages": self.messages.clone(), "bytes": self.bytes.clone()}

    def load_state_dict(self, d: dict[str, torch.Tensor]) -> None:
        """Restore counts saved by :meth:`state_dict`."""
        self.messages.copy_(d["messages"])
        self.bytes.copy_(d["bytes"])
