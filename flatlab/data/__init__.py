"""Datasets, per-node partitions and on-device batch samplers; all offline, all seeded.

>>> from flatlab import data
>>> ds = data.load("digits", seed=0)                         # sklearn's bundled 8x8 digits
>>> ds.x_train.shape, ds.num_classes
(torch.Size([1437, 64]), 10)
>>> part = data.partition(ds, 8, "dirichlet", alpha=0.1, seed=0)
>>> part.indices.shape                                       # 8 nodes x floor(1437 / 8)
(8, 179)
>>> sampler = data.NodeSampler(ds.x_train, ds.y_train, part, batch_size=16, seed=0)
>>> xb, yb = sampler.batch(0)                                # every node's minibatch at once
>>> tuple(xb.shape), tuple(yb.shape)
((8, 16, 64), (8, 16))

Datasets (:func:`load`; :func:`available` and :func:`catalog` list them). flatlab never
downloads.

- ``mnist1d``: generated locally with ``mnist1d.data.make_dataset`` (data seed 42, as in the
  literature), 4,000 train / 1,000 test signals ``[N, 40]``; cached as ``.npz`` in
  ``$FLATLAB_CACHE`` (else ``$XDG_CACHE_HOME/flatlab`` or ``~/.cache/flatlab``). The global
  ``numpy``/``random`` states are restored after generation.
- ``digits``: scikit-learn's bundled digits, stratified 1,437/360 split by ``seed``, ``[N, 64]``
  (``as_image=True``: ``[N, 1, 8, 8]``), /16 then standardized per feature.
- ``least-squares``, ``logistic``: heterogeneous linear tasks with ``nodes`` node-specific true
  models; ``node_ids`` gives each sample's node, ``optimum`` the exact minimizer of the global
  training objective (parameter names of the ``logistic`` model: ``linear.weight``,
  ``linear.bias``), ``info["optimum_loss"]`` its value.
- ``gaussian-mixture``: Gaussian blobs, ``info["bayes_accuracy"]`` the best accuracy possible.
- ``mnist``, ``fashion-mnist`` (IDX files) and ``cifar10`` (binary or python batches, the latter
  unpickled as plain data only) from a local folder ``root`` or ``$FLATLAB_DATA``, normalized
  with the usual constants.

Tuning split (:func:`holdout`): a stratified, seeded share of the training set becomes the
evaluation split (``data.holdout`` in a run config), so learning rates are tuned without the
test set. Label noise (:func:`label_noise`, ``data.label_noise``): a seeded share of the training
labels replaced by a uniformly drawn other class, the test labels untouched.

Partitions (:func:`partition` -> :class:`Partition`, an ``[n, m]`` index array with per-node label
histograms and a :meth:`Partition.summary` table): ``iid``, ``dirichlet`` (alpha), ``classes``
(k classes per node), ``shards``, ``natural`` (the dataset's ``node_ids``). Every node gets the
same number of samples.

Sampling (:class:`NodeSampler`): the partitioned data live on the device as ``[n, m, ...]``;
``batch(step)`` returns every node's minibatch ``[n, b, ...]`` with per-node reshuffles each
epoch, as a pure function of ``step`` (resumable).

Test problem (:func:`heterogeneous_quadratics` -> :class:`QuadraticProblem`):
``f_i(x) = 1/2 (x - b_i)^T H_i (x - b_i)`` with ``x_star``, ``zeta2_star``, ``L``, ``mu`` and a
seeded noisy gradient oracle ``grad_fn(noise, seed)``.
"""

from __future__ import annotations

from flatlab.data.dataset import Dataset, holdout, label_noise
from flatlab.data.partition import Partition, partition
from flatlab.data.quadratics import QuadraticProblem, heterogeneous_quadratics
from flatlab.data.registry import available, catalog, load
from flatlab.data.sampler import NodeSampler

__all__ = [
    "Dataset",
    "holdout",
    "label_noise",
    "load",
    "available",
    "catalog",
    "Partition",
    "partition",
    "NodeSampler",
    "QuadraticProblem",
    "heterogeneous_quadratics",
]
