"""The passage store (SQLite: documents, passages, sentences, vectors, journal) of one data folder.

The index folder holds `manifest.json` and one data folder per full build (`data-<timestamp>/`); the manifest names
the live one. A full build writes a new data folder and swaps the manifest atomically; incremental writes change
the live data folder in SQLite transactions and are journaled, so a full build can replay those made meanwhile.
SQLite is the source of truth: it keeps every vector and text, so the vector index and the lexical index are derived
copies that can always be rebuilt from it without re-embedding.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from .chunk import Passage, Span, passage_id
from .config import ROW_CACHE_SHARE
from .embed.base import TextTokens
from .errors import IndexUnavailable
from .ingest import Article, Paragraph
from .manifest import Counts
from .process import machine_memory
from .rowcache import ROW_CACHE_BYTES, RowCache, TableRows, WordRows, passage_runs, row_ranges
from .text import fold_case
from .words import DROPPED, Analyzer, StoredWords

if TYPE_CHECKING:
    from .prepare import PreparedArticle

log = logging.getLogger(__name__)

STORE_FILE = "store.sqlite"
# Journal entries kept in a live store. A full build replays the entries written after it read its sources, so this
# bounds how many writes a build may overlap; a build that finds its entries pruned fails instead of losing them.
# Entries are article JSON, small beside the vectors the same writes add, and each full build starts a new, empty
# journal.
JOURNAL_KEEP = 10_000
READ_CACHE_KIB = 2048  # page cache of each reading connection (one per serving thread)
# row ids as one JSON parameter: one SQL text whatever their number, so each connection's statement cache holds one
# prepared statement per query, not one per list length (which grew a serving process by megabytes)
IN_IDS = "IN (SELECT value FROM json_each(?))"


def ids_param(rowids: Iterable[int]) -> str:
    """Row ids as the JSON array `IN_IDS` takes."""
    return json.dumps([int(r) for r in rowids])

WORDS_TABLES = ("CREATE TABLE IF NOT EXISTS words (id INTEGER PRIMARY KEY, word TEXT NOT NULL UNIQUE)",
                "CREATE TABLE IF NOT EXISTS passage_words (passage INTEGER PRIMARY KEY REFERENCES passages(id) "
                "ON DELETE CASCADE, indexed INTEGER NOT NULL, ids BLOB NOT NULL)")
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    doc_id TEXT PRIMARY KEY, title TEXT NOT NULL, source TEXT, author TEXT, url TEXT, published TEXT,
    tags TEXT NOT NULL DEFAULT '[]', path TEXT, content_hash TEXT NOT NULL, n_passages INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS passages (
    id INTEGER PRIMARY KEY, passage_id TEXT NOT NULL UNIQUE,
    doc_id TEXT NOT NULL REFERENCES documents(doc_id) ON DELETE CASCADE,
    paragraph_index INTEGER NOT NULL, text TEXT NOT NULL, char_start INTEGER NOT NULL, char_end INTEGER NOT NULL,
    vec BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS passages_doc ON passages(doc_id);
CREATE TABLE IF NOT EXISTS windows (
    id INTEGER PRIMARY KEY AUTOINCREMENT, passage INTEGER NOT NULL REFERENCES passages(id) ON DELETE CASCADE,
    start INTEGER NOT NULL, end INTEGER NOT NULL, vec BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS windows_passage ON windows(passage);
CREATE TABLE IF NOT EXISTS passage_sentences (
    passage INTEGER PRIMARY KEY REFERENCES passages(id) ON DELETE CASCADE, spans BLOB NOT NULL, vecs BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS passage_tokens (
    passage INTEGER PRIMARY KEY REFERENCES passages(id) ON DELETE CASCADE, offsets BLOB NOT NULL,
    scales BLOB NOT NULL, vecs BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, op TEXT NOT NULL, doc_id TEXT NOT NULL, article TEXT);
""" + ";\n".join(WORDS_TABLES) + ";\n"
# removed_passages: the ids of the passages each recent write removed, by the generation it made, so a row cache
# carried over to a newer generation drops their rows without looking up every row it holds (`Store.removed_since`)
REMOVALS_TABLE = """CREATE TABLE IF NOT EXISTS removed_passages (
    generation INTEGER NOT NULL, id INTEGER NOT NULL, PRIMARY KEY (generation, id)) WITHOUT ROWID"""
WORD_IDS_KEEP = 250_000  # the vocabulary ids a store keeps in memory (about 30 MB at most)
REMOVALS_KEEP = 1_000  # the generations whose removals the log keeps: a cache further behind looks its rows up
# passage_sentences: a passage's sentences in one row, their (start, end) as int32 pairs and their vectors as
# float16, in order, so a query's shortlist reads one row per passage (see docs/performance.md).
# passage_tokens: a passage's word pieces as the build read them (contextual, after the title), so an answer aligns
# them without a forward pass: (start, end) as int32 pairs, vectors as int8 with one float32 scale each.
# words, passage_words: a passage's words as BM25 sees them (`qa.words.Analyzer`), in position order, as int32 ids
# of the vocabulary in `words` (-1 for a word too long to index), and how many of them are indexed; meta's
# 'words_total' sums those counts over the passages, for the average length. Stores made before them have neither
# (meta 'words' unset) until `qa upgrade` (`add_words`): their exact BM25 comes from tantivy (`Index.lexical_scores`).
# journal: every incremental write, in commit order: 'upsert' with the article as JSON, or 'remove'.


@dataclasses.dataclass
class StoredPassage:
    """A passage as stored, with its document's metadata for citations."""

    rowid: int
    passage_id: str
    doc_id: str
    paragraph_index: int
    text: str
    char_start: int
    char_end: int
    title: str
    source: str | None
    author: str | None
    url: str | None
    published: str | None

    # the fields of each citation object of the API, in their order: a hit's, an answer's (after its number "n"),
    # and a duplicate's (a copy of a hit in another document)
    CITATION_FIELDS = ("title", "source", "author", "url", "published", "paragraph_index", "char_start", "char_end")
    ANSWER_CITATION_FIELDS = ("passage_id", "doc_id", "paragraph_index", "title", "source", "author", "url",
                              "published")
    DUPLICATE_FIELDS = ("passage_id", "doc_id", "title", "source", "url", "published")

    def citation(self, fields: Sequence[str] = CITATION_FIELDS) -> dict:
        """A citation object of the API: these fields of the passage, in this order (a hit's citation by default)."""
        return {name: getattr(self, name) for name in fields}

    @classmethod
    def from_row(cls, row: tuple) -> StoredPassage:
        """A passage from its store row (the fields in order) followed by its `words_hash`, which the row keeps: a
        cached passage is compared again by later searches."""
        passage = cls(*row[:-1])
        passage.__dict__["words_hash"] = row[-1]  # where the cached property keeps its value
        return passage

    def words(self) -> tuple[str, ...]:
        """The text's words, lower-cased: the same for copies that differ only in spacing and case."""
        return words_of(self.text)

    @functools.cached_property
    def words_hash(self) -> int:
        """The hash of `words()`."""
        return words_hash(self.text)


