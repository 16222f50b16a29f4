"""The documentation site builds with every warning an error, and holds what it promises.

``mkdocs build --strict`` (what ``make docs`` runs) fails on a broken link or anchor, a page left
out of the navigation, a docstring griffe cannot parse or a missing figure; this test runs it
into a scratch folder and then reads the pages it wrote.
"""

from __future__ import annotations

import doctest
import re
import subprocess
import sys
from pathlib import Path

import pytest

import flatlab.algorithms

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "docs"))
from griffe_doctests import fence  # noqa: E402

STUDY_PAGES = sorted(p.stem for p in (REPO / "docs" / "studies").glob("*.md") if p.stem != "index")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                        str(out)], cwd=REPO, capture_output=True, text=True, timeout=600,
                       env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin",
                            "HOME": str(out)})
    assert r.returncode == 0, r.stderr[-5000:]
    return out


def text_of(html: Path) -> str:
    return re.sub(r"<[^>]+>", "", html.read_text())


def test_the_home_page_is_the_readme_with_site_links(site):
    home = (site / "index.html").read_text()
    assert "flatness versus optimization in decentralized learning" in text_of(site / "index.html")
    assert 'href="getting-started.html"' in home and "docs/getting-started.md" not in home


def test_every_registered_algorithm_is_in_the_generated_table_and_on_its_family_page(site):
    table = text_of(site / "algorithms" / "index.html")
    for name in flatlab.algorithms.available():
        cls = flatlab.algorithms.get(name)
        family = cls.__module__.rsplit(".", 1)[-1]
        assert name in table, name
        page = (site / "algorithms" / f"{family}.html").read_text()
        assert f'id="{cls.__module__}.{cls.__name__}"' in page, (name, family)


@pytest.mark.parametrize("name", STUDY_PAGES)
def test_every_study_page_shows_its_committed_figures(site, name):
    page = (site / "studies" / f"{name}.html").read_text()
    for src in re.findall(r'<img[^>]+src="([^"]+)"', page):
        assert (site / "studies" / src).resolve().is_file(), src
    figures = sorted((REPO / "paper_figs" / "out").glob(f"{name}*.png"))
    assert all(f"figures/{f.name}" in page for f in figures), name


def test_docstring_examples_render_as_code_not_quotes(site):
    page = (site / "api" / "topology.html").read_text()
    assert "<blockquote>" not in page and "&gt;&gt;&gt; </span>" in page


def test_docstrings_reST_renders_as_markdown_on_every_generated_page(site):
    """Sphinx roles, ``literals`` and simple tables would show as markup: none is left."""
    for page in [*(site / "api").glob("*.html"), *(site / "algorithms").glob("*.html")]:
        text = text_of(page)
        for markup in (":class:`", ":func:`", ":mod:`", ":meth:`", ":attr:`", "``", "======"):
            assert markup not in text, (page.name, markup)
    dsgd = (site / "algorithms" / "dsgd.html").read_text()
    assert "<table>" in dsgd and "<code>diffusion-cta</code>" in dsgd


def test_the_site_opens_from_disk():
    """Pages are NAME.html, not folders, so links work from file:// (README says to open it)."""
    import yaml

    assert yaml.safe_load((REPO / "mkdocs.yml").read_text())["use_directory_urls"] is False


def test_fence_keeps_every_doctest_example_and_leaves_an_examples_section_alone():
    text = ('Intro.\n\n>>> a = 1\n>>> a + 1\n2\n\nMore text.\n\n    >>> print("x")\n    x\n\n'
            'Examples:\n    >>> 3\n    3\n')
    fenced = fence(text)
    assert re.sub(r"(?m)^ *```(pycon)?\n", "", fenced) == text  # only fence lines added
    assert fenced.count("```pycon") == 2 and "Examples:\n    >>> 3" in fenced
    # each fence holds whole examples: what the fences hold parses to the same examples
    inside = "\n\n".join(re.findall(r"```pycon\n(.*?)\n *```", fenced, re.DOTALL))
    parser = doctest.DocTestParser()
    assert ([(e.source, e.want) for e in parser.get_examples(inside)]
            == [(e.source, e.want) for e in parser.get_examples(text)][:3])
