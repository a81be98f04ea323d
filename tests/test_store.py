"""The SQLite store: connections per thread, a passage's sentences in one row."""
import sqlite3
import threading

import numpy as np
import pytest

from qa.chunk import split_sentences
from qa.index import add_documents, build_index, check_index, load_index, remove_documents
from qa.ingest import article_from_dict
from qa.errors import IndexUnavailable
from qa.store import Store, dequantize

from conftest import ARTS


def test_store_closes_connections_of_ended_threads_and_its_own(tmp_path):
    # connections sit in reference cycles (their statement caches): unless closed, a server kept the page caches
    # of every replaced data folder and every reload thread until a full garbage collection
    store = Store(str(tmp_path / "s.sqlite"), create=True)
    held = []

    def use():
        held.append(store.con)

    for _ in range(2):
        worker = threading.Thread(target=use)
        worker.start()
        worker.join()
    held[1].execute("SELECT 1")  # the second thread's: its thread has ended, but no connection was made since
    with pytest.raises(sqlite3.ProgrammingError):
        held[0].execute("SELECT 1")  # closed when the second thread made its connection
    mine = store.con
    del store
    for con in (held[1], mine):
        with pytest.raises(sqlite3.ProgrammingError):
            con.execute("SELECT 1")


def test_word_pieces_are_stored_per_passage_and_go_with_it(tmp_path, corpus, fake_embedder):
    new = str(tmp_path / "new")
    build_index([corpus], new, embedder=fake_embedder)
    a = load_index(new, embedder=fake_embedder)
    texts = a.store.passage_texts([1, 2, 3, 4])
    tokens = a.store.passage_tokens([2, 999, 1], fake_embedder.dim)
    assert set(tokens) == {1, 2} and a.store.passage_tokens([], fake_embedder.dim) == {}
    for rid, (vecs, offsets) in tokens.items():
        assert [texts[rid][s:e] for s, e in offsets.tolist()] == texts[rid].replace(".", "").replace(",", "").split()
        assert vecs.dtype == np.float32 and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=0.01)
    a.close()
    remove_documents(["a1"], new)
    b = load_index(new, embedder=fake_embedder)
    assert set(b.store.passage_tokens([1, 2, 3, 4], fake_embedder.dim)) == {3, 4}  # removed with their passages
    assert b.store.count_passages_without_tokens() == 0
    b.close()


def test_sentences_are_a_row_per_passage(tmp_path, corpus, fake_embedder):
    new = str(tmp_path / "new")
    build_index([corpus], new, embedder=fake_embedder)
    a = load_index(new, embedder=fake_embedder)
    vecs, meta = a.store.sentences([4, 1, 999], fake_embedder.dim)[:2]
    assert meta[:, 0].tolist() == sorted(meta[:, 0].tolist()) and set(meta[:, 0].tolist()) == {1, 4}
    texts = a.store.passage_texts([1, 4])
    expected = [(rid, i, s, e) for rid in (1, 4) for i, (s, e) in enumerate(split_sentences(texts[rid]))]
    assert [tuple(r) for r in meta.tolist()] == expected and vecs.shape == (len(expected), fake_embedder.dim)
    assert a.store.sentences([], fake_embedder.dim)[1].shape == (0, 4) == a.store.sentences([999], 4)[1].shape
    assert a.store.counts().sentences == len(
        [s for art in ARTS for p in art["paragraphs"] for s in split_sentences(p)])
    a.close()
    # new articles and removals (which cascade) keep the store and the indexes in agreement
    art = article_from_dict({"id": "a3", "title": "Ferry", "paragraphs": ["Ferries sail hourly. From May on."]})
    add_documents(None, new, articles=[art], embedder=fake_embedder)
    remove_documents(["a1"], new)
    assert check_index(new) == []


