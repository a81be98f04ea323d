"""The index folder as a whole: build (beside the live one, then an atomic swap), add, remove, check, load.

Kept apart from `store.py` (SQLite), `vectors/` (FAISS or Milvus) and `lexical.py` (tantivy): this module is the
one place that keeps them in agreement, under one writer lock, and it asks the vector backend through its
interface only.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import logging
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np

from .embed import Embedder, load_embedder, resolve_model
from .errors import BadRequest, IndexUnavailable, InsufficientStorage, NotFound, QAError
from .fetch import FetchOptions, FetchReport, WebFetch, split_sources
from .ingest import Article, Problem, read_sources
from .lexical import DIRNAME as LEXICAL_DIR, LABEL as LEXICAL_LABEL, LexicalIndex
from .prepare import PreparedArticle, prepare_articles, prepare_in_batches
from .manifest import STORES, Counts, Manifest, now
from .ranked import top_of
from .rowcache import run_starts
from .store import JOURNAL_KEEP, STORE_FILE, Filters, Store
from .vectors import (DocFields, VectorBuild, VectorIndex, VectorSettings, begin_build, build_settings,
                      check_available, check_vectors, choose_kind, fill, open_synced, open_vectors)
from .words import WORDS_FROM, LexicalQuery, PassageWords, proximity_scores

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


# the messages of SQLite, tantivy (Rust's io::Error) and FAISS (a C++ runtime_error) for a full or read-only disk
_FULL_MESSAGES = ("database or disk is full", "no space left on device", "os error 28", "disk quota exceeded",
                  "os error 122")
_READONLY_MESSAGES = ("readonly database", "read-only file system", "os error 30")


def _storage_problem(e: BaseException) -> str | None:
    """"full" or "read-only" when `e` says the disk under the index folder cannot take a write, else None."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return "full"
    if isinstance(e, OSError) and e.errno == errno.EROFS:
        return "read-only"
    text = str(e).lower()
    if any(m in text for m in _FULL_MESSAGES):
        return "full"
    if any(m in text for m in _READONLY_MESSAGES):
        return "read-only"
    return None


@contextlib.contextmanager
def storage_errors(index_dir: str):
    """A write's boundary: a full or read-only disk becomes one `InsufficientStorage` line (HTTP 507).

    Every write commits to the store first, in one transaction, and the store is the truth: a write refused here
    either never reached it, or reached it and not the vector and lexical files, which readers rebuild from the
    store in memory and the next write (the same command run again) saves (`_apply`).
    """
    try:
        yield
    except QAError:
        raise
    except Exception as e:
        kind = _storage_problem(e)
        if kind is None:
            raise
        log.info("write to %s failed: %s", index_dir, e)  # the library's own words (FAISS's run to a C++ trace)
        raise InsufficientStorage(f"cannot write to the index folder {index_dir}: its disk is {kind}; free space or "
                                  "make it writable, then run the command again") from None


# --- embedding into a new store ---------------------------------------------------------------------------

def _embed_into(store: Store, articles: Sequence[Article], embedder: Embedder, progress: bool) -> None:
    """Embed articles and write them to a new store BUILD_BATCH paragraphs at a time."""
    for prepared in prepare_in_batches(articles, embedder, BUILD_BATCH, progress):
        store.write(prepared, journal=False)


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
    fetch: FetchReport | None = None  # what happened to each URL and feed, when there were any


def _read_all(sources: Sequence[str], index_dir: str, report: Report, *, strict: bool, full: bool,
              progress: bool = False, fetch: FetchOptions | None = None) -> tuple[list[Article], WebFetch | None]:
    """The articles of files and folders, then of URLs and feeds (fetched), deduplicated by id; the fetch run, whose
    cache is saved once the index holds its articles. Failed sources go to `report.problems`, one line each.

    `full` (a build): every page is fetched again and a failed source keeps its documents from the live index; an
    update sends conditional requests and leaves what failed as it is."""
    sink = lambda p: report.problems.append(str(p))  # noqa: E731
    files, web = split_sources(sources)
    found = list(read_sources(files, strict=strict, on_problem=sink)) if files else []
    run = None
    if web:
        run = WebFetch(index_dir, fetch, conditional=not full, keep_failed=full, strict=strict, progress=progress)
        found += run.run(web)
        report.fetch = run.report
        report.problems += [failure.line() for failure in run.report.failures]
    return found, run


