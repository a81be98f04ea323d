"""The vector index interface and its FAISS implementation.

Vectors are L2-normalised, so inner product is cosine. Ids are explicit int64 (the store's window ids).
The FAISS file is derived from the store; `vectors.json` beside it records the store generation it reflects.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from typing import Protocol

import numpy as np

from .errors import BadRequest, IndexUnavailable

log = logging.getLogger(__name__)

FAISS_FILE = "vectors.faiss"
FAISS_META = "vectors.json"
KINDS = ("auto", "flat", "hnsw")
HNSW_THRESHOLD = 200_000  # vectors; below it exact search is fast enough and exact


class VectorIndex(Protocol):
    """What search needs from a vector index."""

    kind: str

    @property
    def ntotal(self) -> int:
        """Number of live vectors."""

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors under explicit int64 ids."""

    def remove(self, ids: np.ndarray) -> None:
        """Remove vectors by id (unknown ids are ignored)."""

    def search(self, queries: np.ndarray, k: int, allow: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the k best per query, restricted to `allow` ids when given; missing slots are id -1."""


def choose_kind(kind: str, n: int) -> str:
    """The index kind for `n` vectors: exact below a threshold, HNSW above, unless forced."""
    if kind not in KINDS:
        raise BadRequest(f"unknown index kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind != "auto":
        return kind
    return "flat" if n < HNSW_THRESHOLD else "hnsw"


class FaissIndex:
    """A FAISS index with explicit ids: exact inner product (`flat`) or HNSW (`hnsw`, deletions as tombstones)."""

    def __init__(self, dim: int, kind: str = "flat", index=None, deleted: set[int] | None = None):
        import faiss

        self.dim = dim
        self.kind = kind
        self.deleted: set[int] = deleted or set()
        if index is None:
            if kind == "flat":
                index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
            elif kind == "hnsw":
                base = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
                base.hnsw.efConstruction = 80
                base.hnsw.efSearch = 128
                index = faiss.IndexIDMap2(base)
            else:
                raise BadRequest(f"unknown index kind {kind!r}")
        self.index = index

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal) - len(self.deleted)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            ids = np.ascontiguousarray(ids, dtype=np.int64)
            self.deleted.difference_update(ids.tolist())
            self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)

    def remove(self, ids: np.ndarray) -> None:
        import faiss

        if not len(ids):
            return
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if self.kind == "flat":
            self.index.remove_ids(faiss.IDSelectorBatch(ids))
        else:  # HNSW graphs cannot drop nodes: hide them until the next compaction
            self.deleted.update(ids.tolist())

    def search(self, queries: np.ndarray, k: int, allow: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        if self.index.ntotal == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        k = min(k, int(self.index.ntotal))
        selectors = []
        if allow is not None:
            if not len(allow):
                return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
            selectors.append(faiss.IDSelectorBatch(np.ascontiguousarray(allow, dtype=np.int64)))
        if self.deleted:
            selectors.append(faiss.IDSelectorNot(faiss.IDSelectorBatch(np.array(sorted(self.deleted), np.int64))))
        params = None
        if selectors:
            sel = selectors[0] if len(selectors) == 1 else faiss.IDSelectorAnd(*selectors)
            if self.kind == "hnsw":
                params = faiss.SearchParametersHNSW(sel=sel, efSearch=max(128, k))
            else:
                params = faiss.SearchParameters(sel=sel)
            params._selectors = selectors  # keep the selectors alive while FAISS holds pointers to them
        elif self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(128, k))
        scores, ids = self.index.search(queries, k, params=params)
        return scores, ids

    def reconstruct_all(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of every live vector."""
        import faiss

        ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
        vecs = self.index.index.reconstruct_n(0, self.index.ntotal) if len(ids) else np.zeros((0, self.dim))
        keep = np.array([i not in self.deleted for i in ids], bool) if self.deleted else slice(None)
        return ids[keep], np.asarray(vecs, np.float32)[keep]

    def save(self, directory: str, generation: int) -> None:
        """Write the FAISS file and its meta atomically (temporary names, then rename)."""
        import faiss

        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".faiss", dir=directory)
        os.close(fd)
        try:
            faiss.write_index(self.index, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, os.path.join(directory, FAISS_FILE))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        from .store import write_json_atomic

        write_json_atomic(os.path.join(directory, FAISS_META),
                          {"generation": generation, "kind": self.kind, "dim": self.dim,
                           "ntotal": int(self.index.ntotal), "deleted": sorted(self.deleted)})

    @classmethod
    def load(cls, directory: str, dim: int, mmap: bool = False) -> tuple["FaissIndex", int]:
        """(index, store generation it reflects) from a data folder."""
        import faiss

        path, meta_path = os.path.join(directory, FAISS_FILE), os.path.join(directory, FAISS_META)
        try:
            with open(meta_path, encoding="utf-8") as f:
                meta = json.load(f)
            flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
            index = faiss.read_index(path, flags) if flags else faiss.read_index(path)
        except (OSError, ValueError, RuntimeError) as e:
            raise IndexUnavailable(f"vector index in {directory} unreadable: {e}") from None
        if index.d != dim:
            raise IndexUnavailable(f"vector index has dim {index.d}, manifest says {dim}")
        return cls(dim, meta.get("kind", "flat"), index, set(meta.get("deleted", []))), int(meta["generation"])


VECTOR_BACKENDS = ("faiss", "milvus")


def open_vectors(index_dir: str, manifest: dict, data_dir: str) -> tuple[VectorIndex, int]:
    """(vector index, store generation it reflects) of a data folder, by `manifest["vector_backend"]`."""
    backend = manifest.get("vector_backend", "faiss")
    dim = int(manifest["dim"])
    if backend == "faiss":
        return FaissIndex.load(data_dir, dim)
    if backend == "milvus":
        from .milvus_backend import open_manifest_collection

        return open_manifest_collection(index_dir, manifest, data_dir)
    raise IndexUnavailable(f"unknown vector backend {backend!r} in the manifest of {index_dir}; "
                           f"choose one of {', '.join(VECTOR_BACKENDS)} and rebuild")
