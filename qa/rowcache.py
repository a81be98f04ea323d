"""Decoded store rows kept between searches, for one store generation.

A search reads the same kinds of rows for every query (its shortlist's lower-cased texts and sentence rows, its
hits' passages and vectors), and on a collection people query again and again the same passages come back. Decoding
them from SQLite cost a search 14% on squad-dev, and at 100k passages its misses are a third of a search after the
embedding (docs/performance.md#row-cache). A cache serves the readers of one store generation (every committed write
bumps it): the first reader of a newer generation carries over the rows of the passages that still exist, and a
reader of an older snapshot reads around it.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

from .config import ROW_CACHE_MB
from .process import YOUNG

ROW_CACHE_BYTES = ROW_CACHE_MB << 20  # a store's, unless its server's settings say otherwise (QA_ROW_CACHE_MB)


def size_of(value: Any) -> int:
    """Approximate bytes held by a cached value: arrays and strings by their length, containers by their items."""
    kind = type(value)  # the common leaves first: every value a search caches is sized when it is loaded
    if kind is str:
        return len(value) + 56
    if value is None or kind is int or kind is float:
        return 32
    if isinstance(value, np.ndarray):
        return value.nbytes + 112
    if isinstance(value, (str, bytes)):
        return len(value) + 56
    if isinstance(value, (tuple, list)):
        return 56 + 8 * len(value) + sum(size_of(v) for v in value)
    if hasattr(value, "__dict__"):
        return 56 + sum(size_of(v) for v in vars(value).values())
    return 32


class TableRows(NamedTuple):
    """Rows of several passages, row for row: `meta` (int64, the passage's rowid first), int8 `codes` and their
    `scales` (`quantize` in qa/store.py)."""

    meta: np.ndarray
    codes: np.ndarray
    scales: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.meta.nbytes + self.codes.nbytes + self.scales.nbytes

    @staticmethod
    def join(parts: Sequence[TableRows]) -> TableRows:
        """The rows of `parts`, one after the other."""
        return parts[0] if len(parts) == 1 else TableRows(*(np.concatenate(columns) for columns in zip(*parts)))


class WordRows(NamedTuple):
    """Passages' words, a row a word in position order: `meta` (int32, the passage's rowid) and the word's
    vocabulary `ids` (int32, `Store.passage_words`)."""

    meta: np.ndarray
    ids: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.meta.nbytes + self.ids.nbytes


Rows = TableRows | WordRows  # what a `RowTable` holds: rows whose first array, `meta`, starts with the passage's rowid


def run_starts(owners: np.ndarray) -> np.ndarray:
    """Where each run of rows of one passage starts in `owners` (each row's passage rowid, a passage's rows
    together)."""
    return np.flatnonzero(np.diff(owners, prepend=owners[:1] - 1))


def passage_runs(owners: np.ndarray) -> Iterator[tuple[int, int, int]]:
    """(rowid, first row, end) of each run of rows of one passage in `owners`."""
    starts = run_starts(owners)
    ends = np.append(starts[1:], len(owners))
    return zip(owners[starts].tolist(), starts.tolist(), ends.tolist())


class Taken(NamedTuple):
    """What a `RowTable` holds of some passages: their rows, and the rowids it does not hold."""

    rows: Rows
    missing: list[int]


class Runs(NamedTuple):
    """Where a `RowTable` holds the rows of some passages: the rowids it holds (in the order asked), each one's first
    row and count in `arrays`, and the rowids it does not hold."""

    rowids: np.ndarray
    starts: np.ndarray
    counts: np.ndarray
    missing: list[int]
    arrays: Rows


def row_ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The indices start, start + 1, ... start + count - 1 of every (start, count), one after the other; every
    count at least 1."""
    ends = np.cumsum(counts)
    total = int(ends[-1]) if len(ends) else 0
    if total == len(counts):  # one row each, as most passages' windows: the starts
        return starts
    return np.repeat(starts - (ends - counts), counts) + np.arange(total)


