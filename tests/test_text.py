"""The words of a query and of a passage: query words and pairs, thread-safe stemming, stems found in texts."""
import re
import sys
import threading

import pytest
import snowballstemmer

from qa.text import TermMatcher, fold_case, query_pairs, query_terms, stem


def test_query_pairs_keep_the_query_s_order_and_spacing():
    assert query_pairs("Who did Notre Dame beat in Super Bowl 50?") == [
        ("notre", "dame", 1), ("dame", "beat", 1), ("beat", "super", 2), ("super", "bowl", 1), ("bowl", "50", 1)]
    assert query_pairs("University of Notre Dame") == [("university", "notre", 2), ("notre", "dame", 1)]
    assert query_pairs("what is it") == [("what", "is", 1), ("is", "it", 1)]  # only stop words: all of them
    assert query_pairs("ferry ferry") == [] and query_pairs("ferry") == [] and query_pairs("") == []


def test_clitics_after_an_apostrophe_are_not_content_words():
    # "s" of "Tesla's" matched most passages in BM25 and, as a stem, every word starting with "s" in term coverage
    assert query_terms("What was Tesla's financial situation?") == ["tesla", "financial", "situation"]
    assert query_pairs("What was Tesla\u2019s financial situation?") == [("tesla", "financial", 2),
                                                                        ("financial", "situation", 1)]
    assert query_terms("Why didn't the ferry sail? We'll see") == ["didn", "ferry", "sail", "see"]
    assert query_terms("What do T cells do?") == ["t", "cells"]  # a letter on its own is a word
    assert query_terms("S&P 500") == ["s", "p", "500"]
    assert query_terms("it's") == ["it", "s"] and query_pairs("it's") == [("it", "s", 1)]  # nothing else: all


def test_stemming_is_thread_safe():
    """The server stems queries on many threads at once; a shared Snowball stemmer garbles words (a 500 under load)."""
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


COVERAGE_TEXTS = ["The élan of Milan: a lance, a _lantern, x-lantern and LANTERNS (Lancaster).",
                  "İlan lane; ılan 3lan ٣lan ßlan’s lan",
                  "“Lan” — naïve-lan! café_lan\nlan 𝔘lan \u00a0lan \u200blan x\\lan"]


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
    # stems that start one another each match where they start a word
    nested = TermMatcher({"lan": 1.0, "lant": 1.0, "lantern": 2.0, "lance": 1.0})
    assert nested.coverages(COVERAGE_TEXTS, spans).tolist() == pytest.approx(
        _coverage_reference(nested, COVERAGE_TEXTS, spans))
    held = nested.held([fold_case("LANTERNS"), "a lance"], [(0, 0, 8), (1, 0, 7)])
    assert held.tolist() == [[True, True, True, False], [True, False, False, True]]


def test_fold_case_keeps_every_offset():
    for text in COVERAGE_TEXTS + ["İSTANBUL and İzmir", "ΣΊΣΥΦΟΣ Straße"]:
        folded = fold_case(text)
        assert len(folded) == len(text) and folded == text.replace("\u0130", "I").lower()


def test_query_words_are_folded_as_passages_are():
    # str.lower gives "i̇zmir" (i and a combining dot), which no folded passage holds
    assert query_terms("Where is İzmir?") == ["izmir"]
    assert query_pairs("İSTANBUL İzmir") == [("istanbul", "izmir", 1)]
    matcher = TermMatcher({stem(t): 1.0 for t in query_terms("İzmir port")})
    assert matcher.coverages(["The port of İzmir."], [(0, 0, 18)]).tolist() == [1.0]
