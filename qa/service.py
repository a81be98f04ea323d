"""`Engine`: the loaded index behind the API, the page and the CLI; its JSON shapes, admin writes and live reload.

The index is loaded lazily on first use and cached on the engine (one engine per app, never a module global).
A background check notices a rebuilt or updated index (the manifest changes) and loads it beside the old one; the
old one keeps answering until the new one is fully loaded, then a reference swap makes it live.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, NamedTuple

from .config import Config
from .errors import BadRequest, IndexUnavailable, InsufficientStorage, NotFound, QAError
from .index import Index, embedder_for, load_index
from .ingest import validate_doc_id
from .params import SearchParams, parse_int, search_params
from .process import collapse_huge_pages, release_memory
from .search import search
from .store import DocumentPage, OutletCount, Store
from .manifest import Manifest, manifest_path

if TYPE_CHECKING:
    from .answer import Answer
    from .embed import Embedder

log = logging.getLogger(__name__)


class Stamp(NamedTuple):
    """What tells a rewritten manifest from the one loaded: any change means the index changed."""

    mtime_ns: int
    size: int
    inode: int


def _stamp(index_dir: str) -> Stamp | None:
    try:
        st = os.stat(manifest_path(index_dir))
    except OSError:
        return None
    return Stamp(st.st_mtime_ns, st.st_size, st.st_ino)


class Engine:
    """The service's state: one live `Index`, its embedder, and the reload watcher."""

    def __init__(self, config: Config | None = None, embedder: Embedder | None = None):
        self.config = config or Config.from_env()
        self._embedder = embedder
        self._embedder_key = None
        self._index: Index | None = None
        self._stamp = None
        self._lock = threading.Lock()
        self._loading = False
        self._last_check = 0.0
        self.reloads = 0
        self._outlets: tuple[tuple, list[OutletCount]] | None = None
        self._warm_lock = threading.Lock()
        self._warming = self._warm_again = False
        self.huge_pages = False  # `use_huge_pages`

    # --- loading and live reload ---
    def _embedder_for(self, manifest: Manifest):
        key = (manifest.model, manifest.model_path, self.config.embed_backend)
        if self._embedder is not None and (self._embedder_key in (None, key)) \
                and self._embedder.model_name == manifest.model:
            return self._embedder
        backend = None if self.config.embed_backend == "auto" else self.config.embed_backend
        self._embedder = embedder_for(manifest, backend)
        self._embedder_key = key
        return self._embedder

    def _load(self) -> Index:
        stamp = _stamp(self.config.index_dir)
        manifest = Manifest.load(self.config.index_dir)
        embedder = self._embedder_for(manifest)
        # an incremental update keeps the data folder: reuse its store and per-thread connections rather than
        # opening new ones on every reload (they held memory until garbage collection)
        previous = self._index.store if self._index is not None else None
        index = load_index(self.config.index_dir, embedder=embedder, store=previous)
        if isinstance(index.store, Store) and index.store is not previous:  # a cluster store keeps rows for one search
            index.store.set_row_budget(self.config.row_cache_mb)
        index.window_layout()  # before the index goes live, whichever way it loads: no search waits for the sort
        self._stamp = stamp
        return index

    def index(self) -> Index:
        """The live index, loading it on first use; a changed manifest starts a background reload."""
        if self._index is None:
            with self._lock:
                if self._index is None:
                    self._index = self._load()
            return self._index
        now = time.monotonic()
        if now - self._last_check >= self.config.reload_interval:
            self._last_check = now
            stamp = _stamp(self.config.index_dir)
            changed = stamp is not None and stamp != self._stamp
            # a cluster index changes in Milvus, written from any host: ask it (`ClusterIndex.stale`) too
            polled = hasattr(self._index, "stale")
            if (changed or polled) and not self._loading:
                self._loading = True
                threading.Thread(target=self._reload, args=(not changed,), name="qa-reload", daemon=True).start()
        return self._index

    def _reload(self, poll: bool = False) -> None:
        """Load the index again beside the live one, then swap; `poll`: only if Milvus says it moved on."""
        try:
            if poll and not self._index.stale():
                return
            index = self._load()
            self._prewarm(index)  # the old index answers meanwhile; the new one goes live warm
            old, self._index = self._index, index
            del old
            release_memory()
            self.reloads += 1
            log.info("reloaded index %s (generation %s)", self.config.index_dir, index.manifest.generation)
            self._collapse()  # after the new index is live and counted: it may take a while
        except QAError as e:
            log.warning("index changed but cannot be loaded yet (%s); still serving the previous one", e)
            self._stamp = None  # try again at the next check
        except Exception:  # a half-written folder from a crashed writer: keep serving
            log.exception("reload failed; still serving the previous index")
            self._stamp = None
        finally:
            self._loading = False
            if self._index is not None:
                self._index.store.close()  # this thread's connection: the thread ends here

    def reload_now(self) -> None:
        """Load the index again synchronously (after this process changed it)."""
        with self._lock:
            self._index = self._load()
        if isinstance(self._index.store, Store):
            self._index.store.carry_rows()
        release_memory()  # after a write in this process: its writer's caches are freed by now
        self._prewarm_soon()

    def _prewarm(self, index: Index) -> None:
        """Decode the rows searches read into the index's row cache ahead of them (`Store.prewarm`)."""
        try:
            warmed = index.store.prewarm(index.dim, words=index.scores_from_words)
        except Exception:  # only a head start: a store that cannot be read fails its searches with the reason
            log.exception("could not read rows ahead of searches")
            return
        if warmed.passages:
            log.info("row cache: the rows of %d of %d passages read ahead (%.1f MiB) in %.2f s", warmed.passages,
                     warmed.total, warmed.cached_bytes / (1 << 20), warmed.seconds)

    def _prewarm_soon(self) -> None:
        """`_prewarm` the live index on a background thread, one at a time: writes in a row each start a newer
        generation, and the running thread warms the newest once it is done."""
        with self._warm_lock:
            self._warm_again = True
            if self._warming:
                return
            self._warming = True

        def loop() -> None:
            while True:
                with self._warm_lock:
                    if not self._warm_again:
                        self._warming = False
                        return
                    self._warm_again = False
                index = self._index
                if index is not None:
                    self._prewarm(index)
                    index.store.close()  # this thread's connection
                    self._collapse()

        threading.Thread(target=loop, name="qa-prewarm", daemon=True).start()

    def warm_up(self) -> None:
        """Load the index and the model, read ahead the rows searches read, and run one query, so the first
        requests are fast."""
        try:
            index = self.index()
            self._prewarm(index)
            search(index, "warm up", 1)
        except QAError as e:
            log.warning("%s", e)

    def use_huge_pages(self) -> None:
        """Back the loaded index and model with huge pages (`collapse_huge_pages`), now on a thread of its own and
        after every reload on the reloading thread: a server calls it once warm (docs/performance.md#huge-pages)."""
        self.huge_pages = True
        threading.Thread(target=self._collapse, name="qa-huge-pages", daemon=True).start()

    def _collapse(self) -> None:
        if self.huge_pages:
            log.debug("%d MiB backed by huge pages", collapse_huge_pages() >> 20)

    def watch(self) -> None:
        """Check for a changed index in the background too, so an idle server never falls behind two rebuilds
        (a full build keeps only the previous data folder)."""

        def loop() -> None:
            while True:
                time.sleep(self.config.reload_interval)
                with contextlib.suppress(QAError):
                    self.index()

        threading.Thread(target=loop, name="qa-watch", daemon=True).start()

    # --- requests ---
    def _params(self, params: dict, default_k: int) -> SearchParams:
        return search_params(params, default_k, self.config.max_query_chars, self.config.max_k)

    def search(self, params: dict) -> dict:
        """The /api/search object."""
        t0 = time.perf_counter()
        p = self._params(params, 10)
        result = search(self.index(), p.q, p.k, mode=p.mode, filters=p.filters or None)
        return {"query": p.q, "mode": p.mode, "results": [h.to_dict(i) for i, h in enumerate(result.hits, 1)],
                "timings": result.timings, "took_ms": round((time.perf_counter() - t0) * 1000, 3)}

    def ask(self, params: dict) -> dict:
        """The /api/ask object."""
        t0 = time.perf_counter()
        answer = self.answer(params)
        return {"question": answer.question,
                "answer": None if answer.no_answer else {"text": answer.text,
                                                         "sentences": [s.to_dict() for s in answer.sentences]},
                "no_answer": answer.no_answer, "citations": answer.citations,
                "passages": [h.to_dict(i) for i, h in enumerate(answer.search.hits, 1)],
                "timings": answer.search.timings, "took_ms": round((time.perf_counter() - t0) * 1000, 3)}

    def answer(self, params: dict) -> Answer:
        """The answer to a request's question (five passages unless k says otherwise), for the API and the page."""
        from .answer import answer_question

        p = self._params(params, 5)
        return answer_question(self.index(), p.q, p.k, mode=p.mode, filters=p.filters or None)

    def health(self) -> dict:
        """The /healthz object."""
        index = self.index()
        if hasattr(index, "check_reachable"):
            index.check_reachable()  # a cluster index: 503 with Milvus's reason while it cannot answer
        reasons = index.degraded
        # counted in the store, which writers change first: what search can find right now
        body = {"status": "degraded" if reasons else "ok", "passages": index.store.count_passages(),
                "documents": int(index.manifest.counts.documents),
                "generation": index.manifest.generation, "model": index.manifest.model}
        return {**body, "reasons": reasons} if reasons else body

    def documents(self, params: dict) -> dict:
        """The /api/documents object: one page of the documents."""
        offset = parse_int(params.get("offset"), "offset", 0, 0, 10**9)
        limit = parse_int(params.get("limit"), "limit", 50, 1, 1000)
        total, docs = self.index().store.documents(offset, limit)
        return {"total": total, "offset": offset, "limit": limit, "documents": docs}

    def document(self, doc_id: str) -> dict:
        """One document with its paragraphs; NotFound for an unknown id."""
        validate_doc_id(doc_id)
        doc = self.index().store.document(doc_id)
        if doc is None:
            raise NotFound(f"no such document: {doc_id}")
        return doc

    def documents_newest(self, offset: int, limit: int, source: str | None = None) -> DocumentPage:
        """A page of the documents newest first, of one outlet when `source` is given (the collection page)."""
        return self.index().store.documents_newest(offset, limit, source)

    def outlets(self) -> list[OutletCount]:
        """The collection's outlets with their document counts, largest first; cached until the index changes."""
        index = self.index()
        key = (index.store.path, index.store.generation)
        cached = self._outlets
        if cached is None or cached[0] != key:
            # every page shows them: one GROUP BY per index version, not per request
            cached = self._outlets = (key, index.store.outlet_counts())
        return cached[1]

    # --- admin writes ---
    @contextlib.contextmanager
    def _reload_after_storage_errors(self):
        """On a full or read-only disk, load the index again before answering 507: a write that reached the store
        but not its files is then served (vectors rebuilt from the store in memory), as every other process sees
        it, rather than half (in the store's rows, not in search)."""
        try:
            yield
        except InsufficientStorage:
            try:
                self.reload_now()
            except QAError as e:
                log.warning("after a failed write: %s", e)
            raise

    def add_article(self, obj: object) -> dict:
        """Add or replace one article (JSONL schema), or the page `{"url": ...}` names (fetched); the live index is
        reloaded before returning."""
        from .fetch import article_from_request
        from .index import add_documents

        article = article_from_request(obj, self.config.index_dir)
        if not article.paragraphs:
            raise BadRequest("the article has no paragraphs left after removing boilerplate")
        index = self.index()
        with self._reload_after_storage_errors():
            report = add_documents(None, self.config.index_dir, articles=[article], embedder=index.embedder)
        self.reload_now()
        status = "unchanged" if report.unchanged else ("updated" if report.updated else "created")
        return {"id": article.id, "status": status, "passages": len(article.paragraphs)}

    def delete_document(self, doc_id: str) -> dict:
        """Delete one document; the live index is reloaded before returning."""
        from .index import remove_documents

        validate_doc_id(doc_id)
        with self._reload_after_storage_errors():
            remove_documents([doc_id], self.config.index_dir)
        self.reload_now()
        return {"id": doc_id, "status": "deleted"}


__all__ = ["Engine", "IndexUnavailable"]
