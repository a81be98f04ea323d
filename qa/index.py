"""The index folder as a whole: build (beside the live one, then an atomic swap), add, remove, check, load.

Kept apart from `store.py` (SQLite) and `vectors.py` (FAISS): this module is the one place that keeps them in
agreement, under one writer lock.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterable, Sequence

import numpy as np

from .embed import Embedder, load_embedder, resolve_model
from .errors import BadRequest, IndexUnavailable, QAError
from .ingest import Article, Problem, read_sources
from .lexical import DIRNAME as LEXICAL_DIR, LABEL as LEXICAL_LABEL, LexicalIndex
from .prepare import PreparedArticle, prepare_articles
from .manifest import Manifest, now
from .store import JOURNAL_KEEP, STORE_FILE, Store
from .vectors import TRAIN_MAX, VECTOR_BACKENDS, DocFields, FaissIndex, VectorIndex, choose_kind, open_vectors

log = logging.getLogger(__name__)

LOCK_FILE = ".write.lock"
BUILD_BATCH = 2048  # paragraphs embedded and written to the store at a time by a full build
LOCK_TIMEOUT = 600.0


@contextlib.contextmanager
def write_lock(index_dir: str, timeout: float = LOCK_TIMEOUT):
    """The index folder's writer lock: writers are serialised, never interleaved."""
    from filelock import FileLock, Timeout

    os.makedirs(index_dir, exist_ok=True)
    lock = FileLock(os.path.join(index_dir, LOCK_FILE))
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise QAError(f"another writer holds the lock on {index_dir} (waited {timeout:.0f}s)") from None
    try:
        yield
    finally:
        lock.release()


# --- embedding into a new store ---------------------------------------------------------------------------

def _embed_into(store: Store, articles: Sequence[Article], embedder: Embedder, progress: bool) -> None:
    """Embed articles and write them to a new store BUILD_BATCH paragraphs at a time, so a build's memory stays
    bounded whatever the collection's size."""
    batch = BUILD_BATCH
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(len(a.paragraphs) for a in articles), desc="embedding", unit="paragraph",
                   mininterval=1.0)
    try:
        start = 0
        while start < len(articles):
            end, size = start, 0
            while end < len(articles) and (size < batch or end == start):
                size += len(articles[end].paragraphs)
                end += 1
            store.write(prepare_articles(articles[start:end], embedder), journal=False)
            if bar is not None:
                bar.update(size)
            start = end
    finally:
        if bar is not None:
            bar.close()


def dedupe_articles(articles: Iterable[Article], on_problem=None) -> list[Article]:
    """Articles by id, the last of several with one id winning (reported)."""
    by_id: dict[str, Article] = {}
    for a in articles:
        if a.id in by_id and on_problem:
            on_problem(Problem(a.path or "?", None, f"document id {a.id!r} appears again; the last one is kept"))
        by_id[a.id] = a
    return [a for a in by_id.values() if a.paragraphs]


# --- build -------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Report:
    """What a build or update did."""

    documents: int = 0
    passages: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    replayed: int = 0  # writes made to the live index during a full build, replayed into it at the swap
    problems: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    index_dir: str = ""


def _chunking(max_tokens: int) -> dict:
    """The manifest's record of how passages were cut and embedded."""
    return {"unit": "paragraph", "window_tokens": max_tokens - 2, "window_overlap_sentences": 1,
            "sentence_splitter": "sentencex", "lexical": LEXICAL_LABEL, "window_prefix": "title"}


