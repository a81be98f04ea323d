"""MilvusIndex on a real Milvus Lite database in tmp_path (milvus is an optional extra: skipped without it)."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from qa.errors import BadRequest, IndexUnavailable, QAError  # noqa: E402
from qa.vectors.milvus import (VARCHAR_MAX, MilvusIndex, collections_behind, create_collection,  # noqa: E402
                               drop_collection, field_value, filter_expression, new_collection_name,
                               prune_collections, quote, source_key, switch_alias)
from qa.store import Filters  # noqa: E402
from qa.vectors import DocFields  # noqa: E402

from conftest import ROOT  # noqa: E402

pytestmark = pytest.mark.slow  # Milvus Lite: about a second a test

DIM = 16


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def docs_for(ids: np.ndarray) -> list[DocFields]:
    """Some document fields per row (vector tests that do not filter)."""
    return [DocFields(f"doc{i % 7}", "Wire", "2020-01-01") for i in np.asarray(ids).tolist()]


@pytest.fixture(scope="module")
def uri(tmp_path_factory) -> Iterator[str]:
    """One Milvus Lite database for the module, held open throughout: each test opens it again without starting
    Lite (half a second), on collections and aliases of its own."""
    path = str(tmp_path_factory.mktemp("milvus") / "milvus.db")
    with MilvusIndex(path, "keeper", DIM, create=True):
        yield path


@pytest.fixture
def own_uri(tmp_path) -> str:
    """A database of the test's own, for a test that needs it closed in this process."""
    return str(tmp_path / "milvus.db")


@pytest.fixture
def index(uri, request):
    name = "vectors_" + request.node.name.removeprefix("test_")
    with MilvusIndex(uri, name, DIM, create=True) as idx:
        yield idx


