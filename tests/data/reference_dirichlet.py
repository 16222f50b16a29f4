"""A literal port of epfml/quasi-global-momentum's ``build_non_iid_by_dirichlet`` plus the equal
contiguous chunks of its ``DataPartitioner`` (docs/reference/algorithms.md §11.1), kept list-based
and slow on purpose, with ``numpy.random.Generator`` in place of ``RandomState`` and
``min(10, n_workers)`` workers per group."""

import math

import numpy as np


def build_non_iid_by_dirichlet(random_state, indices2targets, non_iid_alpha, num_classes,
                               num_indices, n_workers):
    n_auxi_workers = min(10, n_workers)
    random_state.shuffle(indices2targets)
    from_index = 0
    splitted_targets = []
    num_splits = math.ceil(n_workers / n_auxi_workers)
    split_n_workers = [
        n_auxi_workers if idx < num_splits - 1 else n_workers - n_auxi_workers * (num_splits - 1)
        for idx in range(num_splits)
    ]
    for idx, n_g in enumerate(split_n_workers):
        to_index = from_index + int(n_g / n_workers * num_indices)
        splitted_targets.append(
            indices2targets[from_index:(num_indices if idx == num_splits - 1 else to_index)])
        from_index = to_index

    idx_batch = []
    for _targets, _n_workers in zip(splitted_targets, split_n_workers, strict=True):
        _targets = np.array(_targets)
        _targets_size = len(_targets)
        min_size = 0
        while min_size < int(0.50 * _targets_size / _n_workers):
            _idx_batch = [[] for _ in range(_n_workers)]
            for _class in range(num_classes):
                idx_class = np.where(_targets[:, 1] == _class)[0]
                idx_class = _targets[idx_class, 0]
                proportions = random_state.dirichlet(np.repeat(non_iid_alpha, _n_workers))
                proportions = np.array([
                    p * (len(idx_j) < _targets_size / _n_workers)
                    for p, idx_j in zip(proportions, _idx_batch, strict=True)
                ])
                proportions = proportions / proportions.sum()
                proportions = (np.cumsum(proportions) * len(idx_class)).astype(int)[:-1]
                _idx_batch = [
                    idx_j + idx.tolist()
                    for idx_j, idx in zip(_idx_batch, np.split(idx_class, proportions),
                                          strict=True)
                ]
                min_size = min(len(idx_j) for idx_j in _idx_batch)
        idx_batch += _idx_batch
    return idx_batch


def dirichlet_partition(labels, n, alpha, seed):
    rng = np.random.default_rng(seed)
    pairs = np.array([(i, int(t)) for i, t in enumerate(labels)])
    lists = build_non_iid_by_dirichlet(rng, pairs, alpha, int(labels.max()) + 1, len(labels), n)
    flat = [i for lst in lists for i in lst]
    m = len(labels) // n
    return np.array([flat[i * m:(i + 1) * m] for i in range(n)], dtype=np.int64)
