"""MkDocs hooks of flatlab's documentation (``mkdocs.yml``: ``hooks``).

- The committed study figures (``paper_figs/out/*.png``) are published as ``figures/NAME.png``,
  so a study page shows the figure its study drew from the committed tables.
- The home page is ``README.md`` (one text, two places), its links rewritten for the site.
- ``<!-- registry -->`` in a page becomes the table of every registered algorithm, generated
  from the registry: its name, aliases, class, family page and the first line of its docstring
  (whose update rule and source the registry requires).
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "paper_figs" / "out"


def on_files(files: Files, config) -> Files:
    """Publish every committed study figure as ``figures/NAME.png``."""
    for png in sorted(FIGURES.glob("*.png")):
        files.append(File.generated(config, f"figures/{png.name}", abs_src_path=str(png)))
    return files


def registry_table() -> str:
    """The Markdown table of the algorithm registry."""
    from flatlab import algorithms

    aliases: dict[str, list[str]] = {}
    for alias, name in algorithms.aliases().items():
        aliases.setdefault(name, []).append(alias)
    rows = ["| name | aliases | class | family | what it is |", "|---|---|---|---|---|"]
    for name in algorithms.available():
        cls = algorithms.get(name)
        family = cls.__module__.rsplit(".", 1)[-1]
        first = inspect.getdoc(cls).split("\n\n", 1)[0].replace("\n", " ").replace("|", "\\|")
        alias = ", ".join(f"`{a}`" for a in sorted(aliases.get(name, [])))
        rows.append(f"| `{name}` | {alias} | [`{cls.__name__}`]({family}.md#{cls.__module__}."
                    f"{cls.__name__}) | [{family}]({family}.md) | {first} |")
    return "\n".join(rows) + "\n"


def readme_page() -> str:
    """``README.md`` as the site's home page, its links into ``docs/`` made site-relative."""
    text = (ROOT / "README.md").read_text()
    text = re.sub(r"\]\(docs/([^)]*)\)", lambda m: f"]({m.group(1) or 'index.md'})", text)
    text = re.sub(r"\]\(paper_figs/out/([^)]+\.png)\)", r"](figures/\1)", text)
    return text


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Fill the home page from the README and ``<!-- registry -->`` with the registry."""
    if markdown.startswith("<!-- readme:"):
        markdown = readme_page()
    if "<!-- registry -->" in markdown:
        markdown = markdown.replace("<!-- registry -->", registry_table())
    return markdown
