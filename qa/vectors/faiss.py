"""The FAISS vector backend: the index file in each data folder, derived from the store.

`vectors.json` beside the file records the store generation it reflects; a file that lags is rebuilt from the
store's vectors, never re-embedded.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..errors import BadRequest, IndexUnavailable
from ..files import atomic_path, write_json_atomic
from .base import KINDS, DocFields, VectorSettings, fill

if TYPE_CHECKING:
    from ..manifest import Manifest
    from ..store import Filters, Store

log = logging.getLogger(__name__)

FAISS_FILE = "vectors.faiss"
FAISS_META = "vectors.json"
# Search-time knobs, chosen with scripts/bench_scale.py so recall@10 against exact search stays high at 1M vectors
# (see docs/scaling.md).
HNSW_M = 32  # graph degree (level 0 keeps 2*M links)
HNSW_EF_CONSTRUCTION = 64
HNSW_EF_SEARCH = 256
# from HNSW_LARGE vectors the search goes wider to keep recall@10 up (see docs/scaling.md)
HNSW_LARGE = 500_000
HNSW_EF_SEARCH_LARGE = 512
IVF_NPROBE = 64
IVF_K_FACTOR = 32  # the PQ stage proposes k * IVF_K_FACTOR candidates, re-scored on the SQ8 codes (cheap)
PQ_M = 48  # sub-quantizers (8 dims each at 384-d), 8 bits each
TRAIN_MAX = 65_536  # training sample cap for the IVF-PQ coarse quantizer / PQ / SQ8 ranges
EXACT_ALLOW_MAX = 20_000  # a filter allowing at most this many ids is searched exactly over their (SQ8) vectors


def ef_search(n: int) -> int:
    """HNSW's search breadth (efSearch) for an index of `n` vectors."""
    return HNSW_EF_SEARCH_LARGE if n >= HNSW_LARGE else HNSW_EF_SEARCH


def ivf_nlist(n: int) -> int:
    """Inverted lists for an IVF index trained with `n` vectors: about 2*sqrt(n), a power of two in [16, 8192]."""
    target = 2 * max(n, 1) ** 0.5
    nlist = 16
    while nlist * 2 <= target and nlist < 8192:
        nlist *= 2
    return nlist


def _training_sample(vectors: np.ndarray, need: int, seed: int = 0) -> np.ndarray:
    """At most TRAIN_MAX rows of `vectors`; a short batch is padded with jittered, re-normalised copies up to `need`."""
    rng = np.random.default_rng(seed)
    x = vectors
    if len(x) > TRAIN_MAX:
        x = x[np.sort(rng.choice(len(x), TRAIN_MAX, replace=False))]
    if len(x) < need:
        extra = x[rng.integers(0, len(x), need - len(x))] + rng.normal(0, 0.02, (need - len(x), x.shape[1]))
        extra /= np.maximum(np.linalg.norm(extra, axis=1, keepdims=True), 1e-12)
        x = np.vstack([x, extra.astype(np.float32)])
    return np.ascontiguousarray(x, dtype=np.float32)


