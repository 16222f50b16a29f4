"""Config loading, overrides and every validation error (one line naming field and accepted)."""

import pytest
import yaml

from flatlab.errors import ConfigError
from flatlab.experiment import load_config, parse_overrides, to_dict
from flatlab.experiment.config import RunConfig
from flatlab.experiment.schedules import lr_at


def test_defaults_yaml_and_overrides(tmp_path):
    cfg = load_config()
    assert isinstance(cfg, RunConfig) and cfg.train.epochs == 10.0
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"name": "x", "optim": {"lr": 1}, "train": {"steps": 5}}))
    cfg = load_config(p, ["optim.lr=0.2", "algorithm.name=consensus", "algorithm.params={}",
                          "topology.nodes=8", "measure.metrics=[loss, grad_norm]",
                          "data.root=null"])
    assert cfg.optim.lr == 0.2 and isinstance(cfg.optim.lr, float)
    assert cfg.algorithm.name == "consensus" and cfg.topology.nodes == 8
    assert cfg.measure.metrics == ["loss", "grad_norm"] and cfg.train.steps == 5
    assert load_config(to_dict(cfg)) == cfg
    cfg = load_config({"algorithm": {"name": "centralized"}},
                      ["algorithm.params.momentum=0.9"])
    assert cfg.algorithm.params == {"momentum": 0.9}
    assert parse_overrides(["a.b=1e-3", "c=true", "d=x=y"]) == {"a.b": 1e-3, "c": True,
                                                               "d": "x=y"}


BAD = [
    ({"optim": {"lrr": 1}}, "optim.lrr is unknown; accepted fields of optim: lr,"),
    ({"bogus": 1}, "bogus is unknown; accepted fields of config: name, seed"),
    ({"optim": {"lr": "fast"}}, "optim.lr: 'fast' is not a number"),
    ({"optim": {"lr": -1}}, "optim.lr: -1.0 is not accepted; accepted: a number > 0"),
    ({"optim": {"schedule": "linear"}}, "accepted: constant, step, cosine"),
    ({"optim": {"milestones": [0.8, 0.2]}}, "optim.milestones"),
    ({"optim": {"gamma": 2}}, "optim.gamma"),
    ({"optim": {"min_lr": 1}}, "optim.min_lr"),
    ({"optim": {"weight_decay": -1}}, "optim.weight_decay"),
    ({"optim": {"warmup": -3}}, "optim.warmup"),
    ({"optim": {"sam_rho": -0.1}}, "optim.sam_rho: -0.1 is not accepted; accepted: a number >= 0"),
    ({"optim": {"sam_adaptive": "yes"}}, "optim.sam_adaptive"),
    ({"seed": -1}, "field seed"),
    ({"seed": 1.5}, "seed: 1.5 is not an integer"),
    ({"dtype": "float16"}, "accepted: float32, float64"),
    ({"device": "tpu"}, "accepted: auto, cpu, cuda, cuda:K"),
    ({"init": "random"}, "accepted: same, different"),
    ({"mix_method": "fft"}, "accepted: auto, dense, sparse, shift"),
    ({"checkpoint_every": 0}, "checkpoint_every"),
    ({"oracle": "jax"}, "accepted: auto, vmap, autograd"),
    ({"oracle": "autograd", "compile": True}, "field compile"),
    ({"name": "a/b"}, "field name"),
    ({"data": {"name": "imagenet"}}, "data.name: 'imagenet' is not accepted; accepted:"),
    ({"data": {"partition": "random"}}, "accepted: iid, dirichlet, classes, shards, natural"),
    ({"data": {"alpha": 0}}, "data.alpha"),
    ({"data": {"batch_size": 0}}, "data.batch_size"),
    ({"data": {"classes_per_node": 0}}, "data.classes_per_node"),
    ({"data": {"shards_per_node": 0}}, "data.shards_per_node"),
    ({"data": {"seed": -2}}, "data.seed"),
    ({"data": "mnist1d"}, "data: expected a mapping"),
    ({"model": {"name": "vgg"}}, "model.name: 'vgg' is not accepted; accepted:"),
    ({"topology": {"name": "moebius"}}, "config field topology: unknown topology"),
    ({"topology": {"nodes": 0}}, "topology.nodes"),
    ({"topology": {"name": "hypercube", "nodes": 6}}, "config field topology:"),
    ({"topology": {"params": {"colour": 1}}}, "config field topology"),
    ({"algorithm": {"name": "adam"}}, "config field algorithm: unknown algorithm 'adam'"),
    ({"algorithm": {"name": "diffusion", "params": {"beta": 0.9}}},
     "unknown hyper-parameter beta; accepted: none"),
    ({"algorithm": {"name": "centralized", "params": {"momentum": 1.5}}},
     "momentum must be in [0, 1)"),
    ({"train": {"steps": 10, "epochs": 1}}, "exactly one of train.steps or train.epochs"),
    ({"train": {"steps": 0}}, "train.steps"),
    ({"train": {"epochs": -1}}, "train.epochs"),
    ({"measure": {"every": 0}}, "measure.every"),
    ({"measure": {"metrics": ["hessian"]}}, "measure.metrics[0]: 'hessian' is not accepted"),
    ({"measure": {"metrics": "loss"}}, "measure.metrics: 'loss' is not a list"),
    ({"measure": {"train_subset": 0}}, "measure.train_subset"),
    ({"measure": {"eval_batch": 0}}, "measure.eval_batch"),
    ({"measure": {"per_node": "yes"}}, "measure.per_node: 'yes' is not true or false"),
]


@pytest.mark.parametrize("bad,msg", BAD, ids=[str(b) for b, _ in BAD])
def test_every_validation_error_names_the_field(bad, msg):
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert msg in str(e.value)
    assert "\n" not in str(e.value)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="not key=value"):
        load_config(None, ["optim.lr"])
    with pytest.raises(ConfigError, match="config field optim.lr: "):
        load_config(None, ["optim.lr.x=1"])


def test_schedules():
    o = load_config({"optim": {"lr": 1.0, "schedule": "step", "milestones": [0.5, 0.75],
                               "gamma": 0.1}}).optim
    assert [lr_at(s, 100, o) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])
    o = load_config({"optim": {"lr": 1.0, "schedule": "cosine", "warmup": 10,
                               "min_lr": 0.1}}).optim
    assert lr_at(0, 110, o) == pytest.approx(0.1) and lr_at(9, 110, o) == pytest.approx(1.0)
    assert lr_at(10, 110, o) == pytest.approx(1.0)
    assert lr_at(60, 110, o) == pytest.approx(0.55)
    assert lr_at(110, 110, o) == pytest.approx(0.1)
    o = load_config({"optim": {"lr": 0.3}}).optim
    assert {lr_at(s, 10, o) for s in range(10)} == {0.3}
