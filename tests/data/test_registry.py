"""Names, catalog, aliases and the Dataset record."""

import numpy as np
import pytest
import torch

from flatlab import data
from flatlab.data import Dataset
from tests.data.conftest import one_line_error

NAMES = ["mnist1d", "digits", "least-squares", "logistic", "gaussian-mixture", "mnist",
         "fashion-mnist", "cifar10"]


def test_available_and_catalog():
    assert data.available() == NAMES
    cat = data.catalog()
    assert list(cat) == NAMES
    for entry in cat.values():
        assert {"description", "source", "shapes", "task", "options", "nodes",
                "local_files"} <= set(entry)
        assert "\n" not in entry["description"] and entry["task"] in ("classification",
                                                                      "regression")
    assert cat["least-squares"]["nodes"] == "required" and cat["mnist"]["local_files"]
    assert cat["mnist1d"]["options"]["data_seed"] == 42


def test_public_api():
    assert set(data.__all__) == {"Dataset", "load", "available", "catalog", "Partition",
                                 "partition", "NodeSampler", "QuadraticProblem",
                                 "heterogeneous_quadratics", "holdout", "label_noise"}


def test_aliases_and_case():
    assert data.load("Least_Squares", nodes=2).name == "least-squares"
    assert data.load("GMM", mc_samples=1000).name == "gaussian-mixture"


def test_unknown_names_and_options():
    msg = one_line_error(data.load, "imagenet")
    assert "unknown dataset 'imagenet'; accepted: " + ", ".join(NAMES) in msg
    assert "accepted: mnist1d" in one_line_error(data.load, 3)
    msg = one_line_error(data.load, "logistic", nodes=2, classez=3)
    assert "takes no option 'classez'" in msg and "classes" in msg


def test_dataset_record_validates():
    x, y = torch.zeros(4, 3), torch.zeros(4, dtype=torch.int64)
    ds = Dataset("toy", x, y, x, y, (3,), 2, "classification")
    assert ds.num_train == 4 and ds.num_test == 4 and ds.info == {} and "toy" in repr(ds)
    with pytest.raises(Exception, match="frozen|cannot assign"):
        ds.name = "other"
    for kwargs, pattern in [
        (dict(task="ranking"), "task must be one of"),
        (dict(input_shape=(4,)), "expected [N, 4]"),
        (dict(y_train=torch.zeros(3, dtype=torch.int64)), "y_train has 3"),
        (dict(y_train=torch.zeros(4)), "must be int64"),
        (dict(task="regression"), "regression targets"),
        (dict(node_ids=np.zeros(3, dtype=np.int64)), "node_ids must have shape (4,)"),
    ]:
        args = dict(name="toy", x_train=x, y_train=y, x_test=x, y_test=y, input_shape=(3,),
                    num_classes=2, task="classification")
        args.update(kwargs)
        assert pattern in one_line_error(Dataset, **args)


def test_docstring_examples():
    import doctest

    result = doctest.testmod(data, verbose=False)
    assert result.attempted > 0 and result.failed == 0
