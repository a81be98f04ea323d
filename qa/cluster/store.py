"""`ClusterStore`: the passage store of a cluster index, read and written in Milvus collections.

It answers what search, answers, the service and the pages ask of `qa.store.Store` (passages, texts, vectors,
sentences, documents, counts), reading one build's collections (`qa.cluster.collections`).

Writes are idempotent: every row's id comes from its passage id, so a write sets a document's rows whatever was
there. An update upserts the passages, sentences and windows, deletes the document's rows that are no longer
there, and writes the document's row last: its content hash is the commit mark, so a write that fails half-way is
done again by the same command (its content differs from the recorded hash) and converges. A removal deletes the
rows and the document row last, so it too can be run again. Each write is journaled in the meta collection first,
so a full build running meanwhile replays it (`qa.cluster.build`), then bumps the build's generation, which
replicas poll.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..errors import IndexUnavailable, QAError
from ..manifest import Counts
from ..store import (DocumentPage, OutletCount, PassageWindows, SentenceRows, StoredPassage, Warmed, dequantize,
                     quantize)
from ..text import fold_case
from ..vectors.milvus import field_value, is_lite, quote, source_key
from .collections import PAD, SLOT_BITS, Rows, doc_filter, get_meta, names, passages_of, put_meta, rows_of
from .terms import indexed

if TYPE_CHECKING:
    from pymilvus import MilvusClient

    from ..embed.base import TextTokens
    from ..prepare import PreparedArticle
    from ..vectors.milvus import MilvusIndex

log = logging.getLogger(__name__)

ROW_FIELDS = ["id", "passage_id", "doc_id", "paragraph_index", "text", "char_start", "char_end", "doc", "body",
              "vec"]
WRITE_BATCH = 200  # rows per upsert: a passage row may hold two 64 KiB texts
QUERY_LIMIT = 16_384  # Milvus' largest query result
JOURNAL = "j:"


@dataclasses.dataclass
class Stats:
    """BM25's statistics of some passages: their analysed body tokens, and per token how many of them hold it in
    their body and in their text alone. Added and subtracted as writes change passages."""

    tokens: int = 0
    body: Counter = dataclasses.field(default_factory=Counter)
    words: Counter = dataclasses.field(default_factory=Counter)

    @classmethod
    def of(cls, rows: Iterable[dict]) -> Stats:
        """The statistics of passage rows (with their `body`, `words` and `n_tokens`)."""
        stats = cls()
        for row in rows:
            stats.tokens += int(row["n_tokens"])
            stats.body.update(set(indexed(row["body"].split())))
            stats.words.update(set(row["words"].split()))
        return stats

    def add(self, other: Stats, sign: int = 1) -> Stats:
        """Add (or with `sign` -1 subtract) another's counts, in place; returns itself."""
        self.tokens += sign * other.tokens
        for mine, theirs in ((self.body, other.body), (self.words, other.words)):
            for token, n in theirs.items():
                mine[token] += sign * n
        return self


def unavailable(e: Exception) -> Exception:
    """`IndexUnavailable` (HTTP 503) for an error of Milvus itself, so a server that loses Milvus answers 503 with
    its reason rather than 500; any other error as it is."""
    from pymilvus.exceptions import MilvusException

    if isinstance(e, MilvusException):
        return IndexUnavailable(f"Milvus cannot answer: {e}")
    return e


