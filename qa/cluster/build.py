"""A full build of a cluster index: new collections filled beside the live ones, then one switch.

The build writes a new set of collections (`qa.cluster.collections`), then, under the index folder's writer lock:
replays the writes journaled since it began reading its sources (each document's rows copied from the live build,
no embedding), records its statistics, switches the window alias and the meta row `live` to itself (the row is the
one switch replicas follow; the aliases are for people and tools), saves the manifest, and replays once more the
writes that landed meanwhile. Writers that finish after the switch and find the live build moved write again into
the new one (`write_cluster`). The previous build's collections stay one round for replicas still on it; older ones
are dropped.
"""
from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..errors import IndexUnavailable
from ..vectors.milvus import PK, SUFFIX, VEC, MilvusBuild, drop_collection, quote
from .collections import (DOCUMENTS, LIVE, PASSAGES, PAD, SENTENCES, TERMS, create_build, create_meta, doc_filter,
                          drop_build, meta_name, put_meta)
from .index import live_build
from .store import JOURNAL, QUERY_LIMIT, ROW_FIELDS, ClusterStore, Stats

if TYPE_CHECKING:
    from ..prepare import PreparedArticle
    from ..vectors.base import VectorSettings

log = logging.getLogger(__name__)

DOCUMENT_FIELDS = ["doc_id", "doc", "source_key", "published", "meta", "content_hash", "n_passages", PAD]
PASSAGE_FIELDS = [f for f in ROW_FIELDS if f not in ("doc",)] + ["doc", "source_key", "published", "words",
                                                                    "n_tokens"]
SENTENCE_FIELDS = ["id", "passage", "doc_id", "span_start", "span_end", "vec"]
WINDOW_FIELDS = [PK, VEC, "doc_id", "source_key", "published"]


def _mark(ns: int) -> str:
    return f"{JOURNAL}{ns:020d}"


class ClusterBuild:
    """A build's collections, filled by `insert`, made live by `swap`, or dropped by `discard`."""

    def __init__(self, index_dir: str, settings: VectorSettings, dim: int, kind: str, started_ns: int):
        self.vectors = MilvusBuild(index_dir, settings, dim, kind)
        self.alias = str(settings.milvus_alias)
        self.build = self.vectors.index.collection
        client = self.vectors.index.client
        create_meta(client, self.alias)
        create_build(client, self.build, dim)
        self.store = ClusterStore(self.vectors.index, self.alias, self.build, dim, {})
        self.stats = Stats()
        self.started = started_ns

    @property
    def settings(self) -> VectorSettings:
        return self.vectors.settings

    def insert(self, prepared: Sequence[PreparedArticle]) -> None:
        """Write a batch of new documents."""
        self.stats.add(self.store.insert(prepared))

    def swap(self, save_manifest: Callable[[], None]) -> int:
        """Under the writer lock: replay, switch to this build, save the manifest, replay again; the writes
        replayed."""
        client = self.store.client
        self.store.put_terms(self.stats)
        listed = time.time_ns()
        replayed = self._replay(_mark(self.started), _mark(listed))
        self.store.flush()
        self.store.state = {"generation": 1, "token": uuid.uuid4().hex, "passages": self.store.count("passages"),
                            "documents": self.store.count("documents"), "tokens": self.stats.tokens}
        put_meta(client, self.alias, {self.build: self.store.state})

        def switch() -> None:
            put_meta(client, self.alias, {LIVE: {"build": self.build}})
            save_manifest()

        self.vectors.publish(switch)
        replayed += self._replay(_mark(listed), _mark(time.time_ns()))
        drop_orphans(client, self.alias)
        client.delete(meta_name(self.alias), filter=f'key >= "{JOURNAL}" and key < {quote(_mark(self.started))}')
        return replayed

    def _replay(self, after: str, before: str) -> int:
        """Copy into this build the documents written in the live one between two journal marks."""
        client = self.store.client
        rows = client.query(meta_name(self.alias), filter=f"key >= {quote(after)} and key < {quote(before)}",
                            output_fields=["key", "value"], consistency_level="Strong", limit=QUERY_LIMIT)
        if not rows:
            return 0
        try:
            live, state = live_build(client, self.alias)
        except IndexUnavailable:  # no live build yet: nothing to copy from
            return 0
        if live == self.build:
            live = self.vectors.previous or live
        source = ClusterStore(self.vectors.index, self.alias, live, self.store.dim, state)
        last = {}
        for row in sorted(rows, key=lambda r: r["key"]):
            entry = json.loads(row["value"])
            last[entry["doc_id"]] = entry["op"]
        before = self.store.stats_of(list(last))
        for doc_id in last:
            copy_document(source, self.store, doc_id)
        delta = self.store.stats_of(list(last)).add(before, -1)
        self.stats.tokens += delta.tokens
        self.store.apply(delta, bump=bool(self.store.state))  # once live, a write like any other
        return len(rows)

    def discard(self) -> None:
        """Never made live: the window alias back, every collection of the build dropped (nothing once live)."""
        if self.vectors.published:
            return
        self.vectors.discard()
        try:
            drop_build(self.store.client, self.build)
        except Exception as e:  # noqa: BLE001 - a later build drops what is left (`drop_orphans`)
            log.warning("could not drop the collections of build %s: %s", self.build, e)

    def close(self) -> None:
        self.vectors.index.close()


