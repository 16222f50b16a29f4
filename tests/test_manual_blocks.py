"""Every `bash` and `python` block of the manual runs, in order, at a small size.

The manual is ``README.md`` and the pages of ``mkdocs.yml``'s navigation, in that order. The blocks
run as a reader would paste them, page by page (one test each, which names the page that
failed): in a scratch folder of the page's own (holding the repository's ``configs/`` and
``results/``), ``bash`` blocks with ``set -e`` and the ``flatlab`` command on the path, the
``python`` blocks of a page one after another in one interpreter (a later block uses what an
earlier one on the same page defined, as in a notebook; each page starts afresh). Runs are
shortened with ``FLATLAB_MAX_STEPS`` (the guide says how); the scratch copy of
``configs/ring16.yaml`` evaluates on 200 training samples (128 for curvature) without per-node
metrics, and its ``configs/sweep_algorithms.yaml`` on one seed. Not run: the README's opening
block (``make demo`` and ``make test``, which CI itself runs) and the blocks after a
``<!-- not run by the tests: REASON -->`` line, each with its reason.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
MARK = "<!-- not run by the tests:"
FENCE = re.compile(r"^```(\w*)\s*$")

DRIVER = """
import os, subprocess, sys, traceback
import matplotlib
matplotlib.use("Agg")
blocks = {blocks!r}
page = None
for where, line, lang, code in blocks:
    if where != page:
        page, namespace = where, {{"__name__": "__manual__"}}
    print(f"--- {{where}} line {{line}} ({{lang}})", flush=True)
    if lang == "bash":
        r = subprocess.run(["bash", "-e", "-c", code])
        if r.returncode:
            sys.exit(f"{{where}} line {{line}}: the bash block exited {{r.returncode}}")
    else:
        try:
            exec(compile(code, f"{{where}}:{{line}}", "exec"), namespace)
        except BaseException:
            traceback.print_exc()
            sys.exit(f"{{where}} line {{line}}: the python block raised")
print("all blocks ran", flush=True)
"""


def manual_pages() -> list[Path]:
    """``README.md``, then the pages of ``mkdocs.yml``'s navigation in their order."""
    def walk(entry) -> list[str]:
        if isinstance(entry, str):
            return [entry]
        if isinstance(entry, list):
            return [p for e in entry for p in walk(e)]
        return [p for v in entry.values() for p in walk(v)]

    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]
    return [REPO / "README.md", *(REPO / "docs" / p for p in walk(nav))]


def page_blocks(text: str, opening: bool = False
                ) -> tuple[list[tuple[int, str, str]], list[tuple[int, str]]]:
    """``(line, language, code)`` of each block to run, and ``(line, reason)`` of the others.

    ``opening``: the page's first block is the README's opening one (not run).
    """
    lines = text.splitlines()
    run, skipped, first = [], [], opening
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        lang, code = m.group(1), "\n".join(lines[i + 1:end]) + "\n"
        above = "\n".join(lines[max(0, i - 3):i])
        if lang in ("bash", "python"):
            if first:
                skipped.append((i + 1, "the opening block: what CI runs"))
            elif MARK in above:
                reason = above.split(MARK, 1)[1].split("-->", 1)[0]
                skipped.append((i + 1, " ".join(reason.split())))
            else:
                run.append((i + 1, lang, code))
            first = False
        i = end + 1
    return run, skipped


def manual_blocks() -> tuple[list[tuple[str, int, str, str]], list[tuple[str, int, str]]]:
    """Every page's blocks to run, ``(page, line, language, code)``, and those not run."""
    run, skipped = [], []
    for page in manual_pages():
        name = str(page.relative_to(REPO))
        r, s = page_blocks(page.read_text(), opening=name == "README.md")
        run += [(name, *b) for b in r]
        skipped += [(name, *b) for b in s]
    return run, skipped


def test_the_manual_parses_into_blocks_and_says_why_any_is_not_run():
    assert all(p.is_file() for p in manual_pages())
    run, skipped = manual_blocks()
    assert len(run) >= 20 and {lang for *_, lang, _ in run} == {"bash", "python"}
    assert skipped[0] == ("README.md", 3, "the opening block: what CI runs")
    assert all(reason for *_, reason in skipped)
    # what the suite cannot run: a SLURM cluster (tests/cluster runs those commands where one
    # is up) and torchrun across machines; anything else not run must stay rare
    cluster = [b for b in skipped if "SLURM" in b[-1]]
    assert len(cluster) <= 4 and len(skipped) - len(cluster) <= 6


def _pages_with_blocks() -> list[str]:
    run, _ = manual_blocks()
    return list(dict.fromkeys(where for where, *_ in run))


@pytest.mark.parametrize("page", _pages_with_blocks())
def test_every_block_of_the_manual_runs(tmp_path, page):
    run = [b for b in manual_blocks()[0] if b[0] == page]
    (tmp_path / "results").symlink_to(REPO / "results")
    # the shipped configs, with their evaluation sets shrunk (a run's measurements at the start
    # and end of 2 steps cost more than its training); everything else as shipped
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    cfg = tmp_path / "configs" / "ring16.yaml"
    d = yaml.safe_load(cfg.read_text())
    d["measure"].update(train_subset=200, per_node=False, curvature_subset=128)
    cfg.write_text(yaml.safe_dump(d))
    spec = tmp_path / "configs" / "sweep_algorithms.yaml"
    d = yaml.safe_load(spec.read_text())
    d["grid"]["seed"] = [0]
    spec.write_text(yaml.safe_dump(d))
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "FLATLAB_MAX_STEPS": "2", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1",
           "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(DRIVER.format(blocks=run)))
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout[-3000:] + r.stderr[-5000:])
    assert "all blocks ran" in r.stdout
    if page == "README.md":  # what the blocks wrote: a shortened run, recorded as such
        cfg = (tmp_path / "runs" / "readme-consensus" / "config.yaml").read_text()
        assert "steps: 2" in cfg and "epochs: null" in cfg