def test_add_search_remove_ntotal(index):
    rng = np.random.default_rng(0)
    vecs = unit(rng, 100)
    ids = np.arange(1000, 1100, dtype=np.int64)
    assert index.ntotal == 0
    index.add(ids, vecs, docs_for(ids))
    assert index.ntotal == 100
    scores, found = index.search(vecs[:3], 5)
    assert found.shape == scores.shape == (3, 5)
    assert found[:, 0].tolist() == [1000, 1001, 1002]
    assert np.allclose(scores[:, 0], 1.0, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    index.remove(np.array([1000, 1001, 5], np.int64))  # 5 is unknown: ignored
    assert index.ntotal == 98
    _, found = index.search(vecs[:2], 5)
    assert 1000 not in found and 1001 not in found
    index.add(ids[2:3], vecs[3:4], docs_for(ids[2:3]))  # re-adding an id replaces its vector
    assert index.ntotal == 98
    _, found = index.search(vecs[3:4], 2)
    assert set(found[0].tolist()) == {1002, 1003}
    _, found = index.search(vecs[:1], 500)  # more than there are: padded with -1
    assert found.shape == (1, 500) and (found[0] >= 0).sum() == 98 and found[0, -1] == -1


def test_allow_filter(index):
    rng = np.random.default_rng(1)
    vecs = unit(rng, 300)
    ids = np.arange(300, dtype=np.int64)
    index.add(ids, vecs, docs_for(ids))
    allow = np.arange(0, 300, 7, dtype=np.int64)
    scores, found = index.search(vecs[:4], 10, allow)
    assert set(found.ravel().tolist()) <= set(allow.tolist())
    exact = vecs[allow] @ vecs[:4].T
    for q in range(4):
        assert found[q].tolist() == allow[np.argsort(-exact[:, q])[:10]].tolist()
    index.max_filter_ids = 5  # force chunked filtering: same answer
    scores2, found2 = index.search(vecs[:4], 10, allow)
    assert np.array_equal(found, found2) and np.allclose(scores, scores2, atol=1e-6)
    _, few = index.search(vecs[:1], 10, np.array([3, 9999], np.int64))
    assert few[0].tolist() == [3] + [-1] * 9
    s, empty = index.search(vecs[:2], 10, np.array([], np.int64))
    assert empty.shape == s.shape == (2, 0)


def test_reconstruct_all(index):
    rng = np.random.default_rng(2)
    vecs = unit(rng, 250)
    ids = rng.permutation(10_000)[:250].astype(np.int64)
    index.add(ids, vecs, docs_for(ids))
    index.remove(ids[:10])
    got_ids, got_vecs = index.reconstruct_all()
    order = np.argsort(ids[10:])
    assert np.array_equal(got_ids, ids[10:][order])
    assert np.allclose(got_vecs, vecs[10:][order], atol=1e-6)


def test_reload_from_vectors_json(tmp_path, uri):
    rng = np.random.default_rng(3)
    vecs = unit(rng, 50)
    with MilvusIndex(uri, "reloaded", DIM, create=True) as idx:
        idx.add(np.arange(50), vecs, docs_for(np.arange(50)))
        idx.remove(np.array([0], np.int64))
        before = idx.search(vecs[:5], 5)
        idx.save(str(tmp_path), 7)
    meta = json.loads((tmp_path / "vectors.json").read_text())
    assert meta == {"generation": 7, "kind": "milvus", "uri": uri, "collection": "reloaded", "dim": DIM,
                    "index_type": "FLAT"}
    loaded, generation = MilvusIndex.load(str(tmp_path), DIM)
    with loaded:
        assert generation == 7 and loaded.ntotal == 49
        after = loaded.search(vecs[:5], 5)
        assert np.array_equal(before[1], after[1]) and np.allclose(before[0], after[0])
    with pytest.raises(IndexUnavailable):
        MilvusIndex.load(str(tmp_path), DIM + 1)
    with pytest.raises(IndexUnavailable):
        MilvusIndex(uri, "reloaded", DIM + 1)
    with pytest.raises(IndexUnavailable):
        MilvusIndex(uri, "no_such_collection", DIM)


def test_parity_with_faiss_flat(uri):
    faiss_vectors = pytest.importorskip("qa.vectors.faiss")
    pytest.importorskip("faiss")
    rng = np.random.default_rng(4)
    vecs, queries = unit(rng, 2000, 384), unit(rng, 50, 384)
    ids = np.arange(5, 2005, dtype=np.int64)
    flat = faiss_vectors.FaissIndex(384, "flat")
    flat.add(ids, vecs)
    with MilvusIndex(uri, "parity", 384, create=True) as idx:
        idx.add(ids, vecs, docs_for(ids))
        idx.flush()  # search the sealed, indexed segments rather than the write buffer
        m_scores, m_ids = idx.search(queries, 10)
    f_scores, f_ids = flat.search(queries, 10)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(m_ids.tolist(), f_ids.tolist())])
    assert overlap >= 0.99
    assert np.allclose(m_scores, f_scores, atol=1e-4)


def test_alias_switch(uri):
    rng = np.random.default_rng(5)
    old_vecs, new_vecs = unit(rng, 20), unit(rng, 30)
    first, second = new_collection_name("news"), new_collection_name("news")
    with MilvusIndex(uri, first, DIM, create=True) as a, MilvusIndex(uri, second, DIM, create=True) as b:
        a.add(np.arange(20), old_vecs, docs_for(np.arange(20)))
        b.add(np.arange(100, 130), new_vecs, docs_for(np.arange(100, 130)))
        assert switch_alias(a.client, "news", first) is None
        with MilvusIndex(uri, "news", DIM) as live:  # readers open the alias
            assert live.ntotal == 20 and live.live_collection == first
            assert switch_alias(a.client, "news", second) == first
            assert live.ntotal == 30 and live.live_collection == second
            assert live.search(new_vecs[:1], 1)[1][0, 0] == 100
        assert collections_behind(a.client, "news") == sorted([first, second])
        with pytest.raises(BadRequest):
            drop_collection(a.client, second)  # live behind the alias
        assert prune_collections(a.client, "news", keep=0) == [first]
        assert collections_behind(a.client, "news") == [second]


