"""Connected components of verified duplicate pairs, and the deterministic choice of the kept document."""

from __future__ import annotations

import numpy as np


def connected_components(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nodes (sorted unique endpoints) and a component label per node (the smallest node index in it).

    Vectorised min-label propagation with pointer jumping: memory O(edges), no Python loop per edge.
    """
    nodes, inv = np.unique(np.concatenate((a, b)), return_inverse=True)
    ia, ib = inv[: len(a)], inv[len(a) :]
    lab = np.arange(len(nodes), dtype=np.int64)
    while True:
        new = lab.copy()
        m = np.minimum(lab[ia], lab[ib])
        np.minimum.at(new, ia, m)
        np.minimum.at(new, ib, m)
        while True:  # pointer jumping: every label points at a root
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, lab):
            return nodes, lab
        lab = new


def choose_kept(labels: np.ndarray, lengths: np.ndarray, ids: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """For every node, the index (into ``nodes``) of its cluster's kept document: longest, then smallest id.

    Ties beyond that (same length and id) fall back to input order (``nodes`` are packed input positions).
    """
    order = np.lexsort((nodes, ids, -lengths, labels))
    first_of_label = np.full(labels.max() + 1 if len(labels) else 0, -1, dtype=np.int64)
    sorted_labels = labels[order]
    starts = (
        np.concatenate(([True], sorted_labels[1:] != sorted_labels[:-1])) if len(order) else np.zeros(0, bool)
    )
    first_of_label[sorted_labels[starts]] = order[starts]
    return first_of_label[labels]


def size_histogram(labels: np.ndarray) -> dict[str, int]:
    """``{cluster size: number of clusters}`` with sizes >= 10 binned as powers of two (``"16-31"``)."""
    if len(labels) == 0:
        return {}
    _, sizes = np.unique(labels, return_counts=True)
    hist: dict[str, int] = {}
    for size, count in zip(*np.unique(sizes, return_counts=True)):
        size = int(size)
        if size < 10:
            key = str(size)
        else:
            lo = 1 << (size.bit_length() - 1)
            key = f"{lo}-{2 * lo - 1}"
        hist[key] = hist.get(key, 0) + int(count)
    return dict(sorted(hist.items(), key=lambda kv: int(kv[0].split("-")[0])))
