"""``--estimate`` on a study whose runs are sized in epochs, with a held-out tuning split.

The planned length of every run is compared with the one the runner builds from the same
config (``build(...).total_steps``): the tuning runs hold out 20%, so their epochs are shorter
than the final runs'.
"""

from flatlab.experiment import build, load_config
from flatlab.experiment.evidence import Claim
from flatlab.studies.estimate import estimate, planned_runs
from flatlab.studies.spec import Scale, Stage, Study


def _config(point, scale, seed, holdout):
    return {"name": "epochs", "seed": seed, "device": "cpu",
            "data": {"name": "digits", "partition": "iid", "batch_size": 8, "holdout": holdout},
            "model": {"name": "logistic"}, "topology": {"name": "ring", "nodes": 4},
            "algorithm": {"name": point["method"]}, "optim": {"lr": point["lr"]},
            "train": {"epochs": 2}, "measure": {"every": 10, "metrics": ["loss"]}}


STUDY = Study(name="epochs", question="?", config=_config, holdout=0.2,
              scales={"tiny": Scale(settings=({},), methods=("diffusion", "consensus"),
                                    seeds=(0, 1), tune_seeds=(0, 1), steps=0, every=0)},
              stages=(Stage("lr", lambda p, s: (0.1, 0.3)),),
              claims=lambda scale: [Claim("a", "diffusion", "consensus", margin=0.01,
                                          why="a point")])


def test_runs_sized_in_epochs_are_planned_at_the_runners_length():
    scale = STUDY.scales["tiny"]
    table, _ = estimate(STUDY, scale, steps=2, at_least=0.0)
    want = [build(load_config(r["config"])).total_steps for r in planned_runs(STUDY, scale)]
    assert table["steps"].tolist() == want
    tune = table[table["phase"] != "final"]["steps"]
    final = table[table["phase"] == "final"]["steps"]
    assert tune.max() < final.min()  # 20% held out: fewer steps an epoch