def _vector_settings(index_dir: str, vector_backend: str | None, milvus_uri: str | None,
                     milvus_alias: str | None = None) -> dict:
    """The manifest's vector keys for a build: as asked, else as the live index has them, else FAISS."""
    previous: Manifest | None = None
    with contextlib.suppress(QAError):
        previous = Manifest.load(index_dir)
    if vector_backend is None:
        vector_backend = "milvus" if milvus_uri or milvus_alias else (previous.vector_backend if previous else "faiss")
    if vector_backend not in VECTOR_BACKENDS:
        raise BadRequest(f"unknown vector backend {vector_backend!r}; choose one of {', '.join(VECTOR_BACKENDS)}")
    if vector_backend == "faiss":
        if milvus_uri or milvus_alias:
            raise BadRequest(f"--milvus-{'uri' if milvus_uri else 'alias'} needs --backend milvus")
        return {"vector_backend": "faiss"}
    from .milvus_backend import check_alias, manifest_uri, new_alias

    same = previous is not None and previous.vector_backend == "milvus"
    uri = manifest_uri(index_dir, milvus_uri) if milvus_uri or not same else previous.milvus_uri
    alias = previous.milvus_alias if same and previous.milvus_uri == uri else None
    if milvus_alias:
        check_alias(milvus_alias)
        if alias and alias != milvus_alias:
            log.warning("index %s moves from Milvus alias %s to %s; the old alias and its collections stay",
                        index_dir, alias, milvus_alias)
        alias = milvus_alias
    # a new alias is unique, not derived from the path alone: a folder moved away and a new one built in its place
    # (or one path on two hosts) would otherwise share one, and each one's builds drop the other's collection
    return {"vector_backend": "milvus", "milvus_uri": uri, "milvus_alias": alias or new_alias(index_dir)}


def _check_kind(kind: str, vector_backend: str) -> None:
    """`BadRequest` for an index kind that is unknown or that the vector backend cannot build."""
    choose_kind(kind, 0)  # unknown kinds
    if vector_backend == "milvus":
        from .milvus_backend import check_kind

        check_kind(kind)


def _prune_data_dirs(index_dir: str, keep: Sequence[str]) -> None:
    """Delete data folders other than `keep`, and leftovers of killed builds."""
    for name in os.listdir(index_dir):
        full = os.path.join(index_dir, name)
        if os.path.isdir(full) and (name.startswith("data-") or name.startswith(".build-")) and name not in keep:
            if name.startswith(".build-") and time.time() - os.path.getmtime(full) < 6 * 3600:
                continue  # may be another build still running
            shutil.rmtree(full, ignore_errors=True)


def _window_docs(prepared: Sequence[PreparedArticle]) -> list[DocFields]:
    """The document fields of each window `Store.write(prepared)` adds, in the order it adds them (article by
    article, passage by passage, window by window)."""
    docs = []
    for p in prepared:
        docs += [DocFields(p.article.id, p.article.source, p.article.published)] * p.window_count
    return docs


def _write(store: Store, vectors: VectorIndex, prepared: Sequence[PreparedArticle], removals: Sequence[str] = (),
           lexical: LexicalIndex | None = None) -> None:
    """Write prepared articles and removals to the store, then the same change to the vector and lexical indexes."""
    docs = _window_docs(prepared)
    written = store.write(prepared, removals)
    if lexical is not None:
        lexical.sync(store, [p.article.id for p in prepared] + list(removals))
    vectors.remove(np.array(written.removed, np.int64))
    if written.added_ids:
        if len(docs) != len(written.added_ids):
            raise QAError(f"the store added {len(written.added_ids)} windows where {len(docs)} were prepared")
        vectors.add(np.array(written.added_ids, np.int64), np.stack(written.added_vectors).astype(np.float32), docs)


def _journal_mark(index_dir: str) -> tuple[str, int] | None:
    """(live data folder, its journal's last seq), or None without a usable live index."""
    try:
        data_dir = Manifest.load(index_dir).data_dir
        store = Store(os.path.join(index_dir, data_dir, STORE_FILE), readonly=True)
    except QAError:
        return None
    try:
        return data_dir, store.journal_seq()
    except sqlite3.Error:  # a corrupt live store: nothing to replay (the build replaces it)
        return None
    finally:
        store.close()


