"""A griffe extension of flatlab's site: interactive examples in docstrings become code blocks.

flatlab's docstrings hold doctests (``>>>`` lines with their output; ``tests/test_docs.py`` runs
them). Outside a Google ``Examples:`` section (which griffe parses itself), Markdown would read
``>>>`` as nested quotes, so each run of lines from a ``>>>`` line to the next blank line is
fenced as a ``pycon`` block.
"""

from __future__ import annotations

from typing import Any

import griffe

SECTION = ("Examples:",)  # griffe parses this section's examples itself


def fence(text: str) -> str:
    """``text`` with every doctest example (a ``>>>`` line to the next blank line) fenced."""
    lines, out, i = text.split("\n"), [], 0
    in_section = False
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped in SECTION:
            in_section = True
        elif line and not line[0].isspace():
            in_section = False
        if stripped.startswith(">>>") and not in_section:
            indent = line[: len(line) - len(line.lstrip())]
            j = i
            while j < len(lines) and lines[j].strip():
                j += 1
            out += [f"{indent}```pycon", *lines[i:j], f"{indent}```"]
            i = j
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


class DoctestFences(griffe.Extension):
    """Fence the doctest examples of every object's docstring."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Fence the examples of ``obj``'s docstring (griffe calls this for every object)."""
        if obj.docstring is not None:
            obj.docstring.value = fence(obj.docstring.value)
