"""The words of a query and of a passage: tokenising, stop words, stemming, and finding a query's words in texts."""
from __future__ import annotations

import functools
import math
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

WORD = re.compile(r"\w+", re.UNICODE)
STOPWORDS = frozenset("""a about above after again against all am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further had has have having he
her here hers herself him himself his how i if in into is it its itself just me more most my myself no nor not now
of off on once only or other our ours ourselves out over own same she should so some such than that the their theirs
them themselves then there these they this those through to too under until up very was we were what when where
which while who whom whose why will with would you your yours yourself yourselves""".split())


# what `WORD` leaves of English possessives and contractions after the apostrophe ("Tesla's", "didn't", "we'll"):
# not words of their own, as an English analyzer's possessive filter has it
CLITICS = frozenset("s t d ll m re ve".split())
APOSTROPHES = "'\u2019"


def _query_words(text: str) -> tuple[list[str], list[bool]]:
    """A query's words, lower-cased as passages are (`fold_case`), and for each whether it is a content word: not a
    stop word, nor a clitic after an apostrophe ("s" of "Tesla's", which matched most passages and, as a stem,
    every word starting with "s"); every word is, in a query of nothing else."""
    words, content = [], []
    for m in WORD.finditer(text):
        word = fold_case(m.group())
        clitic = word in CLITICS and m.start() > 0 and text[m.start() - 1] in APOSTROPHES
        words.append(word)
        content.append(not clitic and word not in STOPWORDS)
    return words, content if any(content) else [True] * len(words)


def query_terms(text: str) -> list[str]:
    """Distinct content words of a query (`_query_words`)."""
    words, content = _query_words(text)
    return list(dict.fromkeys(w for w, c in zip(words, content) if c))


def query_pairs(text: str) -> list[tuple[str, str, int]]:
    """Each content word of a query with the next one and how many words on it comes ("Notre Dame" gives
    ("notre", "dame", 1), "University of Notre" ("university", "notre", 2)): the query's sequential term
    dependencies, for BM25 with term proximity (see `qa.lexical`). Stop words and clitics count in the distance:
    the index holds them as words."""
    words, content = _query_words(text)
    at = [i for i, c in enumerate(content) if c]
    return list(dict.fromkeys((words[a], words[b], b - a) for a, b in zip(at, at[1:]) if words[a] != words[b]))


_local = threading.local()


def _stemmer():
    """This thread's Snowball stemmer: a stemmer keeps per-word state, so threads must not share one."""
    stemmer = getattr(_local, "stemmer", None)
    if stemmer is None:
        import snowballstemmer

        stemmer = _local.stemmer = snowballstemmer.stemmer("english")
    return stemmer


@functools.lru_cache(maxsize=100_000)
def stem(word: str) -> str:
    """The Snowball (Porter 2) stem of a lower-cased word."""
    return _stemmer().stemWord(word.lower())


def fold_case(text: str) -> str:
    """`text` lower-cased letter for letter, so that offsets into it are offsets into `text`: İ, whose lower case is
    two characters, becomes i, and any other letter whose lower case is longer (none in today's Unicode) stays."""
    low = text.replace("\u0130", "I").lower()
    if len(low) == len(text):
        return low
    return "".join(lc if len(lc := c.lower()) == 1 else c for c in text)


def _word_start(text: str, at: int) -> bool:
    """Whether `at` starts a word of `text`: the character before it is not one regex \\w matches (alphanumeric
    or _)."""
    return at == 0 or not ((c := text[at - 1]).isalnum() or c == "_")


def _word_starts(text: str, literal: str) -> list[int]:
    """Where `literal` occurs in `text` at the start of a word: a plain substring scan, with no regex compiled for
    each of a query's stems (a query's stems soon outnumber re's cache of compiled patterns)."""
    found = []
    at = text.find(literal)
    while at >= 0:
        if _word_start(text, at):
            found.append(at)
        at = text.find(literal, at + 1)
    return found


class DocFrequencies(Protocol):
    """What `TermMatcher.for_query` needs of an index: how many passages hold each term."""

    def doc_freqs(self, terms: Sequence[str]) -> Mapping[str, int]:
        """Passages holding each term."""


class TermMatcher:
    """Finds a query's content words (by stem prefix, so "actions" matches "action") in passages, and gives each
    sentence its coverage: the share of the query's IDF weight whose words it holds."""

    def __init__(self, weights: Mapping[str, float]):
        self.stems = [s for s in weights if s]
        self.weights = np.array([weights[s] for s in self.stems], float)
        self.total = float(self.weights.sum())

    @classmethod
    def for_query(cls, index: DocFrequencies, terms: Sequence[str], n_passages: int) -> TermMatcher:
        """IDF weights of the query terms' stems, document frequencies from `index.doc_freqs`."""
        n = max(n_passages, 1)
        weights: dict[str, float] = {}
        for term, df in index.doc_freqs(terms).items():
            key = stem(term)
            weights[key] = max(weights.get(key, 0.0), math.log(1 + (n - df + 0.5) / (df + 0.5)))
        return cls(weights)

    def coverages(self, texts: Sequence[str], spans: np.ndarray | Sequence[tuple[int, int, int]]) -> np.ndarray:
        """Coverage of each span, given as rows (text number, start, end) in text order then start order."""
        return self.coverage(self.held([fold_case(t) for t in texts], spans))

    def coverage(self, held: np.ndarray) -> np.ndarray:
        """The share of the query's IDF weight held, from `held`'s rows."""
        return held @ self.weights / self.total if self.total > 0 else np.zeros(len(held))

    def held(self, folded: Sequence[str], spans: np.ndarray | Sequence[tuple[int, int, int]]) -> np.ndarray:
        """Which of the query's stems each span holds (spans x stems, bool), spans as for `coverages` over texts
        given as `fold_case` left them (a store keeps them so): a word counts where it starts with the stem. All
        texts are scanned at once, one pass per stem."""
        n = len(spans)
        held = np.zeros((n, len(self.stems)), bool)
        if not self.stems or not n:
            return held
        low = "\n".join(folded)
        at: list[int] = []  # every match of every stem, then its stem's number: one array pass for all stems
        stem_of: list[int] = []
        for j, s in enumerate(self.stems):
            found = _word_starts(low, s)
            at += found
            stem_of += [j] * len(found)
        if not at:
            return held
        bases = np.cumsum([0] + [len(t) + 1 for t in folded[:-1]])
        sp = np.asarray(spans, np.int64).reshape(n, 3)
        starts, ends = bases[sp[:, 0]] + sp[:, 1], bases[sp[:, 0]] + sp[:, 2]
        where = np.array(at, np.int64)
        i = np.searchsorted(starts, where, side="right") - 1
        inside = (i >= 0) & (where < ends[np.maximum(i, 0)])
        held[i[inside], np.array(stem_of, np.intp)[inside]] = True
        return held
