"""Refactors change no number: the golden runs (tests/golden) against their recording.

Bit for bit on the machine that recorded them (its CPU, torch and numpy in
``tests/golden/data/machine.json``); elsewhere to float64 rounding of a few steps, since another
CPU's kernels sum in another order (relative 1e-7 leaves room for a tie in Lanczos convergence
and small loss differences to grow over 6 steps; accuracies are counts and agree exactly unless a
prediction sits at a tie).
"""

import json

import pandas as pd

from tests.golden import DATA, key_file, machine, produce


def test_golden_runs_reproduce_their_recording(tmp_path):
    recorded = json.loads((DATA / "machine.json").read_text())
    got = produce(tmp_path)
    assert sorted(got) == recorded["tables"]
    same = {k: recorded[k] for k in machine()} == machine()
    for key, frame in got.items():
        want = pd.read_parquet(DATA / key_file(key))
        if same:
            pd.testing.assert_frame_equal(frame, want, check_exact=True, obj=key)
        else:
            pd.testing.assert_frame_equal(frame, want, check_exact=False, rtol=1e-7, atol=1e-10,
                                          obj=key)
