"""Compression operators for compressed gossip (CHOCO-SGD, AdaGossip).

Source: docs/reference/algorithms.md §9.1; Koloskova, Stich, Jaggi, ICML 2019 (the quality parameter
``ω``); Alistarh et al., NeurIPS 2017 (QSGD); Aketi, Hashemi, Roy 2024 (layer-wise compression).

A compressor ``Q`` maps each node's vector to what that node sends. Its quality ``ω ∈ (0, 1]`` is

    E‖Q(x) − x‖² ≤ (1 − ω) ‖x‖²                                     (contraction)

which top-k and scaled sign satisfy deterministically, unscaled random-k and the ``1/(1 + τ)``
-scaled QSGD in expectation. The unbiased operators (QSGD with ``s`` levels, random-k scaled by
``d/k``) instead satisfy ``E Q(x) = x`` and ``E‖Q(x) − x‖² ≤ τ ‖x‖²`` (:meth:`Compressor.variance`);
``Q/(1 + τ)`` is then a contraction with ``ω = 1/(1 + τ)``.

Everything works on the node stack: ``X`` is ``[n, P]`` (one row per node), compressed row by row
in one vectorized call, over the whole vector or per parameter block (layer) when ``blocks`` is
given. Random operators draw from a generator seeded by ``seed`` for the **global** ``[n, d]``
shape and keep the rows this process holds, so a distributed run draws what a simulated one does.

Bytes: :meth:`Compressor.payload_bits` is what one node's message of ``d`` coordinates carries in
a plain fixed-width encoding: 32-bit floats for values and norms, 32-bit integers for indices,
one bit per sign and ``⌈log2(s + 1)⌉`` bits per QSGD level (QSGD's Elias coding would send
fewer). :func:`payload_bytes` sums it over blocks; the mixers count it as the message size.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from flatlab.errors import FlatlabError

__all__ = [
    "COMPRESSORS",
    "ApproxTopK",
    "QSGD",
    "Compressor",
    "Identity",
    "RandomK",
    "ScaledSign",
    "TopK",
    "compress",
    "make",
    "payload_bytes",
]

VALUE_BITS = 32
INDEX_BITS = 32


def _keep(fraction: float, d: int) -> int:
    """Coordinates kept out of ``d``: ``max(1, round(fraction · d))``."""
    return max(1, min(d, round(fraction * d)))


@dataclass(frozen=True)
class Compressor:
    """Base class: ``__call__(X, generator)`` compresses every row of ``X`` ``[m, d]``."""

    name: ClassVar[str] = ""
    random: ClassVar[bool] = False

    @property
    def unbiased(self) -> bool:
        """Whether ``E Q(x) = x``."""
        return False

    def __call__(self, X: torch.Tensor, generator: torch.Generator | None = None  # noqa: N803
                 ) -> torch.Tensor:
        """Compress every row of ``X`` ``[m, d]`` (random draws from ``generator``)."""
        raise NotImplementedError

    def omega(self, d: int) -> float:
        """The guaranteed contraction ``ω`` for ``d`` coordinates (0 if there is none)."""
        raise NotImplementedError

    def variance(self, d: int) -> float:
        """``τ`` with ``E‖Q(x) − x‖² ≤ τ‖x‖²`` (for the unbiased operators)."""
        return 1.0 - self.omega(d)

    def payload_bits(self, d: int) -> int:
        """Bits of one node's message of ``d`` coordinates."""
        raise NotImplementedError

    def ratio(self, d: int) -> float:
        """Compression ratio: sent bits over the dense ``32 d``."""
        return self.payload_bits(d) / (VALUE_BITS * d)


@dataclass(frozen=True)
class Identity(Compressor):
    """``Q(x) = x`` (``ω = 1``); CHOCO with it and ``γ = 1`` is DSGD-ATC."""

    name: ClassVar[str] = "identity"

    @property
    def unbiased(self) -> bool:
        """Always: ``Q(x) = x``."""
        return True

    def __call__(self, X: torch.Tensor, generator: torch.Generator | None = None  # noqa: N803
                 ) -> torch.Tensor:
        """A copy of ``X``."""
        return X.clone()

    def omega(self, d: int) -> float:
        """1: nothing is lost."""
        return 1.0

    def payload_bits(self, d: int) -> int:
        """``32 d``."""
        return VALUE_BITS * d