def _chunking(max_tokens: int) -> dict:
    """The manifest's record of how passages were cut and embedded."""
    return {"unit": "paragraph", "window_tokens": max_tokens - 2, "window_overlap_sentences": 1,
            "sentence_splitter": "sentencex", "lexical": LEXICAL_LABEL, "window_prefix": "title"}


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


def _write(store: Store, vectors: VectorIndex, lexical: LexicalIndex, prepared: Sequence[PreparedArticle],
           removals: Sequence[str] = ()) -> None:
    """Write prepared articles and removals to the store, then the same change to the vector and lexical indexes."""
    docs = _window_docs(prepared)
    written = store.write(prepared, removals)
    lexical.sync(store, [p.article.id for p in prepared] + list(removals))
    vectors.remove(np.array(written.removed, np.int64))
    if written.added_ids:
        if len(docs) != len(written.added_ids):
            raise QAError(f"the store added {len(written.added_ids)} windows where {len(docs)} were prepared")
        vectors.add(np.array(written.added_ids, np.int64), np.stack(written.added_vectors).astype(np.float32), docs)


class JournalMark(NamedTuple):
    """Where the live index's journal stood when a full build read its sources."""

    data_dir: str
    seq: int


def _journal_mark(index_dir: str) -> JournalMark | None:
    """The live data folder and its journal's last seq, or None without a usable live index."""
    try:
        data_dir = Manifest.load(index_dir).data_dir
        store = Store(os.path.join(index_dir, data_dir, STORE_FILE), readonly=True)
    except QAError:
        return None
    try:
        return JournalMark(data_dir, store.journal_seq())
    except sqlite3.Error:  # a corrupt live store: nothing to replay (the build replaces it)
        return None
    finally:
        store.close()


def _replay(index_dir: str, mark: JournalMark | None, store: Store, vectors: VectorIndex, lexical: LexicalIndex,
            embedder: Embedder) -> int:
    """Under the writer lock: apply to a new build the writes journaled in the live index since `mark`; their number.

    Each write sets its document's whole state, so only the last one per document is applied."""
    if mark is None:
        return 0
    after = mark.seq
    try:
        manifest = Manifest.load(index_dir)
    except QAError:  # the live index is gone: nothing to replay into this build
        return 0
    if manifest.data_dir != mark.data_dir:
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
        _write(store, vectors, lexical, prepare_articles(upserts, embedder) if upserts else [], removals)
    return len(entries)