def _answers_503(fn):
    """Methods that ask Milvus: its errors become `IndexUnavailable`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except QAError:
            raise
        except Exception as e:
            raise unavailable(e) from None

    return wrapper


def _ids_expr(field: str, ids: Sequence[int]) -> str:
    return f"{field} in [{','.join(str(int(i)) for i in ids)}]"


def _batches(rows: list, size: int = WRITE_BATCH):
    for start in range(0, len(rows), size):
        yield rows[start:start + size]


class ClusterStore:
    """One build's collections, read like `qa.store.Store` and written by idempotent upserts."""

    def __init__(self, windows: MilvusIndex, alias: str, build: str, dim: int, state: dict):
        self.windows = windows  # the build's window vectors; its client serves the other collections too
        self.client: MilvusClient = windows.client
        self.alias = alias
        self.build = build
        self.dim = dim
        self.names = names(build)
        self.state = state  # the build's meta row as loaded: generation, token, passages, tokens
        self.path = f"{windows.uri}#{build}"  # what tells this store from another (`Engine.outlets`)
        self.readonly = True
        self._local = threading.local()
        self._listing: tuple[int, list[dict]] | None = None

    @property
    def generation(self) -> int:
        return int(self.state.get("generation", 0))

    def close(self) -> None:
        """Nothing per thread to close (the client is closed with the index)."""

    def _query(self, kind: str, expr: str, fields: Sequence[str], limit: int | None = None) -> list[dict]:
        extra = {"limit": limit} if limit else {}
        rows = self.client.query(self.names[kind], filter=expr, output_fields=list(fields),
                                 consistency_level="Strong", **extra)
        # plain dicts: pymilvus's result rows read vector fields by position in the result, so a row that moves
        # (a sort) would read another row's vector
        return [dict(r) for r in rows]

    # --- a search's reads, cached for the search (`snapshot`) ---
    def prewarm(self, dim: int, *, words: bool = False) -> Warmed:
        """Nothing to decode ahead: rows are kept for one search only, and Milvus holds its collections in memory
        once loaded (`qa.cluster.index` loads them)."""
        return Warmed(0, self.count_passages(), 0, 0.0)

    @contextlib.contextmanager
    def snapshot(self):
        """One search's scope: passage rows fetched once and reused by its later reads."""
        if getattr(self._local, "rows", None) is not None:
            yield
            return
        self._local.rows = {}
        try:
            yield
        except QAError:
            raise
        except Exception as e:
            raise unavailable(e) from None
        finally:
            self._local.rows = None

    def rows(self, rowids: Sequence[int]) -> dict[int, dict]:
        """Passage rows by row id (unknown ids left out), fetched in one query and kept for the search."""
        cache = getattr(self._local, "rows", None)
        if cache is None:
            cache = {}
        missing = [int(r) for r in dict.fromkeys(rowids) if int(r) not in cache]
        for chunk in _batches(missing, 2_000):
            for row in self._query("passages", _ids_expr("id", chunk), ROW_FIELDS):
                cache[int(row["id"])] = row
        return {int(r): cache[int(r)] for r in rowids if int(r) in cache}

    def passages(self, rowids: Sequence[int]) -> dict[int, StoredPassage]:
        """Stored passages by row id (unknown ids are left out)."""
        out = {}
        for rid, row in self.rows(rowids).items():
            doc = json.loads(row["doc"])
            out[rid] = StoredPassage(rid, row["passage_id"], doc_of(row), int(row["paragraph_index"]), row["text"],
                                     int(row["char_start"]), int(row["char_end"]), doc["title"], doc["source"],
                                     doc["author"], doc["url"], doc["published"])
        return out

    def passage_texts(self, rowids: Sequence[int]) -> dict[int, str]:
        return {rid: row["text"] for rid, row in self.rows(rowids).items()}

    def folded_texts(self, rowids: Sequence[int]) -> dict[int, str]:
        """Passage texts as `fold_case` leaves them, by row id (what term coverage scans)."""
        return {rid: fold_case(text) for rid, text in self.passage_texts(rowids).items()}

    def passage_vectors(self, rowids: Sequence[int], dim: int) -> np.ndarray:
        """Whole-passage vectors in the order of `rowids` (zeros for a passage gone), through int8 as the local
        store's row cache keeps them (`quantize`), so both rank alike."""
        rows = self.rows(rowids)
        zero = np.zeros(dim, np.float32)
        vecs = np.array([rows[r]["vec"] if r in rows else zero for r in rowids], np.float32).reshape(-1, dim)
        return dequantize(*quantize(vecs))

    def window_vectors(self, rowids: Sequence[int], dim: int) -> PassageWindows:
        """The windows of some passages (their ids are the passage's id shifted, then numbered), their vectors as
        int8 codes as the local store's (`quantize`)."""
        if not rowids:
            return PassageWindows(np.zeros(0, np.int64), np.zeros((0, dim), np.float32))
        expr = " or ".join(f"(id >= {r << SLOT_BITS} and id < {(r + 1) << SLOT_BITS})" for r in map(int, rowids))
        rows = self._query("windows", expr, ["id", "vec"], QUERY_LIMIT)
        ids = np.array([r["id"] for r in rows], np.int64)
        vecs = np.array([r["vec"] for r in rows], np.float32).reshape(-1, dim)
        return PassageWindows(passages_of(ids), *quantize(vecs))

    def sentences(self, rowids: Sequence[int], dim: int) -> SentenceRows:
        """The sentences of some passages, ordered by passage, then position, their vectors as int8 codes as the
        local store's (`quantize`)."""
        rows = self._query("sentences", _ids_expr("passage", rowids), ["id", "passage", "span_start", "span_end",
                                                                        "vec"], QUERY_LIMIT) if rowids else []
        if not rows:
            return SentenceRows(np.zeros((0, dim), np.float32), np.zeros((0, 4), np.int64))
        rows.sort(key=lambda r: r["id"])
        meta = np.array([(r["passage"], r["id"] & ((1 << SLOT_BITS) - 1), r["span_start"], r["span_end"])
                         for r in rows], np.int64)
        codes, scales = quantize(np.array([r["vec"] for r in rows], np.float32))
        return SentenceRows(codes, meta, scales)

    def passage_tokens(self, rowids: Sequence[int], dim: int) -> dict[int, TextTokens]:
        """None: the cluster keeps no word pieces, so answers run their passages through the model (and cache
        them); see docs/scaling.md."""
        return {}

    # --- counts and documents ---
    def count(self, kind: str) -> int:
        """Rows of one of the build's collections (documents, passages, windows, sentences)."""
        rows = self.client.query(self.names[kind], filter="", output_fields=["count(*)"], consistency_level="Strong")
        return int(rows[0]["count(*)"]) if rows else 0

    def counts(self) -> Counts:
        """Documents, passages, windows and sentences held (count queries)."""
        return Counts(*(self.count(k) for k in ("documents", "passages", "windows", "sentences")))

    def count_passages(self) -> int:
        """Passages as the build's statistics count them (no query per health check)."""
        return int(self.state.get("passages", 0))

    @_answers_503
    def listing(self) -> list[dict]:
        """Every document's metadata with its passage count, read once per generation."""
        cached = self._listing
        if cached is not None and cached[0] == self.generation:
            return cached[1]
        docs = []
        it = self.client.query_iterator(self.names["documents"], batch_size=4_000, filter="",
                                        output_fields=["meta", "n_passages", "content_hash"])
        try:
            while batch := it.next():
                docs += [{**json.loads(r["meta"]), "passages": int(r["n_passages"]), "hash": r["content_hash"]}
                         for r in batch]
        finally:
            it.close()
        docs.sort(key=lambda d: d["id"])
        self._listing = (self.generation, docs)
        return docs

    def document_ids(self) -> list[str]:
        return [d["id"] for d in self.listing()]

    @_answers_503
    def content_hash(self, doc_id: str) -> str | None:
        rows = self._query("documents", f"doc_id == {quote(field_value(doc_id))}", ["content_hash"])
        return rows[0]["content_hash"] if rows else None

    @_answers_503
    def documents(self, offset: int = 0, limit: int = 50) -> DocumentPage:
        """A page of documents in id order."""
        docs = self.listing()
        return DocumentPage(len(docs), [_summary(d) for d in docs[offset:offset + limit]])

    @_answers_503
    def documents_newest(self, offset: int = 0, limit: int = 50, source: str | None = None) -> DocumentPage:
        """A page of documents newest first (undated ones last, ties by id), of one outlet when `source` is given."""
        docs = self.listing()  # in id order: the stable sort below keeps it among equal dates
        if source is not None:
            docs = [d for d in docs if d["source"] is not None and source_key(d["source"]) == source_key(source)]
        ordered = sorted((d for d in docs if d["published"]), key=lambda d: d["published"], reverse=True)
        ordered += [d for d in docs if not d["published"]]
        return DocumentPage(len(docs), [_summary(d) for d in ordered[offset:offset + limit]])

    @_answers_503
    def outlet_counts(self) -> list[OutletCount]:
        """Every outlet with its number of documents, the largest first; outlets differing only in case are one."""
        groups: dict[str | None, list[str | None]] = {}
        for d in self.listing():
            groups.setdefault(None if d["source"] is None else source_key(d["source"]), []).append(d["source"])
        found = [OutletCount(None if key is None else min(v), len(v)) for key, v in groups.items()]
        return sorted(found, key=lambda o: (-o.documents, o.source is not None, source_key(o.source)))

    @_answers_503
    def document(self, doc_id: str) -> dict | None:
        """A document's metadata and paragraphs, or None."""
        found = self._query("documents", f"doc_id == {quote(field_value(doc_id))}", ["meta", "n_passages"])
        if not found:
            return None
        meta = json.loads(found[0]["meta"])
        doc = {key: meta[key] for key in ("id", "title", "source", "author", "url", "published", "tags")}
        doc["passages"] = int(found[0]["n_passages"])
        rows = self._query("passages", doc_filter([doc_id]),
                           ["passage_id", "paragraph_index", "text", "char_start", "char_end"], QUERY_LIMIT)
        doc["paragraphs"] = sorted(({"passage_id": r["passage_id"], "paragraph_index": r["paragraph_index"],
                                     "text": r["text"], "char_start": r["char_start"], "char_end": r["char_end"]}
                                    for r in rows), key=lambda p: p["paragraph_index"])
        return doc

    # --- writes ---
    def put_content(self, rows: Rows) -> None:
        """Upsert passages, sentences and windows."""
        for chunk in _batches(rows.passages):
            self.client.upsert(self.names["passages"], chunk)
        for chunk in _batches(rows.sentences, 2_000):
            self.client.upsert(self.names["sentences"], chunk)
        if rows.window_ids:
            self.windows.add(np.array(rows.window_ids, np.int64), np.stack(rows.window_vectors), rows.window_docs)

    def put_documents(self, rows: Rows) -> None:
        """Upsert document rows: each write's commit mark."""
        for chunk in _batches(rows.documents):
            self.client.upsert(self.names["documents"], chunk)

    def insert(self, prepared: Sequence[PreparedArticle]) -> Stats:
        """Rows of new documents, as a full build writes them (no earlier rows to replace), the document rows last;
        their statistics (for the build's terms collection)."""
        rows = rows_of(prepared)
        self.put_content(rows)
        self.put_documents(rows)
        return Stats.of(rows.passages)

    def held_ids(self, doc_ids: Sequence[str]) -> dict[str, set[int]]:
        """The ids of the rows some documents have now, by collection."""
        found: dict[str, set[int]] = {}
        expr = doc_filter(doc_ids)
        for kind in ("passages", "sentences", "windows"):
            found[kind] = {int(r["id"]) for r in self._query(kind, expr, ["id"], QUERY_LIMIT)}
        return found

    def stats_of(self, doc_ids: Sequence[str]) -> Stats:
        """The statistics of some documents' passages, as held now."""
        return Stats.of(self._query("passages", doc_filter(doc_ids), ["body", "words", "n_tokens"], QUERY_LIMIT)
                        if doc_ids else [])

    def write(self, prepared: Sequence[PreparedArticle], removals: Sequence[str] = ()) -> None:
        """Remove documents and insert or replace articles, idempotently, journaled, then bump the generation."""
        ids = list(removals) + [p.article.id for p in prepared]
        self.journal([("remove", d) for d in removals] + [("upsert", p.article.id) for p in prepared])
        # the rows of a half-done write never entered the statistics
        old = self.stats_of([d for d in ids if self.content_hash(d) is not None])
        for doc_id in removals:
            self.delete_document(doc_id)
        for p in prepared:
            held = self.held_ids([p.article.id])
            rows = rows_of([p])
            self.put_content(rows)
            new = {"passages": {r["id"] for r in rows.passages}, "sentences": {r["id"] for r in rows.sentences},
                   "windows": set(rows.window_ids)}
            for kind in ("passages", "sentences", "windows"):
                stale = sorted(held[kind] - new[kind])
                for chunk in _batches(stale, 2_000):
                    self.client.delete(self.names[kind], ids=chunk)
            self.put_documents(rows)  # the commit mark: its content hash
        if is_lite(self.windows.uri):
            self.flush()
        self.apply(self.stats_of([p.article.id for p in prepared]).add(old, -1))

    def flush(self) -> None:
        """Seal the build's pending writes into indexed segments: Milvus Lite searches unflushed rows one by one
        in Python (a server flushes by itself, and rate-limits explicit flushes)."""
        for name in self.names.values():
            self.client.flush(name)

    # --- statistics ---
    def term_counts(self, tokens: Sequence[str]) -> dict[str, tuple[int, int]]:
        """Per token, the passages whose body and whose text hold it ((0, 0) for one none holds), one query."""
        found = {t: (0, 0) for t in tokens}
        for chunk in _batches(list(dict.fromkeys(tokens)), 1_000):
            rows = self._query("terms", f"token in [{', '.join(quote(t) for t in chunk)}]", ["token", "body", "words"])
            found.update((r["token"], (int(r["body"]), int(r["words"]))) for r in rows)
        return found

    def put_terms(self, stats: Stats, base: dict[str, tuple[int, int]] | None = None) -> None:
        """Write the terms rows of `stats`' tokens: their counts, added to `base` when given."""
        base = base or {}
        tokens = sorted(set(stats.body) | set(stats.words))
        rows = [{"token": t, "body": base.get(t, (0, 0))[0] + stats.body.get(t, 0),
                 "words": base.get(t, (0, 0))[1] + stats.words.get(t, 0), PAD: [0.0, 0.0]} for t in tokens]
        for chunk in _batches(rows, 2_000):
            self.client.upsert(self.names["terms"], chunk)

    def apply(self, delta: Stats, *, bump: bool = True) -> None:
        """Add a write's change to the terms rows (read, added, written: writers racing on one token can lose a
        count, a statistic a little off, never a wrong row), then `bump`."""
        delta.body = Counter({t: n for t, n in delta.body.items() if n})
        delta.words = Counter({t: n for t, n in delta.words.items() if n})
        if delta.body or delta.words:
            self.put_terms(delta, self.term_counts(sorted(set(delta.body) | set(delta.words))))
        if bump:
            self.bump(delta.tokens)

    def delete_document(self, doc_id: str) -> None:
        """A document's rows, its document row last."""
        for kind in ("windows", "sentences", "passages", "documents"):
            self.client.delete(self.names[kind], filter=doc_filter([doc_id]))

    def journal(self, entries: Sequence[tuple[str, str]]) -> None:
        """Record writes in the meta collection before making them (`qa.cluster.build` replays them)."""
        if entries:
            put_meta(self.client, self.alias, {f"{JOURNAL}{time.time_ns():020d}:{uuid.uuid4().hex[:8]}:{i}":
                                               {"op": op, "doc_id": d} for i, (op, d) in enumerate(entries)})

    def bump(self, tokens: int) -> None:
        """Add a write's change to the build's statistics and move its generation on (a new token too, so two
        writers that bump at once still change what replicas compare). Passages are counted; the tokens follow
        the writes' changes (an average length: writers racing can leave it a little off, not wrong)."""
        state = get_meta(self.client, self.alias, [self.build]).get(self.build, dict(self.state))
        state = {**state, "generation": int(state.get("generation", 0)) + 1, "token": uuid.uuid4().hex,
                 "passages": self.count("passages"), "documents": self.count("documents"),
                 "tokens": int(state.get("tokens", 0)) + tokens}
        put_meta(self.client, self.alias, {self.build: state})
        self.state = state


def doc_of(row: dict) -> str:
    """A passage row's document id (its citation JSON does not hold it; the passage id does, before '#')."""
    return row["passage_id"].rpartition("#")[0]


def _summary(doc: dict) -> dict:
    return {"id": doc["id"], "title": doc["title"], "source": doc["source"], "author": doc["author"],
            "url": doc["url"], "published": doc["published"], "passages": doc["passages"]}


__all__ = ["ClusterStore", "Stats"]
