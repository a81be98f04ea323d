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
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

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


class RowCache:
    """A least-recently-used map of (kind, rowid) to decoded values, bounded in bytes, for one generation."""

    def __init__(self, generation: int, budget: int = ROW_CACHE_BYTES):
        self.generation = generation
        self.budget = budget
        self.used = 0
        self._rows: OrderedDict[tuple[Hashable, int], tuple[Any, int]] = OrderedDict()
        self._kinds: set[Hashable] = set()
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

    def _evict(self) -> None:
        """The least recently used rows out until the rest fit the budget (the caller holds the lock)."""
        while self.used > self.budget and self._rows:
            _, (_, size) = self._rows.popitem(last=False)
            self.used -= size

    def shrink(self, budget: int) -> None:
        """A smaller budget, the least recently used rows out to meet it."""
        with self._lock:
            self.budget = budget
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
            used, self.used = self.used, 0
            kinds = set(self._kinds)
        if removed is None:
            held = {rowid for _, rowid in rows}
            removed = held.difference(live(list(held)))
        for rowid in removed:
            for kind in kinds:
                entry = rows.pop((kind, rowid), None)
                if entry is not None:
                    used -= entry[1]
        carried = RowCache(generation, budget)
        carried._rows, carried.used, carried._kinds = rows, used, kinds
        carried.warmed_through = self.warmed_through
        carried.shrink(budget)
        return carried


__all__ = ["RowCache", "ROW_CACHE_BYTES", "size_of"]