class FaissIndex:
    """A FAISS index with explicit int64 ids (an IndexIDMap2 around one of):

    - `flat`: exact inner product (IndexFlatIP), float32 vectors; deletions are real.
    - `hnsw`: HNSW32 graph over SQ8 codes (IndexHNSWSQ); deletions are tombstones.
    - `ivfpq`: IVF + PQ48 candidates re-scored on SQ8 codes (IVF{nlist},PQ48x8,Refine(SQ8)), trained on the
      first batch added; deletions are tombstones.
    Size, speed and recall of each kind at 100k and 1M vectors: docs/scaling.md#benchmark.

    Search knobs (efSearch, nprobe, k_factor) go per call through SearchParameters, with the `allow` filter and the
    tombstones as an IDSelector, so filtered search works for every kind.

    `mapped`: the index is a read-only memory map of its file (`load(mmap=True)`) and cannot change.
    """

    needs_docs = False  # filters come from the store as id selectors

    def __init__(self, dim: int, kind: str = "flat", index=None, deleted: set[int] | None = None,
                 mapped: bool = False):
        import faiss

        self.dim = dim
        self.kind = kind
        self.mapped = mapped
        self.rebuilt: str | None = None  # why a reader rebuilt it in memory: the server is degraded
        self.deleted: set[int] = deleted or set()
        self._deleted_sel = None  # cached IDSelectorNot over the tombstones
        self._stored_ids: np.ndarray | None = None  # a flat index's ids in storage order, until it changes
        if index is None:
            if kind == "flat":
                index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
            elif kind == "hnsw":
                base = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, HNSW_M, faiss.METRIC_INNER_PRODUCT)
                base.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
                base.hnsw.efSearch = HNSW_EF_SEARCH
                index = faiss.IndexIDMap2(base)
            elif kind == "ivfpq":
                index = None  # built on the first add, sized by that batch
            else:
                choices = ", ".join(k for k in KINDS if k != "auto")
                raise BadRequest(f"unknown index kind {kind!r}; choose one of {choices}")
        self.index = index

    @property
    def ntotal(self) -> int:
        return (int(self.index.ntotal) if self.index is not None else 0) - len(self.deleted)

    def train(self, sample: np.ndarray, total: int) -> None:
        """Train an empty `hnsw`/`ivfpq` index on a random sample of the `total` vectors to be added (a build that
        adds in batches; otherwise the first batch added trains it); `flat` needs no training."""
        self._check_writable()
        if self.kind != "flat" and (self.index is None or not self.index.index.is_trained):
            self._train(np.ascontiguousarray(sample, dtype=np.float32).reshape(-1, self.dim), total)
            self.index.is_trained = True

    def _train(self, vectors: np.ndarray, total: int | None = None) -> None:
        """Train the codecs of an empty `hnsw`/`ivfpq` index on (a sample of) `vectors`, standing for `total`."""
        import faiss

        total = total or len(vectors)
        if self.kind == "ivfpq":
            nlist = ivf_nlist(total)
            base = faiss.index_factory(self.dim, f"IVF{nlist},PQ{PQ_M}x8,Refine(SQ8)", faiss.METRIC_INNER_PRODUCT)
            ivf = faiss.downcast_index(faiss.downcast_index(base).base_index)
            ivf.cp.niter = 10
            ivf.cp.max_points_per_centroid = 64
            ivf.pq.cp.niter = 10
            ivf.do_polysemous_training = False  # on by default in the factory; slow and unused here
            ivf.pq.cp.max_points_per_centroid = 64
            ivf.nprobe = IVF_NPROBE
            base.k_factor = IVF_K_FACTOR
            base.train(_training_sample(vectors, max(39 * nlist, 8 * 256)))  # >= 8 points per PQ centroid
            self.index = faiss.IndexIDMap2(base)
        else:
            hnsw = faiss.downcast_index(self.index.index)
            sq = faiss.downcast_index(hnsw.storage).sq
            sq.rangestat = faiss.ScalarQuantizer.RS_minmax
            # a margin for values the sample missed
            sq.rangestat_arg = 0.05 if min(len(vectors), total) >= 10_000 else 0.5
            hnsw.train(_training_sample(vectors, 1))

    def add(self, ids: np.ndarray, vectors: np.ndarray, docs: Sequence[DocFields] | None = None) -> None:
        """Add vectors under explicit int64 ids (`docs` are not needed: filters come from the store)."""
        self._check_writable()
        if len(ids):
            ids = np.ascontiguousarray(ids, dtype=np.int64)
            vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
            if self.index is None or not self.index.index.is_trained:
                self._train(vectors)
                self.index.is_trained = True  # IndexIDMap2 copied the flag of its empty inner index
            if self.deleted:
                self.deleted.difference_update(ids.tolist())
                self._deleted_sel = None
            self.index.add_with_ids(vectors, ids)
        self._stored_ids = None

    def remove(self, ids: np.ndarray) -> None:
        import faiss

        self._check_writable()
        if not len(ids) or self.index is None:
            return
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if self.kind == "flat":
            self.index.remove_ids(faiss.IDSelectorBatch(ids))
            self._stored_ids = None
        else:  # graphs and refine stages cannot drop entries: hide them until the next rebuild
            self.deleted.update(ids.tolist())
            self._deleted_sel = None

    def _check_writable(self) -> None:
        if self.mapped:
            raise RuntimeError("this FAISS index is a read-only map of its file; load it without mmap to change it")

    def _search_exact_subset(self, queries: np.ndarray, k: int, allow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Brute force over the stored vectors of a small `allow` list (approximate kinds: selective filters
        would starve the graph / probed lists)."""
        allow = np.unique(np.ascontiguousarray(allow, dtype=np.int64))
        import faiss

        allow = allow[np.isin(allow, faiss.vector_to_array(self.index.id_map))]
        if self.deleted:
            allow = allow[~np.isin(allow, np.fromiter(self.deleted, np.int64, len(self.deleted)))]
        n = len(queries)
        if not len(allow):
            return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
        vecs = self.index.reconstruct_batch(allow)
        scores = queries @ vecs.T
        k = min(k, len(allow))
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(scores, top, 1).argsort(axis=1)[:, ::-1]
        top = np.take_along_axis(top, order, 1)
        return np.take_along_axis(scores, top, 1).astype(np.float32), allow[top]

    def search(self, queries: np.ndarray, k: int, allow: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        empty = np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        if self.index is None or self.index.ntotal == 0:
            return empty
        k = min(k, int(self.index.ntotal))
        selectors = []
        if allow is not None:
            if not len(allow):
                return empty
            if self.kind != "flat" and len(allow) <= EXACT_ALLOW_MAX:
                return self._search_exact_subset(queries, k, allow)
            selectors.append(faiss.IDSelectorBatch(np.ascontiguousarray(allow, dtype=np.int64)))
        if self.deleted:
            if self._deleted_sel is None:
                inner = faiss.IDSelectorBatch(np.fromiter(self.deleted, np.int64, len(self.deleted)))
                self._deleted_sel = faiss.IDSelectorNot(inner)
                self._deleted_sel._inner = inner  # keep alive
            selectors.append(self._deleted_sel)
        sel = None
        if selectors:
            sel = selectors[0] if len(selectors) == 1 else faiss.IDSelectorAnd(*selectors)
        # a selective filter starves the graph / probed lists: widen the search by the fraction it lets through
        widen = 1.0
        if allow is not None:
            widen = min(8.0, max(1.0, int(self.index.ntotal) / max(len(allow), 1)))
        keep = [selectors, sel]
        if self.kind == "hnsw":
            ef = ef_search(int(self.index.ntotal))
            params = faiss.SearchParametersHNSW(sel=sel, efSearch=max(int(ef * widen), k))
        elif self.kind == "ivfpq":
            # IndexRefine hands only base_index_params to the IVF stage, so the selector goes there, translated
            # from external ids to the IDMap's internal positions by hand (IndexIDMap2 only translates top-level sel)
            tsel = faiss.IDSelectorTranslated(self.index.id_map, sel) if sel is not None else None
            ivf = faiss.SearchParametersIVF(nprobe=int(IVF_NPROBE * widen), sel=tsel)
            params = faiss.IndexRefineSearchParameters(k_factor=IVF_K_FACTOR, base_index_params=ivf)
            keep += [tsel, ivf]
        else:
            params = faiss.SearchParameters(sel=sel) if sel is not None else None
        if params is not None:
            params._keep = keep  # FAISS holds raw pointers to these: keep them alive for the call
        scores, ids = self.index.search(queries, k, params=params)
        return scores, ids

    def stored_ids(self) -> np.ndarray | None:
        """The ids in storage order when `inner_products` can answer (an exact index), else None."""
        import faiss

        if self.kind != "flat" or self.index is None or self.deleted:
            return None
        if self._stored_ids is None:
            self._stored_ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
        return self._stored_ids

    def inner_products(self, query: np.ndarray) -> np.ndarray:
        """Every stored vector's inner product with one query, in storage order (`stored_ids`, which must not be
        None): the pass an exact search makes, every score kept. FAISS's own kernel, since the vectors of a mapped
        file need not be aligned for numpy, which would copy them first."""
        import faiss

        flat = faiss.downcast_index(self.index.index)
        out = np.empty(flat.ntotal, np.float32)
        query = np.ascontiguousarray(query, np.float32).reshape(self.dim)
        faiss.fvec_inner_products_ny(faiss.swig_ptr(out), faiss.swig_ptr(query), flat.get_xb(), self.dim, len(out))
        return out

    def search_filtered(self, queries: np.ndarray, k: int, filters: "Filters | None",
                        store: "Store") -> tuple[np.ndarray, np.ndarray]:
        """`search` restricted to the windows the store finds passing `filters` (an id selector)."""
        return self.search(queries, k, store.filtered_window_ids(filters) if filters else None)

    def reconstruct_all(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of every live vector (decoded from SQ8 codes for `hnsw` / `ivfpq`)."""
        import faiss

        if self.index is None:
            return np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32)
        ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
        vecs = self.index.index.reconstruct_n(0, self.index.ntotal) if len(ids) else np.zeros((0, self.dim))
        keep = np.array([i not in self.deleted for i in ids], bool) if self.deleted else slice(None)
        return ids[keep], np.asarray(vecs, np.float32)[keep]

    def save(self, directory: str, generation: int) -> None:
        """Write the FAISS file and its meta atomically (temporary names, then rename)."""
        import faiss

        # an untrained ivfpq index (nothing added yet) is stored as an empty exact one; `load` restores it untrained
        index = self.index if self.index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        with atomic_path(os.path.join(directory, FAISS_FILE), ".faiss") as tmp:
            faiss.write_index(index, tmp)
        write_json_atomic(os.path.join(directory, FAISS_META),
                          {"generation": generation, "kind": self.kind, "dim": self.dim,
                           "ntotal": int(index.ntotal), "deleted": sorted(self.deleted)})

    def close(self) -> None:
        """Nothing to release: a mapped file is unmapped when the index is dropped."""

    @classmethod
    def load(cls, directory: str, dim: int, mmap: bool = False) -> tuple["FaissIndex", int]:
        """(index, store generation it reflects) from a data folder.

        `mmap`: map the file read-only instead of reading it into memory (FAISS's IO_FLAG_MMAP_IFC: the codes of
        every kind and the HNSW graph): serving processes then share one copy in the OS page cache and load in a
        fraction of the time. Files are only ever replaced by rename, so a mapping stays valid until it is dropped.
        """
        import faiss

        path, meta_path = os.path.join(directory, FAISS_FILE), os.path.join(directory, FAISS_META)
        try:
            with open(meta_path, encoding="utf-8") as f:
                meta = json.load(f)
            flags = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY if mmap else 0
            index = faiss.read_index(path, flags) if flags else faiss.read_index(path)
        except (OSError, ValueError, RuntimeError) as e:
            raise IndexUnavailable(f"vector index in {directory} unreadable: {e}") from None
        if index.d != dim:
            raise IndexUnavailable(f"vector index has dim {index.d}, manifest says {dim}")
        kind = meta.get("kind", "flat")
        if kind == "ivfpq" and index.ntotal == 0:
            index = None  # saved before its first add: train on the next one
        return cls(dim, kind, index, set(meta.get("deleted", [])), mapped=index is not None and bool(mmap)), \
            int(meta["generation"])