def _rows(store: ClusterStore, kind: str, doc_id: str, fields: list[str]) -> list[dict]:
    return store._query(kind, doc_filter([doc_id]), fields, QUERY_LIMIT)


def copy_document(source: ClusterStore, target: ClusterStore, doc_id: str) -> None:
    """Make a document's rows in `target` what they are in `source` (gone when `source` has no document row)."""
    document = _rows(source, "documents", doc_id, DOCUMENT_FIELDS)
    if not document:
        target.delete_document(doc_id)
        return
    held = target.held_ids([doc_id])
    copied = {"passages": _rows(source, "passages", doc_id, PASSAGE_FIELDS),
              "sentences": _rows(source, "sentences", doc_id, SENTENCE_FIELDS),
              "windows": _rows(source, "windows", doc_id, WINDOW_FIELDS)}
    for kind, rows in copied.items():
        for start in range(0, len(rows), 200):
            target.client.upsert(target.names[kind], rows[start:start + 200])
        stale = sorted(held[kind] - {int(r["id"]) for r in rows})
        if stale:
            target.client.delete(target.names[kind], ids=stale)
    target.client.upsert(target.names["documents"], document)


def drop_orphans(client, alias: str) -> list[str]:
    """Drop the documents, passages, sentences and terms collections whose build's window collection is gone, and the
    meta rows of builds that no longer exist; the collections dropped."""
    pattern = re.compile(re.escape(alias) + f"({SUFFIX})({DOCUMENTS}|{PASSAGES}|{SENTENCES}|{TERMS})")
    existing = set(client.list_collections())
    dropped = []
    for name in sorted(existing):
        found = pattern.fullmatch(name)
        if found and alias + found.group(1) not in existing:
            drop_collection(client, name, force=True)
            dropped.append(name)
    builds = [c for c in existing - set(dropped) if re.fullmatch(re.escape(alias) + SUFFIX, c)]
    rows = client.query(meta_name(alias), filter=f'key < "{JOURNAL}" or key >= "j;"', output_fields=["key"],
                        consistency_level="Strong", limit=QUERY_LIMIT)
    gone = [r["key"] for r in rows if r["key"] not in builds and r["key"] != LIVE]
    if gone:
        client.delete(meta_name(alias), ids=gone)
    return dropped


def write_cluster(store: ClusterStore, prepared: Sequence[PreparedArticle], removals: Sequence[str],
                  reopen: Callable[[], ClusterStore]) -> ClusterStore:
    """Write to the live build; when a full build went live meanwhile, write again into it (idempotent), so the
    write is in whichever build replicas serve; the store written last."""
    store.write(prepared, removals)
    for _ in range(3):
        live, _ = live_build(store.client, store.alias)
        if live == store.build:
            return store
        log.info("a build went live during this write: writing again into %s", live)
        store.windows.close()
        store = reopen()
        store.write(prepared, [d for d in removals if store.content_hash(d) is not None])
    return store


__all__ = ["ClusterBuild", "copy_document", "drop_orphans", "write_cluster"]
