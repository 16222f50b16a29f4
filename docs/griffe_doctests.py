"""A griffe extension of flatlab's site: docstrings written for Sphinx and ``help()`` as Markdown.

flatlab's docstrings hold doctests (``>>>`` lines with their output; ``tests/test_docs.py`` runs
them). Outside a Google ``Examples:`` section (which griffe parses itself), Markdown would read
``>>>`` as nested quotes, so each run of lines from a ``>>>`` line to the next blank line is
fenced as a ``pycon`` block. The docstrings' reST (``:class:`~x.Y``` roles, ````literal````
spans, simple tables) is written as Markdown (:func:`markdown`), so the API pages show code and
tables rather than markup.
"""

from __future__ import annotations

import re
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


#: A Sphinx cross-reference role: ``:class:`~flatlab.topology.Topology```.
ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj):`(~?)([^`]+)`")
#: reST's inline literal ``x`` (Markdown's is one backtick).
LITERAL = re.compile(r"``([^`]+?)``")
#: A rule line of a reST simple table: runs of ``=`` separated by spaces.
RULE = re.compile(r"^(\s*)(=+)( +=+)+\s*$")


def _role(m: re.Match) -> str:
    target = re.sub(r"\s+", "", m.group(2))  # a role may break across lines
    return f"`{target.rsplit('.', 1)[-1] if m.group(1) else target}`"


def _table(lines: list[str], i: int) -> tuple[list[str], int] | None:
    """The reST simple table whose top rule is ``lines[i]``, as a Markdown table.

    Returns the table's lines and the index after it; None if ``lines[i]`` does not start one
    (top rule, header, rule, rows, bottom rule).
    """
    top = RULE.match(lines[i])
    if top is None or i + 2 >= len(lines) or not RULE.match(lines[i + 2]):
        return None
    rule = lines[i]
    spans = [(m.start(), m.end()) for m in re.finditer(r"=+", rule)]
    end = next((j for j in range(i + 3, len(lines)) if RULE.match(lines[j])), None)
    if end is None:
        return None

    def cells(line: str) -> list[str]:
        bounds = [a for a, _ in spans] + [len(line) + 1]
        return [LITERAL.sub(r"`\1`", ROLE.sub(_role, line[bounds[k]:bounds[k + 1]].strip()))
                .replace("|", "\\|") for k in range(len(spans))]

    indent = top.group(1)
    out = [indent + "| " + " | ".join(cells(lines[i + 1])) + " |",
           indent + "|" + "---|" * len(spans)]
    out += [indent + "| " + " | ".join(cells(row)) + " |" for row in lines[i + 3:end]
            if row.strip()]
    return out, end + 1


def markdown(text: str) -> str:
    """A docstring's reST as Markdown, outside code.

    Simple tables become Markdown tables (first, while their columns still line up), then
    roles and inline literals become code spans.
    """
    lines, out, i, code = text.split("\n"), [], 0, False
    while i < len(lines):
        line = lines[i]
        if line.strip().startswith("```"):
            code = not code
        t = None if code else _table(lines, i)
        if t is not None:
            rows, i = t
            out += ["", *rows, ""]
            continue
        out.append(line)
        i += 1
    parts = re.split(r"(```.*?```)", "\n".join(out), flags=re.DOTALL)  # code stays as it is
    return "".join(p if k % 2 else LITERAL.sub(r"`\1`", ROLE.sub(_role, p))
                   for k, p in enumerate(parts))


class DoctestFences(griffe.Extension):
    """Fence the doctest examples of every docstring, and turn its reST into Markdown."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite ``obj``'s docstring for the site (griffe calls this for every object)."""
        if obj.docstring is not None:
            obj.docstring.value = markdown(fence(obj.docstring.value))