def test_sentence_rows_are_read_for_many_passages_at_once_and_kept_apart(tmp_path, corpus, fake_embedder):
    new = str(tmp_path / "new")
    build_index([corpus], new, embedder=fake_embedder)
    a = load_index(new, embedder=fake_embedder)
    path, dim = a.store.path, fake_embedder.dim
    rows = a.store._read_sentences([1, 2, 4], dim)
    assert sorted(rows) == [1, 2, 4]
    # each passage's arrays are its own: a cached passage must not keep the whole read alive
    assert all(array.base is None for row in rows.values() for array in row)
    meta, *_ = rows[2]
    assert [r[0] for r in meta.tolist()] == [2] * len(meta)
    a.close()
    with sqlite3.connect(path) as con:
        con.execute("UPDATE passage_sentences SET vecs = substr(vecs, 1, 10) WHERE passage = 2")
    with pytest.raises(IndexUnavailable, match="do not match their spans"):
        Store(path, readonly=True).sentences([1, 2], dim)


def test_a_row_cache_keeps_the_most_recently_used_rows_within_its_budget():
    from qa.rowcache import RowCache, size_of

    row = np.zeros(100)
    cache = RowCache(generation=7, budget=2 * size_of(row) + 10)
    loads = []

    def load(ids):
        loads.append(list(ids))
        return {i: np.full(100, float(i)) for i in ids if i != 99}  # 99: no such row

    assert sorted(cache.get_many("v", [1, 2, 99], load)) == [1, 2] and loads == [[1, 2, 99]]
    assert cache.get_many("v", [1], load)[1][0] == 1.0 and loads[-1] == [1, 2, 99]  # cached: not loaded again
    cache.get_many("v", [3], load)  # over budget: 2, the least recently used, goes
    assert cache.get_many("v", [1, 2, 3], load) and loads[-1] == [2]
    assert len(cache) == 2 and cache.used <= cache.budget
    assert cache.get_many("other", [1], load) and loads[-1] == [1]  # each kind of row apart


def test_a_carried_row_cache_keeps_the_live_rows_within_the_new_budget():
    from qa.rowcache import RowCache, size_of

    row = np.zeros(100)
    cache = RowCache(generation=1, budget=10 * size_of(row))
    cache.get_many("v", [1, 2, 3, 4], lambda ids: {i: np.full(100, float(i)) for i in ids})
    cache.get_many("w", [2, 4], lambda ids: {i: np.full(100, float(i)) for i in ids})
    carried = cache.carry(2, 2 * size_of(row), removed=None, live=lambda ids: [i for i in ids if i != 4])
    # 4 is gone, in both kinds; of the rest the two most recently used fit the new budget
    assert carried.generation == 2 and list(carried._rows) == [("v", 3), ("w", 2)]
    assert carried.used == 2 * size_of(row) and len(cache) == cache.used == 0
    loads = []
    carried.get_many("v", [3, 4], lambda ids: loads.append(ids) or {})
    assert loads == [[4]]


def _table_rows(passages: dict[int, int], dim: int = 4):
    """`TableRows` of some passages, `passages[rowid]` rows each, every number telling its passage and row."""
    from qa.rowcache import TableRows

    owners = np.repeat(list(passages), list(passages.values())).astype(np.int64)
    idx = np.concatenate([np.arange(n) for n in passages.values()]).astype(np.int64)
    return TableRows(np.column_stack((owners, idx)), (owners[:, None] * 10 + idx[:, None] + np.zeros(dim)).astype(
        np.int8), (owners + idx / 10).astype(np.float32))