def test_collections_behind_an_alias_not_a_longer_one(uri):
    """`desk` and `desk_1a2b3c4d` (a folder's unique alias) share a prefix, never their collections."""
    mine, theirs = new_collection_name("desk"), new_collection_name("desk_1a2b3c4d")
    with MilvusIndex(uri, mine, DIM, create=True) as a, MilvusIndex(uri, theirs, DIM, create=True):
        assert collections_behind(a.client, "desk") == [mine]
        assert collections_behind(a.client, "desk_1a2b3c4d") == [theirs]
        assert prune_collections(a.client, "desk", keep=0) == [mine] and a.client.has_collection(theirs)


class IndexStates:
    """A client whose indexes report the given states, one per look, then Finished."""

    def __init__(self, states: dict[str, list[str]]):
        self.states, self.calls = states, []

    def create_collection(self, name, **kw):
        self.calls.append(("create_collection", name, kw.get("consistency_level")))

    def create_index(self, name, params, **kw):
        self.calls.append(("create_index", name, kw.get("sync")))

    def describe_index(self, name, index_name):
        left = self.states[index_name]
        return {"index_name": index_name, "state": left.pop(0) if left else "Finished"}


def test_create_collection_waits_for_every_index_without_pymilvus_s_wait(monkeypatch):
    from types import SimpleNamespace

    from qa.vectors import milvus

    monkeypatch.setattr(milvus, "INDEX_POLL", 0)
    params = [SimpleNamespace(index_name="", field_name="vec"), SimpleNamespace(index_name="by_doc", field_name="doc")]
    client = IndexStates({"vec": ["InProgress", "InProgress"], "by_doc": ["Unissued"]})
    create_collection(client, "c", object(), params)
    assert client.calls == [("create_collection", "c", "Strong"), ("create_index", "c", False)]
    assert client.states == {"vec": [], "by_doc": []}  # each index asked until it finished
    with pytest.raises(IndexUnavailable, match="index vec of collection c"):
        create_collection(IndexStates({"vec": ["InProgress", "Failed"], "by_doc": []}), "c", object(), params)


@pytest.mark.parametrize("index_type", ["HNSW", "IVF_FLAT", "AUTOINDEX"])
def test_other_index_types(uri, index_type):
    rng = np.random.default_rng(7)
    vecs = unit(rng, 400)
    name = "typed_" + index_type.lower()
    with MilvusIndex(uri, name, DIM, create=True, index_type=index_type) as idx:
        idx.add(np.arange(400), vecs, docs_for(np.arange(400)))
        idx.flush()
        _, found = idx.search(vecs[:20], 1)
        assert np.mean(found[:, 0] == np.arange(20)) >= 0.9
    with MilvusIndex(uri, name, DIM) as again:
        assert again.index_type == index_type


LOCK_PROBE = textwrap.dedent("""
    import sys
    from qa.errors import IndexUnavailable
    from qa.vectors.milvus import MilvusIndex
    try:
        with MilvusIndex(sys.argv[1], "vectors_a", 16) as idx:
            print("opened", idx.ntotal)
    except IndexUnavailable as e:
        print("unavailable", e)
""")


@pytest.mark.slow  # a second Python process
def test_second_process_is_locked_out(own_uri):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=ROOT)

    def probe() -> str:
        out = subprocess.run([sys.executable, "-c", LOCK_PROBE, own_uri], capture_output=True, text=True, env=env,
                             timeout=120)
        return out.stdout.strip()

    idx = MilvusIndex(own_uri, "vectors_a", DIM, create=True)
    idx.add(np.arange(3), unit(np.random.default_rng(6), 3), docs_for(np.arange(3)))
    try:
        assert probe().startswith("unavailable Milvus Lite database")
    finally:
        idx.close()  # the last user in this process releases the Lite lock
    assert probe() == "opened 3"


