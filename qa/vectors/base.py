"""What the index asks of a vector backend: the `VectorIndex` that search uses, and a build's lifecycle.

A full build begins an empty index beside the live one (`VectorBackend.begin`), fills it from the new store, then
publishes it at the manifest swap (`VectorBuild.publish`) or, on failure, discards it (`VectorBuild.discard`).
Vectors are L2-normalised, so inner product is cosine; ids are explicit int64 (the store's window ids).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ..errors import BadRequest

if TYPE_CHECKING:
    from ..manifest import Manifest
    from ..store import Filters, Store

KINDS = ("auto", "flat", "hnsw", "ivfpq")
HNSW_THRESHOLD = 100_000  # vectors; below it exact search is fast enough and exact (see docs/scaling.md)
LARGE_KIND = "hnsw"  # what `auto` picks at or above HNSW_THRESHOLD (see scripts/bench_scale.py)


@dataclasses.dataclass(frozen=True)
class DocFields:
    """The document fields a vector row (a window) carries, so a backend can apply `Filters` itself (Milvus)."""

    doc_id: str
    source: str | None = None
    published: str | None = None


@dataclasses.dataclass(frozen=True)
class VectorSettings:
    """Where a build puts its vectors, as the manifest records them; `token` (a Milvus server's) is not recorded."""

    backend: str = "faiss"
    milvus_uri: str | None = None
    milvus_alias: str | None = None
    milvus_collection: str | None = None
    token: str | None = dataclasses.field(default=None, repr=False, compare=False)

    def manifest_fields(self) -> dict[str, str | None]:
        """The manifest's vector keys (the Milvus ones stay None on FAISS, and `Manifest.save` leaves them out)."""
        return {"vector_backend": self.backend, "milvus_uri": self.milvus_uri, "milvus_alias": self.milvus_alias,
                "milvus_collection": self.milvus_collection}


class VectorIndex(Protocol):
    """What search and the index's writers need from a vector index (FAISS or Milvus)."""

    kind: str
    needs_docs: bool  # whether `add` needs each row's `DocFields` (filters pushed down to the backend)

    @property
    def ntotal(self) -> int:
        """Number of live vectors."""

    def add(self, ids: np.ndarray, vectors: np.ndarray, docs: Sequence[DocFields] | None = None) -> None:
        """Add vectors under explicit int64 ids; `docs` (one per row) feed filter pushdown: Milvus needs them."""

    def remove(self, ids: np.ndarray) -> None:
        """Remove vectors by id (unknown ids are ignored)."""

    def search(self, queries: np.ndarray, k: int, allow: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the k best per query, restricted to `allow` ids when given; missing slots are id -1."""

    def stored_ids(self) -> np.ndarray | None:
        """The ids in the order `inner_products` scores them when it can (an exact index in this process), else
        None."""

    def inner_products(self, query: np.ndarray) -> np.ndarray:
        """Every vector's inner product with one query, in the order of `stored_ids` (not None)."""

    def search_filtered(self, queries: np.ndarray, k: int, filters: Filters | None,
                        store: Store) -> tuple[np.ndarray, np.ndarray]:
        """Like `search`, restricted to the rows whose documents pass `filters` (the store is the reference)."""

    def save(self, directory: str, generation: int) -> None:
        """Persist, recording the store generation the vectors reflect."""

    def reconstruct_all(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of every live vector."""

    def close(self) -> None:
        """Release what the index holds open (a Milvus connection; nothing for FAISS)."""


class VectorBuild(Protocol):
    """A full build's new vector index, from `VectorBackend.begin` until it is published or discarded."""

    index: VectorIndex
    settings: VectorSettings  # as the new manifest records them

    def publish(self, swap: Callable[[], None]) -> None:
        """Make the new index live around `swap`, the manifest swap (Milvus: its alias is switched first, and
        older collections dropped after)."""

    def discard(self) -> None:
        """Undo a build that was never made live (Milvus: the alias back, the new collection dropped)."""


class VectorBackend(Protocol):
    """One vector backend: its build settings, its builds, and opening and checking its live index."""

    name: str

    def settings(self, index_dir: str, previous: Manifest | None, uri: str | None, alias: str | None,
                 token: str | None) -> VectorSettings:
        """A build's settings, as asked or as the live index (`previous`) has them; `BadRequest` when invalid."""

    def check_kind(self, kind: str) -> None:
        """`BadRequest` for an index kind this backend cannot build."""

    def check_available(self, index_dir: str, settings: VectorSettings) -> None:
        """`IndexUnavailable` at once, before a long build, when the backend cannot be reached."""

    def begin(self, index_dir: str, settings: VectorSettings, dim: int, kind: str, store: Store,
              windows: int) -> VectorBuild:
        """An empty index for a build of `windows` vectors (trained on the store's, where the kind needs it)."""

    def open(self, index_dir: str, manifest: Manifest, data_dir: str, *,
             mmap: bool = False) -> tuple[VectorIndex, int]:
        """(the live index, store generation it reflects); `mmap`: a file is mapped read-only (for readers)."""

    def open_synced(self, index_dir: str, manifest: Manifest, data_dir: str, store: Store, *,
                    readonly: bool) -> VectorIndex:
        """The live index, brought up to the store's generation when it lags, as far as the backend can."""

    def check(self, manifest: Manifest, vectors: VectorIndex) -> list[str]:
        """Problems of the live index that only the backend can see."""


def choose_kind(kind: str, n: int) -> str:
    """The index kind for `n` vectors: exact below HNSW_THRESHOLD, LARGE_KIND at or above, unless forced."""
    if kind not in KINDS:
        raise BadRequest(f"unknown index kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind != "auto":
        return kind
    return "flat" if n < HNSW_THRESHOLD else LARGE_KIND


def passage_docs(store: Store) -> dict[int, DocFields]:
    """The document fields of every passage, by passage rowid."""
    docs: dict[str, DocFields] = {}
    out = {}
    for row in store.passage_rows():
        out[row.rowid] = docs.setdefault(row.doc_id, DocFields(row.doc_id, row.source, row.published))
    return out


def fill(index: VectorIndex, store: Store, dim: int) -> None:
    """Add every window vector of the store, with its document's fields when the index keeps them."""
    by_passage = passage_docs(store) if index.needs_docs else None
    for batch in store.all_windows(dim):
        docs = None if by_passage is None else [by_passage[p] for p in batch.passages.tolist()]
        index.add(batch.ids, batch.vectors, docs)
