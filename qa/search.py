"""Ranking: dense and lexical candidates, fusion as small pure functions, filters, duplicate collapse, `Hit`.

Both sides contribute deep candidate lists (DEPTH each). Every candidate then gets both whole-passage signals
exactly, whichever side found it (its best window's cosine, its BM25 score with term proximity); the best RERANK
of them by those two get the sentence-level signals too (best sentence's cosine, the best sentence by meaning and
term coverage), and the signals are fused per query after normalisation, so no weight depends on one collection's
score scale.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from .embed.base import TextTokens
from .ranked import Ranked, rank, top
from .rowcache import passage_runs, run_starts
from .store import Filters, StoredPassage
from .text import TermMatcher, query_pairs, query_terms

if TYPE_CHECKING:
    from .index import Index, PassageCosines

MODES = ("hybrid", "dense", "lexical")
DEPTH = 50  # candidates from each side: a cost knob, measured against quality in docs/ranking.md
RERANK = DEPTH  # of the union, the best by whole-passage evidence get the sentence-level signals (at least 3k)
DUPLICATE_COSINE = 0.97  # passages this close are copies of one story (syndicated wire text)


@dataclasses.dataclass
class Hit:
    """A ranked passage with its component scores."""

    passage: StoredPassage
    scores: dict
    duplicates: list[StoredPassage] = dataclasses.field(default_factory=list)

    def to_dict(self, rank: int) -> dict:
        """The result object of the search API."""
        p = self.passage
        out = {"rank": rank, "score": round(float(self.scores["fused"]), 6), "passage_id": p.passage_id,
               "doc_id": p.doc_id, "paragraph_index": p.paragraph_index, "text": p.text, "title": p.title,
               "citation": p.citation(),
               "scores": {key: (None if v is None else round(float(v), 6)) for key, v in self.scores.items()}}
        if self.duplicates:
            out["duplicates"] = [d.citation(StoredPassage.DUPLICATE_FIELDS) for d in self.duplicates]
        return out


class SentenceScore(NamedTuple):
    """One sentence of a candidate passage with its scores (`SearchResult.sentence`)."""

    idx: int  # its number in its passage
    start: int  # its span in the passage text
    end: int
    cosine: float  # with the query
    coverage: float  # its share of the query's IDF weight over the collection
    held: np.ndarray  # which of the query's stems it holds (bool, one per stem of `TermMatcher.stems`)


class SentenceRows(NamedTuple):
    """The shortlisted passages' sentences with their scores, as arrays in (passage rowid, idx) order."""

    meta: np.ndarray | tuple = ()  # one row per sentence: passage rowid, idx, start, end
    cosines: np.ndarray | tuple = ()
    coverages: np.ndarray | tuple = ()
    held: np.ndarray | tuple = ()  # sentences x query stems, bool


@dataclasses.dataclass
class SearchResult:
    """Hits and the time each stage took."""

    query: str
    mode: str
    hits: list[Hit]
    timings: dict
    query_vector: np.ndarray | None = None
    sentence_rows: SentenceRows = SentenceRows()
    query_tokens: TextTokens | None = None  # the query's word pieces, from the forward pass of its vector
    # for answers: the stored word pieces of some passages, by rowid (`Store.passage_tokens`), read when asked for
    stored_tokens: Callable[[Sequence[int]], Mapping[int, TextTokens]] | None = None

    @functools.cached_property
    def _sentence_runs(self) -> dict[int, range]:
        """Per shortlisted passage rowid, where its sentences lie in `sentence_rows` (built on first use, so plain
        searches skip it)."""
        meta = np.asarray(self.sentence_rows.meta)
        return {rid: range(a, b) for rid, a, b in passage_runs(meta[:, 0])} if len(meta) else {}

    def sentence_rows_of(self, rowid: int) -> range:
        """Where the sentences of a shortlisted passage lie in `sentence_rows`, in order (empty for another)."""
        return self._sentence_runs.get(rowid, range(0))

    def sentence(self, rowid: int, idx: int) -> SentenceScore | None:
        """The scores of sentence `idx` of a shortlisted passage, or None (a passage's sentences are its rows in
        order, `Store.sentences`)."""
        run = self.sentence_rows_of(rowid)
        if not 0 <= idx < len(run):
            return None
        rows, at = self.sentence_rows, run[idx]
        _, _, start, end = rows.meta[at].tolist()
        return SentenceScore(idx, start, end, float(rows.cosines[at]), float(rows.coverages[at]), rows.held[at])