def test_a_row_table_gathers_the_rows_of_its_passages_and_shares_its_buffer_with_newer_generations():
    from qa.rowcache import RowBuffer, RowTable

    table = RowTable(RowBuffer(_table_rows({0: 0}), reserve=4))  # room for 4 rows: the adds below outgrow it
    table.add(_table_rows({1: 2, 2: 0, 3: 3}))
    table.add(_table_rows({5: 1}))
    taken = table.take([5, 9, 1, 3, 2, 4])
    assert taken.missing == [9, 2, 4]  # 2 has no rows: it is not held (a passage without sentences reads none)
    assert taken.rows.meta.tolist() == [[5, 0], [1, 0], [1, 1], [3, 0], [3, 1], [3, 2]]
    assert taken.rows.codes[:, 0].tolist() == [50, 10, 11, 30, 31, 32] and taken.rows.scales[0] == np.float32(5)
    assert table.rows == 6 and sorted(table.held()) == [1, 3, 5]

    newer = table.carry(removed=[3, 9])  # 9: never held
    newer.add(_table_rows({7: 2}))  # past the buffer's end, which the older table never reads
    assert newer.buffer is table.buffer and newer.rows == 5 and sorted(newer.held()) == [1, 5, 7]
    assert newer.take([3, 7]).rows.codes[:, 0].tolist() == [70, 71] and newer.take([3]).missing == [3]
    assert table.take([3, 7]).rows.codes[:, 0].tolist() == [30, 31, 32] and table.take([7]).missing == [7]

    big = RowTable(RowBuffer(_table_rows({0: 0})))
    big.add(_table_rows({i: 1 for i in range(1, 20_001)}))
    assert big.carry(removed=range(1, 8_001)).buffer is big.buffer  # two in five rows gone: the buffer is shared
    kept = big.carry(removed=range(1, 19_001))  # nineteen in twenty gone: the rest move to a buffer of their own
    assert kept.buffer is not big.buffer and kept.buffer.filled == kept.rows == 1000
    assert kept.take([19_001, 20_000, 3]).rows.meta.tolist() == [[19_001, 0], [20_000, 0]]
    assert big.take([3]).rows.meta.tolist() == [[3, 0]]


def test_a_row_table_reads_whole_passages_while_another_thread_adds_and_carries():
    # searches take rows while the read-ahead adds them (the buffer growing under them, a copy each time) and a
    # write carries the table over: every row a reader gets is one of its passages', each passage whole or absent
    import threading

    from qa.rowcache import RowBuffer, RowTable

    tables = [RowTable(RowBuffer(_table_rows({0: 0})))]  # reserve nothing: every add grows the buffer
    done = threading.Event()
    problems = []

    def read():
        try:
            check(np.random.default_rng(1))
        except Exception as error:  # noqa: BLE001 - a reader's failure is the test's
            problems.append(error)

    def check(rng):
        while not done.is_set():
            ids = sorted(rng.choice(3000, 40, replace=False).tolist())
            taken = tables[-1].take(ids)
            owners, idx = taken.rows.meta[:, 0], taken.rows.meta[:, 1]
            got = set(owners.tolist())
            if got & set(taken.missing) or not got <= set(ids) or set(ids) - got - set(taken.missing):
                problems.append(("ids", ids))
            counts = np.bincount(owners, minlength=3001)[list(got)]
            if (counts != np.array([rid % 3 + 1 for rid in got])).any() or \
                    (taken.rows.codes[:, 0] != (owners * 10 + idx).astype(np.int8)).any():
                problems.append(("rows", ids))

    readers = [threading.Thread(target=read) for _ in range(2)]
    for reader in readers:
        reader.start()
    for start in range(1, 3000, 50):
        tables[-1].add(_table_rows({rid: rid % 3 + 1 for rid in range(start, start + 50)}))
        if start % 500 == 1:
            tables.append(tables[-1].carry(removed=[]))
    done.set()
    for reader in readers:
        reader.join(10)
    assert not problems and sorted(tables[-1].held()) == list(range(1, 3001))


