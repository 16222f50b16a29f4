"""The pipeline on a study written by a user in one file: stages, shared values, the CLI."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from flatlab.errors import FlatlabError
from flatlab.studies import load, main

ROOT = Path(__file__).resolve().parents[2]

STUDY_FILE = textwrap.dedent('''
    from flatlab.experiment.evidence import Claim
    from flatlab.studies import Scale, Stage, Study, main

    def config(point, scale, seed, holdout):
        return {"name": "mine", "seed": seed, "dtype": "float64",
                "data": {"name": "digits", "batch_size": 8, "seed": seed, "holdout": holdout},
                "model": {"name": "mlp", "options": {"hidden": [8]}},
                "topology": {"name": "ring", "nodes": point["nodes"]},
                "algorithm": {"name": point["method"]},
                "optim": {"lr": point["lr"], "schedule": "constant", "warmup": 0},
                "train": {"steps": scale.steps},
                "measure": {"every": scale.steps if holdout else scale.every,
                            "metrics": ["loss", "accuracy"], "per_node": False}}

    STUDY = Study(
        name="mine", question="Does diffusion beat DSGD at DSGD's step?", config=config,
        scales={"tiny": Scale(settings=({"nodes": 4},), methods=("dsgd", "diffusion"),
                              seeds=(0, 1), tune_seeds=(0, 1), steps=8, every=2,
                              options={"extensions": 1})},
        # DSGD's step is tuned; diffusion runs at it (a value shared with a reference method)
        stages=(Stage("lr", lambda p, s: (0.1, 0.3) if p["method"] == "dsgd" else (),
                      fixed=lambda p, chosen: chosen["dsgd"]),),
        claims=lambda scale: [Claim("diffusion beats dsgd", "diffusion", "dsgd",
                                    where={"nodes": 4}, margin=0.02, why="two points")])

    if __name__ == "__main__":
        raise SystemExit(main(STUDY))
''')


def test_a_study_in_one_file_runs_with_a_value_shared_after_its_stage(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(STUDY_FILE)
    study = load(str(path))
    assert main(study, ["--scale", "tiny", "--out", str(tmp_path / "o"), "--jobs", "1"]) == 0
    tuning = pd.read_csv(tmp_path / "o" / "tuning.csv")
    runs = pd.read_csv(tmp_path / "o" / "runs.csv")
    assert set(tuning["method"]) == {"dsgd"}  # only the reference is tuned
    lr = tuning.loc[tuning["chosen"], "value"].item()
    assert (runs["lr"] == lr).all() and len(runs) == 4  # diffusion at DSGD's chosen step
    verdicts = pd.read_csv(tmp_path / "o" / "verdicts.csv")
    assert verdicts["margin"].item() == 0.02 and verdicts["pairs"].item() == 2
    for name in ("summary.md", "results.md", "summary.csv", "curves.csv"):
        assert (tmp_path / "o" / name).is_file()


def test_the_module_command_line_refuses_unknown_studies_in_one_line(tmp_path, capsys):
    r = subprocess.run([sys.executable, "-m", "flatlab.studies", "nosuch"],
                       capture_output=True, text=True, cwd=ROOT)  # the real entry point, once
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: study 'nosuch' is unknown; accepted: tradeoff, heterogeneity, primal_dual, "
        "compression, implicit_flatness, mechanism, large_batch, regime, faults, or a path to "
        "a .py file that defines STUDY"]
    from flatlab.studies.__main__ import _cli  # the rest in this process: no new interpreter

    (tmp_path / "empty.py").write_text("x = 1\n")
    assert _cli([str(tmp_path / "empty.py")]) == 2
    assert "defines no STUDY" in capsys.readouterr().err
    assert _cli([]) == 2
    with pytest.raises(FlatlabError, match="does not exist"):
        load(str(tmp_path / "missing.py"))


def test_retune_keeps_the_final_runs_only_where_no_choice_moved(tmp_path, capsys):
    path = tmp_path / "mine.py"
    path.write_text(STUDY_FILE)
    study = load(str(path))
    out = tmp_path / "o"
    args = ["--scale", "tiny", "--out", str(out), "--jobs", "1"]
    assert main(study, args) == 0
    runs, tuning = (out / "runs.csv").read_text(), (out / "tuning.csv").read_text()
    # the same rule chooses the same values: the committed final runs stand, re-judged
    assert main(study, [*args, "--retune"]) == 0
    assert (out / "runs.csv").read_text() == runs
    assert (out / "tuning.csv").read_text() == tuning
    # a table from another rule (its final runs at another step): nothing is written
    table = pd.read_csv(out / "runs.csv")
    old = float(table["lr"].iloc[0])
    table["lr"] = 0.03
    table.to_csv(out / "runs.csv", index=False)
    (out / "tuning.csv").write_text("stale\n")
    capsys.readouterr()
    assert main(study, [*args, "--retune"]) == 1
    said = capsys.readouterr().out
    assert "moved 2 choice(s)" in said
    assert f"dsgd at nodes=4: lr 0.03 -> {old:g}" in said.replace("  ", "")
    assert (out / "tuning.csv").read_text() == "stale\n"
    assert main(study, ["--scale", "tiny", "--out", str(tmp_path / "none"), "--retune"]) == 2


def test_a_bad_study_option_is_one_line(capsys):
    from flatlab.studies import large_batch

    assert main(large_batch.STUDY, ["--scale", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        "python -m flatlab.studies large_batch: error: argument --scale: invalid choice")
