"""The words of a passage as the cluster's BM25 sees them, and exact BM25 with term proximity computed in the service.

Milvus receives text already analysed here (`analyze`: the tokens of the local tantivy analyzer, joined by spaces),
so its BM25 function sees the same stems on Milvus Lite (which ignores an analyzer's filters) and on a server.
Milvus's BM25 finds the candidates; their exact scores (`Bm25.score`) are computed here from their words with
tantivy's formula (field norms included) and the collection's statistics (passages, average length, and document
frequencies kept in a terms collection), plus the sequential-dependence proximity clauses of `qa.lexical`, so the
fused ranking sees the same lexical signal as on a local index.
"""
from __future__ import annotations

import bisect
import dataclasses
import math
import re
import unicodedata
from collections.abc import Mapping, Sequence

from ..text import stem
from ..words import B, K1, MAX_WORD_BYTES, NORM_LENGTHS, ORDERED_WEIGHT, WINDOW_SLOP, WINDOW_WEIGHT, slop_count

TOKEN = re.compile(r"[^\W_]+", re.UNICODE)  # tantivy's simple tokenizer: runs of alphanumerics
NORMS = NORM_LENGTHS.tolist()  # tantivy keeps a passage's length as one byte: these lengths


def norm_length(tokens: int) -> int:
    """A passage's length as tantivy's BM25 sees it: the largest of `NORMS` not above it."""
    return NORMS[bisect.bisect_right(NORMS, tokens) - 1]


def _fold(word: str) -> str:
    """ASCII folding of a lower-cased word (accents dropped), as tantivy's ascii_fold."""
    if word.isascii():
        return word
    return "".join(c for c in unicodedata.normalize("NFKD", word) if not unicodedata.combining(c))


def analyze(text: str) -> list[str]:
    """The index tokens of a text, in order: words split on non-alphanumerics, long ones dropped, lower-cased,
    folded to ASCII, Snowball English stems."""
    return [stem(_fold(w.lower())) for w in TOKEN.findall(text) if len(w.encode("utf-8")) < MAX_WORD_BYTES]


def body_of(title: str | None, text: str) -> str:
    """The passage's row as BM25 scores it: title and text."""
    return f"{title or ''}\n{text}"


def idf(df: int, n: int) -> float:
    """tantivy's (Lucene's) BM25 idf."""
    return math.log(1 + (n - df + 0.5) / (df + 0.5))


@dataclasses.dataclass
class Bm25:
    """A collection's BM25 statistics: passages, their average length in tokens, and each token's document
    frequency over the passages' bodies."""

    passages: int
    avg_tokens: float
    doc_freqs: Mapping[str, int]

    def _weight(self, tf: int, dl: int) -> float:
        """BM25's term-frequency part for `tf` occurrences in a body of `dl` tokens."""
        norm = K1 * (1 - B + B * dl / max(self.avg_tokens, 1e-9))
        return tf * (1 + K1) / (tf + norm)

    def _idf(self, tokens: Sequence[str]) -> float:
        return sum(idf(self.doc_freqs.get(t, 0), max(self.passages, 1)) for t in tokens)

    def score(self, tokens: Sequence[str], body: Sequence[str], pairs: Sequence[tuple[str, str, int]] = ()) -> float:
        """BM25 of one passage's body tokens for the query `tokens`, with proximity for the token `pairs`
        (first, second, gap); 0 when no token matches."""
        counts: dict[str, int] = {}
        wanted = set(tokens)
        for t in body:
            if t in wanted:
                counts[t] = counts.get(t, 0) + 1
        if not counts:
            return 0.0
        dl = norm_length(len(body))
        total = sum(self._idf((t,)) * self._weight(c, dl) for t, c in counts.items())
        for first, second, gap in pairs:
            if first in counts and second in counts:
                rarer = self.doc_freqs.get(second, 0) < self.doc_freqs.get(first, 0)
                ordered, window = pair_counts(body, first, second, gap, second_rarer=rarer)
                weight = self._idf((first, second))
                if ordered:
                    total += ORDERED_WEIGHT * weight * self._weight(ordered, dl)
                if window:
                    total += WINDOW_WEIGHT * weight * self._weight(window, dl)
        return total


def pair_counts(body: Sequence[str], first: str, second: str, gap: int, *, second_rarer: bool = False
                ) -> tuple[int, int]:
    """How often `second` comes exactly `gap` tokens after `first` (a phrase), and how many window matches there are,
    counted as tantivy counts a sloppy phrase (`qa.words.slop_count`, walked from the rarer word's side)."""
    at_first = [i for i, t in enumerate(body) if t == first]
    at_second = [i for i, t in enumerate(body) if t == second]
    seconds = set(at_second)
    ordered = sum(1 for i in at_first if i + gap in seconds)
    lefts = [i + 1 for i in at_first]  # tantivy aligns the first word on the second's place, one after it
    window = slop_count(at_second, lefts, WINDOW_SLOP) if second_rarer else slop_count(lefts, at_second, WINDOW_SLOP)
    return ordered, window


def token_pairs(pairs: Sequence[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    """The query's word pairs as token pairs; those whose words are not one token each, or the same token, left out
    (as `LexicalIndex._dependence`)."""
    out = []
    for first, second, gap in pairs:
        a, b = analyze(first), analyze(second)
        if len(a) == 1 and len(b) == 1 and a != b:
            out.append((a[0], b[0], gap))
    return out


def query_tokens(terms: Sequence[str]) -> list[str]:
    """The index tokens of query terms, in order, without repeats."""
    return list(dict.fromkeys(t for term in terms for t in analyze(term)))


__all__ = ["Bm25", "analyze", "body_of", "idf", "pair_counts", "query_tokens", "token_pairs"]