def build_index(sources: Sequence[str], index_dir: str, *, model: str | None = None,
                embedder: Embedder | None = None, kind: str = "auto", backend: str = "auto",
                strict: bool = False, progress: bool = False, vector_backend: str | None = None,
                milvus_uri: str | None = None, milvus_token: str | None = None,
                milvus_alias: str | None = None, fetch: FetchOptions | None = None,
                store: str | None = None) -> Report:
    """Full build from sources into a new data folder beside the live one, then an atomic manifest swap.

    `vector_backend` None keeps the live index's (FAISS for a new one). On Milvus the vectors go to a new
    collection, and the alias (`milvus_alias`, else the folder's own) is switched to it with the manifest swap.
    `store` (sqlite or milvus; None keeps the live index's) says where the text side lives: `milvus` makes a
    cluster index (`qa.cluster`), whose folder holds only the manifest. URLs and feeds among the sources are
    fetched with `fetch`'s limits.
    """
    t0 = time.perf_counter()
    report = Report(index_dir=index_dir)
    settings = build_settings(index_dir, vector_backend, kind, uri=milvus_uri, alias=milvus_alias,
                              token=milvus_token)  # checked before any work
    store = _store_choice(index_dir, store, settings)
    sink = lambda p: report.problems.append(str(p))  # noqa: E731
    mark = _journal_mark(index_dir)  # before the sources are read: later writes are replayed at the swap
    started = time.time_ns()  # ... and a cluster index's journal marks are times
    found, run = _read_all(sources, index_dir, report, strict=strict, full=True, progress=progress, fetch=fetch)
    articles = dedupe_articles(found, sink)
    if not articles:
        raise BadRequest("no articles found in " + ", ".join(sources))
    os.makedirs(index_dir, exist_ok=True)
    check_available(index_dir, settings)  # fail before embedding
    if embedder is None:
        embedder = load_embedder(model, backend)
    model_path = None if embedder.model_name in ("hash",) else resolve_model(model)[0]
    recipe = Manifest(model=embedder.model_name, model_path=model_path if model else None, dim=embedder.dim,
                      embed_backend=getattr(embedder, "backend", backend), data_dir="",
                      chunking=_chunking(embedder.max_tokens))
    if store == "milvus":
        counts, report.replayed = _build_cluster(index_dir, articles, embedder, kind, settings, recipe, started,
                                                 progress)
    else:
        counts, report.replayed = _build_local(index_dir, articles, embedder, kind, settings, recipe, mark,
                                               progress)
    if run is not None:
        run.save()
    report.documents, report.passages = counts.documents, counts.passages
    report.added = len(articles)
    report.seconds = time.perf_counter() - t0
    return report


def _store_choice(index_dir: str, store: str | None, settings: VectorSettings) -> str:
    """Where a build puts the text side: as asked, else as the live index has it, else SQLite; `BadRequest` for an
    unknown store or a Milvus store without Milvus vectors."""
    if store is None:
        try:
            store = Manifest.load(index_dir).store
        except QAError:
            store = "sqlite"
        if store == "milvus" and settings.backend != "milvus":
            store = "sqlite"  # a rebuild asked for FAISS vectors: the text side comes home too
    if store not in STORES:
        raise BadRequest(f"unknown store {store!r}; choose one of {', '.join(STORES)}")
    if store == "milvus" and settings.backend != "milvus":
        raise BadRequest("--store milvus needs the vectors in Milvus too: add --backend milvus (and --milvus-uri)")
    return store


def _build_local(index_dir: str, articles: Sequence[Article], embedder: Embedder, kind: str,
                 settings: VectorSettings, recipe: Manifest, mark: JournalMark | None,
                 progress: bool) -> tuple[Counts, int]:
    """A build into a new data folder (SQLite, tantivy, vectors), swapped in; its counts and the writes replayed."""
    build = _Build(index_dir, os.path.join(index_dir, f".build-{uuid.uuid4().hex[:12]}"))
    try:
        with storage_errors(index_dir):
            os.makedirs(build.folder)
            _fill(build, articles, embedder, kind, settings, progress)
            replayed = _swap(build, mark, embedder, recipe)
    except BaseException:
        build.discard()
        raise
    finally:
        build.close()
    return build.counts, replayed


def _build_cluster(index_dir: str, articles: Sequence[Article], embedder: Embedder, kind: str,
                   settings: VectorSettings, recipe: Manifest, started: int, progress: bool) -> tuple[Counts, int]:
    """A build into new Milvus collections, switched to under the writer lock; its counts and the writes
    replayed. The index kind follows the number of paragraphs (windows are not counted before they are written)."""
    from .cluster.build import ClusterBuild

    resolved = choose_kind(kind, sum(len(a.paragraphs) for a in articles))
    build = ClusterBuild(index_dir, settings, embedder.dim, resolved, started)
    try:
        for prepared in prepare_in_batches(articles, embedder, BUILD_BATCH, progress):
            build.insert(prepared)
        with write_lock(index_dir):
            previous = None
            with contextlib.suppress(QAError):
                previous = Manifest.load(index_dir).data_dir
            stamp = now()
            manifest = dataclasses.replace(recipe, **build.settings.manifest_fields(), store="milvus",
                                           index_kind=resolved, data_dir=build.build, counts=build.store.counts(),
                                           generation=1, built_at=stamp, updated_at=stamp)
            replayed = build.swap(lambda: manifest.save(index_dir))
            manifest.counts, manifest.generation = build.store.counts(), build.store.generation
            manifest.save(index_dir)
            _prune_data_dirs(index_dir, keep=[previous] if previous else [])
    except BaseException:
        build.discard()
        raise
    finally:
        build.close()
    return manifest.counts, replayed


