"""The implicit-flatness study end to end at its tiny scale, and its matched-loss rule."""

import math

import pandas as pd
import pytest

import flatlab
from tests.analysis import load_study


def study():
    return load_study("implicit_flatness")


def test_tiny_scale_tunes_lr_then_rho_trains_checks_and_judges(tmp_path, capsys):
    s = study()
    grid = s.SCALES["tiny"]
    methods = s.methods(grid)
    assert s.main(["--scale", "tiny", "--out", str(tmp_path), "--jobs", "2"]) == 0
    tuning = pd.read_csv(tmp_path / "tuning.csv")
    runs = pd.read_csv(tmp_path / "runs.csv")
    verdicts = pd.read_csv(tmp_path / "verdicts.csv")
    # tuning: the learning rate of SGD (bracketed; the other methods without SAM on the same
    # grid, not extended), then rho of each SAM method at SGD's learning rate; one choice each,
    # the best held-out accuracy, the initial grid there and anything added marked
    lr_t, rho_t = tuning[tuning["hparam"] == "lr"], tuning[tuning["hparam"] == "rho"]
    assert set(lr_t["method"]) == {m for m, d in methods.items() if not d["sam"]}
    assert set(rho_t["method"]) == {m for m, d in methods.items() if d["sam"]}
    for (hp, m), g in tuning.groupby(["hparam", "method"]):
        assert g["chosen"].sum() == 1
        assert bool(g.loc[g["holdout_accuracy"].idxmax(), "chosen"]), (hp, m)
        assert set(g.loc[~g["extended"], hp]) == set(grid["lrs" if hp == "lr" else "rhos"])
        assert g["holdout_hessian_top"].notna().all() and (g["holdout_hessian_top"] > 0).all()
        if hp == "lr" and m != "sgd":
            assert not g["extended"].any()
    common = float(lr_t[lr_t["chosen"] & (lr_t["method"] == "sgd")]["lr"].iloc[0])
    assert (rho_t["lr"] == common).all()
    tune_dir = next((tmp_path / "runs" / "tune").iterdir())
    assert flatlab.experiment.load_config(str(tune_dir / "config.yaml")).data.holdout == 0.1
    # final: SGD's learning rate for every method, each SAM method's rho, every seed, full
    # training set, i.i.d. split; SAM and the period in the configs as the method says
    chosen = rho_t[rho_t["chosen"]]
    assert len(runs) == len(methods) * len(grid["seeds"])
    assert set(runs["status"]) == {"done"}
    for r in runs.itertuples():
        assert r.lr == common
        assert r.rho == (chosen.set_index("method").loc[r.method, "rho"]
                         if methods[r.method]["sam"] else 0)
        cfg = flatlab.experiment.load_config(
            str(tmp_path / "runs" / "final" / s._name(r.method, r.lr, r.rho, r.seed)
                / "config.yaml"))
        assert cfg.data.holdout == 0.0 and cfg.data.partition == "iid"
        assert cfg.optim.sam_rho == r.rho
        assert cfg.topology.local_steps == methods[r.method]["local_steps"]
        assert cfg.algorithm.name == methods[r.method]["algorithm"]
        c = flatlab.experiment.evidence.run_convergence(
            tmp_path / "runs" / "final" / s._name(r.method, r.lr, r.rho, r.seed))
        assert (c.converged, c.change) == (r.converged, pytest.approx(r.change, nan_ok=True))
    # the disagreement over training: the mean of the run's own measurements after step 0
    r = runs[runs["method"] == "diffusion-ring"].iloc[0]
    m = flatlab.results.load(tmp_path / "runs" / "final" / s._name(r.method, r.lr, r.rho, r.seed))
    xi = m[(m["metric"] == "consensus_distance") & (m["step"] > 0)]["value"]
    assert r.consensus_during == pytest.approx(xi.mean(), rel=1e-12) and r.consensus_during > 0
    central = runs[runs["algorithm"] == "centralized"]
    assert (central["consensus_distance"].abs() < 1e-10).all()
    # Local SGD ends on an averaging step (6 steps, H = 2): its nodes agree, as Local SGD's do
    local = runs["local_steps"] > 1
    assert (runs.loc[local, "consensus_distance"].abs() < 1e-10).all()
    assert (runs.loc[(runs["algorithm"] != "centralized") & ~local, "consensus_distance"]
            > 0).all()
    for col in ("hessian_top", "hessian_trace", "sharpness", "consensus_gap", "grad_norm",
                "consensus_during", "gap_during"):
        assert runs[col].notna().all(), col
    # verdicts: every claim whose methods ran, on three metrics, paired over both seeds
    assert set(verdicts["metric"]) == {"hessian_top", "hessian_top_matched", "test_accuracy"}
    assert "SAM flatter than SGD" in set(verdicts["claim"])
    assert "local SGD (H=2) flatter than SGD" in set(verdicts["claim"])
    assert set(verdicts["verdict"]) <= set(flatlab.experiment.evidence.VERDICTS)
    assert (verdicts.loc[verdicts["metric"] == "hessian_top", "pairs"] == 2).all()
    text = (tmp_path / "summary.md").read_text()
    assert "| diffusion-sam-ring |" in text and "λ_max at L*" in text and "Verdicts" in text
    for name in ("", "_sensitivity", "_sensitivity_rho"):
        assert (tmp_path / f"implicit_flatness{name}.png").stat().st_size > 10_000
    # --report rebuilds from disk without training
    assert s.main(["--scale", "tiny", "--out", str(tmp_path), "--report"]) == 0
    assert pd.read_csv(tmp_path / "runs.csv").equals(runs)
    assert "[1/" not in capsys.readouterr().out.split("final runs")[-1]


def test_matched_loss_interpolates_in_log_loss_at_the_first_crossing():
    s = study()
    # the highest final training loss of any run (method b, seed 1: 0.3) is L*
    table = pd.DataFrame({"method": ["a", "b", "b"], "seed": [0, 0, 1],
                          "status": ["done"] * 3, "train_loss": [0.1, 0.2, 0.3]})
    rows = []
    for method, seed, losses, tops in (("a", 0, [1.0, 0.5, 0.1], [10.0, 20.0, 30.0]),
                                       ("b", 0, [1.0, 0.2, 0.2], [5.0, 7.0, 9.0]),
                                       ("b", 1, [0.2, 0.3, 0.3], [1.0, 2.0, 3.0])):
        for step, (lo, to) in enumerate(zip(losses, tops, strict=True)):
            rows += [{"step": 200 * step, "metric": "train_loss", "value": lo,
                      "method": method, "seed": seed, "status": "done"},
                     {"step": 200 * step, "metric": "hessian_top", "value": to,
                      "method": method, "seed": seed, "status": "done"}]
    out, target = s.matched_loss(table, pd.DataFrame(rows))
    assert target == pytest.approx(0.3)
    got = out["hessian_top_matched"].tolist()
    # a crosses between 0.5 and 0.1: a fraction ln(0.5/0.3) / ln(0.5/0.1) of the way
    assert got[0] == pytest.approx(20 + 10 * math.log(0.5 / 0.3) / math.log(5), rel=1e-12)
    # b seed 0 crosses between 1.0 and 0.2
    assert got[1] == pytest.approx(5 + 2 * math.log(1 / 0.3) / math.log(5), rel=1e-12)
    # b seed 1 starts below L*: no crossing to interpolate
    assert math.isnan(got[2])


def test_report_without_runs_is_one_line_and_exit_2(tmp_path, capsys):
    assert study().main(["--scale", "tiny", "--out", str(tmp_path), "--report"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no runs under" in err[0]