def _replay(index_dir: str, mark: tuple[str, int] | None, store: Store, vectors: VectorIndex,
            embedder: Embedder, lexical: LexicalIndex | None = None) -> int:
    """Under the writer lock: apply to a new build the writes journaled in the live index since `mark`; their number.

    Each write sets its document's whole state, so only the last one per document is applied."""
    if mark is None:
        return 0
    data_dir, after = mark
    try:
        manifest = Manifest.load(index_dir)
    except QAError:  # the live index is gone: nothing to replay into this build
        return 0
    if manifest.data_dir != data_dir:
        # another full build swapped in meanwhile: its journal began empty, then took the writes it replayed and
        # every one since
        log.warning("the live index was rebuilt during this build; replaying all of its journal")
        after = 0
    live = Store(os.path.join(index_dir, manifest.data_dir, STORE_FILE), readonly=True)
    try:
        entries = live.journal(after)
    finally:
        live.close()
    if entries and entries[0].seq > after + 1:
        raise QAError(f"more writes were made during this build than the journal keeps ({JOURNAL_KEEP}); "
                      "the live index is unchanged, build again")
    last = {e.doc_id: e for e in entries}
    upserts = [e.article for e in last.values()
               if e.op == "upsert" and store.content_hash(e.doc_id) != e.article.content_hash()]
    removals = [d for d, e in last.items() if e.op == "remove"]
    if upserts or removals:
        _write(store, vectors, prepare_articles(upserts, embedder) if upserts else [], removals, lexical)
    return len(entries)


def build_index(sources: Sequence[str], index_dir: str, *, model: str | None = None,
                embedder: Embedder | None = None, kind: str = "auto", backend: str = "auto",
                strict: bool = False, progress: bool = False, vector_backend: str | None = None,
                milvus_uri: str | None = None, milvus_token: str | None = None,
                milvus_alias: str | None = None) -> Report:
    """Full build from sources into a new data folder beside the live one, then an atomic manifest swap.

    `vector_backend` None keeps the live index's (FAISS for a new one). On Milvus the vectors go to a new
    collection, and the alias (`milvus_alias`, else the folder's own) is switched to it with the manifest swap.
    """
    t0 = time.perf_counter()
    report = Report(index_dir=index_dir)
    vector = _vector_settings(index_dir, vector_backend, milvus_uri, milvus_alias)  # checked before any work
    _check_kind(kind, vector["vector_backend"])
    sink = lambda p: report.problems.append(str(p))  # noqa: E731
    mark = _journal_mark(index_dir)  # before the sources are read: later writes are replayed at the swap
    articles = dedupe_articles(read_sources(sources, strict=strict, on_problem=sink), sink)
    if not articles:
        raise BadRequest("no articles found in " + ", ".join(sources))
    os.makedirs(index_dir, exist_ok=True)
    milvus = vector["vector_backend"] == "milvus"
    if milvus:
        from . import milvus_backend as mb

        milvus_token = milvus_token or os.environ.get(mb.TOKEN_ENV)
        mb.check_available(mb.resolve_uri(index_dir, vector["milvus_uri"]), milvus_token)  # fail before embedding
    if embedder is None:
        embedder = load_embedder(model, backend)
    model_path = None if embedder.model_name in ("hash",) else resolve_model(model)[0]
    build_dir = os.path.join(index_dir, f".build-{uuid.uuid4().hex[:12]}")
    os.makedirs(build_dir)
    vindex: VectorIndex | None = None
    before: str | None = None  # the collection the alias pointed to
    published = False
    try:
        store = Store(os.path.join(build_dir, STORE_FILE), create=True)
        _embed_into(store, articles, embedder, progress)
        n_windows = store.counts().windows
        index_kind = choose_kind(kind, n_windows)
        if milvus:  # a new collection; the live alias and manifest are untouched until the swap below
            vector["milvus_collection"] = mb.new_collection_name(vector["milvus_alias"])
            vindex = mb.MilvusIndex(mb.resolve_uri(index_dir, vector["milvus_uri"]), vector["milvus_collection"],
                                    embedder.dim, token=milvus_token, create=True,
                                    index_type=mb.index_type_of(index_kind))
        else:
            vindex = FaissIndex(embedder.dim, index_kind)
            vindex.train(store.sample_window_vectors(TRAIN_MAX, embedder.dim), n_windows)
        by_passage = _passage_docs(store) if milvus else None
        for batch in store.all_windows(embedder.dim):
            vindex.add(batch.ids, batch.vectors, [by_passage[p] for p in batch.passages.tolist()] if milvus else None)
        generation = store.generation
        vindex.save(build_dir, generation)  # Milvus: flushed, so searches hit sealed, indexed segments
        lexical = LexicalIndex.create(os.path.join(build_dir, LEXICAL_DIR))
        lexical.rebuild(store)
        counts = store.counts()
        store.con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        store.close()
        data_dir = f"data-{dt.datetime.now().strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"
        with write_lock(index_dir):
            report.replayed = _replay(index_dir, mark, store, vindex, embedder, lexical)
            if report.replayed:
                generation = store.generation
                vindex.save(build_dir, generation)
                counts = store.counts()
                store.con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                store.close()
            os.replace(build_dir, os.path.join(index_dir, data_dir))
            previous = None
            with contextlib.suppress(QAError):
                previous = Manifest.load(index_dir).data_dir
            before = mb.switch_alias(vindex.client, vector["milvus_alias"], vindex.collection) if milvus else None
            Manifest(model=embedder.model_name, model_path=model_path if model else None, dim=embedder.dim,
                     embed_backend=getattr(embedder, "backend", backend), **vector, index_kind=index_kind,
                     data_dir=data_dir, counts=counts, generation=generation,
                     chunking=_chunking(embedder.max_tokens)).save(index_dir)
            published = True
            # the previous folder (and collection) stays one round for servers still loading it
            _prune_data_dirs(index_dir, keep=[data_dir] + ([previous] if previous else []))
            if milvus:
                mb.drop_older(vindex.client, vector["milvus_alias"], before)
    except BaseException:
        shutil.rmtree(build_dir, ignore_errors=True)
        if milvus and vindex is not None and not published:  # never made live: alias back, collection dropped
            with contextlib.suppress(Exception):
                if before:
                    mb.switch_alias(vindex.client, vector["milvus_alias"], before)
                mb.drop_collection(vindex.client, vindex.collection, force=True)
        raise
    finally:
        _close(vindex)
    report.documents, report.passages = counts.documents, counts.passages
    report.added = len(articles)
    report.seconds = time.perf_counter() - t0
    return report