@dataclasses.dataclass
class Candidates:
    """One query's candidate passages (rowids, in the order the sides found them) and the evidence on each."""

    ids: list[int]
    dense: dict[int, float]  # best window's cosine
    lexical: dict[int, float]  # BM25 (with term proximity once rescored)
    sentence: dict[int, float] = dataclasses.field(default_factory=dict)  # best sentence's cosine (shortlist)
    evidence: dict[int, float] = dataclasses.field(default_factory=dict)  # see `sentence_evidence` (shortlist)
    rows: SentenceRows = SentenceRows()  # the shortlist's sentences, for answers


# --- fusion: pure functions over (id, score) lists -----------------------------------------------------------

def zscores(scores: Mapping[int, float]) -> dict[int, float]:
    """Standardised scores (mean 0, unit deviation) over one query's candidates: `standardise` by id."""
    return dict(zip(scores, standardise(np.fromiter(scores.values(), float)).tolist()))


# --- search ------------------------------------------------------------------------------------------------

def _ms(t0: float) -> float:
    """Milliseconds since `t0` (a `time.perf_counter()` reading)."""
    return round((time.perf_counter() - t0) * 1000, 3)


def dense_candidates(index: Index, qvec: np.ndarray, depth: int, filters: Filters | None) -> Ranked:
    """Best passages by their best window's cosine; the vector index applies the filters (Milvus pushes them down)."""
    scores, ids = index.vectors.search_filtered(qvec[None, :], depth * 2, filters, index.store)
    best: dict[int, float] = {}
    rowids = index.passages_of_windows(ids[0])
    for rid, s in zip(rowids.tolist(), scores[0].tolist()):
        if rid >= 0 and s > best.get(rid, -math.inf):
            best[rid] = s
    return top(best, depth)


def search(index: Index, query: str, k: int = 10, *, mode: str = "hybrid", filters: Filters | None = None,
           depth: int = DEPTH, rerank: int = RERANK, collapse: bool = True) -> SearchResult:
    """Ranked passages for a question: dense, lexical or hybrid, filtered before the top-k cut."""
    with index.store.snapshot():
        return _search(index, query, k, mode, filters, depth, rerank, collapse)


def _search(index: Index, query: str, k: int, mode: str, filters: Filters | None, depth: int, rerank: int,
            collapse: bool) -> SearchResult:
    """`search` in one store snapshot: both sides' candidates, a shortlist by whole-passage evidence, sentence
    signals for the shortlist, fusion, then duplicate collapse."""
    timings = {"embed_ms": 0.0, "dense_ms": 0.0, "lexical_ms": 0.0, "fuse_ms": 0.0}
    depth = max(depth, k)
    qvec = qtokens = exact = None
    dense: Ranked = []
    lexical: Ranked = []
    terms, pairs = query_terms(query), query_pairs(query)
    if mode in ("hybrid", "dense"):
        t = time.perf_counter()
        qvec, qtokens = index.embedder.encode_query(query)
        timings["embed_ms"] = _ms(t)
        t = time.perf_counter()
        exact = index.passage_cosines(qvec) if not filters else None
        dense = exact.top(depth) if exact is not None else dense_candidates(index, qvec, depth, filters)
        timings["dense_ms"] = _ms(t)
    if mode in ("hybrid", "lexical"):
        t = time.perf_counter()
        lexical = index.lexical_search(terms, depth, filters)
        timings["lexical_ms"] = _ms(t)
    t = time.perf_counter()
    found = Candidates(list(dict.fromkeys([rid for rid, _ in dense] + [rid for rid, _ in lexical])), dict(dense),
                       dict(lexical))
    if mode != "dense":
        _rescore_lexical(index, found, terms, pairs)
    if qvec is not None and found.ids:
        _complete_dense(index, found, qvec, exact)
        found.ids = shortlist(found.ids, found.dense, found.lexical if mode == "hybrid" else None,
                              max(rerank, 3 * k))
        _add_sentence_signals(index, found, qvec, terms)
    ranked = _fused_ranking(found, mode, max(k * 3, k + 10))
    timings["fuse_ms"] = _ms(t)
    hits = _hits(index, ranked, found, mode, k * 3)
    if collapse and len(hits) > 1:
        hits = collapse_duplicates(index, hits)
    return SearchResult(query, mode, hits[:k], timings, qvec, found.rows, qtokens)