def words_of(text: str) -> tuple[str, ...]:
    """A text's words, lower-cased (`StoredPassage.words`)."""
    return tuple(text.lower().split())


def words_hash(text: str) -> int:
    """The hash of a text's `words_of`."""
    return hash(words_of(text))


@dataclasses.dataclass
class Filters:
    """Search filters, applied before the top-k cut."""

    source: str | None = None
    doc_id: str | None = None
    published_after: str | None = None
    published_before: str | None = None

    def __bool__(self) -> bool:
        return any(v is not None for v in dataclasses.astuple(self))

    def sql(self, alias: str = "d") -> tuple[str, list]:
        """A WHERE fragment over the documents table and its parameters."""
        clauses, params = [], []
        if self.source is not None:
            clauses.append(f"{alias}.source = ? COLLATE NOCASE")
            params.append(self.source)
        if self.doc_id is not None:
            clauses.append(f"{alias}.doc_id = ?")
            params.append(self.doc_id)
        if self.published_after is not None:
            clauses.append(f"{alias}.published >= ?")
            params.append(self.published_after)
        if self.published_before is not None:
            clauses.append(f"{alias}.published <= ?")
            params.append(self.published_before)
        return " AND ".join(clauses) or "1", params


class PassageRow(NamedTuple):
    """A passage with its document's fields, as the lexical index and the vector filters take it."""

    rowid: int
    doc_id: str
    source: str | None
    published: str | None
    title: str
    text: str


class WindowBatch(NamedTuple):
    """Some windows: their ids, their passages' rowids and their vectors, row for row."""

    ids: np.ndarray
    passages: np.ndarray
    vectors: np.ndarray


class WindowMap(NamedTuple):
    """Every window id, in order, and its passage's rowid."""

    ids: np.ndarray
    passages: np.ndarray


class GenerationWindows(NamedTuple):
    """The window map of one store generation (`Store.window_map`)."""

    generation: int
    windows: WindowMap


def cosines(vectors: np.ndarray, scales: np.ndarray | None, query: np.ndarray) -> np.ndarray:
    """Each row's dot product with `query`: `vectors` float32, or int8 codes with their `scales` (`quantize`),
    scaled after the product rather than decoded first (a pass over the matrix less)."""
    if scales is None:
        return vectors @ query
    return (vectors.astype(np.float32) @ query) * scales


class PassageWindows(NamedTuple):
    """The windows of some passages: each one's passage rowid and vector, row for row."""

    passages: np.ndarray
    vectors: np.ndarray  # float32, or int8 codes with `scales`
    scales: np.ndarray | None = None

    def cosines(self, query: np.ndarray) -> np.ndarray:
        return cosines(self.vectors, self.scales, query)


class SentenceRows(NamedTuple):
    """The sentences of some passages, ordered by passage, then position: their vectors, and a row of
    (passage rowid, idx, start, end) each in `meta`."""

    vectors: np.ndarray  # float32, or int8 codes with `scales`
    meta: np.ndarray
    scales: np.ndarray | None = None

    def cosines(self, query: np.ndarray) -> np.ndarray:
        return cosines(self.vectors, self.scales, query)

    @property
    def passages(self) -> np.ndarray:
        """Each sentence's passage rowid."""
        return self.meta[:, 0]

    @property
    def spans(self) -> np.ndarray:
        """Each sentence's (start, end) in its passage's text."""
        return self.meta[:, 2:]


# Vectors as the row cache keeps them: (codes, scales), int8 codes with one float32 scale a row (`quantize`), a quarter
# of float32's memory; every read decodes them alike, cached or not (docs/performance.md#row-cache). A plain tuple of
# arrays, which the garbage collector stops tracking (docs/performance.md#garbage-collection).
Int8Rows = tuple[np.ndarray, np.ndarray]
# One passage's sentences as the row cache keeps them: (meta, codes, scales), its rows (passage rowid, idx, start,
# end; int64, as `SentenceRows.meta` joins them) and their vectors as `Int8Rows` (float16 as stored).
PassageSentences = tuple[np.ndarray, np.ndarray, np.ndarray]


class Warmed(NamedTuple):
    """What `Store.prewarm` loaded into the row cache."""

    passages: int  # passages whose rows it loaded
    total: int  # passages in the store
    cached_bytes: int  # the cache's size after it
    seconds: float


class DocumentPage(NamedTuple):
    """A page of documents (`Store.documents`) and how many there are in all."""

    total: int
    documents: list[dict]


class OutletCount(NamedTuple):
    """An outlet (a document's `source`; None for documents without one) and how many documents it has."""

    source: str | None
    documents: int


@dataclasses.dataclass
class Written:
    """What a store write changed: the windows it added (ids and vectors, row for row) and the ids of those it
    removed."""

    added_ids: list[int] = dataclasses.field(default_factory=list)
    added_vectors: list[np.ndarray] = dataclasses.field(default_factory=list)
    removed: list[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class JournalEntry:
    """One journaled write: `article` for an upsert, None for a removal."""

    seq: int
    op: str
    doc_id: str
    article: Article | None


def _article_json(article: Article) -> str:
    return json.dumps({**article.to_dict(), "path": article.path}, ensure_ascii=False)


def _journal_article(text: str) -> Article:
    """The exact inverse of `_article_json` (not `article_from_dict`, which re-cleans and renumbers paragraphs)."""
    obj = json.loads(text)
    paragraphs = [Paragraph(i, t) for i, t in zip(obj["paragraph_indexes"], obj["paragraphs"])]
    return Article(id=obj["id"], title=obj["title"], paragraphs=paragraphs, source=obj["source"],
                   author=obj["author"], url=obj["url"], published=obj["published"], tags=obj["tags"],
                   path=obj["path"])


def to_blob(vec: np.ndarray) -> bytes:
    """float32 bytes of a vector."""
    return np.asarray(vec, dtype=np.float32).tobytes()


def to_half_blob(vec: np.ndarray) -> bytes:
    """float16 bytes of a vector: sentence vectors, read by the hundred per query, are kept at half size (their
    rows then fit in SQLite's b-tree pages without overflow pages; cosines move by about 1e-3)."""
    return np.asarray(vec, dtype=np.float16).tobytes()


def quantize(vecs: np.ndarray) -> Int8Rows:
    """Vectors (rows x dim) as int8 codes with one float32 scale a row, its largest magnitude over 127: cosines
    move by about 1e-3."""
    vecs = np.asarray(vecs, np.float32)
    scales = np.maximum(np.abs(vecs).max(axis=1, initial=0.0), 1e-12) / 127.0
    return np.rint(vecs / scales[:, None]).astype(np.int8), scales.astype(np.float32)


def dequantize(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """`quantize`'s rows back as float32."""
    vecs = codes.astype(np.float32)
    vecs *= scales[:, None]
    return vecs


def token_blobs(tokens: TextTokens) -> tuple[bytes, bytes, bytes]:
    """A passage's word pieces as stored: offsets as int32 pairs, vectors as int8 with one float32 scale each
    (`quantize`)."""
    codes, scales = quantize(tokens.vectors)
    return np.asarray(tokens.offsets, np.int32).tobytes(), scales.tobytes(), codes.tobytes()


def from_token_blobs(offsets: bytes, scales: bytes, vecs: bytes, dim: int) -> TextTokens:
    """`token_blobs` read back: float32 vectors and int64 offsets."""
    scale = np.frombuffer(scales, np.float32)
    codes = np.frombuffer(vecs, np.int8).reshape(len(scale), dim)
    return TextTokens(dequantize(codes, scale), np.frombuffer(offsets, np.int32).reshape(-1, 2).astype(np.int64))


def from_blobs(blobs: Sequence[bytes], dim: int) -> np.ndarray:
    """A float32 matrix from float32 vector blobs (`to_blob`)."""
    if not blobs:
        return np.zeros((0, dim), np.float32)
    return np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), dim)