@dataclass(frozen=True)
class TopK(Compressor):
    """Keep the ``k = round(fraction · d)`` largest ``|x_j|`` (``ω = k/d``, deterministic, biased).

    The AdaGossip code keeps ``max(1, int(d · (1 − k)))`` coordinates, ``k`` the share dropped.
    In floating point ``1 − 0.9`` is ``0.09999999999999998``, so its truncation keeps one
    coordinate fewer than ``round`` whenever ``d · (1 − k)`` is a whole number (a layer of 20
    weights at 90%: 1 kept there, 2 here). flatlab rounds, so that ``k/d`` is the stated
    fraction; the difference is at most one coordinate per tensor.

    Args:
        fraction: Share of coordinates kept, in ``(0, 1]`` (1% is ``0.01``; Aketi's ``--k`` is the
            share dropped).
    """

    name: ClassVar[str] = "top-k"
    fraction: float = 0.01

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise FlatlabError(f"top-k fraction must be in (0, 1], got {self.fraction}")

    def __call__(self, X: torch.Tensor, generator: torch.Generator | None = None  # noqa: N803
                 ) -> torch.Tensor:
        """Zero all but the ``k`` largest magnitudes of each row."""
        k = _keep(self.fraction, X.shape[1])
        idx = X.abs().topk(k, dim=1).indices  # sorted: ~2x faster than unsorted on CPU
        return torch.zeros_like(X).scatter_(1, idx, X.gather(1, idx))

    def omega(self, d: int) -> float:
        """``k/d``."""
        return _keep(self.fraction, d) / d

    def payload_bits(self, d: int) -> int:
        """``k`` values and ``k`` indices."""
        return _keep(self.fraction, d) * (VALUE_BITS + INDEX_BITS)


_SAMPLES: dict[tuple[int, int, str], torch.Tensor] = {}
MIN_SAMPLED_KEPT = 10
"""Fewest sampled coordinates above :class:`ApproxTopK`'s threshold; a smaller block (under
``MIN_SAMPLED_KEPT / (fraction · sample)`` coordinates, 10,000 at the defaults) is selected
exactly: its sample would hold too few to place the threshold, and its exact selection is
cheap."""


def _sample_index(d: int, s: int, device: torch.device) -> torch.Tensor:
    """``s`` of ``d`` coordinates drawn once (seed 0) and sorted (a gather in memory order)."""
    key = (d, s, str(device))
    if key not in _SAMPLES:
        perm = torch.randperm(d, generator=torch.Generator().manual_seed(0), device="cpu")[:s]
        _SAMPLES[key] = perm.sort().values.to(device)
    return _SAMPLES[key]


@dataclass(frozen=True)
class ApproxTopK(Compressor):
    """Top-k by an estimated threshold: keep ``|x_j| ≥ t``, ``t`` from a sample of ``|x|``.

    Exact top-k selects ``k`` of ``d`` magnitudes in every row, which on a CPU costs 5-10x a
    ring mix (``benchmarks/compress.py``). As deep gradient compression does (Lin et al., ICLR
    2018), this estimates each row's threshold as the ``⌈fraction · s⌉``-th largest magnitude
    among ``s = ⌈sample · d⌉`` fixed coordinates (drawn once from seed 0 for ``d``, the same for
    every row and round, so the operator is deterministic), then keeps every coordinate at or
    above it: a selection among ``s`` and three elementwise passes instead of one among ``d``.

    Blocks of fewer than ``MIN_SAMPLED_KEPT / (fraction · sample)`` coordinates are selected
    exactly. Elsewhere the number kept is about ``k = fraction · d``, not exactly (its spread is
    about ``1/sqrt(fraction · s)`` relative, 11% at the defaults for ``d = 78,858``), so the
    contraction ``ω = k/d`` of exact top-k is not guaranteed: :meth:`omega` returns that nominal
    value and ``benchmarks/compress.py`` measures the realised ``1 − ‖Q(x) − x‖² / ‖x‖²``
    against it.
    :meth:`payload_bits` is the expected message (``k`` values and indices).

    Args:
        fraction: Share of coordinates kept, in ``(0, 1]``.
        sample: Share of coordinates the threshold is estimated from, in ``(0, 1]``.
    """

    name: ClassVar[str] = "top-k-approx"
    fraction: float = 0.01
    sample: float = 0.1

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise FlatlabError(f"top-k-approx fraction must be in (0, 1], got {self.fraction}")
        if not 0 < self.sample <= 1:
            raise FlatlabError(f"top-k-approx sample must be in (0, 1], got {self.sample}")

    def __call__(self, X: torch.Tensor, generator: torch.Generator | None = None  # noqa: N803
                 ) -> torch.Tensor:
        """Zero every coordinate below its row's estimated threshold."""
        d = X.shape[1]
        s = min(d, math.ceil(self.sample * d))
        ks = max(1, min(s, math.ceil(self.fraction * s)))
        if ks < MIN_SAMPLED_KEPT:  # too few above the threshold to place it: exact (and cheap)
            return TopK(self.fraction)(X)
        mag = X.abs()
        t = mag.index_select(1, _sample_index(d, s, X.device)).topk(ks, dim=1).values[:, -1:]
        return torch.where(mag >= t, X, torch.zeros((), dtype=X.dtype, device=X.device))

    def omega(self, d: int) -> float:
        """The nominal ``k/d`` (not guaranteed: see the class docstring)."""
        return _keep(self.fraction, d) / d

    def payload_bits(self, d: int) -> int:
        """The expected ``k`` values and ``k`` indices."""
        return _keep(self.fraction, d) * (VALUE_BITS + INDEX_BITS)