def _close(vectors: VectorIndex | None) -> None:
    """Close a vector index that holds a connection (Milvus; the last user of a Lite database releases it)."""
    close = getattr(vectors, "close", None)
    if close is not None:
        close()


# --- load --------------------------------------------------------------------------------------------------

class Index:
    """A loaded index folder: manifest, store, vector index and the window → passage map. Read-only."""

    def __init__(self, index_dir: str, manifest: Manifest, store: Store, vectors: VectorIndex,
                 window_ids: np.ndarray, window_passages: np.ndarray, embedder: Embedder | None = None,
                 lexical: LexicalIndex | None = None):
        self.index_dir = index_dir
        self.manifest = manifest
        self.store = store
        self.vectors = vectors
        self.window_ids = window_ids
        self.window_passages = window_passages
        self.embedder = embedder
        self.lexical = lexical
        self.dim = int(manifest.dim)

    @property
    def passage_count(self) -> int:
        return int(self.manifest.counts.passages)

    def passages_of_windows(self, ids: np.ndarray) -> np.ndarray:
        """Passage row ids of window ids (-1 where unknown)."""
        pos = np.searchsorted(self.window_ids, ids)
        pos = np.clip(pos, 0, max(len(self.window_ids) - 1, 0))
        if not len(self.window_ids):
            return np.full(len(ids), -1, np.int64)
        found = self.window_ids[pos] == ids
        return np.where(found, self.window_passages[pos], -1)

    def lexical_search(self, terms: Sequence[str], limit: int, filters=None) -> list[tuple[int, float]]:
        """BM25 top `limit` (passage rowid, score): tantivy, or the store's FTS5 without it."""
        if self.lexical is not None:
            return self.lexical.search(terms, limit, filters)
        return self.store.lexical_search(terms, limit, filters)

    def lexical_scores(self, terms: Sequence[str], rowids: Sequence[int], filters=None, pool: int = 2000,
                       pairs: Sequence[tuple[str, str, int]] = ()) -> dict[int, float]:
        """BM25 of given passages (0 where no term matches): exact with tantivy, with term proximity when the
        query's word `pairs` are given; without tantivy, read from FTS5's best `pool` matches, and past their end
        the pool's last score (an upper bound)."""
        if self.lexical is not None:
            found = self.lexical.scores(terms, rowids, pairs)
            return {rid: found.get(rid, 0.0) for rid in rowids}
        ranked = self.store.lexical_search(terms, pool, filters)
        beyond = ranked[-1][1] if len(ranked) >= pool else 0.0
        found = dict(ranked)
        return {rid: found.get(rid, beyond) for rid in rowids}

    def doc_freqs(self, terms: Sequence[str]) -> dict[str, int]:
        """Passages holding each term."""
        return (self.lexical or self.store).doc_freqs(terms)

    def close(self) -> None:
        self.store.close()
        _close(self.vectors)


