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
import re
import threading
import time
from collections.abc import Mapping, Sequence

import numpy as np

from .errors import BadRequest
from .store import Filters, StoredPassage, query_pairs, query_terms

MODES = ("hybrid", "dense", "lexical")
DEPTH = 100  # candidates from each side
RERANK = DEPTH  # of the union, the best by whole-passage evidence get the sentence-level signals (at least 3k)
RRF_K = 60  # the constant of Cormack et al. (2009); not tuned here
DUPLICATE_COSINE = 0.97  # passages this close are copies of one story (syndicated wire text)

Ranked = list[tuple[int, float]]  # (passage rowid, score), best first


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
            out["duplicates"] = [{"passage_id": d.passage_id, "doc_id": d.doc_id, "title": d.title,
                                  "source": d.source, "url": d.url, "published": d.published}
                                 for d in self.duplicates]
        return out


@dataclasses.dataclass
class SearchResult:
    """Hits and the time each stage took."""

    query: str
    mode: str
    hits: list[Hit]
    timings: dict
    query_vector: np.ndarray | None = None
    # per sentence: (passage rowid, idx, start, end), cosine, coverage, and which query stems it holds
    sentence_rows: tuple = ((), (), (), ())

    @functools.cached_property
    def sentence_scores(self) -> dict[int, list[tuple[int, int, int, float, float, np.ndarray]]]:
        """Per candidate passage rowid: (idx, start, end, cosine, coverage, held stems) of each of its sentences
        (for answers; built on first use, so plain searches skip it)."""
        out: dict[int, list] = {}
        meta, cosines, coverages, held = self.sentence_rows
        for (rid, idx, start, end), c, v, h in zip(np.asarray(meta).tolist(), np.asarray(cosines).tolist(),
                                                    np.asarray(coverages).tolist(), held):
            out.setdefault(rid, []).append((idx, start, end, c, v, h))
        return out


# --- fusion: pure functions over (id, score) lists -----------------------------------------------------------

def rrf(rankings: Sequence[Ranked], k: int = RRF_K) -> dict[int, float]:
    """Reciprocal rank fusion: sum of 1 / (k + rank) over the rankings an id appears in."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, (rid, _) in enumerate(ranking, 1):
            fused[rid] = fused.get(rid, 0.0) + 1.0 / (k + rank)
    return fused


def zscores(scores: Mapping[int, float]) -> dict[int, float]:
    """Standardised scores (mean 0, unit deviation) over one query's candidates: `standardise` by id."""
    return dict(zip(scores, standardise(np.fromiter(scores.values(), float)).tolist()))


def minmax(scores: Mapping[int, float]) -> dict[int, float]:
    """Scores scaled to [0, 1] over one query's candidates."""
    if not scores:
        return {}
    lo, hi = min(scores.values()), max(scores.values())
    span = hi - lo if hi > lo else 1.0
    return {rid: (s - lo) / span for rid, s in scores.items()}


def combine(signals: Sequence[Mapping[int, float]], weights: Sequence[float]) -> dict[int, float]:
    """Weighted sum of normalised signals over the union of their ids (absent counts as the signal's minimum)."""
    ids = set().union(*signals)
    floors = [min(sig.values()) if sig else 0.0 for sig in signals]
    return {rid: sum(w * sig.get(rid, floor) for sig, w, floor in zip(signals, weights, floors)) for rid in ids}


def top(scores: Mapping[int, float], k: int) -> Ranked:
    """The k best (id, score) pairs."""
    return sorted(scores.items(), key=lambda x: (-x[1], x[0]))[:k]


# --- term evidence at sentence level --------------------------------------------------------------------------

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


_ASCII_WORD = np.array([chr(c).isalnum() or chr(c) == "_" for c in range(128)])


def _is_word_char(codes: np.ndarray) -> np.ndarray:
    """Per code point: is it a word character (alphanumeric or _, as regex \\w)? ASCII by table, the rest by
    `str.isalnum`, once per distinct code point."""
    out = _ASCII_WORD[np.minimum(codes, 127)]
    other = codes >= 128
    if other.any():
        kinds, inverse = np.unique(codes[other], return_inverse=True)
        out[other] = np.array([chr(c).isalnum() for c in kinds.tolist()])[inverse]
    return out