@dataclass(frozen=True)
class RandomK(Compressor):
    """Keep ``k`` coordinates drawn uniformly without replacement, per node.

    Unscaled: ``ω = k/d`` in expectation, biased. ``scaled=True`` multiplies by ``d/k``: unbiased
    with ``τ = d/k − 1``.

    Args:
        fraction: Share of coordinates kept, in ``(0, 1]``.
        scaled: Multiply the kept values by ``d/k`` (unbiased).
    """

    name: ClassVar[str] = "random-k"
    random: ClassVar[bool] = True
    fraction: float = 0.01
    scaled: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise FlatlabError(f"random-k fraction must be in (0, 1], got {self.fraction}")

    @property
    def unbiased(self) -> bool:
        """When scaled by ``d/k``."""
        return self.scaled

    def __call__(self, X: torch.Tensor, generator: torch.Generator | None = None  # noqa: N803
                 ) -> torch.Tensor:
        """Zero all but ``k`` random coordinates of each row (drawn per row)."""
        d = X.shape[1]
        k = _keep(self.fraction, d)
        u = torch.rand(X.shape, generator=generator, device=X.device, dtype=X.dtype)
        idx = u.topk(k, dim=1).indices
        vals = X.gather(1, idx) * (d / k if self.scaled else 1.0)
        return torch.zeros_like(X).scatter_(1, idx, vals)

    def omega(self, d: int) -> float:
        """``k/d`` unscaled; none (0) scaled, unless ``k = d``."""
        k = _keep(self.fraction, d)
        return 0.0 if self.scaled and k < d else k / d

    def variance(self, d: int) -> float:
        """``d/k − 1`` scaled, ``1 − k/d`` unscaled."""
        k = _keep(self.fraction, d)
        return d / k - 1.0 if self.scaled else 1.0 - k / d

    def payload_bits(self, d: int) -> int:
        """``k`` values and ``k`` indices."""
        return _keep(self.fraction, d) * (VALUE_BITS + INDEX_BITS)


@dataclass(frozen=True)
class ScaledSign(Compressor):
    """``Q(x) = (‖x‖₁/d) sign(x)``: ``ω = ‖x‖₁²/(d‖x‖₂²) ≥ 1/d``, deterministic, biased."""

    name: ClassVar[str] = "sign"

    def __call__(self, X: torch.Tensor, generator: torch.Generator | None = None  # noqa: N803
                 ) -> torch.Tensor:
        """``(‖x‖₁/d) sign(x)`` per row."""
        return X.abs().mean(dim=1, keepdim=True) * torch.sign(X)

    def omega(self, d: int) -> float:
        """The worst case ``1/d`` (the data-dependent one is larger)."""
        return 1.0 / d

    def payload_bits(self, d: int) -> int:
        """One scale and one bit per coordinate."""
        return VALUE_BITS + d


@dataclass(frozen=True)
class QSGD(Compressor):
    """QSGD with ``s`` levels: ``‖x‖₂ sign(x_j) ℓ_j / s``, ``ℓ_j`` stochastically rounded.

    ``ℓ_j`` is ``s|x_j|/‖x‖₂`` rounded up with probability its fractional part. Unbiased with
    ``τ = min(d/s², √d/s)``; ``biased=True`` divides by ``1 + τ`` (a contraction with
    ``ω = 1/(1 + τ)``, CHOCO's form; Aketi's ``--biased``, whose ``s = 2^bits − 1``).

    Args:
        levels: ``s ≥ 1``.
        biased: Scale by ``1/(1 + τ)``.
    """

    name: ClassVar[str] = "qsgd"
    random: ClassVar[bool] = True
    levels: int = 16
    biased: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.levels, int) and self.levels >= 1):
            raise FlatlabError(f"qsgd levels must be an integer >= 1, got {self.levels}")

    @property
    def unbiased(self) -> bool:
        """Unless ``biased`` (scaled by ``1/(1 + τ)``)."""
        return not self.biased

    def tau(self, d: int) -> float:
        """Variance factor ``τ = min(d/s², √d/s)`` of the unscaled operator."""
        s = self.levels
        return min(d / s**2, math.sqrt(d) / s)

    def __call__(self, X: torch.Tensor, generator: torch.Generator | None = None  # noqa: N803
                 ) -> torch.Tensor:
        """Stochastically rounded levels of ``|x_j|/‖x‖₂``, per row."""
        s = self.levels
        norm = torch.linalg.vector_norm(X, dim=1, keepdim=True)
        r = s * X.abs() / torch.where(norm > 0, norm, torch.ones_like(norm))
        low = r.floor()
        u = torch.rand(X.shape, generator=generator, device=X.device, dtype=X.dtype)
        level = low + (u < r - low).to(X.dtype)
        out = norm * torch.sign(X) * level / s
        return out / (1.0 + self.tau(X.shape[1])) if self.biased else out

    def omega(self, d: int) -> float:
        """``1/(1 + τ)`` when biased; none (0) unbiased."""
        return 1.0 / (1.0 + self.tau(d)) if self.biased else 0.0

    def variance(self, d: int) -> float:
        """``τ`` unbiased, ``τ/(1 + τ)`` biased."""
        if self.biased:
            return 1.0 - self.omega(d)
        return self.tau(d)

    def payload_bits(self, d: int) -> int:
        """The norm, then a sign bit and a ``⌈log2(s + 1)⌉``-bit level per coordinate."""
        return VALUE_BITS + d * (1 + math.ceil(math.log2(self.levels + 1)))