def test_a_row_cache_keeps_its_tables_within_its_budget_and_carries_them_without_the_removed_passages():
    from qa.rowcache import RowCache

    cache = RowCache(generation=1, budget=10_000)
    cache.get_many("sentences", [1], lambda ids: {1: "an entry"})
    cache.add_to_table("sentences", _table_rows({1: 2, 2: 1}))  # the table replaces the kind's entries
    assert len(cache) == 0 and cache.used == cache.tables["sentences"].nbytes > 0
    assert cache.take("sentences", [2]).rows.meta.tolist() == [[2, 0]] and cache.take("windows", [2]) is None
    carried = cache.carry(2, 10_000, removed=None, live=lambda ids: [i for i in ids if i != 2])
    assert carried.take("sentences", [1, 2]).missing == [2] and carried.used == carried.tables["sentences"].nbytes
    assert cache.tables == {} and cache.used == 0
    carried.shrink(carried.used - 1)  # too small for the table: it goes
    assert carried.tables == {} and carried.used == 0


def test_a_full_row_cache_keeps_the_young_generation_small():
    # a full cache frees a row for each it takes in, as tuples the collector does not count, so without its own
    # young collections the generation grew by every row it took in and kept (docs/performance.md#garbage-collection)
    import gc

    from qa.rowcache import RowCache, size_of

    threshold = gc.get_threshold()[0]
    rows = 10 * threshold
    cache = RowCache(generation=1, budget=rows * size_of((0.5, "row 0")))
    gc.collect()
    young = []
    for start in range(0, 3 * rows, 50):
        cache.get_many("row", range(start, start + 50), lambda ids: {i: (i / 2, f"row {i}") for i in ids})
        young.append(len(gc.get_objects(generation=0)))
    assert rows * 0.9 < len(cache) <= rows and max(young) < 2 * threshold


def _last_passage(store):
    """The highest passage rowid and its text."""
    rowid, text = store.con.execute("SELECT id, text FROM passages ORDER BY id DESC LIMIT 1").fetchone()
    return rowid, text


def test_snapshots_read_rows_of_their_own_generation(tmp_path, corpus, fake_embedder):
    new = str(tmp_path / "new")
    build_index([corpus], new, embedder=fake_embedder)
    index = load_index(new, embedder=fake_embedder)
    store = index.store
    rowid, old_text = _last_passage(store)
    with store.snapshot():
        first = store.passages([rowid])[rowid]
    with store.snapshot():
        assert store.passages([rowid])[rowid].text is first.text  # read once, then from the cache
    assert store.passages([rowid])[rowid].text is not first.text  # outside a snapshot (a writer's view): afresh

    started, written, seen = threading.Event(), threading.Event(), []

    def older_reader():  # a search that began before the write below
        with store.snapshot():
            seen.append(store.passage_texts([rowid])[rowid])
            started.set()
            written.wait(10)
            seen.append(store.passage_texts([rowid])[rowid])  # the cache is a newer generation's by now
            seen.append(store.sentences([rowid], fake_embedder.dim).meta.tolist())

    reader = threading.Thread(target=older_reader)
    reader.start()
    assert started.wait(10)
    old_sentences = store.sentences([rowid], fake_embedder.dim).meta.tolist()
    last = dict(ARTS[-1], paragraphs=[*ARTS[-1]["paragraphs"][:-1], "Fares rise. Again. And again."])
    add_documents(None, new, articles=[article_from_dict(last)], embedder=fake_embedder)
    newest, text = _last_passage(store)
    assert newest > rowid and text == "Fares rise. Again. And again."  # a new passage, a new row id
    with store.snapshot():
        assert store.passages([rowid, newest]).keys() == {newest}  # the cached old row is gone for newer readers
        assert store.passage_texts([rowid]) == {} and store.sentences([rowid], fake_embedder.dim).meta.size == 0
        assert len(store.sentences([newest], fake_embedder.dim).meta) == 3
    written.set()
    reader.join(10)
    assert seen == [old_text, old_text, old_sentences]
    index.close()


