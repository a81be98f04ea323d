"""A passage's words as BM25 sees them, and exact BM25 with term proximity computed from them.

The words are tantivy's analysis of the passage's row (title and text): words split on non-alphanumerics, long ones
dropped, lower-cased, folded to ASCII, Snowball English stems. The store keeps each passage's words, in position
order, as ids of a vocabulary, so a query's exact scores for its candidates are a few numpy calls over their words
instead of a tantivy search restricted to their ids, whose cost grows with the collection
(docs/performance.md#lexical-cost-at-scale).

`proximity_scores` computes what `LexicalIndex.scores` asks tantivy for, the same way: BM25 with tantivy's
constants and one-byte field norms, each query word pair as an exact phrase and as a phrase with slop, counted as
tantivy counts them (tests/test_words.py holds the two to the same scores).
"""
from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from .text import fold_case

K1, B = 1.2, 0.75  # tantivy's BM25 constants
MAX_WORD_BYTES = 40  # tantivy's remove_long(40): longer words are not indexed, but keep their position
LONG_ASCII_WORD = re.compile(f"[A-Za-z0-9]{{{MAX_WORD_BYTES}}}")  # in ASCII text, a word tantivy does not index
DROPPED = -1  # the id of a word too long to index: it holds a position and matches nothing
# tantivy's restricted query costs more as the collection grows (its union of clauses fills windows of 4,096
# passages), scoring the candidates' words does not: from this many passages (four windows) the words cost less
# (docs/performance.md#lexical-cost-at-scale)
WORDS_FROM = 16_384
# sequential dependence: weights of word pairs as exact phrases and in unordered windows, relative to single words
# (0.10 and 0.05 against 0.85), and the slop that makes a window of about 8 words (tantivy counts moves, a swap 2)
ORDERED_WEIGHT, WINDOW_WEIGHT, WINDOW_SLOP = 0.10 / 0.85, 0.05 / 0.85, 7


def analyzer(*, drop_long: bool = True):
    """tantivy's analyzer of passage rows and queries; without `drop_long`, one word for every word the tokenizer
    finds (so positions can be counted)."""
    from tantivy import Filter, TextAnalyzerBuilder, Tokenizer

    builder = TextAnalyzerBuilder(Tokenizer.simple())
    if drop_long:
        builder = builder.filter(Filter.remove_long(MAX_WORD_BYTES))
    return (builder.filter(Filter.lowercase()).filter(Filter.ascii_fold()).filter(Filter.stemmer("english"))
            .build())


@functools.lru_cache(maxsize=1)
def _query_analyzer():
    return analyzer()


@functools.lru_cache(maxsize=100_000)
def query_word_tokens(word: str) -> tuple[str, ...]:
    """The index tokens of a query word or text (`analyzer`), kept: queries come back to the same words."""
    return tuple(_query_analyzer().analyze(fold_case(word)))


def body_text(title: str | None, text: str) -> str:
    """A passage's row as BM25 scores it: its title and its text, case-folded as queries are (the analyzer alone
    makes İ an i with a combining dot)."""
    return f"{fold_case(title or '')}\n{fold_case(text)}"


class Analyzer:
    """The words of passage rows in position order: a word too long to index as "" (it holds its position)."""

    def __init__(self):
        from tantivy import TextAnalyzerBuilder, Tokenizer

        self._words = analyzer(drop_long=False).analyze
        self._raw = TextAnalyzerBuilder(Tokenizer.simple()).build().analyze

    def words(self, title: str | None, text: str) -> list[str]:
        """The words of a passage's row (`body_text`), in position order."""
        body = body_text(title, text)
        words = self._words(body)
        if body.isascii() and not LONG_ASCII_WORD.search(body):
            return words
        # the filter drops a word by its length as the tokenizer found it, before folding and stemming
        return [w if len(raw.encode()) < MAX_WORD_BYTES else "" for w, raw in zip(words, self._raw(body))]


# tantivy keeps a passage's length as one byte: the lengths those bytes stand for (Lucene's SmallFloat.byte4ToInt)
NORM_LENGTHS = np.array([code if code < 24 else 24 + ((code - 24) & 7 if code < 32
                                                      else (((code - 24) & 7) | 8) << (((code - 24) >> 3) - 1))
                         for code in range(256)], np.int64)


def norm_lengths(lengths: np.ndarray) -> np.ndarray:
    """Passages' lengths in words as tantivy's BM25 sees them: the largest of `NORM_LENGTHS` not above each."""
    return NORM_LENGTHS[np.searchsorted(NORM_LENGTHS, lengths, side="right") - 1]


def idf(doc_freqs: np.ndarray, passages: int) -> np.ndarray:
    """tantivy's (Lucene's) BM25 idf of each document frequency, in its float32 arithmetic (float32)."""
    freqs = doc_freqs.astype(np.float32)
    x = (np.float32(passages) - freqs + np.float32(0.5)) / (freqs + np.float32(0.5))
    return np.log((np.float32(1) + x).astype(np.float64)).astype(np.float32)


