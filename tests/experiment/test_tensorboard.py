"""TensorBoard logging: the event files hold the numbers of metrics.parquet."""

import json

import numpy as np
import pandas as pd
import pytest

from flatlab.errors import ConfigError
from flatlab.experiment import load_config, run
from tests.experiment.test_runner import TINY

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)


def events(path):
    ea = EventAccumulator(str(path), size_guidance={"scalars": 0, "histograms": 0})
    ea.Reload()
    return ea


@pytest.mark.parametrize("checkpoint", [7, 10])  # between measured steps, and on one
def test_event_files_hold_the_metrics_of_the_run(tmp_path, checkpoint):
    cfg = load_config(TINY, ["log.tensorboard=true", "train.steps=20",
                             f"checkpoint_every={checkpoint}",
                             "measure.metrics=[loss,accuracy,hessian_top_nodes,spectral_density]",
                             "measure.options.spectral_density.num_runs=2",
                             "measure.options.spectral_density.lanczos_steps=8"])
    run(cfg, tmp_path / "a", progress=False, stop_after=13)  # interrupted, then resumed
    assert run(cfg, tmp_path / "a", progress=False).status == "done"
    ea = events(tmp_path / "a")
    m = pd.read_parquet(tmp_path / "a" / "metrics.parquet")
    tags = set(ea.Tags()["scalars"])
    for (metric, scope), rows in m.groupby(["metric", "scope"]):
        tag = f"{metric}/{scope}"
        assert tag in tags, tag
        logged = {e.step: e.value for e in ea.Scalars(tag)}
        # each step once (the resumed run purged what the interrupted one wrote after its
        # checkpoint), in float32, TensorBoard's type
        assert sorted(logged) == sorted(rows.step), tag
        want = rows.set_index("step").value
        got = pd.Series(logged).reindex(want.index)
        np.testing.assert_allclose(got, want.astype(np.float32), rtol=0,
                                   atol=4 * np.finfo(np.float32).eps * max(1.0, want.abs().max()))
    # per-node top eigenvalues and the SLQ spectrum as histograms; the timings as scalars
    hist = set(ea.Tags()["histograms"])
    assert {"nodes/hessian_top", "hessian_spectrum"} <= hist
    spectrum = ea.Histograms("hessian_spectrum")
    assert sorted({h.step for h in spectrum}) == [0, 10, 20]
    assert spectrum[-1].histogram_value.num == pytest.approx(1.0)
    top = ea.Histograms("nodes/hessian_top")[-1].histogram_value
    node_top = m[(m.metric == "hessian_top") & (m.step == 20) & m.scope.str.isdigit()].value
    assert top.min == pytest.approx(node_top.min(), rel=1e-6)
    assert top.max == pytest.approx(node_top.max(), rel=1e-6)
    st = json.loads((tmp_path / "a" / "status.json").read_text())
    total = ea.Scalars("time/total")[-1].value
    assert {"time/train", "time/checkpoint", "time/measure/hessian_top_nodes"} <= tags
    assert 0 < total <= st["timings_s"]["total"] + 1e-3


def test_tensorboard_without_the_package_is_refused_before_anything_is_written(
        tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name == "tensorboard" or name.startswith("tensorboard."):
            raise ImportError("no tensorboard")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(ConfigError, match="log.tensorboard needs the tensorboard package"):
        run(load_config(TINY, ["log.tensorboard=true"]), tmp_path / "a", progress=False)
    assert not (tmp_path / "a").exists()