def test_a_failed_connection_releases_the_lite_server_it_started(own_uri, monkeypatch):
    # pymilvus starts Lite's server in this process, then its connection can fail ("Connection recovery failed",
    # seen once in five test runs): that server's lock then read as another process's, and every later open failed
    import pymilvus
    from milvus_lite.server_manager import server_manager_instance
    from pymilvus.exceptions import MilvusException

    from qa.vectors.milvus import _lite_locked

    real = pymilvus.MilvusClient

    def failing(uri: str, **kwargs):
        server_manager_instance.start_and_get_uri(uri)  # the real server, started as pymilvus starts it
        raise MilvusException(message="Connection recovery failed")

    monkeypatch.setattr(pymilvus, "MilvusClient", failing)
    with pytest.raises(IndexUnavailable, match="^cannot open Milvus at .*Connection recovery failed"):
        MilvusIndex(own_uri, "vectors_a", DIM, create=True)
    assert not _lite_locked(own_uri)
    monkeypatch.setattr(pymilvus, "MilvusClient", real)
    with MilvusIndex(own_uri, "vectors_a", DIM, create=True) as idx:
        idx.add(np.arange(2), unit(np.random.default_rng(7), 2), docs_for(np.arange(2)))
        assert idx.ntotal == 2


# --- filter pushdown -----------------------------------------------------------------------------------------------

class SqliteDocs:
    """The reference for filters: rows' documents in SQLite, filtered by `Filters.sql` as the store does."""

    def __init__(self, docs: list[DocFields], ids: np.ndarray):
        self.con = sqlite3.connect(":memory:")
        self.con.execute("CREATE TABLE documents (doc_id TEXT PRIMARY KEY, source TEXT, published TEXT)")
        self.con.execute("CREATE TABLE windows (id INTEGER PRIMARY KEY, doc_id TEXT NOT NULL)")
        self.con.executemany("INSERT OR IGNORE INTO documents VALUES (?,?,?)",
                             [(d.doc_id, d.source, d.published) for d in docs])
        self.con.executemany("INSERT INTO windows VALUES (?,?)", zip(ids.tolist(), [d.doc_id for d in docs]))

    def filtered_window_ids(self, filters: Filters) -> np.ndarray:
        where, params = filters.sql("d")
        rows = self.con.execute(f"SELECT w.id FROM windows w JOIN documents d ON d.doc_id = w.doc_id WHERE {where}",
                                params)
        return np.array([r[0] for r in rows], np.int64)


LONG = "L" * (VARCHAR_MAX + 10)  # too long for a Milvus VARCHAR: stored hashed
INJECTION = 'x" or id >= 0 or doc_id == "'
DOCS = [
    DocFields("plain", "BBC News", "2021-03-04"),
    DocFields("lower", "bbc news", "2020-12-31"),
    DocFields("dateless", "Bbc NEWS", None),
    DocFields('quo"te', 'The "Times"', "2021-01-01"),
    DocFields("back\\slash", "C:\\feeds\\", "2019-06-30"),
    DocFields(INJECTION, "Élan", "2021-06-30"),
    DocFields("line\nbreak\ttab", "élan", "2022-01-01"),
    DocFields("sourceless", None, "2021-02-02"),
    DocFields("empty-source", "", "2021-02-04"),
    DocFields("sha256:abc", "sha256:abc", "2021-02-03"),  # looks hashed: hashed too, still matched exactly
    DocFields("long", LONG, "2021-05-05"),
]
FILTERS = [
    Filters(source="bbc news"), Filters(source="BBC NEWS"), Filters(source="bbc"),  # NOCASE: ASCII letters fold
    Filters(source="élan"), Filters(source="ÉLAN"),  # ... other letters do not (SQLite's NOCASE)
    Filters(source='the "TIMES"'), Filters(source="c:\\FEEDS\\"), Filters(source=LONG.lower()),
    Filters(source="sha256:ABC"), Filters(source=""),  # an empty source is not a missing one
    Filters(doc_id='quo"te'), Filters(doc_id="back\\slash"), Filters(doc_id=INJECTION), Filters(doc_id="PLAIN"),
    Filters(doc_id="line\nbreak\ttab"), Filters(doc_id='" or "" == "'), Filters(doc_id="long"),
    Filters(published_after="2021-01-01"), Filters(published_before="2020-12-31"),
    Filters(published_after="2021-01-01", published_before="2021-06-30"),
    Filters(published_after="2021-02-02", published_before="2021-02-02"),  # bounds are inclusive
    Filters(source="bbc news", published_before="2030-01-01"),  # the dateless BBC document drops out
    Filters(source="Élan", doc_id=INJECTION, published_after="2021-06-30"),
    Filters(),
]