@dataclasses.dataclass
class _Build:
    """A full build under way in its own folder beside the live data folder, until the swap renames it."""

    index_dir: str
    folder: str
    store: Store | None = None
    vectors: VectorBuild | None = None
    lexical: LexicalIndex | None = None
    kind: str = ""  # the index kind chosen for the number of windows
    counts: Counts = dataclasses.field(default_factory=Counts)
    generation: int = 0

    def seal(self) -> None:
        """Save the vectors at the store's generation, count the store and close it, its WAL folded in."""
        self.generation = self.store.generation
        self.vectors.index.save(self.folder, self.generation)  # Milvus: flushed, so searches hit indexed segments
        self.counts = self.store.counts()
        self.store.con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.store.close()

    def discard(self) -> None:
        """After a failure: the build's folder deleted, and its vectors unless they were made live."""
        shutil.rmtree(self.folder, ignore_errors=True)
        if self.vectors is not None:
            self.vectors.discard()

    def close(self) -> None:
        """Release the vector index (a Milvus connection)."""
        if self.vectors is not None:
            self.vectors.index.close()


def _fill(build: _Build, articles: Sequence[Article], embedder: Embedder, kind: str, settings: VectorSettings,
          progress: bool) -> None:
    """Embed the articles into the build's new store, then derive its vector and lexical indexes from it."""
    build.store = Store(os.path.join(build.folder, STORE_FILE), create=True)
    _embed_into(build.store, articles, embedder, progress)
    windows = build.store.counts().windows
    build.kind = choose_kind(kind, windows)
    # the live index and manifest are untouched until the swap
    build.vectors = begin_build(build.index_dir, settings, embedder.dim, build.kind, build.store, windows)
    fill(build.vectors.index, build.store, embedder.dim)
    build.lexical = LexicalIndex.create(os.path.join(build.folder, LEXICAL_DIR))
    build.lexical.rebuild(build.store)
    build.seal()


def _swap(build: _Build, mark: JournalMark | None, embedder: Embedder, recipe: Manifest) -> int:
    """Under the writer lock: replay the writes made to the live index meanwhile, rename the build's folder into
    place and publish it with the new manifest; the number of writes replayed."""
    index_dir = build.index_dir
    data_dir = f"data-{dt.datetime.now().strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"
    with write_lock(index_dir):
        replayed = _replay(index_dir, mark, build.store, build.vectors.index, build.lexical, embedder)
        if replayed:
            build.seal()
        os.replace(build.folder, os.path.join(index_dir, data_dir))
        previous = None
        with contextlib.suppress(QAError):
            previous = Manifest.load(index_dir).data_dir
        stamp = now()
        manifest = dataclasses.replace(recipe, **build.vectors.settings.manifest_fields(), index_kind=build.kind,
                                       data_dir=data_dir, counts=build.counts, generation=build.generation,
                                       built_at=stamp, updated_at=stamp)
        build.vectors.publish(lambda: manifest.save(index_dir))
        # the previous folder (and collection) stays one round for servers still loading it
        _prune_data_dirs(index_dir, keep=[data_dir] + ([previous] if previous else []))
    return replayed


# --- load --------------------------------------------------------------------------------------------------