def test_a_write_carries_the_rows_of_the_passages_it_left_alone(tmp_path, corpus, fake_embedder):
    new = str(tmp_path / "new")
    build_index([corpus], new, embedder=fake_embedder)
    index = load_index(new, embedder=fake_embedder)
    store = index.store
    store.prewarm(index.dim)
    before, used = store._rows, store._rows.used
    kept = {rowid: row for (kind, rowid), (row, _) in before._rows.items() if kind == "passage"}
    gone = {rid for rid, row in kept.items() if row[2] == ARTS[-1]["id"]}  # the last article's passages
    remove_documents([ARTS[-1]["id"]], new)
    with store.snapshot():
        assert store.passages(sorted(kept)).keys() == kept.keys() - gone
        after = store._rows
        assert after is not before and after.generation == before.generation + 1 and 0 < after.used < used
        assert _cached_passages(store)["passage"] == kept.keys() - gone  # nothing read again: carried over
        assert all(after._rows[("passage", rid)][0] is kept[rid] for rid in kept.keys() - gone)
        assert after.used == sum(size for _, size in after._rows.values()) + _table_bytes(after)
        assert len(before) == 0  # readers still on the older generation read around it
    assert not _cached_passages(store).keys() - {"folded", "sentences", "windows", "passage", "vector"}
    assert all(held == kept.keys() - gone for held in _cached_passages(store).values())

    # the removed passages' row ids are not given out again, whichever document comes next
    add_documents(None, new, articles=[article_from_dict(ARTS[-1])], embedder=fake_embedder)
    with store.snapshot():
        again = {rid for (rid,) in store.con.execute("SELECT id FROM passages WHERE doc_id = ?", (ARTS[-1]["id"],))}
        assert again and min(again) > max(gone) and store.passages(sorted(gone)) == {}
    assert store.prewarm(index.dim).passages == len(again)  # the read-ahead goes on from where it reached
    assert all(held == kept.keys() - gone | again for held in _cached_passages(store).values())
    index.close()


def test_a_store_written_before_it_recorded_its_highest_row_id_never_gives_one_out_twice(tmp_path, corpus,
                                                                                            fake_embedder):
    new = str(tmp_path / "new")
    build_index([corpus], new, embedder=fake_embedder)
    store = Store(load_index(new, embedder=fake_embedder).store.path)  # a writer's connection
    highest = store.con.execute("SELECT MAX(id) FROM passages").fetchone()[0]
    assert store.get_meta("passage_high") == str(highest)
    with store.transaction() as con:
        con.execute("DELETE FROM meta WHERE key = 'passage_high'")  # as a store of an earlier version
    store.close()
    remove_documents([ARTS[-1]["id"]], new)  # its passages held the highest ids
    add_documents(None, new, articles=[article_from_dict(ARTS[-1])], embedder=fake_embedder)
    store = load_index(new, embedder=fake_embedder).store
    ids = [rid for (rid,) in store.con.execute("SELECT id FROM passages WHERE doc_id = ?", (ARTS[-1]["id"],))]
    assert min(ids) > highest
    store.close()


def _passage_ids(store, doc_id):
    return {rid for (rid,) in store.con.execute("SELECT id FROM passages WHERE doc_id = ?", (doc_id,))}