class TermMatcher:
    """Finds a query's content words (by stem prefix, so "actions" matches "action") in passages, and gives each
    sentence its coverage: the share of the query's IDF weight whose words it holds."""

    def __init__(self, weights: Mapping[str, float]):
        self.stems = [s for s in weights if s]
        self.weights = np.array([weights[s] for s in self.stems], float)
        self.total = float(self.weights.sum())

    @classmethod
    def for_query(cls, index, terms: Sequence[str], n_passages: int) -> "TermMatcher":
        """IDF weights of the query terms' stems, document frequencies from `index.doc_freqs`."""
        n = max(n_passages, 1)
        weights: dict[str, float] = {}
        for term, df in index.doc_freqs(terms).items():
            key = stem(term)
            weights[key] = max(weights.get(key, 0.0), math.log(1 + (n - df + 0.5) / (df + 0.5)))
        return cls(weights)

    def coverages(self, texts: Sequence[str], spans: np.ndarray | Sequence[tuple[int, int, int]]) -> np.ndarray:
        """Coverage of each span, given as rows (text number, start, end) in text order then start order."""
        return self.coverage(self.held(texts, spans))

    def coverage(self, held: np.ndarray) -> np.ndarray:
        """The share of the query's IDF weight held, from `held`'s rows."""
        return held @ self.weights / self.total if self.total > 0 else np.zeros(len(held))

    def held(self, texts: Sequence[str], spans: np.ndarray | Sequence[tuple[int, int, int]]) -> np.ndarray:
        """Which of the query's stems each span holds (spans x stems, bool), spans as for `coverages`: a word
        counts where it starts with the stem. All texts are scanned at once, one pass per stem."""
        n = len(spans)
        if not self.stems or not n:
            return np.zeros((n, len(self.stems)), bool)
        big = "\n".join(texts)
        low = big.replace("\u0130", "I").lower()  # İ is the one letter whose lower case is two characters
        flags = 0
        if len(low) != len(big):  # should not happen; match case-insensitively rather than at shifted offsets
            low, flags = big, re.I
        codes = np.frombuffer(low.encode("utf-32-le"), np.uint32)
        bases = np.cumsum([0] + [len(t) + 1 for t in texts[:-1]])
        sp = np.asarray(spans, np.int64).reshape(n, 3)
        starts, ends = bases[sp[:, 0]] + sp[:, 1], bases[sp[:, 0]] + sp[:, 2]
        held = np.zeros((n, len(self.stems)), bool)
        for j, s in enumerate(self.stems):
            # a plain literal scan (fast in C); then only matches at the start of a word count, which takes
            # classifying just the character before each match, not the whole text
            found = np.array([m.start() for m in re.finditer(re.escape(s), low, flags)], np.int64)
            if found.size:
                found = found[(found == 0) | ~_is_word_char(codes[np.maximum(found - 1, 0)])]
                i = np.searchsorted(starts, found, side="right") - 1
                inside = (i >= 0) & (found < ends[np.maximum(i, 0)])
                held[i[inside], j] = True
        return held


# --- validation --------------------------------------------------------------------------------------------

def validate_query(q: object, max_chars: int = 1000) -> str:
    """A non-blank query string of at most `max_chars` characters, without NUL bytes."""
    if q is None:
        raise BadRequest("missing query: give q")
    if not isinstance(q, str):
        raise BadRequest("q must be a string")
    if "\x00" in q or "\ufffd" in q:
        raise BadRequest("q contains NUL bytes or invalid UTF-8")
    q = q.strip()
    if not q:
        raise BadRequest("q is blank")
    if len(q) > max_chars:
        raise BadRequest(f"q is longer than {max_chars} characters")
    return q


def parse_int(value: object, name: str, default: int, lo: int, hi: int) -> int:
    """An integer parameter in lo..hi (strings of digits accepted); BadRequest otherwise."""
    if value is None or value == "":
        return default
    error = BadRequest(f"{name} must be an integer from {lo} to {hi}")
    if isinstance(value, bool):
        raise error
    if isinstance(value, str):
        if not re.fullmatch(r"\s*-?\d{1,12}\s*", value):
            raise error
        value = int(value)
    if not isinstance(value, int) or not lo <= value <= hi:
        raise error
    return value