def positions_in(keys: np.ndarray, ids: Sequence[int] | np.ndarray) -> np.ndarray:
    """Each of `ids`'s position in the ascending `keys`, -1 where it is not there."""
    ids = np.asarray(ids, np.int64)
    if not len(keys):
        return np.full(len(ids), -1, np.intp)
    at = np.minimum(np.searchsorted(keys, ids), len(keys) - 1)
    return np.where(keys[at] == ids, at, -1)


class PassageCosines(NamedTuple):
    """Every passage's best window cosine with one query (`Index.passage_cosines`)."""

    passages: np.ndarray  # rowids, ascending
    best: np.ndarray

    def top(self, k: int) -> list[tuple[int, float]]:
        """The k best (rowid, cosine), ties by rowid."""
        return top_of(self.passages, self.best, k)

    def of(self, rowids: Sequence[int]) -> dict[int, float]:
        """The cosines of some passages, by rowid (those without windows left out)."""
        at = positions_in(self.passages, rowids)
        found = at >= 0
        return dict(zip(np.asarray(rowids, np.int64)[found].tolist(), self.best[at[found]].tolist()))


class WindowLayout(NamedTuple):
    """Where each passage's windows lie in the vector index's storage order, for `Index.passage_cosines`."""

    ids: np.ndarray  # the vector index's `stored_ids` it was made from
    order: np.ndarray  # storage positions, passage by passage
    starts: np.ndarray  # where each passage's positions begin in `order`
    passages: np.ndarray  # their rowids, ascending

    @classmethod
    def of(cls, ids: np.ndarray, owners: np.ndarray) -> WindowLayout:
        """From the stored window ids and their passages' rowids (-1: none, left out)."""
        order = np.argsort(owners, kind="stable")
        order = order[owners[order] >= 0]
        owned = owners[order]
        starts = run_starts(owned)
        return cls(ids, order, starts, owned[starts])


class Index:
    """A loaded index folder: manifest, store, vector and lexical indexes and the window → passage map. Read-only."""

    def __init__(self, index_dir: str, manifest: Manifest, store: Store, vectors: VectorIndex,
                 window_ids: np.ndarray, window_passages: np.ndarray, embedder: Embedder | None,
                 lexical: LexicalIndex):
        self.index_dir = index_dir
        self.manifest = manifest
        self.store = store
        self.vectors = vectors
        self.window_ids = window_ids
        self.window_passages = window_passages
        self.embedder = embedder
        self.lexical = lexical
        self.dim = int(manifest.dim)
        self._layout: WindowLayout | None = None

    @property
    def passage_count(self) -> int:
        return int(self.manifest.counts.passages)

    @property
    def scores_from_words(self) -> bool:
        """Whether `lexical_scores` scores the passages' stored words rather than asking tantivy: in a store that
        has them, once the collection is big enough for that to cost less (`WORDS_FROM`)."""
        return self.store.has_words and self.passage_count >= WORDS_FROM

    def passage_cosines(self, qvec: np.ndarray) -> PassageCosines | None:
        """Every passage's best window cosine with a query when the vector index is exact (flat), else None. Its
        search scores every window anyway: kept whole, it gives the dense candidates and every other candidate's
        dense signal in one pass (docs/ranking.md#candidates)."""
        layout = self.window_layout()
        if layout is None:
            return None
        scores = self.vectors.inner_products(qvec)
        return PassageCosines(layout.passages, np.maximum.reduceat(scores[layout.order], layout.starts))

    def window_layout(self) -> WindowLayout | None:
        """`passage_cosines`' layout of the windows, made once for the vector index's current storage (None when it
        is not exact). `Engine` makes it before a loaded index goes live, so no search pays for its sort."""
        stored = self.vectors.stored_ids()
        if stored is None:
            return None
        layout = self._layout
        if layout is None or layout.ids is not stored:
            layout = self._layout = WindowLayout.of(stored, self.passages_of_windows(stored))
        return layout

    def passages_of_windows(self, ids: np.ndarray) -> np.ndarray:
        """Passage row ids of window ids (-1 where unknown)."""
        at = positions_in(self.window_ids, ids)
        found = at >= 0
        out = np.full(len(at), -1, np.int64)
        out[found] = self.window_passages[at[found]]
        return out

    def lexical_search(self, terms: Sequence[str], limit: int,
                       filters: Filters | None = None) -> list[tuple[int, float]]:
        """BM25 top `limit` (passage rowid, score)."""
        return self.lexical.search(terms, limit, filters)

    def lexical_scores(self, terms: Sequence[str], rowids: Sequence[int],
                       pairs: Sequence[tuple[str, str, int]] = ()) -> dict[int, float]:
        """Exact BM25 of given passages (0 where no term matches), with term proximity when the query's word
        `pairs` are given: from their stored words (`qa.words`), or from tantivy for a store without them."""
        if not self.scores_from_words:
            found = self.lexical.scores(terms, rowids, pairs)
            return {rid: found.get(rid, 0.0) for rid in rowids}
        tokens = self.lexical.tokens(terms)
        words = self.store.passage_words(rowids) if tokens else None
        if words is None or not len(words.ids):
            return {rid: 0.0 for rid in rowids}
        passages = self.lexical.num_docs
        query = LexicalQuery.of(tokens, self.lexical.body_doc_freqs(tokens), self.lexical.token_pairs(pairs),
                                passages, self.store.total_words() / max(passages, 1))
        scores = proximity_scores(query, PassageWords.of(words, self.store.word_ids(tokens), query.words))
        found = dict(zip(words.rowids.tolist(), scores.tolist()))
        return {rid: found.get(rid, 0.0) for rid in rowids}

    def doc_freqs(self, terms: Sequence[str]) -> dict[str, int]:
        """Passages holding each term."""
        return self.lexical.doc_freqs(terms)

    @property
    def degraded(self) -> list[str]:
        """Why this index serves from files rebuilt in memory (a damaged or stale vector or lexical file)."""
        return [why for why in (getattr(self.vectors, "rebuilt", None), self.lexical.rebuilt) if why]

    def close(self) -> None:
        self.store.close()
        self.vectors.close()


