import re
import pytest

from qa.errors import BadRequest
from qa.search import (combine, fuse_hybrid, minmax, rrf, shortlist, top, validate_k, validate_query,
                       zscores)


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
    assert {r for r, _ in top(fused, 2)} == {1, 2}


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
    from qa.search import _word_chars

    text = "“China’s” café_1 — İstanbul, naïve 42% x\\ny ß"
    assert _word_chars(text).tolist() == [bool(re.match(r"\w", c)) for c in text]