def validate_k(k: object, default: int = 10, max_k: int = 100) -> int:
    """k as an integer in 1..max_k."""
    return parse_int(k, "k", default, 1, max_k)


def validate_mode(mode: object) -> str:
    if mode in (None, ""):
        return "hybrid"
    if mode not in MODES:
        raise BadRequest(f"mode must be one of {', '.join(MODES)}")
    return mode


def validate_date(value: object, name: str) -> str | None:
    """An ISO date (YYYY-MM-DD, a longer ISO timestamp is cut to its date) or None."""
    import datetime as dt

    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be an ISO date (YYYY-MM-DD)")
    try:
        return dt.date.fromisoformat(value.strip()[:10]).isoformat()
    except ValueError:
        raise BadRequest(f"{name} must be an ISO date (YYYY-MM-DD)") from None


def make_filters(source=None, doc_id=None, published_after=None, published_before=None) -> Filters:
    """Validated filters."""
    for name, value in (("source", source), ("doc_id", doc_id)):
        if value is not None and (not isinstance(value, str) or len(value) > 512 or "\x00" in value):
            raise BadRequest(f"{name} must be a string of at most 512 characters")
    return Filters(source or None, doc_id or None, validate_date(published_after, "published_after"),
                   validate_date(published_before, "published_before"))


# --- search ------------------------------------------------------------------------------------------------

def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 3)


def dense_candidates(index, qvec: np.ndarray, depth: int, filters: Filters | None) -> Ranked:
    """Best passages by their best window's cosine; the vector index applies the filters (Milvus pushes them down)."""
    scores, ids = index.vectors.search_filtered(qvec[None, :], depth * 2, filters, index.store)
    best: dict[int, float] = {}
    rowids = index.passages_of_windows(ids[0])
    for rid, s in zip(rowids.tolist(), scores[0].tolist()):
        if rid >= 0 and s > best.get(rid, -math.inf):
            best[rid] = s
    return top(best, depth)


def search(index, query: str, k: int = 10, *, mode: str = "hybrid", filters: Filters | None = None,
           depth: int = DEPTH, rerank: int = RERANK, collapse: bool = True) -> SearchResult:
    """Ranked passages for a question: dense, lexical or hybrid, filtered before the top-k cut."""
    with index.store.snapshot():
        return _search(index, query, k, mode, filters, depth, rerank, collapse)