def data_folder(index_dir: str, manifest: Manifest) -> str:
    """The live data folder a manifest names, which must be there."""
    data = os.path.join(index_dir, manifest.data_dir)
    if not os.path.isdir(data):
        raise IndexUnavailable(f"data folder {data} missing; rebuild: qa build SOURCE... --index-dir {index_dir}")
    return data


def open_data(index_dir: str, manifest: Manifest, *, readonly: bool = True,
              store: Store | None = None) -> tuple[Store, VectorIndex]:
    """The store and vector index of the live data folder, the vectors brought up to the store if out of date.

    FAISS is rebuilt in memory; a Milvus collection is resynced in place by writers (`readonly=False`, under the
    write lock) and used as it is by readers.
    """
    data = data_folder(index_dir, manifest)
    if store is None or store.path != os.path.join(data, STORE_FILE):
        store = Store(os.path.join(data, STORE_FILE), readonly=readonly)
    try:
        return store, open_synced(index_dir, manifest, data, store, readonly=readonly)
    except IndexUnavailable:  # a Milvus collection cannot be conjured from here: say why
        store.close()
        raise


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
    if manifest.store not in STORES:
        raise IndexUnavailable(f"unknown store {manifest.store!r} in the manifest of {index_dir}; choose one of "
                               f"{', '.join(STORES)} and rebuild")
    if manifest.store == "milvus":
        from .cluster.index import load_cluster

        return load_cluster(index_dir, manifest, embedder, store)
    try:
        store, vectors = open_data(index_dir, manifest, store=store)
        lexical = LexicalIndex.open(os.path.join(index_dir, manifest.data_dir), store)
        windows = store.window_map()
    except (OSError, ValueError, KeyError) as e:
        raise IndexUnavailable(f"index in {index_dir} unreadable ({e}); rebuild: qa build SOURCE... "
                               f"--index-dir {index_dir}") from None
    except Exception as e:  # sqlite3.DatabaseError and FAISS errors on a corrupt folder
        if isinstance(e, QAError):
            raise
        raise IndexUnavailable(f"index in {index_dir} is corrupt ({type(e).__name__}: {e}); rebuild: "
                               f"qa build SOURCE... --index-dir {index_dir}") from None
    return Index(index_dir, manifest, store, vectors, windows.ids, windows.passages, embedder, lexical)


