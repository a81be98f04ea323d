"""A cluster index loaded for search (`ClusterIndex`), its live build found through the meta collection, and checks.

`ClusterIndex` offers what `qa.search` and `qa.service` use of `qa.index.Index`: the store, the window vectors,
lexical candidates and exact lexical scores, document frequencies. BM25 candidates come from Milvus's BM25 over the
passages' analysed words; their exact scores, with term proximity, are computed here from the candidates' words
(`qa.cluster.terms.Bm25`) with the build's statistics and document frequencies from its terms collection, cached
for the loaded generation.

Replicas share nothing but Milvus: the meta row `live` names the live build, and the build's own row its
generation and a token every write changes. `stale` compares them with what was loaded: a serving engine polls it
every QA_RELOAD_INTERVAL and loads again when either moved.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..errors import IndexUnavailable
from ..manifest import Counts, Manifest
from ..ranked import top
from ..vectors.milvus import TOKEN_ENV, MilvusIndex, alias_target, filter_expression, resolve_uri
from .collections import LIVE, get_meta, meta_name, names, passages_of
from .store import ClusterStore, Stats
from .terms import Bm25, analyze, query_tokens, token_pairs

if TYPE_CHECKING:
    from ..embed import Embedder
    from ..store import Filters

log = logging.getLogger(__name__)

LEXICAL_WIDEN = 2  # Milvus BM25 candidates asked for, per candidate kept


def _milvus_errors():
    """The exceptions that mean Milvus could not answer."""
    from pymilvus.exceptions import MilvusException

    return (MilvusException, ConnectionError, OSError)


class _Unreachable(logging.Filter):
    """Drops pymilvus's own error record (a traceback each time) for a server it cannot connect to: the engine
    reports the same reason once per attempt, in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Fail connecting to server" not in record.getMessage()


logging.getLogger("pymilvus.decorators").addFilter(_Unreachable())


def live_build(client, alias: str) -> tuple[str, dict]:
    """(the live build's name, its meta row); `IndexUnavailable` when the index has none."""
    try:
        found = get_meta(client, alias, [LIVE])
    except _milvus_errors() as e:
        raise IndexUnavailable(f"cannot read the cluster index {alias} from Milvus: {e}") from None
    if LIVE not in found:
        raise IndexUnavailable(f"Milvus holds no live build of the cluster index {alias}; build it: "
                               "qa build SOURCE... --backend milvus --store milvus")
    build = found[LIVE]["build"]
    return build, get_meta(client, alias, [build]).get(build, {})


def open_store(index_dir: str, manifest: Manifest, reuse: ClusterStore | None = None) -> ClusterStore:
    """The live build's store, on `reuse`'s connection when it is of the same build."""
    uri = resolve_uri(index_dir, manifest.milvus_uri or "")
    alias = str(manifest.milvus_alias)
    if reuse is not None and not reuse.windows.closed:
        build, state = live_build(reuse.client, alias)
        if build == reuse.build:
            return ClusterStore(reuse.windows, alias, build, int(manifest.dim), state)
    token, dim = os.environ.get(TOKEN_ENV), int(manifest.dim)
    try:
        # through the window alias first: one connection (on Milvus Lite, one database server) for the lookup
        with MilvusIndex(uri, alias, dim, token=token, index_type=manifest.index_kind.upper()) as first:
            _load(first.client, [meta_name(alias)])
            build, state = live_build(first.client, alias)
            windows = MilvusIndex(uri, build, dim, token=token, index_type=manifest.index_kind.upper())
        _load(windows.client, list(names(build).values())[1:])
    except _milvus_errors() as e:
        raise IndexUnavailable(f"cannot open the cluster index {alias} on Milvus at {uri}: {e}") from None
    return ClusterStore(windows, alias, build, dim, state)


def _load(client, collections: Sequence[str]) -> None:
    """Load collections into memory (a server keeps them loaded; Milvus Lite releases them when it stops);
    `IndexUnavailable` for one that is missing."""
    try:
        for name in collections:
            client.load_collection(name)
    except _milvus_errors() as e:
        raise IndexUnavailable(f"cannot load the Milvus collection {name}: {e}") from None


