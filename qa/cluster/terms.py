"""The words of a passage as the cluster's BM25 sees them, and exact BM25 with term proximity computed in the service.

Milvus receives text already analysed here (`analyze`: the tokens of the local tantivy analyzer, joined by spaces),
so its BM25 function sees the same stems on Milvus Lite (which ignores an analyzer's filters) and on a server.
Milvus's BM25 finds the candidates; their exact scores (`Bm25.scores`) are computed here from their words with
tantivy's formula (field norms included) and the collection's statistics (passages, average length, and document
frequencies kept in a terms collection), plus the sequential-dependence proximity clauses of `qa.lexical`, so the
fused ranking sees the same lexical signal as on a local index.
"""
from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Mapping, Sequence

import numpy as np

from ..text import stem
from ..words import DROPPED, MAX_WORD_BYTES, LexicalQuery, PassageWords, StoredWords, proximity_scores
from ..words import token_pairs as _token_pairs

TOKEN = re.compile(r"[^\W_]+", re.UNICODE)  # tantivy's simple tokenizer: runs of alphanumerics
LONG_WORD = "_"  # a word too long to index, in an analysed body: no token of a query or a text is "_"


def _fold(word: str) -> str:
    """ASCII folding of a lower-cased word (accents dropped), as tantivy's ascii_fold."""
    if word.isascii():
        return word
    return "".join(c for c in unicodedata.normalize("NFKD", word) if not unicodedata.combining(c))


def _words(text: str) -> list[str]:
    """Every word of a text, in order, as an index token (lower-cased, folded to ASCII, a Snowball English stem),
    a word too long to index as `LONG_WORD`."""
    return [stem(_fold(w.lower())) if len(w.encode("utf-8")) < MAX_WORD_BYTES else LONG_WORD
            for w in TOKEN.findall(text)]


def analyze(text: str) -> list[str]:
    """The index tokens of a text, in order: words split on non-alphanumerics, long ones dropped, lower-cased,
    folded to ASCII, Snowball English stems."""
    return indexed(_words(text))


def body_of(title: str | None, text: str) -> str:
    """The passage's row as BM25 scores it: title and text."""
    return f"{title or ''}\n{text}"


def body_tokens(title: str | None, text: str) -> list[str]:
    """A passage's row as its analysed body keeps it: its index tokens in position order, a word too long to index
    as `LONG_WORD` (tantivy does not index it but keeps its place, which phrases count)."""
    return _words(body_of(title, text))


def indexed(tokens: Sequence[str]) -> list[str]:
    """An analysed body's index tokens (`LONG_WORD` left out)."""
    return [t for t in tokens if t != LONG_WORD]


@dataclasses.dataclass
class Bm25:
    """A collection's BM25 statistics: passages, their average length in tokens, and each token's document
    frequency over the passages' bodies."""

    passages: int
    avg_tokens: float
    doc_freqs: Mapping[str, int]

    def scores(self, tokens: Sequence[str], bodies: Sequence[Sequence[str]],
               pairs: Sequence[tuple[str, str, int]] = ()) -> list[float]:
        """BM25 of each passage's body tokens for the query `tokens`, with proximity for the token `pairs`
        (first, second, gap); 0 where no token matches. The local store's arithmetic (`qa.words.proximity_scores`)
        over the bodies' tokens as ids: the query's places, one more id for every other token, and a word too long to
        index as the store keeps one (`DROPPED`: its place counts, its length does not)."""
        place = {t: i for i, t in enumerate(tokens)}
        ids_of = {**place, LONG_WORD: DROPPED}
        other = len(place)
        ids = np.fromiter((ids_of.get(t, other) for body in bodies for t in body), np.int32)
        stored = StoredWords(np.arange(len(bodies)), np.array([len(b) for b in bodies], np.int64), ids)
        query = LexicalQuery.of(tokens, [self.doc_freqs.get(t, 0) for t in tokens], pairs, self.passages,
                                max(self.avg_tokens, 1e-9))
        return proximity_scores(query, PassageWords.of(stored, place, tokens)).tolist()


def token_pairs(pairs: Sequence[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    """The query's word pairs as token pairs of this module's analysis (`qa.words.token_pairs`, as the local
    index's)."""
    return _token_pairs(pairs, analyze)


def query_tokens(terms: Sequence[str]) -> list[str]:
    """The index tokens of query terms, in order, without repeats."""
    return list(dict.fromkeys(t for term in terms for t in analyze(term)))


__all__ = ["LONG_WORD", "Bm25", "analyze", "body_of", "body_tokens", "indexed", "query_tokens", "token_pairs"]