class RowBuffer:
    """Rows appended, never changed, to arrays grown as needed, which the tables of successive generations share:
    a table points only at rows appended before it, so an append never moves what its readers read."""

    def __init__(self, like: Rows, reserve: int = 0):
        """Arrays for rows of the kind of `like` (their type, dtypes and row shapes), with room for `reserve`."""
        self.arrays = type(like)(*(np.empty((reserve, *a.shape[1:]), a.dtype) for a in like))
        self.filled = 0
        self._lock = threading.Lock()

    def append(self, rows: Rows) -> tuple[int, Rows]:
        """Append `rows`: where they start, and the arrays that now hold them with every earlier row."""
        with self._lock:
            start, end = self.filled, self.filled + len(rows.meta)
            if end > len(self.arrays.meta):  # an eighth again: writes add a few passages at a time
                grown = max(end, len(self.arrays.meta) * 9 // 8)
                self.arrays = type(self.arrays)(*(_grown(old, grown, start) for old in self.arrays))
            for old, new in zip(self.arrays, rows):
                old[start:end] = new
            self.filled = end
            return start, self.arrays

    def trim(self) -> Rows:
        """Cut the arrays to the rows appended (a copy: the room reserved beyond them is freed); the arrays."""
        with self._lock:
            if self.filled < len(self.arrays.meta):
                self.arrays = type(self.arrays)(*(a[:self.filled].copy() for a in self.arrays))
            return self.arrays


def _grown(array: np.ndarray, rows: int, filled: int) -> np.ndarray:
    grown = np.empty((rows, *array.shape[1:]), array.dtype)
    grown[:filled] = array[:filled]
    return grown


class RowTable:
    """One kind of row (sentences, windows, whole-passage vectors, words) of every passage a generation's cache
    holds, in the contiguous arrays of a `RowBuffer` with each passage's first row and count by rowid: a search
    gathers its candidates' rows with one numpy call instead of joining an entry a passage, and reads them from a
    few arrays rather than from wherever each entry lies (docs/performance.md#row-cache). A newer generation's table
    shares the buffer and copies only the first rows and counts, without the passages removed since; a passage's
    rows never change while its rowid exists (`Store.write`)."""

    def __init__(self, buffer: RowBuffer, starts: np.ndarray | None = None, counts: np.ndarray | None = None,
                 rows: int = 0):
        self.buffer = buffer
        self._arrays = buffer.arrays
        # by rowid, -1: not held; never empty, as `take` clips ids to it
        self._starts = np.full(1, -1, np.int64) if starts is None else starts
        self._counts = np.zeros(len(self._starts), np.int64) if counts is None else counts
        self.rows = rows  # the rows of the passages it holds
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """The bytes of the rows it holds and of its map of them."""
        return self.rows * self.row_bytes + self._starts.nbytes + self._counts.nbytes

    @property
    def row_bytes(self) -> int:
        return sum(a.itemsize * int(np.prod(a.shape[1:])) for a in self._arrays)

    def held(self) -> list[int]:
        """The rowids of the passages it holds."""
        with self._lock:
            return np.flatnonzero(self._starts >= 0).tolist()

    def add(self, rows: Rows) -> int:
        """Add the rows of some passages, each passage's rows together (a passage held already is pointed at its
        new copy); the bytes the table grew by."""
        owners = rows.meta[:, 0]
        first = run_starts(owners)
        counts = np.diff(np.append(first, len(owners)))
        start, arrays = self.buffer.append(rows)
        before = self.nbytes
        with self._lock:
            ids = owners[first]
            if len(ids) and ids.max() >= len(self._starts):
                size = max(int(ids.max()) + 1, 2 * len(self._starts))
                self._starts = np.concatenate((self._starts, np.full(size - len(self._starts), -1, np.int64)))
                self._counts = np.concatenate((self._counts, np.zeros(size - len(self._counts), np.int64)))
            self.rows += int(counts.sum()) - int(self._counts[ids][self._starts[ids] >= 0].sum())
            self._arrays = arrays  # first the arrays that hold the rows, then the map that points at them
            self._counts[ids] = counts
            self._starts[ids] = start + first
        return self.nbytes - before

    def trim(self) -> None:
        """Free the room its buffer reserved beyond its rows (`RowBuffer.trim`)."""
        arrays = self.buffer.trim()
        with self._lock:
            self._arrays = arrays

    def take(self, rowids: Sequence[int]) -> Taken:
        """The rows of `rowids` it holds, passage by passage in their order, and the rowids it does not hold."""
        runs = self.runs(rowids)
        return Taken(_gather(runs.arrays, runs.starts, runs.counts), runs.missing)

    def runs(self, rowids: Sequence[int]) -> Runs:
        """Where it holds the rows of `rowids` (`Runs`), for a reader that gathers only some of the arrays."""
        ids = np.asarray(rowids, np.int64)
        with self._lock:
            arrays = self._arrays
            inside = ids < len(self._starts)
            starts = np.where(inside, self._starts.take(ids, mode="clip"), -1)
            counts = self._counts.take(ids, mode="clip")
        held = starts >= 0
        return Runs(ids[held], starts[held], counts[held], ids[~held].tolist(), arrays)

    def carry(self, removed: Iterable[int]) -> RowTable:
        """A table for a newer generation: this one's rows but those of the passages `removed`, in the same buffer
        while it holds no more than twice the rows still held, else in a new one."""
        with self._lock:
            starts, counts, rows = self._starts.copy(), self._counts.copy(), self.rows
        gone = np.fromiter(removed, np.int64)
        gone = gone[gone < len(starts)]
        gone = gone[starts[gone] >= 0]
        rows -= int(counts[gone].sum())
        starts[gone], counts[gone] = -1, 0
        if self.buffer.filled <= 2 * rows + 4096:
            return RowTable(self.buffer, starts, counts, rows)
        held = np.flatnonzero(starts >= 0)
        kept = _gather(self._arrays, starts[held], counts[held])
        compact = RowTable(RowBuffer(kept, len(kept.meta)))
        compact.add(kept)
        return compact


def _gather(arrays: Rows, starts: np.ndarray, counts: np.ndarray) -> Rows:
    """The rows of each (start, count) of `arrays`, one after the other (a copy)."""
    rows = row_ranges(starts, counts)
    return type(arrays)(*(a[rows] for a in arrays))


class RowCache:
    """A least-recently-used map of (kind, rowid) to decoded values, bounded in bytes, for one generation."""

    def __init__(self, generation: int, budget: int = ROW_CACHE_BYTES):
        self.generation = generation
        self.budget = budget
        self.used = 0
        self._rows: OrderedDict[tuple[Hashable, int], tuple[Any, int]] = OrderedDict()
        self._kinds: set[Hashable] = set()
        self.tables: dict[Hashable, RowTable] = {}  # kinds of row kept in tables rather than an entry a passage
        self.warmed_through = 0  # `Store.prewarm` read ahead the rows of every passage up to this row id
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._rows)

    def get_many(self, kind: Hashable, rowids: Sequence[int], load: Callable[[list[int]], dict[int, Any]]
                 ) -> dict[int, Any]:
        """The values of `rowids` (those `load` does not find are left out): cached ones, and the rest from
        `load(missing)`, cached for the next reader."""
        found: dict[int, Any] = {}
        missing = []
        with self._lock:
            for rowid in rowids:
                hit = self._rows.get((kind, rowid))
                if hit is None:
                    missing.append(rowid)
                else:
                    self._rows.move_to_end((kind, rowid))
                    found[rowid] = hit[0]
        if not missing:
            return found
        loaded = load(missing)
        found.update(loaded)
        tuples = 0
        with self._lock:
            self._kinds.add(kind)
            for rowid, value in loaded.items():
                key = (kind, rowid)
                if key in self._rows:
                    continue  # another thread loaded it meanwhile
                size = size_of(value)
                self._rows[key] = (value, size)
                self.used += size
                tuples += 3 if type(value) is tuple else 2  # its key, its entry and a row's own tuple
            self._evict()
        YOUNG.add(tuples)  # tuples the collector does not count (`YoungCollections`)
        return found

    def take(self, kind: Hashable, rowids: Sequence[int]) -> Taken | None:
        """The rows of `rowids` in the table of `kind` (`RowTable.take`); None when that kind has none."""
        table = self.tables.get(kind)
        return None if table is None else table.take(rowids)

    def runs(self, kind: Hashable, rowids: Sequence[int]) -> Runs | None:
        """Where the table of `kind` holds the rows of `rowids` (`RowTable.runs`); None when that kind has none."""
        table = self.tables.get(kind)
        return None if table is None else table.runs(rowids)

    def add_to_table(self, kind: Hashable, rows: Rows, reserve: int = 0) -> None:
        """Add the rows of some passages to the table of `kind`, made with room for `reserve` rows if there is
        none; the entries of those passages for that kind go (the table is read first)."""
        with self._lock:
            table = self.tables.get(kind)
            if table is None:
                table = self.tables[kind] = RowTable(RowBuffer(rows, reserve))
                self.used += table.nbytes
        grew = table.add(rows)  # outside the lock searches take: the buffer may grow, a copy of all its rows
        with self._lock:
            self.used += grew
            for rowid in np.unique(rows.meta[:, 0]).tolist():
                entry = self._rows.pop((kind, rowid), None)
                if entry is not None:
                    self.used -= entry[1]
            self._evict()

    def _evict(self) -> None:
        """The least recently used rows out until the rest fit the budget (the caller holds the lock); the tables
        stay (`shrink` drops them)."""
        while self.used > self.budget and self._rows:
            _, (_, size) = self._rows.popitem(last=False)
            self.used -= size

    def shrink(self, budget: int) -> None:
        """A smaller budget, the least recently used rows out to meet it, and the tables too if they alone do not."""
        with self._lock:
            self.budget = budget
            tabled = sum(table.nbytes for table in self.tables.values())
            if tabled > budget:
                self.tables.clear()
                self.used -= tabled
            self._evict()

    def carry(self, generation: int, budget: int, *, removed: Iterable[int] | None,
              live: Callable[[list[int]], Iterable[int]]) -> RowCache:
        """A cache for a newer `generation` with this one's rows but those of the passages `removed` since, in the
        same order of use; when the store cannot tell which (None), every cached passage is looked up with `live`,
        which returns those that still exist. A passage's rows never change while its row id exists, and the store
        never gives a removed passage's id out again (`Store.write`), so a write makes stale only the rows of the
        passages it removed. The rows move rather than copy: readers still on this generation read around this
        cache from then on, and nothing they load reaches the new one."""
        with self._lock:
            rows, self._rows = self._rows, OrderedDict()
            tables, self.tables = self.tables, {}
            used, self.used = self.used, 0
            kinds = set(self._kinds)
        if removed is None:
            held = {rowid for _, rowid in rows}.union(*(table.held() for table in tables.values()))
            removed = held.difference(live(list(held)))
        removed = list(removed)
        for table in tables.values():
            used -= table.nbytes
        tables = {kind: table.carry(removed) for kind, table in tables.items()}
        used += sum(table.nbytes for table in tables.values())
        for rowid in removed:
            for kind in kinds:
                entry = rows.pop((kind, rowid), None)
                if entry is not None:
                    used -= entry[1]
        carried = RowCache(generation, budget)
        carried._rows, carried.used, carried._kinds, carried.tables = rows, used, kinds, tables
        carried.warmed_through = self.warmed_through
        carried.shrink(budget)
        return carried


__all__ = ["RowBuffer", "RowCache", "RowTable", "ROW_CACHE_BYTES", "Rows", "Runs", "TableRows", "Taken", "WordRows",
           "passage_runs", "row_ranges", "run_starts", "size_of"]