def _passage_docs(store: Store) -> dict[int, DocFields]:
    """The document fields of every passage, by passage rowid."""
    docs: dict[str, DocFields] = {}
    out = {}
    for row in store.passage_rows():
        out[row.rowid] = docs.setdefault(row.doc_id, DocFields(row.doc_id, row.source, row.published))
    return out


def _resync(vectors: VectorIndex, store: Store, dim: int) -> None:
    """Make an upserting vector index (Milvus) hold exactly the store's window vectors and their document fields."""
    have, _ = vectors.reconstruct_all()
    want = store.window_passages().ids
    vectors.remove(np.setdiff1d(have, want))
    by_passage = _passage_docs(store)
    for batch in store.all_windows(dim):
        vectors.add(batch.ids, batch.vectors, [by_passage[p] for p in batch.passages.tolist()])


def open_data(index_dir: str, manifest: Manifest, *, readonly: bool = True,
              store: Store | None = None) -> tuple[Store, VectorIndex]:
    """The store and vector index of the live data folder, the vectors rebuilt from the store if out of date.

    FAISS is rebuilt in memory; a Milvus collection is resynced in place by writers (`readonly=False`, under the
    write lock) and used as it is by readers.
    """
    data = os.path.join(index_dir, manifest.data_dir)
    if not os.path.isdir(data):
        raise IndexUnavailable(f"data folder {data} missing; rebuild: qa build SOURCE... --index-dir {index_dir}")
    if store is None or store.path != os.path.join(data, STORE_FILE):
        store = Store(os.path.join(data, STORE_FILE), readonly=readonly)
    dim = int(manifest.dim)
    faiss = manifest.vector_backend == "faiss"
    try:
        vectors, generation = open_vectors(index_dir, manifest, data, mmap=readonly)
    except IndexUnavailable:
        if not faiss:  # a Milvus collection cannot be conjured from here: say why
            store.close()
            raise
        vectors, generation = None, -1
    if vectors is None or generation != store.generation:
        log.warning("vector index in %s behind the store (generation %s vs %s): %s", data, generation,
                    store.generation, "rebuilding it from stored vectors" if faiss or not readonly else "using it")
        if faiss:
            vectors = FaissIndex(dim, manifest.index_kind)
            for batch in store.all_windows(dim):
                vectors.add(batch.ids, batch.vectors)
        elif not readonly:
            _resync(vectors, store, dim)
    return store, vectors


