"""Pareto dominance for several objectives: non-dominated sorting and crowding distance.

NSGA-II's two orderings (Deb, Pratap, Agarwal and Meyarivan 2002, sections III-A and III-B):
points are ranked by non-domination front (rank 0 is the Pareto front: no other point is at
least as good in every objective and better in one), and, within a front, by crowding distance
(how far a point is from its neighbours along each objective; the extremes are infinitely far),
which keeps a front spread out. Points are rows of a ``(n, m)`` array where *larger is better in
every column*; a non-finite value is the worst possible value. Pure numpy, O(n² · m).
"""

from __future__ import annotations

import numpy as np


def _clean(points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=float)
    if points.ndim != 2:
        raise ValueError(f"expected an (n, m) array of points, got shape {points.shape}")
    return np.where(np.isfinite(points), points, -np.inf)


def dominates(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether point ``a`` is at least as good as ``b`` everywhere and better somewhere."""
    a, b = _clean(np.atleast_2d(a))[0], _clean(np.atleast_2d(b))[0]
    return bool(np.all(a >= b) and np.any(a > b))


def nondominated_ranks(points: np.ndarray) -> np.ndarray:
    """The non-domination front of each point: 0 for the Pareto front, 1 for the next, ...

    Shape ``(n,)``, integers. Equal points share a front.
    """
    p = _clean(points)
    n = len(p)
    ranks = np.full(n, -1, dtype=int)
    if n == 0:
        return ranks
    dom = (p[:, None, :] >= p[None, :, :]).all(axis=2) & (p[:, None, :] > p[None, :, :]).any(axis=2)
    remaining = dom.sum(axis=0)  # how many points dominate each point
    front, rank = np.flatnonzero(remaining == 0), 0
    while front.size:
        ranks[front] = rank
        remaining = remaining - dom[front].sum(axis=0)
        remaining[ranks >= 0] = -1
        front, rank = np.flatnonzero(remaining == 0), rank + 1
    return ranks


def crowding_distances(points: np.ndarray) -> np.ndarray:
    """Crowding distance of each point *within its own set* (call it per front): larger is lonelier.

    Shape ``(n,)``. Each objective adds the normalised gap between a point's two neighbours;
    the extremes of every objective get infinity, as do all points of a set of two or fewer.
    """
    p = _clean(points)
    n, m = p.shape
    distance = np.zeros(n)
    if n <= 2:
        distance[:] = np.inf
        return distance
    for j in range(m):
        order = np.argsort(p[:, j], kind="stable")
        column = p[order, j]
        distance[order[0]] = distance[order[-1]] = np.inf
        span = column[-1] - column[0]
        if np.isfinite(span) and span > 0:
            distance[order[1:-1]] += (column[2:] - column[:-2]) / span
    return distance


def nsga2_keys(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(rank, crowding)`` of every point: sort by rank ascending, then crowding descending."""
    p = _clean(points)
    ranks = nondominated_ranks(p)
    crowding = np.zeros(len(p))
    for rank in np.unique(ranks):
        members = np.flatnonzero(ranks == rank)
        crowding[members] = crowding_distances(p[members])
    return ranks, crowding
