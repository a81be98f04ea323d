import re

import numpy as np
import pytest

from qa.errors import BadRequest
from qa.search import (TermMatcher, combine, fuse_dense, fuse_hybrid, minmax, rank, rrf, shortlist, top,
                       validate_k, validate_query, zscores)


def test_rrf_rewards_agreement():
    fused = rrf([[(1, 9.0), (2, 8.0)], [(2, 0.5), (3, 0.4)]], k=60)
    assert top(fused, 1)[0][0] == 2
    assert fused[1] == pytest.approx(1 / 61)


def test_zscores_and_minmax_are_scale_free():
    a = zscores({1: 1.0, 2: 2.0, 3: 3.0})
    b = zscores({1: 100.0, 2: 200.0, 3: 300.0})
    assert a == pytest.approx(b)
    assert minmax({1: 5.0, 2: 10.0}) == {1: 0.0, 2: 1.0}
    assert zscores({1: 4.0, 2: 4.0}) == {1: 0.0, 2: 0.0}


def test_combine_fills_missing_with_the_signal_minimum():
    out = combine([{1: 1.0, 2: 0.0}, {2: 1.0}], [1.0, 1.0])
    assert out == {1: 2.0, 2: 1.0}


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
                            zscores({rid: evidence.get(rid, floor) for rid in candidates})], [1.0, 1.0, 1.0])
        fused = fuse_hybrid(sentence, lexical, evidence, candidates)
        assert dict(zip(candidates, fused.tolist())) == pytest.approx(expected, rel=1e-12)
        ids = np.array(candidates)
        assert [candidates[i] for i in rank(ids, fused)] == [rid for rid, _ in top(expected, len(expected))]
        expected = combine([zscores({rid: dense.get(rid, 0.0) for rid in candidates}),
                            zscores({rid: sentence.get(rid, dense.get(rid, 0.0)) for rid in candidates})],
                           [1.0, 1.0])
        fused = fuse_dense(dense, sentence, candidates)
        assert [candidates[i] for i in rank(ids, fused)] == [rid for rid, _ in top(expected, len(expected))]
    assert rank(np.array([7, 6, 5]), np.array([0.5, 0.5, 0.9])).tolist() == [2, 1, 0]  # ties by id, as `top`


def test_shortlist_keeps_the_best_by_both_whole_passage_signals():
    candidates = [1, 2, 3, 4, 5]
    dense = {1: 0.9, 2: 0.2, 3: 0.5, 4: 0.1, 5: 0.3}
    lexical = {2: 30.0, 4: 1.0}  # 2: a strong word match far in meaning; absent means no term matched
    assert shortlist(candidates, dense, lexical, 2) == [2, 1]
    assert shortlist(candidates, dense, None, 2) == [1, 3]  # dense mode: by meaning alone
    assert shortlist(candidates, dense, lexical, 9) == candidates  # short lists pass through in order
    assert shortlist([7, 6], {6: 0.5, 7: 0.5}, None, 1) == [6]  # ties by id, as `top`


@pytest.mark.parametrize("k", [0, -1, 101, "abc", "1e9", 1.5, True, "", None])
def test_bad_k(k):
    if k in ("", None):
        assert validate_k(k) == 10
    else:
        with pytest.raises(BadRequest):
            validate_k(k)


@pytest.mark.parametrize("q", [None, "", "   ", "x" * 1001, 5, "a\x00b"])
def test_bad_query(q):
    with pytest.raises(BadRequest):
        validate_query(q)


def test_stemming_is_thread_safe():
    """The server stems queries on many threads at once; a shared Snowball stemmer garbles words (a 500 under load)."""
    import sys
    import threading

    import snowballstemmer

    from qa.search import stem

    words = [f"{w}{i}ational" for i in range(6000) for w in ("relat", "nation", "condition")]
    expected = snowballstemmer.stemmer("english").stemWords(words)
    results, errors = {}, []

    def work(part: int) -> None:
        try:
            results[part] = [stem(w) for w in words[part::4]]
        except Exception as e:  # noqa: BLE001 (the failure under test)
            errors.append(e)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=work, args=(p,)) for p in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors
    for part in range(4):
        assert results[part] == expected[part::4]


def test_word_chars_classify_like_regex():
    from qa.search import _is_word_char

    text = "“China’s” café_1 — İstanbul, naïve 42% x\\ny ß ٣ 𝔘 \u00a0\u200b"
    codes = np.array([ord(c) for c in text], np.uint32)
    assert _is_word_char(codes).tolist() == [bool(re.match(r"\w", c)) for c in text]


COVERAGE_TEXTS = ["The élan of Milan: a lance, a _lantern, x-lantern and LANTERNS (Lancaster).",
                  "İlan lane; ılan 3lan ٣lan ßlan’s lan",
                  "“Lan” — naïve-lan! café_lan\nlan"]


def _coverage_reference(matcher: TermMatcher, texts, spans) -> list[float]:
    """Coverage by regex: a stem counts where no word character (\\w) comes before it."""
    out = []
    for t, start, end in spans:
        low = texts[t].replace("\u0130", "I").lower()
        held = [w for s, w in zip(matcher.stems, matcher.weights)
                if any(m.start() < end for m in re.compile(r"(?<!\w)" + re.escape(s)).finditer(low, start))]
        out.append(sum(held) / matcher.total)
    return out


def test_coverage_counts_words_that_start_with_a_stem():
    """Only matches at the start of a word count, `\\w` deciding what a word character is: after "é", "_", a
    digit or an apostrophe-less letter a stem is inside a word; after punctuation, spaces or a dash it starts one."""
    matcher = TermMatcher({"lan": 2.0, "mil": 1.0, "zzz": 1.0})
    spans = [(t, s, min(s + 5, len(text))) for t, text in enumerate(COVERAGE_TEXTS) for s in range(0, len(text), 6)]
    assert matcher.coverages(COVERAGE_TEXTS, spans).tolist() == pytest.approx(
        _coverage_reference(matcher, COVERAGE_TEXTS, spans))
    text = ["élan _lan x_lan", "a lan"]
    assert matcher.coverages(text, [(0, 0, 4), (0, 5, 9), (0, 10, 15), (1, 0, 5)]).tolist() == [0, 0, 0, 0.5]
    assert TermMatcher({}).coverages(text, [(0, 0, 4)]).tolist() == [0.0]