def load_index(index_dir: str, *, embedder: Embedder | None = None, model: str | None = None,
               store: Store | None = None) -> Index:
    """Load an index folder for search; a clear `IndexUnavailable` naming the fix when it cannot be used.

    `store`: the store of a previously loaded generation, reused (with its per-thread connections) when the
    data folder is the same, as after an incremental update."""
    manifest = Manifest.load(index_dir)
    if model is not None and model != manifest.model and resolve_model(model)[1] != manifest.model:
        raise IndexUnavailable(f"index in {index_dir} was built with {manifest.model}, not {model}; rebuild: "
                               f"qa build SOURCE... --index-dir {index_dir} --model {model}")
    if embedder is not None and embedder.model_name != manifest.model:
        raise IndexUnavailable(f"index in {index_dir} was built with {manifest.model} but the loaded model is "
                               f"{embedder.model_name}; rebuild: qa build SOURCE... --index-dir {index_dir}")
    if embedder is not None and embedder.dim != manifest.dim:
        raise IndexUnavailable(f"index dim {manifest.dim} differs from the model's {embedder.dim}; rebuild: "
                               f"qa build SOURCE... --index-dir {index_dir}")
    try:
        store, vectors = open_data(index_dir, manifest, store=store)
        lexical = LexicalIndex.open(os.path.join(index_dir, manifest.data_dir), store)
        windows = store.window_passages()
    except (OSError, ValueError, KeyError) as e:
        raise IndexUnavailable(f"index in {index_dir} unreadable ({e}); rebuild: qa build SOURCE... "
                               f"--index-dir {index_dir}") from None
    except Exception as e:  # sqlite3.DatabaseError and FAISS errors on a corrupt folder
        if isinstance(e, QAError):
            raise
        raise IndexUnavailable(f"index in {index_dir} is corrupt ({type(e).__name__}: {e}); rebuild: "
                               f"qa build SOURCE... --index-dir {index_dir}") from None
    return Index(index_dir, manifest, store, vectors, windows.ids, windows.passages, embedder, lexical)


def embedder_for(manifest: Manifest, backend: str | None = None) -> Embedder:
    """The embedder an index was built with."""
    model = manifest.model_path or (manifest.model if manifest.model == "hash" else None)
    return load_embedder(model, backend or manifest.embed_backend)


# --- incremental updates -----------------------------------------------------------------------------------

def _apply(index_dir: str, embedder: Embedder | None, articles: Sequence[Article], removals: Sequence[str],
           report: Report) -> Report:
    """Under the writer lock: write articles and removals to the store, then the vectors, then the manifest."""
    t0 = time.perf_counter()
    with write_lock(index_dir):
        manifest = Manifest.load(index_dir)
        store, vectors = open_data(index_dir, manifest, readonly=False)
        try:
            lexical = LexicalIndex.open(os.path.join(index_dir, manifest.data_dir), store, readonly=False)
            changed = []
            for a in articles:
                old = store.content_hash(a.id)
                if old == a.content_hash():
                    report.unchanged += 1
                    continue
                if old is None:
                    report.added += 1
                else:
                    report.updated += 1
                changed.append(a)
            existing = set(store.document_ids()) if removals else set()
            missing = [d for d in removals if d not in existing]
            if missing:
                from .errors import NotFound

                raise NotFound("no such document: " + ", ".join(missing[:5]))
            if not changed and not removals:
                counts = store.counts()
                report.documents, report.passages = counts.documents, counts.passages
                report.seconds = time.perf_counter() - t0
                return report
            if changed and embedder is None:
                embedder = embedder_for(manifest)
            prepared = prepare_articles(changed, embedder) if changed else []
            _write(store, vectors, prepared, removals, lexical)
            report.removed = len(removals)
            generation = store.generation
            vectors.save(os.path.join(index_dir, manifest.data_dir), generation)
            manifest.counts = store.counts()
            manifest.generation = generation
            manifest.updated_at = now()
            manifest.save(index_dir)
            report.documents, report.passages = manifest.counts.documents, manifest.counts.passages
        finally:
            store.close()
            _close(vectors)
    report.seconds = time.perf_counter() - t0
    return report


