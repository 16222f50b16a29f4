import json
import os
import subprocess
import sys

import numpy as np
import pytest

from flatlab.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_spectral_json_keys_and_values(capsys):
    code, out, err = run(capsys, "spectral", "--topology", "ring", "--nodes", "16", "--json")
    assert code == 0 and err == ""
    d = json.loads(out)
    assert {"topology", "nodes", "weights", "rho", "lambda2", "lambda_min", "spectral_gap",
            "p"} <= set(d)
    assert d["topology"] == "ring" and d["nodes"] == 16 and d["weights"] == "metropolis"
    assert d["rho"] == pytest.approx(0.94925, abs=5e-6)


def test_spectral_table_and_options(capsys):
    code, out, _ = run(capsys, "spectral", "--topology", "torus", "-n", "12", "--rows", "3",
                       "--lazy", "--weights", "max-degree")
    assert code == 0 and "lazy max-degree" in out and "spectral_gap" in out
    code, out, _ = run(capsys, "spectral", "--topology", "one-peer-exponential", "-n", "12",
                       "--allow-any-n", "--json")
    assert json.loads(out)["period"] == 4
    code, out, _ = run(capsys, "spectral", "--topology", "erdos-renyi", "-n", "30", "--seed", "3",
                       "--edge-prob", "0.3", "--json", "--method", "sparse")
    assert json.loads(out)["method"] == "sparse"


def test_spectral_from_a_file(capsys, tmp_path):
    np.savetxt(tmp_path / "g.txt", [[0, 1], [1, 2], [2, 0], [2, 3]], fmt="%d")
    code, out, _ = run(capsys, "spectral", "--topology", f"edges:{tmp_path / 'g.txt'}", "--json")
    assert code == 0 and json.loads(out)["nodes"] == 4


def test_bounds_json_keys(capsys):
    code, out, _ = run(capsys, "bounds", "--algorithm", "diffusion", "--topology", "ring",
                       "--nodes", "16", "--L", "2", "--sigma2", "0.5", "--zeta2", "1", "--json")
    assert code == 0
    d = json.loads(out)
    assert {"terms", "total", "dominant", "transient_iterations"} <= set(d)
    assert set(d["terms"]) == {"noise", "consensus", "deterministic"}
    assert d["inputs"]["T"] == 10_000 and d["inputs"]["L"] == 2.0
    assert d["algorithm"] == "diffusion" and d["family"] == "dsgd"


def test_bounds_show_the_registrys_name_and_the_shared_rate(capsys):
    """``dsgd`` is the registry's alias of diffusion: shown as diffusion, in text and JSON."""
    args = ["bounds", "--algorithm", "dsgd", "--topology", "ring", "--nodes", "8"]
    code, out, _ = run(capsys, *args)
    assert code == 0 and out.splitlines()[:2] == [
        "diffusion: (1/T) sum_t E||grad f(xbar_t)||^2 (non-convex, L-smooth)",
        "rate: dsgd (one bound for consensus, diffusion, diffusion-cta)"]
    code, out, _ = run(capsys, *args, "--json")
    assert (json.loads(out)["algorithm"], json.loads(out)["family"]) == ("diffusion", "dsgd")
    code, out, _ = run(capsys, "bounds", "--algorithm", "gt", "--rho", "0.5", "-n", "8")
    assert out.startswith("gradient-tracking: ") and "rate: " not in out


def test_bounds_table_rho_eps_consts(capsys):
    code, out, _ = run(capsys, "bounds", "--algorithm", "gradient-tracking", "--rho", "0.9",
                       "-n", "8", "--eps", "0.01", "--c", "0.5", "--const", "tracking=2")
    assert code == 0
    # in eps mode each term is the T it needs alone, said so, and the two totals are told apart
    assert "iterations T for each term alone to reach eps = 0.01" in out
    assert "T at which L F0 / (p c T) = eps" in out
    assert "total (sum of the terms' T: the papers' T(eps) form)" in out
    assert "iterations to eps (smallest T whose whole bound <= eps)" in out
    assert "transient iterations" in out
    assert "c  " in out or "c " in out
    code, out, _ = run(capsys, "bounds", "--algorithm", "choco", "--topology", "ring", "-n", "8",
                       "--delta", "0.1", "--G2", "1", "--json")
    assert json.loads(out)["constants"] == "paper"
    code, out, _ = run(capsys, "bounds", "--algorithm", "momentum-tracking", "--rho", "0.5",
                       "-n", "8", "--beta", "0.9", "--exponents", "0.5,1,1,1", "--json")
    assert code == 0


def test_topologies_lists_every_generator(capsys):
    from flatlab import topology

    code, out, _ = run(capsys, "topologies")
    assert code == 0
    for name in topology.available():
        assert name in out
    assert "power of two" in out and "uniform" in out


