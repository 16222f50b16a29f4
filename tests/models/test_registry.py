"""Registry, construction, seeding, parameter counts, helpers and error messages."""

from __future__ import annotations

import doctest

import pytest
import torch
from torch import nn

import flatlab.models
from flatlab import models
from flatlab.errors import ModelError
from tests.models.cases import DEFAULT_CASES, NUM_CLASSES, VARIANT_CASES, build, case_id

# Parameter counts of the default options with 10 classes. Change them only on purpose.
DEFAULT_COUNTS = {
    "logistic": 410,  # (40,)
    "mlp": 78_858,  # (40,): 40-256-256-10
    "cnn1d": 13_898,  # (40,)
    "lenet": 61_706,  # (1, 28, 28)
    "resnet20": 272_474,  # (3, 32, 32)
}
OTHER_COUNTS = [
    ("lenet", {}, (3, 32, 32), 62_006),
    ("resnet20", {"shortcut": "pad"}, (3, 32, 32), 269_722),
    ("resnet20", {"norm": "batch"}, (3, 32, 32), 272_474),
    ("resnet20", {"norm": "none"}, (3, 32, 32), 270_906),
    ("logistic", {}, (3, 32, 32), 30_730),
]


def test_available_and_catalog():
    assert models.available() == list(DEFAULT_COUNTS)
    cat = models.catalog()
    assert list(cat) == models.available()
    for name, info in cat.items():
        assert isinstance(info, models.ModelInfo) and info.name == name
        assert info.description and info.input_shapes and "\n" not in info.description
        assert info.options == tuple(info.defaults)
        assert info.num_parameters == DEFAULT_COUNTS[name]
        assert f"{DEFAULT_COUNTS[name]:,} parameters" in info.description
    assert cat["mlp"].defaults == {
        "hidden": (256, 256), "activation": "relu", "dropout": 0.0, "norm": "none", "groups": 8,
    }
    assert cat["cnn1d"].defaults["norm"] == "group"
    assert cat["lenet"].defaults["norm"] == "none"
    assert cat["resnet20"].defaults == {
        "norm": "group", "groups": 2, "width": 1.0, "shortcut": "projection",
    }
    assert cat["logistic"].defaults == {}


@pytest.mark.parametrize("name", list(DEFAULT_COUNTS))
def test_default_parameter_counts(name):
    info = models.catalog()[name]
    net = models.make(name, input_shape=info.example_input_shape, num_classes=10)
    assert models.num_parameters(net) == DEFAULT_COUNTS[name]


@pytest.mark.parametrize("name, options, shape, count", OTHER_COUNTS)
def test_other_parameter_counts(name, options, shape, count):
    net = models.make(name, input_shape=shape, num_classes=10, **options)
    assert models.num_parameters(net) == count


@pytest.mark.parametrize("case", DEFAULT_CASES + VARIANT_CASES, ids=case_id)
def test_output_shape_device_dtype_mode(case):
    name, options, shape = case
    net = build(name, options, shape, seed=0)
    assert net.training and net.input_shape == shape and net.num_classes == NUM_CLASSES
    for t in [*net.parameters(), *net.buffers()]:
        assert t.device.type == "cpu" and torch.isfinite(t).all()
    assert all(p.dtype == torch.float32 for p in net.parameters())
    out = net(torch.randn(3, *shape))
    assert out.shape == (3, NUM_CLASSES) and out.dtype == torch.float32
    double = net.double()
    out = double(torch.randn(2, *shape, dtype=torch.float64))
    assert out.shape == (2, NUM_CLASSES) and out.dtype == torch.float64