class WordPair(NamedTuple):
    """Two query words (their places in `LexicalQuery.words`) and how far apart the query has them."""

    first: int
    second: int
    gap: int


def token_pairs(pairs: Sequence[tuple[str, str, int]], analyze: Callable[[str], Sequence[str]]
                ) -> list[tuple[str, str, int]]:
    """A query's word pairs (first, second, gap) as index token pairs, each word's tokens from `analyze`; pairs
    whose words are not one token each, or the same token, are left out."""
    out = []
    for first, second, gap in pairs:
        a, b = analyze(first), analyze(second)
        if len(a) == 1 and len(b) == 1 and a != b:
            out.append((a[0], b[0], gap))
    return out


class LexicalQuery(NamedTuple):
    """A query's words (index tokens, without repeats), the passages holding each, its word pairs, and the
    collection's passages and average length in words."""

    words: list[str]
    doc_freqs: list[int]
    pairs: list[WordPair]
    passages: int
    avg_words: float

    @staticmethod
    def of(words: Sequence[str], doc_freqs: Sequence[int], pairs: Sequence[tuple[str, str, int]], passages: int,
           avg_words: float) -> LexicalQuery:
        """From the query's tokens and its token pairs (first, second, gap); pairs of a word not among the tokens,
        or of one word twice, are left out (as `LexicalIndex._dependence`)."""
        place = {w: i for i, w in enumerate(words)}
        kept = [WordPair(place[a], place[b], gap) for a, b, gap in pairs if a in place and b in place and a != b]
        return LexicalQuery(list(words), list(doc_freqs), list(dict.fromkeys(kept)), max(passages, 1), avg_words)


class StoredWords(NamedTuple):
    """Some passages' words (`Store.passage_words`): their rowids, how many words each has, and the words'
    vocabulary ids, one passage after the other."""

    rowids: np.ndarray
    counts: np.ndarray
    ids: np.ndarray


class PassageWords(NamedTuple):
    """Where a query's words occur in some passages, taken one after the other: each occurrence's offset in the
    passages' words and its place in `LexicalQuery.words`, by offset."""

    offsets: np.ndarray  # int64, ascending
    places: np.ndarray  # int64, the same length
    lengths: np.ndarray  # positions a passage
    norms: np.ndarray  # indexed words a passage (its positions less the words too long to index)

    @staticmethod
    def of(stored: StoredWords, vocabulary: Mapping[str, int], words: Sequence[str]) -> PassageWords:
        """Passages' words as vocabulary ids (`Store.passage_words`), for a query's `words`, whose ids `vocabulary`
        gives (a word no passage holds is not in it)."""
        flat, lengths = stored.ids, stored.counts
        places = np.full(len(flat), -1, np.int16)
        for place, word in enumerate(words):
            if word in vocabulary:  # a comparison a word beats a lookup table: a query has few words
                places[flat == vocabulary[word]] = place
        offsets = np.flatnonzero(places >= 0)
        norms = lengths
        if len(flat) and flat.min() == DROPPED:
            starts = np.cumsum(lengths) - lengths
            dropped = np.flatnonzero(flat == DROPPED)
            norms = lengths - np.bincount(np.searchsorted(starts, dropped, side="right") - 1, minlength=len(lengths))
        return PassageWords(offsets, places[offsets].astype(np.int64), lengths, norms)


def proximity_scores(query: LexicalQuery, passages: PassageWords) -> np.ndarray:
    """Each passage's BM25 for the query's words plus, for each word pair, its count as an exact phrase (the
    query's gap apart) and as a phrase with slop `WINDOW_SLOP`, weighted as sequential dependence: what tantivy
    scores for `LexicalIndex.scores`' query. 0 for a passage holding none of the words."""
    n, count = len(query.words), len(passages.lengths)
    if not n or not count:
        return np.zeros(count, np.float32)
    starts = np.cumsum(passages.lengths) - passages.lengths
    owner = np.searchsorted(starts, passages.offsets, side="right") - 1  # each occurrence's passage
    slot = passages.places
    position = passages.offsets - starts[owner]
    tf = np.bincount(owner * n + slot, minlength=count * n).reshape(count, n).astype(np.float32)
    k1, b = np.float32(K1), np.float32(B)
    norm = norm_lengths(passages.norms).astype(np.float32)
    cache = k1 * (np.float32(1) - b + b * norm / np.float32(query.avg_words))  # tantivy's per-length constant
    idfs = idf(np.array(query.doc_freqs), query.passages)
    weights = idfs * (np.float32(1) + k1)
    scores = (weights * (tf / (tf + cache[:, None]))).sum(axis=1, dtype=np.float32)
    if query.pairs:
        phrases, windows = _pair_counts(query, owner, slot, position, passages.lengths)
        for pair, ordered, window in zip(query.pairs, phrases, windows):
            weight = (idfs[pair.first] + idfs[pair.second]) * (np.float32(1) + k1)
            scores += np.float32(ORDERED_WEIGHT) * (weight * (ordered / (ordered + cache)))
            scores += np.float32(WINDOW_WEIGHT) * (weight * (window / (window + cache)))
    return scores