COMPRESSORS: dict[str, type[Compressor]] = {
    c.name: c for c in (Identity, TopK, ApproxTopK, RandomK, ScaledSign, QSGD)
}


def make(name: str, **params: object) -> Compressor:
    """A compressor by name: identity, top-k, top-k-approx, random-k, sign or qsgd.

    Raises:
        FlatlabError: Unknown name or bad parameters (one line saying what is accepted).
    """
    cls = COMPRESSORS.get(name)
    if cls is None:
        raise FlatlabError(f"unknown compressor {name!r}; choose from {', '.join(COMPRESSORS)}")
    try:
        return cls(**params)  # type: ignore[arg-type]
    except TypeError as e:
        fields = [f.name for f in dataclasses.fields(cls)]
        raise FlatlabError(f"compressor {name!r} takes {', '.join(fields) or 'no parameters'}; "
                           f"got {', '.join(params)} ({e})") from None


def _spans(P: int, blocks: Sequence[slice] | None) -> list[slice]:  # noqa: N803
    if blocks is None:
        return [slice(0, P)]
    spans = sorted(blocks, key=lambda b: b.start)
    pos = 0
    for b in spans:
        if b.start != pos or b.stop <= b.start:
            raise FlatlabError("compression blocks must tile the parameter vector without gaps "
                               f"or overlaps; got a block {b.start}:{b.stop} at position {pos}")
        pos = b.stop
    if pos != P:
        raise FlatlabError(f"compression blocks cover {pos} of {P} parameters")
    return spans


def compress(X: torch.Tensor, q: Compressor, *, blocks: Sequence[slice] | None = None,  # noqa: N803
             seed: int = 0, rows: slice | None = None, n: int | None = None) -> torch.Tensor:
    """``Q`` applied to every row of ``X`` ``[m, P]``, over the whole row or per block.

    Args:
        X: Node-stacked vectors, ``[m, P]`` (the rows this process holds).
        q: The compressor.
        blocks: Slices tiling ``[0, P)`` (layers) compressed separately; ``None``: one block.
        seed: Seed of the random operators' draws (pass a new one every round).
        rows: Which rows of the global stack ``X`` holds (default: all, ``slice(0, m)``).
        n: Number of nodes in the global stack (default ``m``).

    Returns:
        ``[m, P]``.
    """
    if X.dim() != 2:
        raise FlatlabError(f"compress needs node-stacked vectors [n, P], got shape "
                           f"{tuple(X.shape)}")
    m, P = X.shape  # noqa: N806
    rows = slice(0, m) if rows is None else rows
    n = m if n is None else n
    gen = torch.Generator(device=X.device).manual_seed(seed) if q.random else None
    out = torch.empty_like(X)
    for b in _spans(P, blocks):
        if q.random and (rows.start, rows.stop, n) != (0, m, m):
            # draw for the whole network, keep this process's rows: same numbers as one process
            full = torch.zeros(n, b.stop - b.start, dtype=X.dtype, device=X.device)
            full[rows] = X[:, b]
            out[:, b] = q(full, gen)[rows]
        else:
            out[:, b] = q(X[:, b], gen)
    return out


def payload_bytes(q: Compressor, P: int, blocks: Sequence[slice] | None = None) -> int:  # noqa: N803
    """Bytes of one node's compressed message of ``P`` parameters (rounded up per block)."""
    return sum(math.ceil(q.payload_bits(b.stop - b.start) / 8) for b in _spans(P, blocks))
