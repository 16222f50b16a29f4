"""The manual's study pages quote the committed results.md of each study, verbatim."""

from pathlib import Path

import pytest

from flatlab.studies import STUDIES
from flatlab.studies.manual import blocks, pages, sync

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("page", pages(ROOT), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_results_blocks_equal_the_committed_results(page):
    text = page.read_text()
    assert text == sync(ROOT, text), "run python -m flatlab.studies.manual"
    assert set(blocks(text)) <= set(STUDIES)


def test_every_study_with_committed_results_has_its_page_quoting_them():
    quoted = {name for page in pages(ROOT) for name in blocks(page.read_text())}
    committed = {name for name in STUDIES if (ROOT / "results" / f"{name}-small").is_dir()}
    for name in committed:
        assert (ROOT / "docs" / "studies" / f"{name}.md").is_file(), name
    assert committed <= quoted


def test_main_writes_nothing_when_a_block_names_a_study_without_results(tmp_path, monkeypatch,
                                                                       capsys):
    from flatlab.studies.manual import main

    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("<!-- results:ghost -->\nold\n<!-- /results:ghost -->\n")
    monkeypatch.chdir(tmp_path)
    assert main() == 2
    assert "results block 'ghost'" in capsys.readouterr().err
    assert "old" in (tmp_path / "README.md").read_text()


def test_sync_fills_a_block_and_refuses_an_unknown_study(tmp_path):
    (tmp_path / "results" / "demo-small").mkdir(parents=True)
    (tmp_path / "results" / "demo-small" / "results.md").write_text("3 claims.\n")
    text = "# x\n<!-- results:demo -->\nstale 4 claims\n<!-- /results:demo -->\nend\n"
    got = sync(tmp_path, text)
    assert "3 claims.\n<!-- /results:demo -->" in got and "stale" not in got
    assert sync(tmp_path, got) == got
    with pytest.raises(FileNotFoundError, match="'other'"):
        sync(tmp_path, "<!-- results:other -->\n<!-- /results:other -->")


def test_redraw_study_draws_from_the_committed_tables_or_refuses_in_one_line(tmp_path, capsys):
    from flatlab.studies import heterogeneity
    from flatlab.studies.figures import redraw_study

    assert redraw_study(tmp_path, heterogeneity.STUDY) == 2
    assert capsys.readouterr().err.strip() == (
        "error: no heterogeneity results; run python -m flatlab.studies heterogeneity first")
    src = tmp_path / "results" / "heterogeneity-small"
    src.mkdir(parents=True)
    for name in ("runs.csv", "tuning.csv"):
        (src / name).write_text((ROOT / "results" / "heterogeneity-small" / name).read_text())
    assert redraw_study(tmp_path, heterogeneity.STUDY) == 0
    out = tmp_path / "paper_figs" / "out"
    assert (out / "heterogeneity.png").stat().st_size > 10_000
    assert (out / "heterogeneity_sensitivity.pdf").is_file()