def describe_index(index_dir: str) -> Manifest:
    """The manifest as `qa stats` shows it: a cluster index's with the live build's counts and generation (as
    recorded when Milvus cannot be read now, e.g. a Milvus Lite database another process holds)."""
    manifest = Manifest.load(index_dir)
    if manifest.store != "milvus":
        return manifest
    from .cluster.index import live_manifest

    try:
        return live_manifest(index_dir, manifest)
    except QAError as e:
        log.warning("%s; showing the manifest as recorded", e)
        return manifest


def embedder_for(manifest: Manifest, backend: str | None = None) -> Embedder:
    """The embedder an index was built with."""
    model = manifest.model_path or (manifest.model if manifest.model == "hash" else None)
    return load_embedder(model, backend or manifest.embed_backend)


# --- incremental updates -----------------------------------------------------------------------------------

def _changed(store: Store, articles: Sequence[Article], report: Report) -> list[Article]:
    """The articles whose content the store does not hold yet, each counted in `report` (added, updated or
    unchanged by content hash)."""
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
    return changed


def _check_stored(store: Store, doc_ids: Sequence[str]) -> None:
    """`NotFound` naming the first ids the store does not hold."""
    missing = [d for d in doc_ids if store.content_hash(d) is None]
    if missing:
        raise NotFound("no such document: " + ", ".join(missing[:5]))


def _record(index_dir: str, manifest: Manifest, store: Store, vectors: VectorIndex) -> Counts:
    """After a write: save the vectors at the store's generation, then the manifest with the new counts."""
    generation = store.generation
    vectors.save(os.path.join(index_dir, manifest.data_dir), generation)
    manifest.counts = store.counts()
    manifest.generation = generation
    manifest.updated_at = now()
    manifest.save(index_dir)
    return manifest.counts


def _apply(index_dir: str, embedder: Embedder | None, articles: Sequence[Article], removals: Sequence[str],
           report: Report) -> Report:
    """Under the writer lock: write articles and removals to the store, then the vectors, then the manifest."""
    t0 = time.perf_counter()
    with storage_errors(index_dir), write_lock(index_dir):
        manifest = Manifest.load(index_dir)
        write = _apply_cluster if manifest.store == "milvus" else _apply_local
        counts = write(index_dir, manifest, embedder, articles, removals, report)
        report.documents, report.passages = counts.documents, counts.passages
    report.seconds = time.perf_counter() - t0
    return report


def _apply_local(index_dir: str, manifest: Manifest, embedder: Embedder | None, articles: Sequence[Article],
                 removals: Sequence[str], report: Report) -> Counts:
    """`_apply` on the index folder's store, vectors and lexical index; the counts after."""
    store, vectors = open_data(index_dir, manifest, readonly=False)
    try:
        lexical = LexicalIndex.open(os.path.join(index_dir, manifest.data_dir), store, readonly=False)
        changed = _changed(store, articles, report)
        _check_stored(store, removals)
        if changed or removals:
            if changed and embedder is None:
                embedder = embedder_for(manifest)
            _write(store, vectors, lexical, prepare_articles(changed, embedder) if changed else [], removals)
            report.removed = len(removals)
            return _record(index_dir, manifest, store, vectors)
        if store.generation != manifest.generation:
            # an earlier write reached the store but not its files (a full disk): finish it, so that running the
            # command again once there is space leaves the folder whole
            return _record(index_dir, manifest, store, vectors)
        return store.counts()
    finally:
        store.close()
        vectors.close()