@pytest.mark.parametrize("argv, pattern", [
    (["spectral", "--topology", "hypercube", "--nodes", "12"], "power of two"),
    (["spectral", "--topology", "blob", "--nodes", "12"], "unknown topology 'blob'"),
    (["spectral", "--topology", "ring", "--nodes", "1"], "at least 3"),
    (["spectral", "--topology", "star", "-n", "5", "--weights", "uniform"], "regular"),
    (["spectral", "--topology", "ring", "-n", "5", "--method", "magic"], "unknown spectral"),
    (["spectral", "--topology", "ring", "-n", "5", "--weights", "nope"], "unknown weight rule"),
    (["spectral", "--topology", "matrix:/no/such/file.npy"], "not found"),
    (["bounds", "--algorithm", "sgd", "--rho", "0.5", "-n", "4"], "no bound for algorithm"),
    (["bounds", "--algorithm", "ngpd", "--rho", "0.5", "-n", "4"], "no bound for ngpd"),
    (["bounds", "--algorithm", "dsgd", "--rho", "1.5", "-n", "4"], "rho must be in"),
    (["bounds", "--algorithm", "dsgd", "--rho", "0.5", "-n", "4", "--const", "x"], "TERM=NUMBER"),
    (["bounds", "--algorithm", "momentum-tracking", "--rho", "0.5", "-n", "4", "--beta", "0.5",
      "--exponents", "a,b"], "four numbers"),
    # every missing flag at once, spelled as flags
    (["bounds", "--algorithm", "choco", "--rho", "0.5", "-n", "4"],
     "choco needs --delta D (the compression quality in (0, 1]) and --G2 G"),
    (["bounds", "--algorithm", "mt", "--rho", "0.5", "-n", "4"],
     "needs --beta B (the momentum in [0, 1)) and --exponents a1,b1,a2,b2"),
    (["bounds", "--algorithm", "dsgd", "--rho", "0.5"], "--rho R with --nodes N"),
    (["bounds", "--algorithm", "centralized"], "centralized needs --nodes N"),
    (["bounds"], "give --algorithm NAME and the network (--topology NAME --nodes N, or --rho"),
    (["bounds", "--algorithm", "dsgd", "--rho", "0.5", "-n", "4", "--delta", "0.5"],
     "--delta is not used by dsgd's bound (it is choco's)"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, pattern):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and pattern in err and err.startswith("flatlab ")


@pytest.mark.parametrize("argv", [["spectral", "--topology", "ring", "--nodes", "x"],
                                  ["spectral", "--nodes", "4"], ["frobnicate"], []])
def test_argparse_errors_are_one_line_and_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err


def test_installed_entry_point_exit_status():
    exe = os.path.join(os.path.dirname(sys.executable), "flatlab")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "flatlab.cli"]
    ok = subprocess.run([*cmd, "spectral", "--topology", "ring", "--nodes", "8", "--json"],
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0 and json.loads(ok.stdout)["nodes"] == 8
    bad = subprocess.run([*cmd, "spectral", "--topology", "hypercube", "--nodes", "6"],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().count("\n") == 0 and "power of two" in bad.stderr


def test_topologies_say_which_faults_a_run_on_them_can_train_under(capsys):
    import json

    code, out, _ = run(capsys, "topologies", "--json")
    kinds = {g["name"]: g["faults"] for g in json.loads(out)}
    assert code == 0 and kinds["ring"] == ["link_failures", "node_churn", "message_drops",
                                                "async_gossip"]
    assert kinds["one-peer-exponential"] == []  # time-varying: nothing to fail on top
    code, out, _ = run(capsys, "topologies")
    assert "faults (topology.faults, on a static graph)" in out


@pytest.mark.parametrize("command", ["algorithms", "topologies", "datasets", "models",
                                     "measures"])
def test_the_listings_print_plain_text_not_docstring_markup(capsys, command):
    """The summaries come from docstrings; ``literals`` and :func:`roles` are printed bare."""
    code, out, _ = run(capsys, command)
    assert code == 0 and out.strip()
    for markup in ("``", ":func:", ":class:", ":mod:", ":data:", ":meth:"):
        assert markup not in out, (command, markup)


def test_the_theory_commands_and_refusals_do_not_load_torch():
    """The calculators answer without torch (LAZY_FILES in tests/test_architecture.py): every
    command's parser is built first, so nothing it declares may import a torch-based module."""
    code = ("import sys\n"
            "from flatlab.cli import main\n"
            "assert main(['spectral', '--topology', 'ring', '--nodes', '8']) == 0\n"
            "assert main(['bounds', '--algorithm', 'dsgd', '--topology', 'ring', "
            "'--nodes', '8']) == 0\n"
            "try:\n"
            "    main(['run', 'missing.yaml', '--nodes', 'x'])\n"
            "except SystemExit as e:\n"
            "    assert e.code == 2\n"
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'torch')\n"
            "assert not loaded, loaded[:5]\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