class ClusterIndex:
    """A cluster index loaded for search: the live build's store and window vectors, lexical search on Milvus."""

    lexical = None  # no local lexical index
    scores_from_words = False  # exact BM25 comes from the passages' analysed bodies (`lexical_scores`)

    def __init__(self, index_dir: str, manifest: Manifest, store: ClusterStore, embedder: Embedder | None):
        self.index_dir = index_dir
        self.store = store
        self.vectors = store.windows
        self.embedder = embedder
        self.dim = int(manifest.dim)
        state = store.state
        counts = dataclasses.replace(manifest.counts, passages=int(state.get("passages", 0)),
                                     documents=int(state.get("documents", manifest.counts.documents)))
        self.manifest = dataclasses.replace(manifest, milvus_collection=store.build, data_dir=store.build,
                                            counts=counts, generation=store.generation)
        self._doc_freqs: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    @property
    def passage_count(self) -> int:
        return self.store.count_passages()

    @property
    def degraded(self) -> list[str]:
        return []

    def passage_cosines(self, qvec: np.ndarray) -> None:
        """None: Milvus scores the windows (`Index.passage_cosines`)."""
        return None

    def window_layout(self) -> None:
        """None: no exact pass to lay the windows out for (`Index.window_layout`)."""
        return None

    def passages_of_windows(self, ids: np.ndarray) -> np.ndarray:
        """Passage row ids of window ids (a window's id is its passage's, shifted and numbered)."""
        return passages_of(ids)

    def stale(self) -> bool:
        """Whether another build went live, or a write moved this build on, since it was loaded."""
        build, state = live_build(self.store.client, self.store.alias)
        return build != self.store.build or state.get("token") != self.store.state.get("token")

    def check_reachable(self) -> None:
        """`IndexUnavailable` with Milvus's reason when it cannot answer now."""
        live_build(self.store.client, self.store.alias)

    # --- lexical ---
    def _counts(self, field: str, tokens: Sequence[str]) -> dict[str, int]:
        """Passages whose body (`field` "body") or text ("words") holds each token: from the build's terms
        collection, in one query for those missing from this generation's cache."""
        missing = [t for t in dict.fromkeys(tokens) if ("body", t) not in self._doc_freqs]
        if missing:
            found = self.store.term_counts(missing)
            with self._lock:
                for token, (body, words) in found.items():
                    self._doc_freqs[("body", token)], self._doc_freqs[("words", token)] = body, words
        return {t: self._doc_freqs[(field, t)] for t in tokens}

    def _bm25(self, tokens: Sequence[str]) -> Bm25:
        state = self.store.state
        passages = max(int(state.get("passages", 0)), 1)
        return Bm25(passages, int(state.get("tokens", 0)) / passages, self._counts("body", tokens))

    def lexical_search(self, terms: Sequence[str], limit: int,
                       filters: Filters | None = None) -> list[tuple[int, float]]:
        """The best `limit` passages by exact BM25 (computed here) among Milvus BM25's best `LEXICAL_WIDEN` times
        as many, best first: Milvus ranks with its own statistics, so the edge of its list differs from tantivy's;
        a wider list re-ranked here gives the local engine's candidates."""
        tokens = query_tokens(terms)
        if not tokens or limit <= 0:
            return []
        hits = self.store.client.search(self.store.names["passages"], data=[" ".join(tokens)], anns_field="sparse",
                                        limit=min(limit * LEXICAL_WIDEN, 16_384),
                                        filter=filter_expression(filters) if filters else "",
                                        output_fields=["body"], search_params={"metric_type": "BM25"},
                                        consistency_level="Strong")
        rowids = [int(h["id"]) for h in hits[0]]
        scores = self._bm25(tokens).scores(tokens, [h["entity"]["body"].split() for h in hits[0]])
        return top(dict(zip(rowids, scores)), limit)  # Milvus gives each passage once

    def lexical_scores(self, terms: Sequence[str], rowids: Sequence[int],
                       pairs: Sequence[tuple[str, str, int]] = ()) -> dict[int, float]:
        """Exact BM25 of given passages (0 where no term matches), with term proximity for the query's word
        `pairs`, from their analysed words."""
        tokens = query_tokens(terms)
        if not tokens:
            return {rid: 0.0 for rid in rowids}
        rows = self.store.rows(rowids)
        bodies = [rows[rid]["body"].split() if rid in rows else [] for rid in rowids]
        return dict(zip(rowids, self._bm25(tokens).scores(tokens, bodies, token_pairs(pairs))))

    def doc_freqs(self, terms: Sequence[str]) -> dict[str, int]:
        """Passages whose text holds each term (its first token; 0 for none)."""
        first = {term: analyze(term)[:1] for term in terms}
        found = self._counts("words", [t for tokens in first.values() for t in tokens])
        return {term: found[tokens[0]] if tokens else 0 for term, tokens in first.items()}

    def close(self) -> None:
        self.vectors.close()