def test_filter_expression_escapes():
    assert quote('a"b\\c\nd\re\tf') == '"a\\"b\\\\c\\nd\\re\tf"'
    assert filter_expression(Filters(source='The "X"', doc_id=INJECTION)) == (
        'source_key == "the \\"x\\"" and doc_id == "x\\" or id >= 0 or doc_id == \\""')
    assert filter_expression(Filters(published_after="2020-01-01", published_before="2020-12-31")) == (
        'published != "" and published >= "2020-01-01" and published <= "2020-12-31"')
    assert filter_expression(Filters()) == ""
    assert source_key("ÀBC Déf") == "Àbc déf" and source_key(None) == ""
    assert field_value(LONG).startswith("sha256:") and len(field_value(LONG)) == 71
    assert field_value("sha256:abc") != "sha256:abc" and field_value("plain") == "plain"
    assert field_value(None) == "" != field_value("")  # no source is not an empty one


@pytest.fixture(scope="module")
def rows():
    """Three rows per document of DOCS, and their vectors."""
    ids = np.arange(len(DOCS) * 3, dtype=np.int64) + 100
    docs = [DOCS[i // 3] for i in range(len(ids))]
    return ids, unit(np.random.default_rng(8), len(ids)), docs


def test_filters_match_the_store(uri, rows):
    """Every filter selects the rows SQLite selects, through a filter expression; the order is FAISS' exact one."""
    from qa.vectors.faiss import FaissIndex

    ids, vecs, docs = rows
    reference = SqliteDocs(docs, ids)
    flat = FaissIndex(DIM, "flat")
    flat.add(ids, vecs)
    with MilvusIndex(uri, "filtered", DIM, create=True) as idx:
        idx.add(ids, vecs, docs)
        idx.flush()
        for filters in FILTERS:
            want = set(reference.filtered_window_ids(filters).tolist()) if filters else set(ids.tolist())
            _, found = idx.search_filtered(vecs[:2], 100, filters, reference)
            assert {i for i in found[0].tolist() if i >= 0} == want, filters
            f_scores, f_ids = flat.search_filtered(vecs[:2], 5, filters, reference)
            m_scores, m_ids = idx.search_filtered(vecs[:2], 5, filters, reference)
            n = f_ids.shape[1]
            assert np.array_equal(m_ids[:, :n], f_ids) and np.allclose(m_scores[:, :n], f_scores, atol=1e-5), filters


def test_a_collection_without_document_fields_is_refused(uri):
    """A collection built before filter pushdown (no document fields) names the rebuild instead of being used."""
    from pymilvus import DataType, MilvusClient

    with MilvusIndex(uri, "fielded", DIM, create=True) as idx:
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vec", DataType.FLOAT_VECTOR, dim=DIM)
        params = idx.client.prepare_index_params()
        params.add_index("vec", index_type="FLAT", metric_type="IP")
        create_collection(idx.client, "bare", schema, params)
        with pytest.raises(IndexUnavailable, match="lacks the document fields .* rebuild"):
            MilvusIndex(uri, "bare", DIM)


def test_add_needs_the_document_fields(index):
    vecs = unit(np.random.default_rng(9), 3)
    with pytest.raises(QAError, match="document fields"):
        index.add(np.arange(3), vecs)
    with pytest.raises(QAError, match="document fields"):
        index.add(np.arange(3), vecs, docs_for(np.arange(2)))
    assert index.ntotal == 0  # nothing written