def _search(index, query: str, k: int, mode: str, filters: Filters | None, depth: int, rerank: int,
            collapse: bool) -> SearchResult:
    timings = {"embed_ms": 0.0, "dense_ms": 0.0, "lexical_ms": 0.0, "fuse_ms": 0.0}
    depth = max(depth, k)
    qvec = None
    dense: Ranked = []
    lexical: Ranked = []
    terms, pairs = query_terms(query), query_pairs(query)
    if mode in ("hybrid", "dense"):
        t = time.perf_counter()
        qvec = index.embedder.encode([query])[0]
        timings["embed_ms"] = _ms(t)
        t = time.perf_counter()
        dense = dense_candidates(index, qvec, depth, filters)
        timings["dense_ms"] = _ms(t)
    if mode in ("hybrid", "lexical"):
        t = time.perf_counter()
        lexical = index.lexical_search(terms, depth, filters)
        timings["lexical_ms"] = _ms(t)
    t = time.perf_counter()
    candidates = list(dict.fromkeys([rid for rid, _ in dense] + [rid for rid, _ in lexical]))
    dense_s: dict[int, float] = dict(dense)
    lex_s: dict[int, float] = dict(lexical)
    sent_s: dict[int, float] = {}
    sentence_rows: tuple = ((), (), (), ())
    evidence: dict[int, float] = {}
    if mode != "dense":
        # exact BM25 with term proximity for every candidate (the lexical side's top-k search leaves proximity out
        # for speed); a query without word pairs needs it only for the candidates that search did not score
        rescore = candidates if pairs else [rid for rid in candidates if rid not in lex_s]
        if rescore:
            lex_s.update(index.lexical_scores(terms, rescore, pairs=pairs))
    if qvec is not None and candidates:
        # first stage: every candidate gets both cheap signals exactly, whichever side found it
        missing = [rid for rid in candidates if rid not in dense_s]
        if missing:
            owners, wvecs = index.store.window_vectors(missing, index.dim)
            for rid, s in zip(owners.tolist(), (wvecs @ qvec).tolist()):
                dense_s[rid] = max(s, dense_s.get(rid, -math.inf))
        candidates = shortlist(candidates, dense_s, lex_s if mode == "hybrid" else None, max(rerank, 3 * k))
        # second stage, on the shortlist: sentence-level meaning and term coverage
        texts = index.store.passage_texts(candidates)
        matcher = TermMatcher.for_query(index, terms, index.passage_count)
        svecs, meta = index.store.sentences(candidates, index.dim)  # (passage rowid, idx, start, end) rows
        if len(meta):
            first = np.concatenate(([True], meta[1:, 0] != meta[:-1, 0]))  # True at each passage's first sentence
            owners = meta[first, 0].tolist()
            pos = np.cumsum(first) - 1  # each sentence's passage number
            cosines = svecs @ qvec
            held = matcher.held([texts.get(rid, "") for rid in owners], np.column_stack((pos, meta[:, 2:])))
            covs = matcher.coverage(held)
            sent_s = dict(zip(owners, np.maximum.reduceat(cosines, np.flatnonzero(first)).tolist()))
            evidence = dict(zip(owners, sentence_evidence(pos, cosines, covs, len(owners)).tolist()))
            sentence_rows = (meta, cosines, covs, held)
    if mode == "dense":
        fused = fuse_dense(dense_s, sent_s, candidates)
    elif mode == "lexical":
        fused = np.array([lex_s[rid] for rid in candidates])
    else:
        fused = fuse_hybrid(sent_s, lex_s, evidence, candidates)
    ids = np.asarray(candidates, np.int64)
    order = rank(ids, fused)[:max(k * 3, k + 10)]
    ranked = list(zip(ids[order].tolist(), fused[order].tolist()))
    timings["fuse_ms"] = _ms(t)
    passages = index.store.passages([rid for rid, _ in ranked])
    hits = []
    for rid, score in ranked:
        p = passages.get(rid)
        if p is None:
            continue  # removed since the vector index was loaded
        hits.append(Hit(p, {"dense": dense_s.get(rid), "sentence": sent_s.get(rid),
                            "lexical": lex_s.get(rid, 0.0) if mode != "dense" else None, "fused": score}))
        if len(hits) >= k * 3:
            break
    if collapse and len(hits) > 1:
        hits = collapse_duplicates(index, hits)
    return SearchResult(query, mode, hits[:k], timings, qvec, sentence_rows)


def standardise(values: np.ndarray) -> np.ndarray:
    """z-scores of an array (mean 0, unit deviation; a constant array gives zeros)."""
    sd = float(values.std()) if len(values) else 0.0
    return (values - values.mean()) / (sd if sd > 1e-9 else 1.0) if len(values) else values


def sentence_evidence(passage: np.ndarray, cosines: np.ndarray, coverages: np.ndarray, n: int) -> np.ndarray:
    """Per passage (0..n-1), its best sentence by standardised cosine plus standardised term coverage, the
    standardisation taken over every candidate sentence of the query (a passage is as good as its best-answering
    sentence); `passage` gives each sentence's passage number."""
    best = np.full(n, -np.inf)
    np.maximum.at(best, passage, standardise(np.asarray(cosines, float)) + standardise(np.asarray(coverages, float)))
    return best


def rank(ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Positions of `scores` best first, ties by id (the order of `top`)."""
    return np.lexsort((ids, -scores))


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


def collapse_duplicates(index, hits: list[Hit]) -> list[Hit]:
    """Fold near-identical passages (cosine ≥ DUPLICATE_COSINE, or the same text) into the best-ranked copy."""
    vecs = index.store.passage_vectors([h.passage.rowid for h in hits], index.dim)
    sims = vecs @ vecs.T
    norm = [" ".join(h.passage.text.split()).lower() for h in hits]
    kept: list[int] = []
    for i, hit in enumerate(hits):
        for j in kept:
            same = norm[i] == norm[j] or sims[i, j] >= DUPLICATE_COSINE
            if same and hit.passage.doc_id != hits[j].passage.doc_id:
                hits[j].duplicates.append(hit.passage)
                break
        else:
            kept.append(i)
    return [hits[i] for i in kept]