class FaissBuild:
    """A build's FAISS index: filled in memory, saved into the new data folder, live when the manifest names it."""

    def __init__(self, settings: VectorSettings, index: FaissIndex):
        self.settings = settings
        self.index = index

    def publish(self, swap: Callable[[], None]) -> None:
        """The saved file is live once `swap` has written the manifest naming its data folder."""
        swap()

    def discard(self) -> None:
        """Nothing outside the build's folder to undo."""


class FaissBackend:
    """FAISS files in the data folders of the index folder."""

    name = "faiss"

    def settings(self, index_dir: str, previous: Manifest | None, uri: str | None, alias: str | None,
                 token: str | None) -> VectorSettings:
        """FAISS takes no Milvus settings."""
        if uri or alias:
            raise BadRequest(f"--milvus-{'uri' if uri else 'alias'} needs --backend milvus")
        return VectorSettings("faiss")

    def check_kind(self, kind: str) -> None:
        """Every kind builds on FAISS."""

    def check_available(self, index_dir: str, settings: VectorSettings) -> None:
        """Always available: FAISS is a library."""

    def begin(self, index_dir: str, settings: VectorSettings, dim: int, kind: str, store: Store,
              windows: int) -> FaissBuild:
        """An empty index, trained on a random sample of the store's `windows` vectors where the kind needs it."""
        index = FaissIndex(dim, kind)
        index.train(store.sample_window_vectors(TRAIN_MAX, dim), windows)
        return FaissBuild(settings, index)

    def open(self, index_dir: str, manifest: Manifest, data_dir: str, *,
             mmap: bool = False) -> tuple[FaissIndex, int]:
        """The data folder's file (mapped read-only with `mmap`) and the store generation it reflects."""
        return FaissIndex.load(data_dir, int(manifest.dim), mmap=mmap)

    def open_synced(self, index_dir: str, manifest: Manifest, data_dir: str, store: Store, *,
                    readonly: bool) -> FaissIndex:
        """The data folder's file, or, when it is missing or behind the store, an index rebuilt in memory from the
        store's vectors."""
        try:
            vectors, generation = self.open(index_dir, manifest, data_dir, mmap=readonly)
            why = f"generation {generation}, the store's is {store.generation}"
        except IndexUnavailable as e:
            vectors, generation, why = None, -1, str(e)
        if vectors is not None and generation == store.generation:
            return vectors
        log.warning("vector index in %s behind the store (generation %s vs %s): %s", data_dir, generation,
                    store.generation, "rebuilding it from stored vectors")
        vectors = FaissIndex(int(manifest.dim), manifest.index_kind)
        fill(vectors, store, int(manifest.dim))
        vectors.rebuilt = f"the vector file is unusable ({why}): serving vectors rebuilt from the store in memory"
        return vectors

    def check(self, manifest: Manifest, vectors: FaissIndex) -> list[str]:
        """Nothing beyond what every backend is checked for."""
        return []