def add_documents(sources: Sequence[str] | None, index_dir: str, *, articles: Sequence[Article] = (),
                  embedder: Embedder | None = None, strict: bool = False) -> Report:
    """Add or update documents from sources (and/or given articles); unchanged ones are skipped by content hash."""
    report = Report(index_dir=index_dir)
    sink = lambda p: report.problems.append(str(p))  # noqa: E731
    found = list(read_sources(sources, strict=strict, on_problem=sink)) if sources else []
    return _apply(index_dir, embedder, dedupe_articles([*found, *articles], sink), [], report)


def remove_documents(doc_ids: Sequence[str], index_dir: str) -> Report:
    """Delete documents by id; unknown ids raise `NotFound` and nothing is removed."""
    return _apply(index_dir, None, [], list(dict.fromkeys(doc_ids)), Report(index_dir=index_dir))


# --- check -------------------------------------------------------------------------------------------------

def _check_lexical(data: str, store: Store, passages: int) -> list[str]:
    """Problems of the tantivy index: missing, behind the store, or holding another number of passages."""
    import tantivy

    from .lexical import read_generation

    directory = os.path.join(data, LEXICAL_DIR)
    generation = read_generation(directory)
    if generation != store.generation:
        return [f"lexical index (tantivy) reflects store generation {generation}, the store is at "
                f"{store.generation} (rebuilt from the store on the next load or write)"]
    try:
        found = LexicalIndex(tantivy.Index.open(directory), directory, generation).num_docs
    except Exception as e:
        return [f"lexical index (tantivy) unreadable: {e}"]
    return [] if found == passages else [f"lexical index (tantivy) has {found} passages, the store {passages}"]


def check_index(index_dir: str) -> list[str]:
    """Problems that make the store, the vector index and the manifest disagree (empty when all agree)."""
    problems = []
    try:
        manifest = Manifest.load(index_dir)
    except QAError as e:
        return [str(e)]
    data = os.path.join(index_dir, manifest.data_dir)
    try:
        store = Store(os.path.join(data, STORE_FILE), readonly=True)
        counts = store.counts()
        integrity = store.con.execute("PRAGMA integrity_check").fetchone()[0]
        if integrity != "ok":
            problems.append(f"store integrity check: {integrity}")
        fts = store.con.execute("SELECT COUNT(*) FROM passages_fts").fetchone()[0]
        if fts != counts.passages:
            problems.append(f"lexical index has {fts} passages, the store {counts.passages}")
        orphans = store.con.execute(
            "SELECT COUNT(*) FROM passages_fts WHERE rowid NOT IN (SELECT id FROM passages)").fetchone()[0]
        if orphans:
            problems.append(f"lexical index holds {orphans} passages the store does not")
        window_ids = store.window_passages().ids
        problems += _check_lexical(data, store, counts.passages)
    except Exception as e:  # a corrupt or missing store
        return [f"store unreadable: {e}"]
    for key in ("documents", "passages"):
        if getattr(manifest.counts, key) != getattr(counts, key):
            problems.append(f"manifest says {getattr(manifest.counts, key)} {key}, the store has "
                            f"{getattr(counts, key)}")
    try:
        vectors, generation = open_vectors(index_dir, manifest, data)
    except QAError as e:
        problems.append(str(e))
        store.close()
        return problems
    try:
        ids, _ = vectors.reconstruct_all()
        if manifest.vector_backend == "milvus":
            from .milvus_backend import alias_target

            target = alias_target(vectors.client, manifest.milvus_alias or "")
            if target != manifest.milvus_collection:
                problems.append(f"Milvus alias {manifest.milvus_alias} points to {target}, "
                                f"the manifest to {manifest.milvus_collection}")
    finally:
        _close(vectors)
    if generation != store.generation:
        problems.append(f"vector index reflects store generation {generation}, the store is at {store.generation}")
    if not np.array_equal(np.sort(ids), window_ids):
        extra = len(np.setdiff1d(ids, window_ids))
        missing = len(np.setdiff1d(window_ids, ids))
        problems.append(f"vector ids disagree with the store: {extra} extra, {missing} missing")
    if manifest.generation != store.generation:
        problems.append(f"manifest generation {manifest.generation} is not the store's {store.generation}")
    store.close()
    return problems
