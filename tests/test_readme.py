"""Every `bash` and `python` block of the README runs, in order, at a small size.

The blocks run as a reader would paste them: in one scratch folder (holding the repository's
``configs/`` and ``results/``), ``bash`` blocks with ``set -e`` and the ``flatlab`` command on the
path, ``python`` blocks one after another in one interpreter (a later block uses what an earlier
one defined, as in a notebook). Runs are shortened with ``FLATLAB_MAX_STEPS`` (the README says
how); the scratch copy of ``configs/ring16.yaml`` evaluates on 200 training samples (128 for
curvature) without per-node metrics, and its ``configs/sweep_algorithms.yaml`` on one seed. Not
run: the opening block (``make demo`` and ``make test``, which CI itself runs) and the blocks
after a ``<!-- not run by tests/test_readme.py: REASON -->`` line, each with its reason.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
MARK = "<!-- not run by tests/test_readme.py:"
FENCE = re.compile(r"^```(\w*)\s*$")

DRIVER = """
import os, subprocess, sys, traceback
import matplotlib
matplotlib.use("Agg")
blocks = {blocks!r}
namespace = {{"__name__": "__readme__"}}
for line, lang, code in blocks:
    print(f"--- README line {{line}} ({{lang}})", flush=True)
    if lang == "bash":
        r = subprocess.run(["bash", "-e", "-c", code])
        if r.returncode:
            sys.exit(f"README line {{line}}: the bash block exited {{r.returncode}}")
    else:
        try:
            exec(compile(code, f"README.md:{{line}}", "exec"), namespace)
        except BaseException:
            traceback.print_exc()
            sys.exit(f"README line {{line}}: the python block raised")
print("all blocks ran", flush=True)
"""


def readme_blocks(text: str) -> tuple[list[tuple[int, str, str]], list[tuple[int, str]]]:
    """``(line, language, code)`` of each block to run, and ``(line, reason)`` of the others."""
    lines = text.splitlines()
    run, skipped, first = [], [], True
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


def test_the_readme_parses_into_blocks_and_says_why_any_is_not_run():
    run, skipped = readme_blocks((REPO / "README.md").read_text())
    assert len(run) >= 10 and {lang for _, lang, _ in run} == {"bash", "python"}
    assert skipped[0][1] == "the opening block: what CI runs"
    assert all(reason for _, reason in skipped) and len(skipped) <= 3


def test_every_readme_block_runs(tmp_path):
    run, _ = readme_blocks((REPO / "README.md").read_text())
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
    # what the blocks wrote: a shortened run, recorded as such
    cfg = (tmp_path / "runs" / "ring16-diffusion" / "config.yaml").read_text()
    assert "steps: 2" in cfg and "epochs: null" in cfg