def _apply_cluster(index_dir: str, manifest: Manifest, embedder: Embedder | None, articles: Sequence[Article],
                   removals: Sequence[str], report: Report) -> Counts:
    """`_apply` on a cluster index: idempotent writes to the live build in Milvus (`qa.cluster.build.write_cluster`),
    then the manifest; the counts after."""
    from .cluster.build import write_cluster
    from .cluster.index import open_store

    store = open_store(index_dir, manifest)
    try:
        changed = _changed(store, articles, report)
        _check_stored(store, removals)
        if changed or removals:
            if changed and embedder is None:
                embedder = embedder_for(manifest)
            prepared = prepare_articles(changed, embedder) if changed else []
            store = write_cluster(store, prepared, removals, lambda: open_store(index_dir, manifest))
            report.removed = len(removals)
        manifest.counts = store.counts()
        manifest.generation, manifest.updated_at = store.generation, now()
        manifest.milvus_collection = manifest.data_dir = store.build
        manifest.save(index_dir)
        return manifest.counts
    finally:
        store.windows.close()


def add_documents(sources: Sequence[str] | None, index_dir: str, *, articles: Sequence[Article] = (),
                  embedder: Embedder | None = None, strict: bool = False, progress: bool = False,
                  fetch: FetchOptions | None = None) -> Report:
    """Add or update documents from sources (and/or given articles); unchanged ones are skipped by content hash.
    URLs and feeds are fetched with conditional requests; a source that fails leaves its documents as they are."""
    report = Report(index_dir=index_dir)
    sink = lambda p: report.problems.append(str(p))  # noqa: E731
    found, run = _read_all(sources or [], index_dir, report, strict=strict, full=False, progress=progress,
                           fetch=fetch)
    _apply(index_dir, embedder, dedupe_articles([*found, *articles], sink), [], report)
    if run is not None:
        run.save()
    return report


def remove_documents(doc_ids: Sequence[str], index_dir: str) -> Report:
    """Delete documents by id; unknown ids raise `NotFound` and nothing is removed."""
    return _apply(index_dir, None, [], list(dict.fromkeys(doc_ids)), Report(index_dir=index_dir))


class Upgrade(NamedTuple):
    """What `upgrade_index` added: the passages whose words it stored (0: the index was up to date)."""

    passages: int
    seconds: float


def upgrade_index(index_dir: str) -> Upgrade:
    """Bring an index made by an earlier version to this version's store in place, under the writer lock and
    without embedding again: each passage's words, which the exact BM25 uses at scale (`Index.scores_from_words`).
    A cluster index keeps its passages' analysed words already."""
    t0 = time.perf_counter()
    Manifest.load(index_dir)  # no index: say so before the lock makes its folder
    with storage_errors(index_dir), write_lock(index_dir):
        manifest = Manifest.load(index_dir)
        if manifest.store == "milvus":
            return Upgrade(0, time.perf_counter() - t0)
        store = Store(os.path.join(data_folder(index_dir, manifest), STORE_FILE))
        try:
            passages = store.add_words()
        finally:
            store.close()
    return Upgrade(passages, time.perf_counter() - t0)


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
    if manifest.store == "milvus":
        from .cluster.index import check_cluster

        return check_cluster(index_dir, manifest)
    data = os.path.join(index_dir, manifest.data_dir)
    try:
        store = Store(os.path.join(data, STORE_FILE), readonly=True)
        counts = store.counts()
        integrity = store.con.execute("PRAGMA integrity_check").fetchone()[0]
        if integrity != "ok":
            problems.append(f"store integrity check: {integrity}")
        window_ids = store.window_passages().ids
        problems += _check_lexical(data, store, counts.passages)
        if untokened := store.count_passages_without_tokens():
            problems.append(f"{untokened} passages have no stored word-piece vectors")
        problems += store.word_problems()
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
        problems += check_vectors(index_dir, manifest, vectors)
    finally:
        vectors.close()
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