def load_cluster(index_dir: str, manifest: Manifest, embedder: Embedder | None,
                 previous: object | None = None) -> ClusterIndex:
    """The cluster index a manifest names, at its live build (on the connection of `previous`, the store of the
    index loaded before, when it is of the same build)."""
    reuse = previous if isinstance(previous, ClusterStore) else None
    try:
        store = open_store(index_dir, manifest, reuse)
    except _milvus_errors() as e:
        raise IndexUnavailable(f"cannot read the cluster index {manifest.milvus_alias} from Milvus: {e}") from None
    return ClusterIndex(index_dir, manifest, store, embedder)


def live_manifest(index_dir: str, manifest: Manifest) -> Manifest:
    """The manifest with the live build's name, generation and counts, as Milvus has them now."""
    store = open_store(index_dir, manifest)
    try:
        return dataclasses.replace(manifest, milvus_collection=store.build, data_dir=store.build,
                                   counts=store.counts(), generation=store.generation)
    finally:
        store.windows.close()


def check_cluster(index_dir: str, manifest: Manifest) -> list[str]:
    """Problems of a cluster index: its alias, statistics and collections disagreeing."""
    try:
        store = open_store(index_dir, manifest)
    except IndexUnavailable as e:
        return [str(e)]
    try:
        return _problems(store, manifest)
    finally:
        store.windows.close()


def _problems(store: ClusterStore, manifest: Manifest) -> list[str]:
    problems = []
    target = alias_target(store.client, str(manifest.milvus_alias))
    if target != store.build:
        problems.append(f"Milvus alias {manifest.milvus_alias} points to {target}, the live build is {store.build}")
    counts = store.counts()
    listed = sum(d["passages"] for d in store.listing())
    if counts.documents != len(store.listing()):
        problems.append(f"{counts.documents} document rows, {len(store.listing())} listed")
    if listed != counts.passages:
        problems.append(f"the documents count {listed} passages, the passages collection holds {counts.passages}")
    if store.count_passages() != counts.passages:
        problems.append(f"the build's statistics count {store.count_passages()} passages, the collection "
                        f"{counts.passages}")
    passages = set(_all_rows(store, "passages", ["id"]).keys())
    for kind in ("windows", "sentences"):
        owners = set(passages_of(np.array(list(_all_rows(store, kind, ["id"])), np.int64)).tolist())
        if not owners <= passages:
            problems.append(f"{len(owners - passages)} passages have {kind} but no passage row")
    if Counts() == counts:
        problems.append("the index is empty")
    return problems + _stats_problems(store)


def _stats_problems(store: ClusterStore) -> list[str]:
    """The terms rows and the build's token total against the passages' words, recounted."""
    found = Stats.of(_all_rows(store, "passages", ["body", "words", "n_tokens"]).values())
    problems = []
    if found.tokens != int(store.state.get("tokens", 0)):
        problems.append(f"the build's statistics count {store.state.get('tokens')} analysed tokens, the passages "
                        f"{found.tokens}")
    terms = _all_rows(store, "terms", ["token", "body", "words"], key="token")
    wrong = [t for t in set(terms) | set(found.body) | set(found.words)
             if (terms.get(t, {}).get("body", 0), terms.get(t, {}).get("words", 0)) != (found.body[t], found.words[t])]
    if wrong:
        problems.append(f"{len(wrong)} document frequencies in the terms collection differ from the passages' "
                        f"(e.g. {sorted(wrong)[:3]})")
    return problems


def _all_rows(store: ClusterStore, kind: str, fields: list[str], key: str = "id") -> dict:
    """Every row of one of the build's collections, by its key."""
    it = store.client.query_iterator(store.names[kind], batch_size=4_000, filter="", output_fields=fields)
    rows: dict = {}
    try:
        while batch := it.next():
            rows.update((r[key], dict(r)) for r in batch)
    finally:
        it.close()
    return rows


__all__ = ["ClusterIndex", "check_cluster", "live_build", "live_manifest", "load_cluster", "open_store"]
