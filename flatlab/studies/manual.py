"""Keep the manual's study pages in step with the committed tables.

Each study's page (``docs/studies/<name>.md``) quotes its generated ``results.md`` (counts of
settled runs, the verdicts with their adjusted intervals and margins) between the markers
``<!-- results:<name> -->`` and ``<!-- /results:<name> -->``. :func:`sync` rewrites those blocks
from ``results/<name>-full/results.md`` (else ``-small``); the test suite checks that every page
of the manual (:func:`pages`: ``README.md`` and ``docs/**/*.md``) equals what :func:`sync` would
write, so no count or interval on a study page can drift from its table. Run
``python -m flatlab.studies.manual`` after a study is re-run or re-judged.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

__all__ = ["BLOCK", "blocks", "pages", "sync"]

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
    """The generated blocks of a page's text: study name -> content between its markers."""
    return {m["name"]: m["body"] for m in BLOCK.finditer(text)}


def pages(root: Path) -> list[Path]:
    """The manual's Markdown files: ``README.md`` and every page under ``docs/``."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def sync(root: Path, text: str | None = None) -> str:
    """A page's text with every block replaced by its study's ``results.md``.

    Args:
        root: The repository root (``results/`` under it).
        text: The page's text (default: read ``root/README.md``).

    Raises:
        FileNotFoundError: A block names a study without a ``results.md``.
    """
    text = (root / "README.md").read_text() if text is None else text

    def fill(m: re.Match) -> str:
        src = _source(root, m["name"])
        if src is None:
            raise FileNotFoundError(f"results block {m['name']!r}: no results/{m['name']}-*/"
                                    "results.md")
        rel = src.relative_to(root)
        body = f"*Generated from `{rel}` (`python -m flatlab.studies.manual`).*\n\n"
        return m.group(1) + body + src.read_text() + m.group(4)

    return BLOCK.sub(fill, text)


def main() -> int:
    """Rewrite the generated blocks of every page in the current folder; print what changed."""
    root = Path.cwd()
    try:  # every page first, then the writes: a missing table changes nothing
        texts = {page: (page.read_text(), sync(root, page.read_text())) for page in pages(root)}
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    changed, count = [], 0
    for page, (old, new) in texts.items():
        count += len(blocks(new))
        if new != old:
            page.write_text(new)
            changed.append(str(page.relative_to(root)))
    print(f"{count} generated blocks; "
          + (f"updated: {', '.join(changed)}" if changed else "every page unchanged"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
