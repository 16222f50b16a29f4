"""Typed settings of the named measures, and the one validator that checks them all.

Each named measure (:mod:`flatlab.measures.named`) declares its settings as a frozen dataclass
deriving from :class:`Settings`: one field per setting, with its type, its default and, next to
it (:func:`setting`), the choices or the lower limit its estimator accepts. :func:`validate`
checks given settings against such a class (names, types, choices, limits, then the checks across
settings of :meth:`Settings.problem`) and refuses the first problem with one line that names the
setting and what is accepted.

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Top(Settings):
...     k: int = setting(1, low=1)
...     method: str = setting("lanczos", choices=("lanczos", "power"))
>>> validate(Top, {"k": 3}, name="top")
Top(every=None, k=3, method='lanczos')
>>> validate(Top, {"k": 0}, name="top")
Traceback (most recent call last):
...
flatlab.errors.MeasureError: measure top setting k = 0 is out of range; accepted: an integer >= 1
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flatlab.errors import MeasureError

__all__ = ["Settings", "setting", "validate"]

#: What each setting type accepts, as the messages say it.
_ACCEPTED = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_EVERY = "null or an integer >= 1"


def setting(default: Any, *, choices: tuple[Any, ...] | None = None,
            low: float | None = None, strict: bool = False) -> Any:
    """A settings field: its default and what its estimator accepts.

    Args:
        default: The default value (never changed by validation).
        choices: The accepted values (strings such as methods and backends).
        low: The lower limit of a number.
        strict: ``value > low`` (else ``value >= low``).
    """
    meta: dict[str, Any] = {}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if low is not None:
        meta["low"] = (low, bool(strict))
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class Settings:
    """The settings every named measure has; a measure's own settings class derives from it.

    Attributes:
        every: Measure only at steps that are multiples of this (a multiple of
            ``measure.every``); ``None`` measures at every measurement step.
    """

    every: int | None = None

    def problem(self) -> str | None:
        """A problem of the settings taken together (``k > max_iter``), or ``None``."""
        return None


def _types(cls: type[Settings]) -> dict[str, Any]:
    """The declared type of each field (``bool``, ``int``, ``float``, ``str`` or ``int | None``)."""
    return typing.get_type_hints(cls)


def _typed(tp: Any, v: Any) -> tuple[bool, Any]:
    """Whether ``v`` has type ``tp``, and ``v`` as that type (an integer taken as a float)."""
    if tp is bool:
        return isinstance(v, bool), v
    if tp is int:
        return isinstance(v, int) and not isinstance(v, bool), v
    if tp is float:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        return ok, (float(v) if ok else v)
    if tp is str:
        return isinstance(v, str), v
    return v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1), v


def _in_range(tp: Any, v: Any, low: float, strict: bool) -> str | None:
    """``None`` when ``v`` meets the lower limit, else what is accepted."""
    if v > low if strict else v >= low:
        return None
    if tp is int:
        return f"an integer >= {low + 1 if strict else low}"
    return f"{'a number >' if strict else 'a number >='} {low:g}"


def validate(cls: type[Settings], given: Mapping[str, Any] | None = None, *, name: str,
             field: str | None = None) -> Settings:
    """``cls``'s defaults updated by ``given``, checked; the first problem is refused.

    The checks run in this order: each given setting's name and type (in the order given), then
    the choices and the lower limits (in the order of the fields), then :meth:`Settings.problem`.

    Args:
        cls: The measure's settings class.
        given: Settings to change.
        name: The measure's name (for the messages).
        field: How messages name the settings (``"measure.options.hessian_top"`` in a config);
            default ``"measure NAME setting"``.

    Raises:
        MeasureError: An unknown setting, or a value of the wrong type or out of range.
    """
    def where(k: str) -> str:
        return f"{field}.{k}" if field else f"measure {name} setting {k}"

    fields = {f.name: f for f in dataclasses.fields(cls)}
    types = _types(cls)
    values = {k: f.default for k, f in fields.items()}
    for k, v in (given or {}).items():
        if k not in fields:
            raise MeasureError(f"{where(k)} is unknown: measure {name} has no setting {k!r}; "
                               f"accepted: {', '.join(fields)}")
        ok, values[k] = _typed(types[k], v)
        if not ok:
            want = _ACCEPTED.get(types[k], _EVERY)
            raise MeasureError(f"{where(k)} = {v!r} is invalid; accepted: {want}")
    for k, f in fields.items():
        if "choices" in f.metadata and values[k] not in f.metadata["choices"]:
            raise MeasureError(f"{where(k)} = {values[k]!r} is unknown; accepted: "
                               f"{', '.join(map(str, f.metadata['choices']))}")
    for k, f in fields.items():
        if "low" in f.metadata and values[k] is not None:
            want = _in_range(types[k], values[k], *f.metadata["low"])
            if want:
                raise MeasureError(f"{where(k)} = {values[k]!r} is out of range; accepted: {want}")
    out = cls(**values)
    problem = out.problem()
    if problem:
        raise MeasureError(f"{field or f'measure {name}'}: {problem}")
    return out