def _rescore_lexical(index: Index, found: Candidates, terms: list[str], pairs: list[tuple[str, str, int]]) -> None:
    """Exact BM25 with term proximity for every candidate (the lexical side's top-k search leaves proximity out for
    speed); a query without word pairs needs it only for the candidates that search did not score."""
    rescore = found.ids if pairs else [rid for rid in found.ids if rid not in found.lexical]
    if rescore:
        found.lexical.update(index.lexical_scores(terms, rescore, pairs=pairs))


def _complete_dense(index: Index, found: Candidates, qvec: np.ndarray, exact: PassageCosines | None) -> None:
    """The best window's cosine for the candidates only the lexical side found: every candidate then has both
    cheap whole-passage signals exactly, whichever side found it. From `exact` when the vector index gave every
    passage's, else from their stored windows."""
    missing = [rid for rid in found.ids if rid not in found.dense]
    if missing and exact is not None:
        found.dense.update(exact.of(missing))
    elif missing:
        windows = index.store.window_vectors(missing, index.dim)
        for rid, s in zip(windows.passages.tolist(), windows.cosines(qvec).tolist()):
            found.dense[rid] = max(s, found.dense.get(rid, -math.inf))


def _add_sentence_signals(index: Index, found: Candidates, qvec: np.ndarray, terms: list[str]) -> None:
    """The shortlist's sentence-level signals: each passage's best sentence cosine, its best sentence by meaning and
    term coverage (`sentence_evidence`), and every sentence's scores for answers."""
    folded = index.store.folded_texts(found.ids)
    matcher = TermMatcher.for_query(index, terms, index.passage_count)
    rows = index.store.sentences(found.ids, index.dim)
    meta = rows.meta  # (passage rowid, idx, start, end) a sentence
    if not len(meta):
        return
    starts = run_starts(meta[:, 0])  # each passage's first sentence
    owners = meta[starts, 0].tolist()
    pos = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(meta))))  # each sentence's passage number
    cosines = rows.cosines(qvec)
    held = matcher.held([folded.get(rid, "") for rid in owners], np.column_stack((pos, meta[:, 2:])))
    covs = matcher.coverage(held)
    found.sentence = dict(zip(owners, np.maximum.reduceat(cosines, starts).tolist()))
    found.evidence = dict(zip(owners, sentence_evidence(pos, cosines, covs, len(owners)).tolist()))
    found.rows = SentenceRows(meta, cosines, covs, held)


def _fused_ranking(found: Candidates, mode: str, n: int) -> Ranked:
    """The `n` best candidates by the mode's fused score, ties by id."""
    if mode == "dense":
        fused = fuse_dense(found.dense, found.sentence, found.ids)
    elif mode == "lexical":
        fused = np.array([found.lexical[rid] for rid in found.ids])
    else:
        fused = fuse_hybrid(found.sentence, found.lexical, found.evidence, found.ids)
    ids = np.asarray(found.ids, np.int64)
    order = rank(ids, fused)[:n]
    return list(zip(ids[order].tolist(), fused[order].tolist()))


def _hits(index: Index, ranked: Ranked, found: Candidates, mode: str, limit: int) -> list[Hit]:
    """Up to `limit` hits for the ranked passages still in the store, each with its component scores."""
    passages = index.store.passages([rid for rid, _ in ranked])
    hits = []
    for rid, score in ranked:
        p = passages.get(rid)
        if p is None:
            continue  # removed since the vector index was loaded
        hits.append(Hit(p, {"dense": found.dense.get(rid), "sentence": found.sentence.get(rid),
                            "lexical": found.lexical.get(rid, 0.0) if mode != "dense" else None, "fused": score}))
        if len(hits) >= limit:
            break
    return hits