def test_writes_log_the_passages_they_remove(tmp_path, corpus, fake_embedder, monkeypatch):
    import qa.store

    new = str(tmp_path / "new")
    build_index([corpus], new, embedder=fake_embedder)
    store = Store(load_index(new, embedder=fake_embedder).store.path)  # a writer's connection
    built = store.generation
    last, first = _passage_ids(store, ARTS[-1]["id"]), _passage_ids(store, ARTS[0]["id"])
    assert store.removed_since(built) == []
    remove_documents([ARTS[-1]["id"]], new)
    add_documents(None, new, articles=[article_from_dict(ARTS[-1])], embedder=fake_embedder)  # removes nothing
    changed = dict(ARTS[0], paragraphs=["A new first paragraph.", *ARTS[0]["paragraphs"][1:]])
    add_documents(None, new, articles=[article_from_dict(changed)], embedder=fake_embedder)  # replaces them all
    assert store.generation == built + 3
    assert sorted(store.removed_since(built)) == sorted(last | first)
    assert sorted(store.removed_since(built + 1)) == sorted(store.removed_since(built + 2)) == sorted(first)
    assert store.removed_since(built + 3) == []

    # a write by an earlier version logs nothing: the log cannot tell what it removed, and starts again after it
    with store.transaction() as con:
        con.execute("DELETE FROM documents WHERE doc_id = ?", (ARTS[-1]["id"],))
        con.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
    assert store.removed_since(built) is None and store.removed_since(built + 3) is None
    first = _passage_ids(store, ARTS[0]["id"])
    remove_documents([ARTS[0]["id"]], new)
    assert store.removed_since(built + 3) is None and sorted(store.removed_since(built + 4)) == sorted(first)

    # it keeps the last REMOVALS_KEEP generations' removals
    monkeypatch.setattr(qa.store, "REMOVALS_KEEP", 2)
    for _ in range(3):
        add_documents(None, new, articles=[article_from_dict(ARTS[-1])], embedder=fake_embedder)
        remove_documents([ARTS[-1]["id"]], new)
    now = store.generation
    assert store.removed_since(now - 3) is None and store.removed_since(now - 2) is not None
    assert store.con.execute("SELECT MIN(generation) FROM removed_passages").fetchone()[0] > now - 2
    store.close()


def test_a_row_cache_is_carried_over_alike_with_and_without_the_log_of_removals(tmp_path, corpus, fake_embedder):
    carried = {}
    for logged in (True, False):
        new = str(tmp_path / f"logged-{logged}")
        build_index([corpus], new, embedder=fake_embedder)
        index = load_index(new, embedder=fake_embedder)
        store = index.store
        store.prewarm(index.dim)
        gone = _passage_ids(store, ARTS[-1]["id"])
        looked_up = []
        live = store._live_passages
        store._live_passages = lambda ids: looked_up.append(len(ids)) or live(ids)
        remove_documents([ARTS[-1]["id"]], new)
        if not logged:
            with Store(store.path).transaction() as con:  # as if an earlier version had written it
                con.execute("DELETE FROM meta WHERE key = 'removals_through'")
        store.carry_rows()
        assert bool(looked_up) is not logged  # the log spares the look-up of every cached passage
        carried[logged] = (_cached_passages(store), store._rows.used)
        index.close()
    assert carried[True] == carried[False] and carried[True][1] > 0
    assert all(held and not held & gone for held in carried[True][0].values())


def test_the_window_map_is_carried_over_to_newer_generations(tmp_path, corpus, fake_embedder):
    new = str(tmp_path / "new")
    build_index([corpus], new, embedder=fake_embedder)
    store = load_index(new, embedder=fake_embedder).store
    whole = []
    read = store.window_passages
    store.window_passages = lambda after=0: (whole.append(after) if not after else None) or read(after)

    def same_as_the_table():
        carried, table = store.window_map(), read()
        return np.array_equal(carried.ids, table.ids) and np.array_equal(carried.passages, table.passages)

    assert same_as_the_table() and whole == []  # the loaded index's, read as it loaded
    changed = dict(ARTS[0], paragraphs=["A new first paragraph.", *ARTS[0]["paragraphs"][1:]])
    for write in (lambda: remove_documents([ARTS[-1]["id"]], new),
                  lambda: add_documents(None, new, articles=[article_from_dict(ARTS[-1])], embedder=fake_embedder),
                  lambda: add_documents(None, new, articles=[article_from_dict(changed)], embedder=fake_embedder)):
        write()
        assert same_as_the_table() and whole == []  # dropped and appended, not read again
    index = load_index(new, embedder=fake_embedder, store=store)
    assert np.array_equal(index.window_ids, read().ids) and whole == []

    with Store(store.path).transaction() as con:  # a write by an earlier version: no log of what it removed
        con.execute("DELETE FROM documents WHERE doc_id = ?", (ARTS[-1]["id"],))
        con.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
    assert same_as_the_table() and whole == [0]
    index.close()