@pytest.mark.parametrize("case", DEFAULT_CASES + VARIANT_CASES, ids=case_id)
def test_seed_reproducible_and_global_rng_untouched(case):
    name, options, shape = case
    state = torch.get_rng_state()
    a = build(name, options, shape, seed=3)
    b = build(name, options, shape, seed=3)
    c = build(name, options, shape, seed=4)
    assert torch.equal(state, torch.get_rng_state())
    pa, pb, pc = (dict(m.named_parameters()) for m in (a, b, c))
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    weights = [k for k, m in a.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    assert weights
    assert all(not torch.equal(pa[f"{k}.weight"], pc[f"{k}.weight"]) for k in weights)


@pytest.mark.parametrize("name", list(DEFAULT_COUNTS))
def test_no_seed_draws_the_same_from_the_global_rng(name):
    shape = models.catalog()[name].example_input_shape
    torch.manual_seed(11)
    a = models.make(name, input_shape=shape, num_classes=4)
    after_a = torch.get_rng_state()
    b = models.make(name, input_shape=shape, num_classes=4, seed=11)
    c = models.make(name, input_shape=shape, num_classes=4)  # continues the global stream
    assert not torch.equal(after_a, torch.get_rng_state())
    for (k, pa), (_, pb), (_, pc) in zip(
        a.named_parameters(), b.named_parameters(), c.named_parameters(), strict=True
    ):
        assert torch.equal(pa, pb), k
        if k.endswith("weight") and pa.dim() > 1:
            assert not torch.equal(pa, pc), k


def test_init_distributions_match_pytorch_defaults():
    net = models.make("mlp", input_shape=(40,), num_classes=10, seed=0)
    bound = 1 / 40**0.5
    w, bias = net.body[0].weight, net.body[0].bias
    assert w.abs().max() <= bound and bias.abs().max() <= bound and w.abs().max() > 0.9 * bound
    res = models.make("resnet20", input_shape=(3, 32, 32), num_classes=10, seed=0)
    std = res.layer3[0].conv2.weight.std().item()
    assert abs(std - (2 / (64 * 9)) ** 0.5) < 0.1 * std  # kaiming normal, fan_out
    assert torch.equal(res.norm.weight, torch.ones(16))
    assert torch.equal(res.norm.bias, torch.zeros(16))


def test_logistic_parameter_names_and_regression_outputs():
    net = models.make("logistic", input_shape=(5,), num_classes=3, seed=0)
    assert [k for k, _ in net.named_parameters()] == ["linear.weight", "linear.bias"]
    assert net.linear.weight.shape == (3, 5)
    net = models.make("logistic", input_shape=(2, 3), num_classes=1, seed=0)
    assert net(torch.randn(4, 2, 3)).shape == (4, 1)


def test_cnn1d_accepts_two_dimensional_batches():
    net = models.make("cnn1d", input_shape=(40,), num_classes=10, seed=0)
    x = torch.randn(4, 40)
    assert torch.equal(net(x), net(x.unsqueeze(1)))
    net = models.make("cnn1d", input_shape=(1, 40), num_classes=10, seed=0)
    assert net(x).shape == (4, 10)


def test_default_normalisation_is_groupnorm():
    for name, info in models.catalog().items():
        net = models.make(name, input_shape=info.example_input_shape, num_classes=10)
        assert not models.has_batchnorm(net) and not models.has_dropout(net)
        norms = [m for m in net.modules() if isinstance(m, (nn.GroupNorm, nn.LayerNorm))]
        assert bool(norms) == (name in ("cnn1d", "resnet20"))
        assert all(isinstance(m, nn.GroupNorm) for m in norms)
    assert models.make("resnet20", input_shape=(3, 32, 32), num_classes=10).norm.num_groups == 2


def test_helpers():
    net = models.make("mlp", input_shape=(40,), num_classes=10, norm="batch", dropout=0.5)
    assert models.has_batchnorm(net) and models.has_dropout(net)
    assert models.num_parameters(net) == 78_858 + 2 * 2 * 256
    assert not models.has_dropout(models.make("mlp", input_shape=(4,), num_classes=2, dropout=0))
    assert models.has_batchnorm(
        models.make("lenet", input_shape=(1, 28, 28), num_classes=10, norm="batch")
    )


def test_module_docstring_examples():
    result = doctest.testmod(flatlab.models, verbose=False)
    assert result.attempted > 0 and result.failed == 0


BAD_CALLS = [
    # (name, kwargs, words the message must contain)
    ("vgg16", {}, ["unknown model 'vgg16'", "logistic, mlp, cnn1d, lenet, resnet20"]),
    ("mlp", {"widht": 2}, ["'widht'", "hidden, activation, dropout, norm, groups"]),
    ("logistic", {"hidden": (3,)}, ["'hidden'", "accepted: none"]),
    ("cnn1d", {"input_shape": (3, 32, 32)}, ["cnn1d", "(L,) or (C, L)", "(3, 32, 32)"]),
    ("cnn1d", {"input_shape": (2,)}, ["L >= 4"]),
    ("lenet", {"input_shape": (40,)}, ["lenet", "(C, H, W)", "(40,)"]),
    ("lenet", {"input_shape": (1, 8, 8)}, ["H, W >= 16"]),
    ("resnet20", {"input_shape": (32, 32)}, ["resnet20", "(C, H, W)"]),
    ("mlp", {"input_shape": ()}, ["input_shape", "non-empty tuple of positive integers"]),
    ("mlp", {"input_shape": (0, 3)}, ["input_shape"]),
    ("mlp", {"input_shape": "40"}, ["input_shape"]),
    ("mlp", {"input_shape": (2.5,)}, ["input_shape"]),
    ("mlp", {"num_classes": 0}, ["num_classes", ">= 1"]),
    ("mlp", {"num_classes": True}, ["num_classes"]),
    ("mlp", {"seed": -1}, ["seed"]),
    ("mlp", {"seed": "a"}, ["seed"]),
    ("mlp", {"activation": "swish"}, ["'activation'", "relu, tanh, gelu", "'swish'"]),
    ("mlp", {"norm": "instance"}, ["'norm'", "none, group, batch, layer"]),
    ("mlp", {"dropout": 1.0}, ["'dropout'", "[0, 1)"]),
    ("mlp", {"hidden": (0, 3)}, ["'hidden'"]),
    ("mlp", {"hidden": "256"}, ["'hidden'"]),
    ("mlp", {"norm": "group", "hidden": (10,)}, ["'groups'", "divide"]),
    ("cnn1d", {"norm": "layer"}, ["'norm'", "none, group, batch"]),
    ("cnn1d", {"kernel_size": 4}, ["'kernel_size'", "odd"]),
    ("cnn1d", {"strides": (1, 2)}, ["'strides'", "one entry per convolution, 3"]),
    ("cnn1d", {"strides": 2}, ["'strides'", "one entry per convolution"]),
    ("cnn1d", {"channels": ()}, ["'channels'", "integer"]),
    ("cnn1d", {"groups": 5}, ["'groups'", "divide"]),
    ("lenet", {"groups": 4, "norm": "group"}, ["'groups'"]),
    ("lenet", {"padding": -1}, ["'padding'", ">= 0"]),
    ("resnet20", {"width": 0}, ["'width'", "positive"]),
    ("resnet20", {"shortcut": "C"}, ["'shortcut'", "projection, pad"]),
    ("resnet20", {"groups": 3}, ["'groups'", "divide"]),
]


@pytest.mark.parametrize("name, kwargs, words", BAD_CALLS, ids=lambda v: None)
def test_errors_are_one_line_model_errors(name, kwargs, words):
    args = {"input_shape": models.catalog().get(name, models.catalog()["mlp"]).example_input_shape,
            "num_classes": 10, **kwargs}
    with pytest.raises(ModelError) as info:
        models.make(name, **args)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message
