"""The README's Results quote the committed results.md of each study, verbatim."""

from pathlib import Path

import pytest

from flatlab.studies import STUDIES
from flatlab.studies.readme import blocks, sync

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_results_blocks_equal_the_committed_results():
    text = (ROOT / "README.md").read_text()
    assert text == sync(ROOT, text), "run python -m flatlab.studies.readme"
    assert set(blocks(text)) <= set(STUDIES)


def test_sync_fills_a_block_and_refuses_an_unknown_study(tmp_path):
    (tmp_path / "results" / "demo-small").mkdir(parents=True)
    (tmp_path / "results" / "demo-small" / "results.md").write_text("3 claims.\n")
    text = "# x\n<!-- results:demo -->\nstale 4 claims\n<!-- /results:demo -->\nend\n"
    got = sync(tmp_path, text)
    assert "3 claims.\n<!-- /results:demo -->" in got and "stale" not in got
    assert sync(tmp_path, got) == got
    with pytest.raises(FileNotFoundError, match="'other'"):
        sync(tmp_path, "<!-- results:other -->\n<!-- /results:other -->")