def standardise(values: np.ndarray) -> np.ndarray:
    """z-scores of an array (mean 0, unit deviation; a constant array gives zeros)."""
    n = len(values)
    if not n:
        return values
    centred = values - values.sum() / n  # np.mean's and np.std's own arithmetic (the same bits), without their
    sd = math.sqrt((centred * centred).sum() / n)  # per-call overhead: a query standardises seven arrays
    return centred / (sd if sd > 1e-9 else 1.0)


def sentence_evidence(passage: np.ndarray, cosines: np.ndarray, coverages: np.ndarray, n: int) -> np.ndarray:
    """Per passage (0..n-1), its best sentence by standardised cosine plus standardised term coverage, the
    standardisation taken over every candidate sentence of the query (a passage is as good as its best-answering
    sentence); `passage` gives each sentence's passage number."""
    best = np.full(n, -np.inf)
    np.maximum.at(best, passage, standardise(np.asarray(cosines, float)) + standardise(np.asarray(coverages, float)))
    return best


def shortlist(candidates: Sequence[int], dense: Mapping[int, float], lexical: Mapping[int, float] | None,
              n: int) -> list[int]:
    """The `n` candidates with the best whole-passage evidence: best window's cosine, plus BM25 when `lexical` is
    given (each standardised over the candidates), best first."""
    if len(candidates) <= n:
        return list(candidates)
    ids = np.asarray(candidates, np.int64)
    score = standardise(np.array([dense.get(rid, -1.0) for rid in candidates]))
    if lexical is not None:
        score = score + standardise(np.array([lexical.get(rid, 0.0) for rid in candidates]))
    return ids[rank(ids, score)[:n]].tolist()


def fuse_dense(dense: Mapping[int, float], sentence: Mapping[int, float], candidates: Sequence[int]) -> np.ndarray:
    """Dense-only score of each candidate, in their order: the passage's best window and its best sentence,
    standardised and summed."""
    d = np.array([dense.get(rid, 0.0) for rid in candidates])
    s = np.array([sentence.get(rid, dense.get(rid, 0.0)) for rid in candidates])
    return standardise(d) + standardise(s)


def fuse_hybrid(sentence: Mapping[int, float], lexical: Mapping[int, float], evidence: Mapping[int, float],
                candidates: Sequence[int]) -> np.ndarray:
    """Hybrid score of each candidate, in their order: three kinds of evidence, each standardised over the query's
    candidates, summed with equal weight: meaning (best sentence cosine), words (BM25 over title and text), and the
    best single sentence holding both. Standardising per query makes the sum independent of each signal's scale on
    a given collection."""
    floor = min(evidence.values(), default=0.0)
    s = np.array([sentence.get(rid, 0.0) for rid in candidates])
    lex = np.array([lexical.get(rid, 0.0) for rid in candidates])
    ev = np.array([evidence.get(rid, floor) for rid in candidates])
    return standardise(s) + standardise(lex) + standardise(ev)


def collapse_duplicates(index: Index, hits: list[Hit]) -> list[Hit]:
    """Fold near-identical passages (cosine ≥ DUPLICATE_COSINE, or the same text) into the best-ranked copy."""
    vecs = index.store.passage_vectors([h.passage.rowid for h in hits], index.dim)
    close = vecs @ vecs.T >= DUPLICATE_COSINE
    words = np.array([h.passage.words_hash for h in hits], np.int64)  # the same words, whatever spacing and case
    maybe = np.tril(close | (words[:, None] == words[None, :]), -1)  # (i, j < i) pairs that may be copies
    kept = np.ones(len(hits), bool)
    for i in np.flatnonzero(maybe.any(axis=1)).tolist():
        hit = hits[i]
        for j in np.flatnonzero(maybe[i] & kept).tolist():  # into the best-ranked copy still kept
            if (close[i, j] or hit.passage.words() == hits[j].passage.words()) \
                    and hit.passage.doc_id != hits[j].passage.doc_id:
                hits[j].duplicates.append(hit.passage)
                kept[i] = False
                break
    return [hit for hit, keep in zip(hits, kept.tolist()) if keep]
