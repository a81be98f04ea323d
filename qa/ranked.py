"""Ranked lists: (id, score) pairs, best first, ties to the lower id. Every ranking in qa keeps this one order (a
search's candidates and results, every passage's best window, the cluster's lexical candidates), so two ways to the
same scores give the same list."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

Ranked = list[tuple[int, float]]  # (id, score), best first


def top(scores: Mapping[int, float], k: int) -> Ranked:
    """The k best (id, score) pairs."""
    return sorted(scores.items(), key=lambda x: (-x[1], x[0]))[:k]


def rank(ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Positions of `scores` best first, ties by id (the order of `top`)."""
    return np.lexsort((ids, -scores))


def top_of(ids: np.ndarray, scores: np.ndarray, k: int) -> Ranked:
    """`top` of scores held as two arrays (unique ids): a partition finds the k best before they are sorted."""
    if k <= 0:
        return []
    if len(scores) > k:
        keep = np.flatnonzero(scores >= np.partition(scores, len(scores) - k)[len(scores) - k])
        ids, scores = ids[keep], scores[keep]
    order = rank(ids, scores)[:k]
    return list(zip(ids[order].tolist(), scores[order].tolist()))