def _pair_counts(query: LexicalQuery, owner: np.ndarray, slot: np.ndarray, position: np.ndarray,
                 lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per word pair and passage (pairs x passages, float32), how often the pair occurs as an exact phrase and as a
    phrase with slop: every pair at once, each pair's occurrences keyed apart from the others'."""
    count, pairs = len(lengths), query.pairs
    stride = int(lengths.max()) + 4 * WINDOW_SLOP  # keys order by pair, passage, then position, windows apart
    keys = owner * stride + position
    span = count * stride
    order = np.argsort(slot, kind="stable")  # each word's occurrences, in order
    bounds = np.searchsorted(slot[order], np.arange(len(query.words) + 1)).tolist()
    by_place = [order[bounds[place]:bounds[place + 1]] for place in range(len(query.words))]
    firsts = [by_place[pair.first] for pair in pairs]
    seconds = [by_place[pair.second] for pair in pairs]
    first_keys = np.concatenate([keys[at] + k * span for k, at in enumerate(firsts)])
    second_keys = np.concatenate([keys[at] + k * span for k, at in enumerate(seconds)])
    first_cells = np.concatenate([owner[at] + k * count for k, at in enumerate(firsts)])  # (pair, passage) cells
    second_cells = np.concatenate([owner[at] + k * count for k, at in enumerate(seconds)])
    cells = len(pairs) * count
    if not len(first_keys) or not len(second_keys):
        return np.zeros((len(pairs), count), np.float32), np.zeros((len(pairs), count), np.float32)
    # a phrase: the second word `gap` positions after the first (a position holds one word: each counts once)
    wanted = first_keys + np.repeat([pair.gap for pair in pairs], [len(at) for at in firsts])
    at = np.minimum(np.searchsorted(second_keys, wanted), len(second_keys) - 1)
    phrases = np.bincount(first_cells[second_keys[at] == wanted], minlength=cells).astype(np.float32)
    # a phrase with slop: tantivy aligns the first word on the second's place, one after it, and matches the two
    # within the slop; with one occurrence of either word in a passage, that is whether any two are that close
    lefts = first_keys + 1
    low = np.searchsorted(second_keys, lefts - WINDOW_SLOP)
    high = np.searchsorted(second_keys, lefts + WINDOW_SLOP, side="right")
    near = np.bincount(first_cells[high > low], minlength=cells)
    first_count = np.bincount(first_cells, minlength=cells)
    second_count = np.bincount(second_cells, minlength=cells)
    windows = (near > 0).astype(np.float32)
    several = np.flatnonzero((near > 0) & (first_count > 1) & (second_count > 1))
    if len(several):  # tantivy's walk, which takes each position once (`slop_count`)
        first_end, second_end = np.cumsum(first_count), np.cumsum(second_count)
        left_keys, right_keys = lefts.tolist(), second_keys.tolist()
        rarer = [query.doc_freqs[pair.second] < query.doc_freqs[pair.first] for pair in pairs]
        for cell, a0, a1, b0, b1 in zip(several.tolist(), (first_end - first_count)[several].tolist(),
                                        first_end[several].tolist(), (second_end - second_count)[several].tolist(),
                                        second_end[several].tolist()):
            left, right = left_keys[a0:a1], right_keys[b0:b1]
            # tantivy walks the rarer word's positions as the left side
            windows[cell] = slop_count(right, left, WINDOW_SLOP) if rarer[cell // count] else \
                slop_count(left, right, WINDOW_SLOP)
    return phrases.reshape(len(pairs), count), windows.reshape(len(pairs), count)


def slop_count(left: Sequence[int], right: Sequence[int], slop: int) -> int:
    """Matches of two sorted position lists within `slop` of each other, counted as tantivy's sloppy phrase of two
    words counts them (its `intersection_count_with_slop`): each right position, in order, takes the first left one
    not used yet if it is within the slop, and uses up with it every left position not past the right one."""
    i = matches = 0
    end = len(left)
    for here in right:
        while i < end and left[i] < here - slop:
            i += 1
        if i == end:
            break
        if left[i] <= here + slop:
            matches += 1
            i += 1
            while i < end and left[i] <= here:
                i += 1
    return matches


__all__ = ["Analyzer", "LexicalQuery", "PassageWords", "StoredWords", "WordPair", "analyzer", "body_text",
           "norm_lengths", "proximity_scores", "query_word_tokens", "slop_count", "token_pairs"]
