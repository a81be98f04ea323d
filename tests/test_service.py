"""The engine's live index: row caches read ahead before searches need them, at start and after writes."""
import pytest

from qa.config import Config
from qa.errors import ConfigError
from qa.index import add_documents
from qa.ingest import article_from_dict
from qa.service import Engine

from conftest import wait_for


def _warm(index) -> bool:
    """Whether the index's row cache is of its store's newest generation and holds every passage's vector (in its
    table, or in an entry each), and its exact vector index's windows are laid out by passage."""
    stored = index.vectors.stored_ids()
    assert stored is not None  # the fixtures' indexes are flat
    if index._layout is None or index._layout.ids is not stored:
        return False
    store = index.store
    rows = store._rows
    if rows is None or rows.generation != store.generation:
        return False
    table = rows.tables.get("vector")
    held = len(table.held()) if table is not None else sum(1 for kind, _ in list(rows._rows) if kind == "vector")
    return held == store.count_passages()


def test_the_row_cache_is_warm_at_start_and_after_every_write(fake_seed_copy, fake_embedder):
    engine = Engine(Config(index_dir=fake_seed_copy, reload_interval=0), embedder=fake_embedder)
    engine.warm_up()
    assert _warm(engine.index())

    # a write from another process: the reload warms the new generation before it goes live
    article = article_from_dict({"id": "extra", "title": "Harbour news",
                                 "paragraphs": ["The harbour reopened on Tuesday.", "Ships queued outside."]})
    add_documents(None, fake_seed_copy, articles=[article], embedder=fake_embedder)
    assert wait_for(lambda: engine.index() is not None and engine.reloads == 1)
    assert _warm(engine.index())

    # this engine's own writes: answered at once, the windows laid out before the new index goes live and the
    # cache warmed behind them
    warm_behind = engine._prewarm_soon
    engine._prewarm_soon = lambda: None  # so only the write itself can have laid them out
    engine.add_article({"id": "own-x", "title": "Port", "paragraphs": ["Tugs waited at the breakwater."]})
    index = engine.index()
    assert index._layout is not None and index._layout.ids is index.vectors.stored_ids()
    engine._prewarm_soon = warm_behind
    for n in range(3):
        engine.add_article({"id": f"own-{n}", "title": "Port", "paragraphs": [f"Cranes stood idle for {n} days."]})
    assert wait_for(lambda: not engine._warming and _warm(engine.index()))
    assert engine.search({"q": "cranes idle"})["results"][0]["doc_id"].startswith("own-")


def test_the_row_cache_budget_is_a_setting(fake_seed_copy, fake_embedder, monkeypatch):
    whole = Engine(Config(index_dir=fake_seed_copy), embedder=fake_embedder)
    whole.warm_up()
    size = whole.index().store._rows.used
    monkeypatch.setenv("QA_ROW_CACHE_MB", str(size / 3 / (1 << 20)))
    engine = Engine(Config.from_env(index_dir=fake_seed_copy), embedder=fake_embedder)
    engine.warm_up()
    store = engine.index().store
    assert store.row_cache_bytes == int(size / 3) and 0 < store._rows.used <= size / 3
    monkeypatch.setenv("QA_ROW_CACHE_MB", "lots")
    with pytest.raises(ConfigError, match="QA_ROW_CACHE_MB must be a number of 0 or more, or auto, not 'lots'"):
        Config.from_env()


def test_the_automatic_row_cache_budget_holds_every_row_or_falls_back_to_the_default(fake_seed_copy, fake_embedder,
                                                                                        monkeypatch):
    from qa.config import ROW_CACHE_SHARE
    from qa.process import machine_memory

    for value in (None, "auto", " Auto "):
        if value is None:
            monkeypatch.delenv("QA_ROW_CACHE_MB", raising=False)
        else:
            monkeypatch.setenv("QA_ROW_CACHE_MB", value)
        assert Config.from_env().row_cache_mb is None
    engine = Engine(Config.from_env(index_dir=fake_seed_copy), embedder=fake_embedder)
    engine.warm_up()
    store = engine.index().store
    assert store.row_cache_bytes == int(machine_memory() * ROW_CACHE_SHARE) and _warm(engine.index())
    engine.add_article({"id": "own", "title": "Port", "paragraphs": ["Cranes stood idle."]})
    assert engine.index().store is store and store.row_cache_bytes == int(machine_memory() * ROW_CACHE_SHARE)

    # rows that would not fit the automatic budget: the default one, as if none had been given
    size = store._rows.used
    small = Engine(Config.from_env(index_dir=fake_seed_copy), embedder=fake_embedder)
    small_store = small.index().store
    small_store.row_cache_bytes, small_store.row_cache_floor = size // 2, size // 5
    small_store.prewarm(fake_embedder.dim, batch=2)
    assert small_store.row_cache_bytes == size // 5 and 0 < small_store._rows.used <= size // 5


def test_searches_during_writes_never_see_a_removed_or_replaced_passage(fake_seed_copy, fake_embedder):
    # the row cache outlives writes: what a write removed or replaced must not come back from it, whatever the
    # searches running meanwhile load (docs/performance.md#row-cache)
    import threading

    engine = Engine(Config(index_dir=fake_seed_copy, reload_interval=0), embedder=fake_embedder)
    engine.warm_up()
    query = {"q": "lighthouse keeper storm", "k": 5}
    seen: list[tuple[int, set[str]]] = []  # (writes finished before the search began, texts it returned)
    finished = [0]
    stop = threading.Event()

    def searcher() -> None:
        while not stop.is_set():
            before = finished[0]
            texts = {r["text"] for r in engine.search(query)["results"] if r["doc_id"] == "lighthouse"}
            seen.append((before, texts))

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    for t in threads:
        t.start()
    versions = [f"The lighthouse keeper logged storm number {n} in the harbour." for n in range(6)]
    try:
        for n, text in enumerate(versions):
            engine.add_article({"id": "lighthouse", "title": "Lighthouse keeper", "paragraphs": [text]})
            finished[0] = 2 * n + 1
            if n % 2:
                engine.delete_document("lighthouse")
                finished[0] = 2 * n + 2
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert len(seen) > 20
    for before, texts in seen:
        if before and before % 2:  # after the write of version (before - 1) / 2, before anything later finished
            assert texts <= set(versions[(before - 1) // 2:]), (before, texts)
        elif before:  # after a removal: the removed version never again
            assert not texts & set(versions[:before // 2]), (before, texts)
    assert any(texts for _, texts in seen)