def _mark_words(con: sqlite3.Connection) -> None:
    """Mark a store as keeping every passage's words, none counted yet: a new store's, or one's whose words are
    about to be stored."""
    con.execute("INSERT OR REPLACE INTO meta VALUES ('words', '1'), ('words_total', '0')")


def _immutable(path: str) -> str:
    """"&immutable=1" for a store on a read-only file system with its WAL folded in: SQLite cannot create the WAL
    index a reader needs there (it answers "unable to open database file"), and such a file cannot change."""
    try:
        readonly_fs = bool(os.statvfs(os.path.dirname(path) or ".").f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return ""
    wal = path + "-wal"
    return "&immutable=1" if readonly_fs and (not os.path.exists(wal) or os.path.getsize(wal) == 0) else ""


class Store:
    """The SQLite passage store of one data folder. One connection per thread; writes in transactions."""

    def __init__(self, path: str, *, readonly: bool = False, create: bool = False):
        if not create and not os.path.exists(path):
            raise IndexUnavailable(f"passage store missing: {path}")
        self.path = path
        self.readonly = readonly
        self._local = threading.local()
        self._connections: list[tuple[threading.Thread, sqlite3.Connection]] = []  # each thread's, see __del__
        self._connections_lock = threading.Lock()
        self._rows: RowCache | None = None  # decoded rows of one generation, shared by reading threads
        self._rows_lock = threading.Lock()
        self._windows: GenerationWindows | None = None  # the last `window_map`, carried over to the next generation
        self._windows_lock = threading.Lock()
        self.row_cache_bytes = ROW_CACHE_BYTES
        self.row_cache_floor: int | None = None  # an automatic budget: the budget if the rows do not fit (`prewarm`)
        self._word_ids: dict[str, int] = {}  # the vocabulary ids queries have asked for (`word_ids`)
        self._vocabulary_read = False  # `_read_vocabulary`
        if create:
            self.con.executescript(SCHEMA)  # executescript manages its own transaction
            self.con.execute("INSERT OR IGNORE INTO meta VALUES ('generation', '0')")
            if not self.con.execute("SELECT 1 FROM passages LIMIT 1").fetchone():  # every passage will have words
                _mark_words(self.con)

    @property
    def con(self) -> sqlite3.Connection:
        """This thread's connection."""
        con = getattr(self._local, "con", None)
        if con is None:
            if self.readonly:
                con = sqlite3.connect(f"file:{self.path}?mode=ro{_immutable(self.path)}", uri=True,
                                      check_same_thread=False, timeout=30)
            else:
                con = sqlite3.connect(self.path, check_same_thread=False, timeout=60, isolation_level=None)
                con.execute("PRAGMA journal_mode=WAL")
                con.execute("PRAGMA synchronous=NORMAL")
            con.execute("PRAGMA foreign_keys=ON")
            if self.readonly:
                # a serving process has a connection per thread, and mapped pages count in its RSS once per
                # connection: read through a small cache instead, at little cost (docs/operations.md#memory)
                con.execute("PRAGMA mmap_size=0")
                con.execute(f"PRAGMA cache_size=-{READ_CACHE_KIB}")
            else:
                con.execute("PRAGMA mmap_size=1073741824")  # a writer: one connection, pages read by mapping
                con.execute("PRAGMA cache_size=-65536")  # 64 MiB
            self._local.con = con
            with self._connections_lock:  # and close those of threads that have ended
                kept = []
                for thread, other in self._connections:
                    if thread.is_alive():
                        kept.append((thread, other))
                    else:
                        other.close()
                self._connections = kept + [(threading.current_thread(), con)]
        return con

    def close(self) -> None:
        """Close this thread's connection."""
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None
            with self._connections_lock:
                self._connections = [(t, c) for t, c in self._connections if c is not con]

    def __del__(self) -> None:
        # A sqlite3 connection sits in a reference cycle with its statement cache, so only the cyclic garbage
        # collector would free it: a server's old connections piled up after each swap (see docs/operations.md#memory).
        # Nothing can use this store any more: close every thread's connection now.
        for _, con in getattr(self, "_connections", ()):
            with contextlib.suppress(Exception):
                con.close()

    @contextlib.contextmanager
    def snapshot(self):
        """A consistent read snapshot across several statements (WAL readers see one committed state), so a
        writer committing in the middle of a search cannot remove rows between two of its reads."""
        con = self.con
        if con.in_transaction:
            yield con
            return
        con.execute("BEGIN")
        self._local.generation = -1  # the snapshot's, read when its rows are first asked for (`_snapshot_rows`)
        try:
            yield con
        finally:
            self._local.generation = None
            con.execute("COMMIT")  # nothing to commit: ends the read snapshot

    def _snapshot_rows(self) -> RowCache | None:
        """The row cache of this thread's read snapshot's generation; None outside a snapshot (a writer's
        transaction sees its own uncommitted rows) and in a snapshot older than the cache."""
        generation = getattr(self._local, "generation", None)
        if generation is None:
            return None
        if generation < 0:
            generation = self._local.generation = self.generation
        rows = self._rows
        if rows is None or rows.generation < generation:
            with self._rows_lock:  # one thread carries the rows over; the others then take its cache
                rows = self._rows
                if rows is None:
                    rows = self._rows = RowCache(generation, self.row_cache_bytes)
                elif rows.generation < generation:
                    rows = self._rows = rows.carry(generation, self.row_cache_bytes,
                                                   removed=self.removed_since(rows.generation),
                                                   live=self._live_passages)
        return rows if rows.generation == generation else None

    def _live_passages(self, rowids: list[int]) -> Iterable[int]:
        """Those of `rowids` whose passage exists in this thread's snapshot (maybe with others): every passage's id,
        read from a covering index, when they are a good share of the store; else each looked up in the table,
        whose rows hold the texts and vectors (a few microseconds an id)."""
        highest = self.con.execute("SELECT COALESCE(MAX(id), 0) FROM passages").fetchone()[0]
        if 4 * len(rowids) >= highest:
            return [r for (r,) in self.con.execute("SELECT id FROM passages")]
        return [r for (r,) in self.con.execute(f"SELECT id FROM passages WHERE id {IN_IDS}", (ids_param(rowids),))]

    def set_row_budget(self, megabytes: float | None) -> None:
        """The row cache's budget in MiB; None: the automatic one, a share of the machine's memory (`ROW_CACHE_SHARE`)
        when the collection's rows fit in it (`prewarm` finds out), else `ROW_CACHE_MB`."""
        if megabytes is None:
            self.row_cache_bytes = max(int(machine_memory() * ROW_CACHE_SHARE), ROW_CACHE_BYTES)
            self.row_cache_floor = ROW_CACHE_BYTES
        else:
            self.row_cache_bytes, self.row_cache_floor = int(megabytes * (1 << 20)), None

    def carry_rows(self) -> None:
        """Carry the row cache over to the store's latest generation now (`RowCache.carry`), after a write, so
        that no search has to."""
        with self.snapshot():
            self._snapshot_rows()

    def _cached(self, kind: str, rowids: Sequence[int], load: Callable[[list[int]], dict]) -> dict:
        """`load(rowids)` by row id, through the snapshot's row cache when there is one."""
        rows = self._snapshot_rows()
        return load(list(rowids)) if rows is None else rows.get_many(kind, rowids, load)

    def prewarm(self, dim: int, batch: int = 200, *, words: bool = False) -> Warmed:
        """Decode the rows a search reads (lower-cased texts, sentence rows, windows, passages, their vectors and
        words) of every passage into the row cache: a server's first searches, and its first after a write (which
        starts a new generation's cache), then read none of them from SQLite (docs/performance.md#row-cache). A batch
        at a time, in row id order, each in its own snapshot, until the cache is full. It stops after the first batch
        when the collection's rows would take more than twice the cache (its searches then keep the rows they come
        back to), and when a write starts a newer generation meanwhile. A cache carried over from an earlier
        generation has the rows of the passages read ahead then, and new passages have higher row ids: the walk goes
        on from where it reached (`RowCache.warmed_through`). With `words`, the passages' words too, and the
        vocabulary's ids (`word_ids`)."""
        t0 = time.perf_counter()
        if words:
            self._read_vocabulary()
        total = self.count_passages()
        warmed, last, cache, grew, fresh, tabled = 0, 0, None, 0, False, False
        while True:
            with self.snapshot():
                rows = self._snapshot_rows()
                if rows is None or (cache is not None and rows is not cache):
                    break  # a newer generation: whoever loads it warms it
                if cache is None:
                    last = rows.warmed_through
                    fresh = last == 0  # a first walk: its first batch tells the whole collection's size
                cache = rows
                if rows.used + grew > rows.budget:
                    break  # the next batch would push this one's rows out again
                ids = [r for (r,) in self.con.execute("SELECT id FROM passages WHERE id > ? ORDER BY id LIMIT ?",
                                                      (last, batch))]
                if not ids:
                    for table in rows.tables.values() if fresh else ():
                        table.trim()  # the room reserved from the first batch's rows, which may have had more
                    break
                before = rows.used
                self.folded_texts(ids)
                self.passages(ids)
                blocks = {"sentences": self._sentence_block(ids, dim), "windows": self._window_block(ids, dim),
                          "vector": self._vector_block(ids, dim)}
                if words:
                    blocks["words"] = self._words_block(ids)
                if not warmed:  # the first batch: its rows per passage times the passages, as tables
                    needed = (rows.used - before + sum(b.nbytes for b in blocks.values())) / len(ids) * total
                    if fresh and self.row_cache_floor is not None and needed > rows.budget:
                        self.row_cache_bytes = self.row_cache_floor  # an automatic budget the rows do not fit in
                        rows.shrink(self.row_cache_bytes)
                    # a collection that fits keeps its vectors and sentences in tables (`RowTable`)
                    tabled = bool(rows.tables) or (fresh and needed <= rows.budget)
                for kind, block in blocks.items():
                    if tabled:
                        reserve = int(len(block.meta) / len(ids) * (total - warmed) * 1.05)  # room for the rest
                        rows.add_to_table(kind, block, reserve)
                    else:
                        entries = {"sentences": self._sentence_entries, "words": self._word_entries}.get(
                            kind, self._vector_entries)
                        rows.get_many(kind, ids, lambda _, block=block, entries=entries: entries(block))
                grew, last = rows.used - before, ids[-1]
                warmed += len(ids)
                if warmed == len(ids) and not tabled and grew / len(ids) * total > 2 * rows.budget:
                    break  # a collection far too big to be worth it
                rows.warmed_through = last
        return Warmed(warmed, total, cache.used if cache is not None else 0, time.perf_counter() - t0)

    @contextlib.contextmanager
    def transaction(self):
        """BEGIN IMMEDIATE ... COMMIT, rolled back on error."""
        con = self.con
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    # --- meta ---
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    @property
    def generation(self) -> int:
        """Bumped by every committed write; the FAISS file records the generation it reflects."""
        return int(self.get_meta("generation", "0"))

    @functools.cached_property
    def has_words(self) -> bool:
        """Whether every passage's words are stored (`passage_words`): in every store made since they are."""
        return self.get_meta("words") == "1"

    def total_words(self) -> int:
        """The indexed words of every passage, summed (0 in a store without words)."""
        return int(self.get_meta("words_total", "0"))

    # --- writes ---
    def content_hash(self, doc_id: str) -> str | None:
        row = self.con.execute("SELECT content_hash FROM documents WHERE doc_id = ?", (doc_id,)).fetchone()
        return row[0] if row else None

    def _delete_document(self, con: sqlite3.Connection, doc_id: str, generation: int) -> list[int]:
        """Delete a document with its passages, logging their ids as removed by `generation`; its window ids."""
        window_ids = [r[0] for r in con.execute(
            "SELECT w.id FROM windows w JOIN passages p ON p.id = w.passage WHERE p.doc_id = ?", (doc_id,))]
        con.execute("INSERT OR IGNORE INTO removed_passages SELECT ?, id FROM passages WHERE doc_id = ?",
                    (generation, doc_id))
        if self.has_words:
            con.execute("UPDATE meta SET value = CAST(value AS INTEGER) - (SELECT COALESCE(SUM(w.indexed), 0) FROM "
                        "passage_words w JOIN passages p ON p.id = w.passage WHERE p.doc_id = ?) "
                        "WHERE key = 'words_total'", (doc_id,))
        con.execute("DELETE FROM documents WHERE doc_id = ?", (doc_id,))
        return window_ids

    def write(self, articles: Sequence[PreparedArticle], removals: Sequence[str] = (), *,
              journal: bool = True) -> Written:
        """Remove documents and insert or replace articles in one transaction, journaled unless `journal` is False.
        The windows added come article by article, passage by passage, window by window."""
        written = Written()
        with self.transaction() as con:
            # passage row ids are never given out twice (read before the removals), so a passage's rows never
            # change while its id exists: a row cache keeps them across writes (`RowCache.carry`)
            high = self._passage_high(con)
            ids = itertools.count(high + 1)
            generation = int(con.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0]) + 1
            self._open_removals(con, generation)
            if journal:
                con.executemany("INSERT INTO journal (op, doc_id, article) VALUES (?,?,?)",
                                [("remove", d, None) for d in removals]
                                + [("upsert", p.article.id, _article_json(p.article)) for p in articles])
                con.execute("DELETE FROM journal WHERE seq <= (SELECT MAX(seq) FROM journal) - ?", (JOURNAL_KEEP,))
            for doc_id in removals:
                written.removed += self._delete_document(con, doc_id, generation)
            for prepared in articles:
                written.removed += self._delete_document(con, prepared.article.id, generation)
                self._insert_article(con, prepared, written, ids)
            high = max(high, con.execute("SELECT COALESCE(MAX(id), 0) FROM passages").fetchone()[0])
            con.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                            [("passage_high", str(high)), ("removals_through", str(generation))])
            con.execute("UPDATE meta SET value = ? WHERE key = 'generation'", (str(generation),))
        return written

    @staticmethod
    def _open_removals(con: sqlite3.Connection, generation: int) -> None:
        """Ready the log of removed passage ids for a write making `generation`: it holds the removals of every
        generation after `removals_from` (in meta), the last `REMOVALS_KEEP`. It starts afresh after a write that
        did not log its removals (a store of an earlier version)."""
        con.execute(REMOVALS_TABLE)
        meta = dict(con.execute("SELECT key, value FROM meta WHERE key IN ('removals_from', 'removals_through')"))
        start = int(meta.get("removals_from", -1)) if meta.get("removals_through") == str(generation - 1) else -1
        if start < 0:
            con.execute("DELETE FROM removed_passages")
            start = generation - 1
        if start < generation - REMOVALS_KEEP:
            start = generation - REMOVALS_KEEP
            con.execute("DELETE FROM removed_passages WHERE generation <= ?", (start,))
        if str(start) != meta.get("removals_from"):
            con.execute("INSERT OR REPLACE INTO meta VALUES ('removals_from', ?)", (str(start),))

    def removed_since(self, generation: int) -> list[int] | None:
        """The ids of the passages removed by the writes after `generation`, up to the one this connection sees;
        None when the log of removals does not reach back that far (`_open_removals`)."""
        meta = dict(self.con.execute(
            "SELECT key, value FROM meta WHERE key IN ('generation', 'removals_from', 'removals_through')"))
        if meta.get("removals_through") != meta["generation"] or int(meta["removals_from"]) > generation:
            return None  # a write that did not log its removals came since, or the log starts later
        return [r for (r,) in self.con.execute("SELECT id FROM removed_passages WHERE generation > ?", (generation,))]

    @staticmethod
    def _passage_high(con: sqlite3.Connection) -> int:
        """The highest passage row id ever given out: the recorded one, or a higher one in the table (a store
        written before the record was kept)."""
        recorded = con.execute("SELECT value FROM meta WHERE key = 'passage_high'").fetchone()
        highest = con.execute("SELECT COALESCE(MAX(id), 0) FROM passages").fetchone()[0]
        return max(int(recorded[0]) if recorded else 0, highest)

    def _insert_article(self, con: sqlite3.Connection, prepared: PreparedArticle, written: Written,
                        ids: Iterator[int]) -> None:
        """Insert a document and its passages (row ids from `ids`), windows and sentences; the windows added go to
        `written`."""
        article = prepared.article
        con.execute("INSERT INTO documents VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (article.id, article.title, article.source, article.author, article.url, article.published,
                     json.dumps(article.tags), article.path, article.content_hash(), len(prepared.passages)))
        for passage, wvecs, svecs, tokens in zip(prepared.passages, prepared.window_vectors, prepared.sentence_vectors,
                                                 prepared.token_vectors):
            pvec = wvecs.mean(axis=0)
            pvec = pvec / max(float(np.linalg.norm(pvec)), 1e-12)
            rowid = next(ids)
            con.execute(
                "INSERT INTO passages (id, passage_id, doc_id, paragraph_index, text, char_start, char_end, vec)"
                " VALUES (?,?,?,?,?,?,?,?)",
                (rowid, passage.passage_id, passage.doc_id, passage.paragraph_index, passage.text,
                 passage.char_start, passage.char_end, to_blob(pvec)))
            for (start, end), vec in zip(passage.windows, wvecs):
                cur = con.execute("INSERT INTO windows (passage, start, end, vec) VALUES (?,?,?,?)",
                                  (rowid, start, end, to_blob(vec)))
                written.added_ids.append(cur.lastrowid)
                written.added_vectors.append(vec)
            self._insert_sentences(con, rowid, passage, svecs)
            con.execute("INSERT INTO passage_tokens VALUES (?,?,?,?)", (rowid, *token_blobs(tokens)))
            if self.has_words:
                self._insert_words(con, rowid, article.title, passage.text)

    def add_words(self) -> int:
        """Store every passage's words in a store made before stores kept them, in one transaction (the writer
        lock held: writers open the store again, so each sees the words from then on); the passages done, 0 for a
        store that has them."""
        with self.transaction() as con:
            if self.get_meta("words") == "1":  # read in the transaction: `has_words` keeps what it first read
                return 0
            for statement in WORDS_TABLES:
                con.execute(statement)
            con.execute("DELETE FROM passage_words")  # none without the mark; the vocabulary starts again with them
            con.execute("DELETE FROM words")
            _mark_words(con)
            passages = 0
            for row in self.passage_rows():
                self._insert_words(con, row.rowid, row.title, row.text)
                passages += 1
        self.__dict__.pop("has_words", None)
        return passages

    def _insert_words(self, con: sqlite3.Connection, rowid: int, title: str | None, text: str) -> None:
        """A passage's words as vocabulary ids (new words added to it), counted into meta's 'words_total'."""
        words = self._analyzer.words(title, text)
        distinct = list(dict.fromkeys(w for w in words if w))
        known = dict(con.execute(f"SELECT word, id FROM words WHERE word {IN_IDS}", (json.dumps(distinct),)))
        new = [w for w in distinct if w not in known]
        if new:
            start = con.execute("SELECT COALESCE(MAX(id), -1) + 1 FROM words").fetchone()[0]
            known.update(zip(new, range(start, start + len(new))))
            con.executemany("INSERT INTO words VALUES (?, ?)", [(known[w], w) for w in new])
        ids = np.array([known[w] if w else DROPPED for w in words], np.int32)
        indexed = int(np.count_nonzero(ids != DROPPED))
        con.execute("INSERT INTO passage_words VALUES (?,?,?)", (rowid, indexed, ids.tobytes()))
        con.execute("UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key = 'words_total'", (indexed,))

    @functools.cached_property
    def _analyzer(self) -> Analyzer:
        return Analyzer()

    def _insert_sentences(self, con: sqlite3.Connection, rowid: int, passage: Passage, svecs: np.ndarray) -> None:
        """A passage's sentence spans and vectors, one row per passage."""
        if len(svecs) != len(passage.sentences):
            raise ValueError(f"{passage.passage_id}: {len(svecs)} vectors for {len(passage.sentences)} sentences")
        if passage.sentences:
            con.execute("INSERT INTO passage_sentences VALUES (?,?,?)",
                        (rowid, np.asarray(passage.sentences, np.int32).tobytes(), to_half_blob(svecs)))

    # --- journal ---
    def journal_seq(self) -> int:
        """The last journaled write's seq (0 when none)."""
        return self.con.execute("SELECT COALESCE(MAX(seq), 0) FROM journal").fetchone()[0]

    def journal(self, after: int = 0) -> list[JournalEntry]:
        """The journaled writes with a seq above `after`, in order."""
        rows = self.con.execute("SELECT seq, op, doc_id, article FROM journal WHERE seq > ? ORDER BY seq", (after,))
        return [JournalEntry(seq, op, doc_id, _journal_article(article) if article else None)
                for seq, op, doc_id, article in rows]

    # --- reads ---
    def counts(self) -> Counts:
        """Documents, passages, windows and sentences held."""
        con = self.con
        return Counts(documents=con.execute("SELECT COUNT(*) FROM documents").fetchone()[0],
                      passages=con.execute("SELECT COUNT(*) FROM passages").fetchone()[0],
                      windows=con.execute("SELECT COUNT(*) FROM windows").fetchone()[0],
                      sentences=con.execute("SELECT COALESCE(SUM(length(spans)), 0) / 8 FROM passage_sentences"
                                            ).fetchone()[0])

    def count_passages(self) -> int:
        return self.con.execute("SELECT COUNT(*) FROM passages").fetchone()[0]

    def count_passages_without_tokens(self) -> int:
        """Passages whose word pieces' vectors are missing (a damaged store)."""
        return self.con.execute("SELECT COUNT(*) FROM passages WHERE id NOT IN "
                                "(SELECT passage FROM passage_tokens)").fetchone()[0]

    def word_problems(self) -> list[str]:
        """What disagrees in the stored words (a damaged store): passages without them, or a total that is not
        their sum; none in a store without words."""
        if not self.has_words:
            return []
        problems = []
        if missing := self.con.execute("SELECT COUNT(*) FROM passages WHERE id NOT IN "
                                       "(SELECT passage FROM passage_words)").fetchone()[0]:
            problems.append(f"{missing} passages have no stored words")
        counted = self.con.execute("SELECT COALESCE(SUM(indexed), 0) FROM passage_words").fetchone()[0]
        if counted != self.total_words():
            problems.append(f"the store's word count says {self.total_words()}, its passages hold {counted}")
        return problems

    def passage_rows(self, doc_ids: Sequence[str] | None = None, batch: int = 500) -> Iterator[PassageRow]:
        """Every passage with its document's fields, or some documents' passages."""
        q = ("SELECT p.id, p.doc_id, d.source, d.published, d.title, p.text FROM passages p "
             "JOIN documents d ON d.doc_id = p.doc_id")
        if doc_ids is None:
            yield from map(PassageRow._make, self.con.execute(q + " ORDER BY p.id"))
            return
        ids = list(doc_ids)
        for i in range(0, len(ids), batch):
            chunk = ids[i:i + batch]
            yield from map(PassageRow._make,
                           self.con.execute(q + f" WHERE p.doc_id IN ({','.join('?' * len(chunk))})", chunk))

    def sample_window_vectors(self, n: int, dim: int, seed: int = 0) -> np.ndarray:
        """Vectors of `n` windows drawn at random (all of them when there are fewer), for training codecs."""
        ids = np.array([r[0] for r in self.con.execute("SELECT id FROM windows")], np.int64)
        if len(ids) > n:
            ids = np.sort(np.random.default_rng(seed).choice(ids, n, replace=False))
        out = []
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500].tolist()
            out += [r[0] for r in self.con.execute(
                f"SELECT vec FROM windows WHERE id IN ({','.join('?' * len(chunk))})", chunk)]
        return from_blobs(out, dim)

    def all_windows(self, dim: int, batch: int = 50_000) -> Iterator[WindowBatch]:
        """Every window, in id order, in batches."""
        last = 0
        while True:
            rows = self.con.execute("SELECT id, passage, vec FROM windows WHERE id > ? ORDER BY id LIMIT ?",
                                    (last, batch)).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield WindowBatch(np.array([r[0] for r in rows], np.int64), np.array([r[1] for r in rows], np.int64),
                              from_blobs([r[2] for r in rows], dim))

    def window_passages(self, after: int = 0) -> WindowMap:
        """Every window id (above `after`) and its passage's rowid, read from the table."""
        rows = self.con.execute("SELECT id, passage FROM windows WHERE id > ? ORDER BY id", (after,)).fetchall()
        arr = np.array(rows, np.int64).reshape(-1, 2)
        return WindowMap(arr[:, 0], arr[:, 1])

    def window_map(self) -> WindowMap:
        """`window_passages` at the store's latest generation, for a loaded index. Reading the whole table took a
        reload most of its time at 100k passages (docs/performance.md#row-cache), so the map of the generation
        read last is carried over: the windows of the passages removed since (`removed_since`) dropped, those added
        since appended (window ids only grow). Read whole the first time, and when the log does not reach back."""
        with self._windows_lock, self.snapshot():
            generation = self.generation
            known = self._windows
            if known is not None and known.generation == generation:
                return known.windows
            removed = (self.removed_since(known.generation)
                       if known is not None and known.generation < generation else None)
            if removed is None:
                windows = self.window_passages()
            else:
                old = known.windows
                keep = ~np.isin(old.passages, removed)
                added = self.window_passages(int(old.ids[-1]) if len(old.ids) else 0)
                windows = WindowMap(np.concatenate((old.ids[keep], added.ids)),
                                    np.concatenate((old.passages[keep], added.passages)))
            self._windows = GenerationWindows(generation, windows)
            return windows

    _PASSAGE_COLS = ("p.id, p.passage_id, p.doc_id, p.paragraph_index, p.text, p.char_start, p.char_end, "
                     "d.title, d.source, d.author, d.url, d.published")

    def passages(self, rowids: Sequence[int]) -> dict[int, StoredPassage]:
        """Stored passages by row id (unknown ids are left out)."""
        if not rowids:
            return {}
        rows = self._cached("passage", rowids, self._read_passages)
        return {rid: StoredPassage.from_row(row) for rid, row in rows.items()}

    def _read_passages(self, rowids: Sequence[int]) -> dict[int, tuple]:
        """Each passage's row (`StoredPassage.from_row`): a plain tuple of strings and numbers, which the garbage
        collector stops tracking once cached, where a `StoredPassage` would stay tracked for as long as it is
        cached (docs/performance.md#garbage-collection)."""
        q = f"SELECT {self._PASSAGE_COLS} FROM passages p JOIN documents d ON d.doc_id = p.doc_id WHERE p.id {IN_IDS}"
        return {row[0]: (*row, words_hash(row[4])) for row in self.con.execute(q, (ids_param(rowids),))}

    def passage_texts(self, rowids: Sequence[int]) -> dict[int, str]:
        """Passage texts by row id."""
        return self._cached("text", rowids, self._read_texts) if rowids else {}

    def _read_texts(self, rowids: Sequence[int]) -> dict[int, str]:
        return dict(self.con.execute(f"SELECT id, text FROM passages WHERE id {IN_IDS}", (ids_param(rowids),)))

    def folded_texts(self, rowids: Sequence[int]) -> dict[int, str]:
        """Passage texts as `fold_case` leaves them, by row id: what term coverage scans, folded once per row."""
        return self._cached("folded", rowids, self._read_folded) if rowids else {}

    def _read_folded(self, rowids: Sequence[int]) -> dict[int, str]:
        return {rowid: fold_case(text) for rowid, text in self._read_texts(rowids).items()}

    def passage_vectors(self, rowids: Sequence[int], dim: int) -> np.ndarray:
        """Whole-passage vectors in the order of `rowids`."""
        if not rowids:
            return np.zeros((0, dim), np.float32)
        taken, missing = self._from_table("vector", rowids)
        if taken is not None and not missing:
            return dequantize(taken.codes, taken.scales)
        vecs = self._cached("vector", missing, functools.partial(self._read_passage_vectors, dim=dim))
        if taken is not None:
            vecs.update(self._vector_entries(taken))
        zero = np.zeros((1, dim), np.int8), np.ones(1, np.float32)  # a passage deleted meanwhile: matches nothing
        codes, scales = zip(*[vecs.get(r, zero) for r in rowids])
        return dequantize(np.concatenate(codes), np.concatenate(scales))

    def _read_passage_vectors(self, rowids: Sequence[int], dim: int) -> dict[int, Int8Rows]:
        return self._vector_entries(self._vector_block(rowids, dim))

    def _vector_block(self, rowids: Sequence[int], dim: int) -> TableRows:
        """The whole-passage vectors of some passages as one block of rows (`_vector_rows`)."""
        return self._vector_rows(f"SELECT id, vec FROM passages WHERE id {IN_IDS} ORDER BY id", rowids, dim)

    def _vector_rows(self, query: str, rowids: Sequence[int], dim: int) -> TableRows:
        """`query`'s (passage rowid, float32 vector) rows for `rowids`, a passage's rows together, as one block
        (the passage's rowid the one column of `meta`), quantised at once: a call costs more than a row."""
        rows = self.con.execute(query, (ids_param(rowids),)).fetchall()
        codes, scales = quantize(from_blobs([blob for _, blob in rows], dim))
        return TableRows(np.array([rowid for rowid, _ in rows], np.int64).reshape(-1, 1), codes, scales)

    def passage_words(self, rowids: Sequence[int]) -> StoredWords:
        """The words of some passages as vocabulary ids (`StoredWords`), each passage's in position order; none in a
        store without words (`has_words`). From the row cache's table, only the ids are gathered."""
        if not rowids or not self.has_words:
            return StoredWords(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int32))
        rows = self._snapshot_rows()
        runs = rows.runs("words", rowids) if rows is not None else None
        parts = []
        if runs is not None:
            parts.append(StoredWords(runs.rowids, runs.counts, runs.arrays.ids[row_ranges(runs.starts, runs.counts)]))
            rowids = runs.missing
        found = self._cached("words", rowids, self._read_words) if rowids else {}
        if found or not parts:
            parts.append(StoredWords(np.fromiter(found, np.int64, len(found)),
                                     np.array([len(ids) for ids in found.values()], np.int64),
                                     np.concatenate(list(found.values())) if found else np.zeros(0, np.int32)))
        return parts[0] if len(parts) == 1 else StoredWords(*(np.concatenate(columns) for columns in zip(*parts)))

    def _read_words(self, rowids: Sequence[int]) -> dict[int, np.ndarray]:
        return self._word_entries(self._words_block(rowids))

    @staticmethod
    def _word_entries(block: WordRows) -> dict[int, np.ndarray]:
        """A block of words as the row cache's entries, copied out a passage each."""
        return {rowid: block.ids[a:b].copy() for rowid, a, b in passage_runs(block.meta[:, 0])}

    def _words_block(self, rowids: Sequence[int]) -> WordRows:
        """The words of some passages as one block of rows, passage by passage."""
        rows = self.con.execute(f"SELECT passage, ids FROM passage_words WHERE passage {IN_IDS} ORDER BY passage",
                                (ids_param(rowids),)).fetchall()
        ids = [np.frombuffer(blob, np.int32) for _, blob in rows]
        owners = np.repeat(np.array([rowid for rowid, _ in rows], np.int32), [len(i) for i in ids])
        return WordRows(owners[:, None], np.concatenate(ids) if ids else np.zeros(0, np.int32))

    def _read_vocabulary(self) -> None:
        """Keep the vocabulary's ids in memory (up to `WORD_IDS_KEEP`), so that queries seldom look words up; once
        a store, as an id never changes (words written later are looked up when asked for)."""
        if not self._vocabulary_read:
            known = dict(self.con.execute("SELECT word, id FROM words LIMIT ?", (WORD_IDS_KEEP,)))
            known.update(self._word_ids)
            self._word_ids, self._vocabulary_read = known, True

    def word_ids(self, words: Sequence[str]) -> dict[str, int]:
        """The vocabulary ids of those of `words` some passage holds (or held: a word keeps its id for good, so
        the ids found are kept for the next query)."""
        known = self._word_ids
        found = {w: known[w] for w in words if w in known}
        if len(found) < len(words):
            missing = json.dumps([w for w in words if w not in found])
            found.update(self.con.execute(f"SELECT word, id FROM words WHERE word {IN_IDS}", (missing,)))
            if len(known) + len(found) > WORD_IDS_KEEP:
                self._word_ids = known = {}
            known.update(found)
        return found

    def passage_tokens(self, rowids: Sequence[int], dim: int) -> dict[int, TextTokens]:
        """The word pieces' vectors and offsets of some passages, by row id (`token_blobs`)."""
        if not rowids:
            return {}
        rows = self.con.execute(f"SELECT passage, offsets, scales, vecs FROM passage_tokens WHERE passage {IN_IDS}",
                                (ids_param(rowids),))
        return {r[0]: from_token_blobs(r[1], r[2], r[3], dim) for r in rows}

    def window_vectors(self, rowids: Sequence[int], dim: int) -> PassageWindows:
        """The windows of some passages, passage by passage."""
        taken, rowids = self._from_table("windows", rowids)
        windows = self._cached("windows", rowids, functools.partial(self._read_windows, dim=dim)) if rowids else {}
        parts = [] if taken is None else [taken]
        if windows:
            codes, scales = zip(*windows.values())
            owners = np.repeat(np.fromiter(windows, np.int64, len(windows)), [len(s) for s in scales])
            parts.append(TableRows(owners[:, None], np.concatenate(codes), np.concatenate(scales)))
        if not parts:
            return PassageWindows(np.zeros(0, np.int64), np.zeros((0, dim), np.float32))
        rows = TableRows.join(parts)
        return PassageWindows(rows.meta[:, 0], rows.codes, rows.scales)

    def _from_table(self, kind: str, rowids: Sequence[int]) -> tuple[TableRows | None, Sequence[int]]:
        """The rows of `rowids` the snapshot's row cache holds in its table of `kind` (`RowTable`), and the rowids
        it does not hold: all of them when it has no such table."""
        rows = self._snapshot_rows()
        taken = rows.take(kind, rowids) if rows is not None and rowids else None
        return (None, rowids) if taken is None else (taken.rows, taken.missing)

    def _read_windows(self, rowids: Sequence[int], dim: int) -> dict[int, Int8Rows]:
        """Each passage's window vectors (windows x dim), quantised all at once and copied out per passage."""
        return self._vector_entries(self._window_block(rowids, dim))

    @staticmethod
    def _vector_entries(block: TableRows) -> dict[int, Int8Rows]:
        """A block of vectors (windows, whole passages) as the row cache's entries, copied out a passage each."""
        return {rowid: (block.codes[a:b].copy(), block.scales[a:b].copy())
                for rowid, a, b in passage_runs(block.meta[:, 0])}

    def _window_block(self, rowids: Sequence[int], dim: int) -> TableRows:
        """The windows of some passages as one block of rows, passage by passage (`_vector_rows`)."""
        return self._vector_rows(f"SELECT passage, vec FROM windows WHERE passage {IN_IDS} ORDER BY passage", rowids,
                                 dim)

    def sentences(self, rowids: Sequence[int], dim: int) -> SentenceRows:
        """The sentences of some passages, ordered by passage, then idx."""
        taken, rowids = self._from_table("sentences", sorted(rowids))
        found = self._cached("sentences", rowids, functools.partial(self._read_sentences, dim=dim)) if rowids else {}
        parts = [] if taken is None else [taken]
        if found:
            parts.append(TableRows(*(np.concatenate(columns) for columns in zip(*[found[r] for r in sorted(found)]))))
        if not parts:
            return SentenceRows(np.zeros((0, dim), np.float32), np.zeros((0, 4), np.int64))
        rows = TableRows.join(parts)
        if len(parts) > 1:  # passages from the table and from entries: merged in order of rowid
            order = np.argsort(rows.meta[:, 0], kind="stable")
            rows = TableRows(*(column[order] for column in rows))
        return SentenceRows(rows.codes, rows.meta, rows.scales)

    def _read_sentences(self, rowids: Sequence[int], dim: int) -> dict[int, PassageSentences]:
        """Each passage's sentence rows and vectors, copied out per passage from one block of them, so a cached
        passage holds no other passage's rows."""
        return self._sentence_entries(self._sentence_block(rowids, dim))

    @staticmethod
    def _sentence_entries(block: TableRows) -> dict[int, PassageSentences]:
        """A block of sentences as the row cache's entries, copied out a passage each."""
        return {rowid: (block.meta[a:b].copy(), block.codes[a:b].copy(), block.scales[a:b].copy())
                for rowid, a, b in passage_runs(block.meta[:, 0])}

    def _sentence_block(self, rowids: Sequence[int], dim: int) -> TableRows:
        """The sentences of some passages as one block of rows, passage by passage, decoded for all the passages
        at once (one cast, not one a passage): `meta` holds (passage rowid, idx, start, end) a sentence."""
        rows = self.con.execute(f"SELECT passage, spans, vecs FROM passage_sentences WHERE passage {IN_IDS}",
                                (ids_param(rowids),)).fetchall()
        if not rows:
            return TableRows(np.zeros((0, 4), np.int64), np.zeros((0, dim), np.int8), np.zeros(0, np.float32))
        spans = [np.frombuffer(r[1], np.int32).reshape(-1, 2) for r in rows]
        counts = [len(s) for s in spans]
        if any(len(r[2]) != n * dim * 2 for r, n in zip(rows, counts)):  # float16: 2 bytes a number
            raise IndexUnavailable(f"{self.path}: sentence vectors do not match their spans (damaged store?)")
        codes, scales = quantize(np.frombuffer(b"".join(r[2] for r in rows), np.float16).reshape(-1, dim))
        starts = np.cumsum(counts) - counts
        meta = np.empty((len(codes), 4), np.int64)
        meta[:, 0] = np.repeat([r[0] for r in rows], counts)
        meta[:, 1] = np.arange(len(codes)) - np.repeat(starts, counts)
        meta[:, 2:] = np.concatenate(spans)
        return TableRows(meta, codes, scales)

    def filtered_window_ids(self, filters: Filters) -> np.ndarray:
        """Ids of the windows whose documents pass the filters."""
        where, params = filters.sql("d")
        rows = self.con.execute(
            "SELECT w.id FROM windows w JOIN passages p ON p.id = w.passage JOIN documents d ON d.doc_id = p.doc_id"
            f" WHERE {where}", params).fetchall()
        return np.array([r[0] for r in rows], np.int64)

    def document_ids(self) -> list[str]:
        return [r[0] for r in self.con.execute("SELECT doc_id FROM documents ORDER BY doc_id")]

    def documents(self, offset: int = 0, limit: int = 50) -> DocumentPage:
        """A page of documents in id order."""
        total = self.con.execute("SELECT COUNT(*) FROM documents").fetchone()[0]
        rows = self.con.execute(
            "SELECT doc_id, title, source, author, url, published, n_passages FROM documents "
            "ORDER BY doc_id LIMIT ? OFFSET ?", (limit, offset)).fetchall()
        keys = ("id", "title", "source", "author", "url", "published", "passages")
        return DocumentPage(total, [dict(zip(keys, r)) for r in rows])

    def documents_newest(self, offset: int = 0, limit: int = 50, source: str | None = None) -> DocumentPage:
        """A page of documents newest first (undated ones last, ties by id), of one outlet when `source` is given."""
        where, params = Filters(source=source).sql("documents")
        total = self.con.execute(f"SELECT COUNT(*) FROM documents WHERE {where}", params).fetchone()[0]
        rows = self.con.execute(
            "SELECT doc_id, title, source, author, url, published, n_passages FROM documents "
            f"WHERE {where} ORDER BY published IS NULL, published DESC, doc_id LIMIT ? OFFSET ?",
            (*params, limit, offset)).fetchall()
        keys = ("id", "title", "source", "author", "url", "published", "passages")
        return DocumentPage(total, [dict(zip(keys, r)) for r in rows])

    def outlet_counts(self) -> list[OutletCount]:
        """Every outlet with its number of documents, the largest first (those without an outlet counted under
        None); outlets that differ only in case are one, as the source filter matches them."""
        rows = self.con.execute("SELECT MIN(source), COUNT(*) AS n FROM documents GROUP BY source COLLATE NOCASE "
                                "ORDER BY n DESC, MIN(source) COLLATE NOCASE")
        return [OutletCount(source, n) for source, n in rows]

    def document(self, doc_id: str) -> dict | None:
        """A document's metadata and paragraphs, or None."""
        row = self.con.execute("SELECT doc_id, title, source, author, url, published, tags, n_passages "
                               "FROM documents WHERE doc_id = ?", (doc_id,)).fetchone()
        if row is None:
            return None
        keys = ("id", "title", "source", "author", "url", "published", "tags", "passages")
        doc = dict(zip(keys, row))
        doc["tags"] = json.loads(doc["tags"])
        doc["paragraphs"] = [
            {"passage_id": pid, "paragraph_index": idx, "text": text, "char_start": s, "char_end": e}
            for pid, idx, text, s, e in self.con.execute(
                "SELECT passage_id, paragraph_index, text, char_start, char_end FROM passages "
                "WHERE doc_id = ? ORDER BY paragraph_index", (doc_id,))]
        return doc


__all__ = ["Store", "StoredPassage", "DocumentPage", "OutletCount", "JournalEntry", "Filters", "Warmed", "passage_id",
           "Span"]
