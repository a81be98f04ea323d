"""The cluster index's BM25 in the service against tantivy's, the local engine's: tokens and whole scores with
proximity (in memory, no Milvus)."""
from __future__ import annotations

import pytest

from qa.cluster.terms import Bm25, analyze, body_tokens, indexed, query_tokens, token_pairs
from qa.lexical import LexicalIndex
from qa.store import PassageRow
from qa.text import query_pairs, query_terms

LONG = "Pneumonoultramicroscopicsilicovolcanoconiosis" + "x" * 4  # 49 letters: tantivy does not index it
TEXTS = ["apple b", "apple b b", "b apple b", "apple apple b", "apple x b x apple", "b b apple", "apple b apple b",
         "apple x x x x x x b", "apple x x x x x x x b", "apple x x x x x x x x b", "b x x x x x apple",
         "b x x x x x x apple", "Café owners in Zürich said the cafés' apple pies sold out, 3.5 times faster",
         "The Broncos beat the Panthers; the Panthers' defense couldn't stop Denver's late drive at Levi's Stadium",
         # tantivy walks the rarer word's positions: patent's here, whose walk finds two windows where tesla's finds one
         "tesla x x tesla x x x patent x x patent", "tesla coil", "tesla tower",
         # a word too long to index keeps its place: no phrase across it, and it does not count in the length
         f"apple {LONG} pie", f"{LONG} b apple {LONG} pie b"]


class _Rows:
    """A store of passages (title "", text) for `LexicalIndex.rebuild`."""

    generation = 1

    def passage_rows(self, doc_ids=None):
        return [PassageRow(i, str(i), None, None, "", t) for i, t in enumerate(TEXTS, 1)]


@pytest.fixture(scope="module")
def tantivy_index() -> LexicalIndex:
    index = LexicalIndex.create(None)
    index.rebuild(_Rows())
    return index


def test_tokens_are_tantivys(tantivy_index):
    for text in TEXTS:
        assert analyze(text) == [t for t in tantivy_index._analyze(text)]


@pytest.mark.parametrize("query", ["apple b", "b apple pie", "apple pie", "apple x", "Panthers defense Denver",
                                   "cafe owners Zurich apple", "tesla patent", "patent tesla"])
def test_scores_equal_tantivys(tantivy_index, query):
    terms, pairs = query_terms(query), query_pairs(query)
    ids = list(range(1, len(TEXTS) + 1))
    expected = tantivy_index.scores(terms, ids, pairs)
    bodies = {i: body_tokens("", t) for i, t in enumerate(TEXTS, 1)}
    tokens = query_tokens(terms)
    bm25 = Bm25(len(TEXTS), sum(len(indexed(b)) for b in bodies.values()) / len(TEXTS),
                {t: sum(t in b for b in bodies.values()) for t in tokens})
    found = dict(zip(ids, bm25.scores(tokens, [bodies[i] for i in ids], token_pairs(pairs))))
    assert {i for i, s in found.items() if s} == set(expected)
    for i, score in expected.items():
        assert found[i] == pytest.approx(score, rel=1e-6), (i, TEXTS[i - 1])  # float32 sums in another order