def _cached_passages(store) -> dict[str, set[int]]:
    """The passage rowids the store's row cache holds, by kind of row, in entries or in tables."""
    held: dict[str, set[int]] = {}
    for kind, rowid in list(store._rows._rows):
        held.setdefault(kind, set()).add(rowid)
    for kind, table in store._rows.tables.items():
        held.setdefault(kind, set()).update(table.held())
    return held


def _table_bytes(cache) -> int:
    return sum(table.nbytes for table in cache.tables.values())


def test_prewarm_reads_ahead_every_row_a_search_reads(tmp_path, corpus, fake_embedder):
    from qa.search import search

    new = str(tmp_path / "new")
    build_index([corpus], new, embedder=fake_embedder)
    index, cold = load_index(new, embedder=fake_embedder), load_index(new, embedder=fake_embedder)
    store = index.store
    warmed = store.prewarm(index.dim, batch=3)  # two batches
    rowids = {r for (r,) in store.con.execute("SELECT id FROM passages")}
    assert warmed.passages == warmed.total == len(rowids) == 4 and warmed.cached_bytes == store._rows.used > 0
    assert _cached_passages(store) == dict.fromkeys(["folded", "sentences", "windows", "passage", "vector"], rowids)
    rows = len(store._rows)
    for query in ("harbour strike pay", "rail fares for workers", "Marta Quist"):
        warm_hits, cold_hits = search(index, query, 3).hits, search(cold, query, 3).hits
        assert [(h.passage.passage_id, h.scores) for h in warm_hits] == \
            [(h.passage.passage_id, h.scores) for h in cold_hits]
    assert len(store._rows) == rows  # nothing those searches read was missing
    index.close()
    cold.close()


