"""Keep the README's Results in step with the committed tables.

Each study's Results section in ``README.md`` quotes its generated ``results.md`` (counts of
settled runs, the verdicts with their adjusted intervals and margins) between the markers
``<!-- results:<name> -->`` and ``<!-- /results:<name> -->``. :func:`sync` rewrites those blocks
from ``results/<name>-full/results.md`` (else ``-small``); the test suite checks that the
README equals what :func:`sync` would write, so no count or interval in a Results section can
drift from its table. Run ``python -m flatlab.studies.readme`` after a study is re-run or
re-judged.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

__all__ = ["BLOCK", "blocks", "sync"]

#: A generated block: its study name, then its content.
BLOCK = re.compile(r"(<!-- results:(?P<name>[a-z_]+) -->\n)(?P<body>.*?)"
                   r"(<!-- /results:(?P=name) -->)", re.DOTALL)


def _source(root: Path, name: str) -> Path | None:
    for scale in ("full", "small"):
        p = root / "results" / f"{name}-{scale}" / "results.md"
        if p.is_file():
            return p
    return None


def blocks(text: str) -> dict[str, str]:
    """The generated blocks of a README text: study name -> content between its markers."""
    return {m["name"]: m["body"] for m in BLOCK.finditer(text)}


def sync(root: Path, text: str | None = None) -> str:
    """The README text with every block replaced by its study's ``results.md``.

    Args:
        root: The repository root (``README.md`` and ``results/`` under it).
        text: The README text (default: read ``root/README.md``).

    Raises:
        FileNotFoundError: A block names a study without a ``results.md``.
    """
    text = (root / "README.md").read_text() if text is None else text

    def fill(m: re.Match) -> str:
        src = _source(root, m["name"])
        if src is None:
            raise FileNotFoundError(f"README block {m['name']!r}: no results/{m['name']}-*/"
                                    "results.md")
        rel = src.relative_to(root)
        body = f"*Generated from `{rel}` (`python -m flatlab.studies.readme`).*\n\n"
        return m.group(1) + body + src.read_text() + m.group(4)

    return BLOCK.sub(fill, text)


def main() -> int:
    """Rewrite ``README.md``'s generated blocks in the current folder; print what changed."""
    root = Path.cwd()
    old = (root / "README.md").read_text()
    try:
        new = sync(root, old)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if new != old:
        (root / "README.md").write_text(new)
    state = "updated" if new != old else "unchanged"
    print(f"README.md: {len(blocks(new))} generated blocks, {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
