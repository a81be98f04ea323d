import numpy as np
import pytest

from qa.ranked import top_of
from qa.search import fuse_dense, fuse_hybrid, rank, shortlist, standardise, top, zscores


def combine(signals: list[dict[int, float]]) -> dict[int, float]:
    """The reference the array fusion is checked against: the sum of normalised signals over the union of their ids
    (absent counts as the signal's minimum)."""
    ids = set().union(*signals)
    floors = [min(sig.values()) if sig else 0.0 for sig in signals]
    return {rid: sum(sig.get(rid, floor) for sig, floor in zip(signals, floors)) for rid in ids}


def test_zscores_are_scale_free():
    a = zscores({1: 1.0, 2: 2.0, 3: 3.0})
    b = zscores({1: 100.0, 2: 200.0, 3: 300.0})
    assert a == pytest.approx(b)
    assert zscores({1: 4.0, 2: 4.0}) == {1: 0.0, 2: 0.0}


def test_standardise_gives_numpy_s_mean_and_deviation_to_the_bit():
    """Rankings must not move with the arithmetic: the same bits as (values - mean) / std from numpy itself."""
    rng = np.random.default_rng(7)
    for n in (1, 2, 3, 10, 50, 101, 257):
        for scale in (1e-3, 1.0, 40.0):
            values = rng.normal(size=n) * scale + scale
            expected = values - values.mean()
            sd = values.std()
            expected = expected / (sd if sd > 1e-9 else 1.0)
            assert standardise(values).tobytes() == expected.tobytes()
    assert standardise(np.full(4, 0.3)).tolist() == [0.0] * 4
    assert standardise(np.zeros(0)).tolist() == []


def test_hybrid_surfaces_lexical_only_and_dense_only_evidence():
    candidates = [1, 2, 3]
    sentence = {1: 0.9, 2: 0.1, 3: 0.2}  # 1: paraphrase, no shared words
    lexical = {2: 12.0, 3: 0.5}  # 2: rare-name match, far in meaning
    fused = fuse_hybrid(sentence, lexical, {}, candidates)
    assert {r for r, _ in top(dict(zip(candidates, fused)), 2)} == {1, 2}


def test_fusion_over_arrays_matches_the_pure_functions():
    """The array fusion the search runs gives the scores and order of zscores + combine + top, ties included."""
    rng = np.random.default_rng(0)
    for trial in range(50):
        candidates = rng.permutation(1000)[:rng.integers(1, 60)].tolist()
        values = rng.choice([0.1, 0.5, 0.5, 0.9, 2.0], len(candidates)).tolist()  # many ties
        dense = dict(zip(candidates, rng.random(len(candidates)).round(1).tolist()))
        sentence = {rid: v for rid, v in zip(candidates, values) if rid % 3}  # some without sentences
        lexical = {rid: v * 10 for rid, v in zip(candidates, values) if rid % 2}  # some matching no term
        evidence = {rid: v - 1 for rid, v in sentence.items()}
        floor = min(evidence.values(), default=0.0)
        expected = combine([zscores({rid: sentence.get(rid, 0.0) for rid in candidates}),
                            zscores({rid: lexical.get(rid, 0.0) for rid in candidates}),
                            zscores({rid: evidence.get(rid, floor) for rid in candidates})])
        fused = fuse_hybrid(sentence, lexical, evidence, candidates)
        assert dict(zip(candidates, fused.tolist())) == pytest.approx(expected, rel=1e-12)
        ids = np.array(candidates)
        assert [candidates[i] for i in rank(ids, fused)] == [rid for rid, _ in top(expected, len(expected))]
        expected = combine([zscores({rid: dense.get(rid, 0.0) for rid in candidates}),
                            zscores({rid: sentence.get(rid, dense.get(rid, 0.0)) for rid in candidates})])
        fused = fuse_dense(dense, sentence, candidates)
        assert [candidates[i] for i in rank(ids, fused)] == [rid for rid, _ in top(expected, len(expected))]
    assert rank(np.array([7, 6, 5]), np.array([0.5, 0.5, 0.9])).tolist() == [2, 1, 0]  # ties by id, as `top`


def test_top_of_arrays_is_top_ties_at_the_cut_included():
    """The arrays' way (a partition, then a sort of what it kept) gives `top`'s list, when ties straddle the k-th
    place too, for every k from none to more than there are."""
    rng = np.random.default_rng(3)
    for trial in range(40):
        ids = rng.permutation(500)[:rng.integers(1, 40)]
        scores = rng.choice([0.1, 0.3, 0.3, 0.7, 0.9], len(ids)).astype(np.float32)  # many ties
        expected = top(dict(zip(ids.tolist(), scores.tolist())), len(ids))
        for k in range(len(ids) + 2):
            assert top_of(ids, scores, k) == expected[:k], (trial, k)


def test_shortlist_keeps_the_best_by_both_whole_passage_signals():
    candidates = [1, 2, 3, 4, 5]
    dense = {1: 0.9, 2: 0.2, 3: 0.5, 4: 0.1, 5: 0.3}
    lexical = {2: 30.0, 4: 1.0}  # 2: a strong word match far in meaning; absent means no term matched
    assert shortlist(candidates, dense, lexical, 2) == [2, 1]
    assert shortlist(candidates, dense, None, 2) == [1, 3]  # dense mode: by meaning alone
    assert shortlist(candidates, dense, lexical, 9) == candidates  # short lists pass through in order
    assert shortlist([7, 6], {6: 0.5, 7: 0.5}, None, 1) == [6]  # ties by id, as `top`