def test_prewarm_keeps_within_the_cache_and_skips_a_collection_far_too_big(tmp_path, corpus, fake_embedder):
    new = str(tmp_path / "new")
    build_index([corpus], new, embedder=fake_embedder)
    store, dim, ids = load_index(new, embedder=fake_embedder).store, fake_embedder.dim, [1, 2, 3, 4]
    with store.snapshot():  # every row as an entry of its own passage: no read-ahead has made tables
        store.folded_texts(ids), store.passages(ids), store.sentences(ids, dim), store.window_vectors(ids, dim)
        store.passage_vectors(ids, dim)
        entries = store._rows.used
    tabled = load_index(new, embedder=fake_embedder).store.prewarm(dim).cached_bytes
    assert tabled < entries * 0.6  # a table is a few arrays; an entry a passage costs its own arrays and tuples
    # the rows fit as tables: all of them; they do not, but as entries they are less than twice the cache: it fills
    # up; more than that: not worth filling
    for budget, warmed_passages, tables in ((entries * 6 // 10, {4}, True), (entries * 52 // 100, {2, 3}, False),
                                            (entries // 3, {1}, False)):
        store = load_index(new, embedder=fake_embedder).store
        store.row_cache_bytes = budget
        warmed = store.prewarm(dim, batch=1)
        assert warmed.passages in warmed_passages and warmed.total == 4 and bool(store._rows.tables) is tables
        assert warmed.cached_bytes == store._rows.used <= budget and len(_cached_passages(store)["vector"]) == \
            warmed.passages
        store.close()


def test_cached_rows_are_not_tracked_by_the_garbage_collector(tmp_path, corpus, fake_embedder):
    # at 100k passages the cache keeps taking rows in: tracked ones made the collector's passes a share of the
    # searches' tail (docs/performance.md#garbage-collection)
    import gc

    new = str(tmp_path / "new")
    build_index([corpus], new, embedder=fake_embedder)
    store = load_index(new, embedder=fake_embedder).store
    store.prewarm(fake_embedder.dim)
    with store.snapshot():  # sentences and windows as entries too, as a collection that does not fit keeps them
        store._rows.tables.clear()
        store.sentences([1, 2], fake_embedder.dim), store.window_vectors([1, 2], fake_embedder.dim)
        store.passage_vectors([1, 2], fake_embedder.dim)
    gc.collect()
    gc.collect()  # a tuple holding a tuple is untracked by the pass after the one that untracks the inner one
    entries = list(store._rows._rows.items())
    assert {kind for kind, _ in dict(entries)} == {"folded", "sentences", "windows", "passage", "vector"}
    assert not [key for key, entry in entries if gc.is_tracked(key) or gc.is_tracked(entry)]
    with store.snapshot():
        passage = store.passages([1])[1]
    assert passage.words_hash == hash(passage.words()) and passage.text.startswith("Dock workers")
    store.close()


def _by_passage(rows):
    """Rows of windows in order of passage (a stable sort: each passage's own stay in order), as every read orders
    sentences; a passage's vectors as they are."""
    if isinstance(rows, np.ndarray):
        return rows
    order = np.argsort(rows.passages, kind="stable")
    return type(rows)(*(None if column is None else column[order] for column in rows))


def test_cached_vectors_are_int8_and_read_alike_with_and_without_the_cache(tmp_path, corpus, fake_embedder):
    # a quarter of float32's memory (docs/performance.md#row-cache); a ranking must not depend on what was cached,
    # nor on whether the cache holds a passage's rows in a table or in an entry of its own
    new = str(tmp_path / "new")
    build_index([corpus], new, embedder=fake_embedder)
    store, dim = load_index(new, embedder=fake_embedder).store, fake_embedder.dim
    ids = list(range(1, store.count_passages() + 1))
    reads = {"sentences": lambda: store.sentences(ids, dim), "windows": lambda: store.window_vectors(ids, dim),
             "vector": lambda: store.passage_vectors(ids, dim)}

    def read_all():
        with store.snapshot():
            return {kind: _by_passage(read()) for kind, read in reads.items()}

    uncached = {kind: _by_passage(read()) for kind, read in reads.items()}  # outside a snapshot: no cache
    store.prewarm(dim)
    assert store._rows.tables.keys() == {"sentences", "windows", "vector"}
    tabled = read_all()
    with store.snapshot():  # every other passage's rows out of the tables, then read as entries
        store._rows.tables = {kind: table.carry(ids[::2]) for kind, table in store._rows.tables.items()}
    mixed = read_all()
    assert _cached_passages(store)["sentences"] == set(ids) and set(store._rows.tables["windows"].held()) == \
        set(ids[1::2])
    with store.snapshot():
        store._rows.tables.clear()
    entries = read_all()
    for kind in reads:
        for cached in (tabled, mixed, entries):
            parts = (cached[kind], uncached[kind])
            assert len(parts[0]) == len(parts[1]) and all(np.array_equal(a, b) for a, b in zip(*parts)), kind
        if kind != "vector":
            assert tabled[kind].vectors.dtype == np.int8
        assert {v[-2].dtype for (k, _), (v, _) in store._rows._rows.items() if k == kind} == {np.dtype(np.int8)}
    query = uncached["vector"][0]
    for rows in (uncached["sentences"], uncached["windows"]):
        assert rows.vectors.dtype == np.int8
        assert np.allclose(rows.cosines(query), dequantize(rows.vectors, rows.scales) @ query, atol=1e-6)
    stored = np.stack([np.frombuffer(blob, np.float32) for (blob,) in store.con.execute(
        "SELECT vec FROM passages ORDER BY id")])
    assert uncached["vector"].dtype == np.float32
    assert np.abs(uncached["vector"] - stored).max() <= np.abs(stored).max() / 254 + 1e-7
    assert ((uncached["vector"] * stored).sum(axis=1) > 0.999).all()
    store.close()
