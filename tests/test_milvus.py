"""MilvusIndex on a real Milvus Lite database in tmp_path (milvus is an optional extra: skipped without it)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from qa.errors import BadRequest, IndexUnavailable  # noqa: E402
from qa.milvus_backend import (MilvusIndex, collections_behind, drop_collection, new_collection_name,  # noqa: E402
                               prune_collections, switch_alias)

DIM = 16


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def uri(tmp_path) -> str:
    return str(tmp_path / "milvus.db")


@pytest.fixture
def index(uri):
    with MilvusIndex(uri, "vectors_a", DIM, create=True) as idx:
        yield idx


def test_add_search_remove_ntotal(index):
    rng = np.random.default_rng(0)
    vecs = unit(rng, 100)
    ids = np.arange(1000, 1100, dtype=np.int64)
    assert index.ntotal == 0
    index.add(ids, vecs)
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
    index.add(ids[2:3], vecs[3:4])  # re-adding an id replaces its vector
    assert index.ntotal == 98
    _, found = index.search(vecs[3:4], 2)
    assert set(found[0].tolist()) == {1002, 1003}
    _, found = index.search(vecs[:1], 500)  # more than there are: padded with -1
    assert found.shape == (1, 500) and (found[0] >= 0).sum() == 98 and found[0, -1] == -1


def test_allow_filter(index):
    rng = np.random.default_rng(1)
    vecs = unit(rng, 300)
    index.add(np.arange(300, dtype=np.int64), vecs)
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
    index.add(ids, vecs)
    index.remove(ids[:10])
    got_ids, got_vecs = index.reconstruct_all()
    order = np.argsort(ids[10:])
    assert np.array_equal(got_ids, ids[10:][order])
    assert np.allclose(got_vecs, vecs[10:][order], atol=1e-6)


def test_reload_from_vectors_json(tmp_path, uri):
    rng = np.random.default_rng(3)
    vecs = unit(rng, 50)
    with MilvusIndex(uri, "vectors_a", DIM, create=True) as idx:
        idx.add(np.arange(50, dtype=np.int64), vecs)
        idx.remove(np.array([0], np.int64))
        before = idx.search(vecs[:5], 5)
        idx.save(str(tmp_path), 7)
    meta = json.loads((tmp_path / "vectors.json").read_text())
    assert meta == {"generation": 7, "kind": "milvus", "uri": uri, "collection": "vectors_a", "dim": DIM,
                    "index_type": "FLAT"}
    loaded, generation = MilvusIndex.load(str(tmp_path), DIM)
    with loaded:
        assert generation == 7 and loaded.ntotal == 49
        after = loaded.search(vecs[:5], 5)
        assert np.array_equal(before[1], after[1]) and np.allclose(before[0], after[0])
    with pytest.raises(IndexUnavailable):
        MilvusIndex.load(str(tmp_path), DIM + 1)
    with pytest.raises(IndexUnavailable):
        MilvusIndex(uri, "vectors_a", DIM + 1)
    with pytest.raises(IndexUnavailable):
        MilvusIndex(uri, "no_such_collection", DIM)


def test_parity_with_faiss_flat(uri):
    faiss_vectors = pytest.importorskip("qa.vectors")
    pytest.importorskip("faiss")
    rng = np.random.default_rng(4)
    vecs, queries = unit(rng, 2000, 384), unit(rng, 50, 384)
    ids = np.arange(5, 2005, dtype=np.int64)
    flat = faiss_vectors.FaissIndex(384, "flat")
    flat.add(ids, vecs)
    with MilvusIndex(uri, "parity", 384, create=True) as idx:
        idx.add(ids, vecs)
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
        a.add(np.arange(20, dtype=np.int64), old_vecs)
        b.add(np.arange(100, 130, dtype=np.int64), new_vecs)
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


@pytest.mark.parametrize("index_type", ["HNSW", "IVF_FLAT", "AUTOINDEX"])
def test_other_index_types(uri, index_type):
    rng = np.random.default_rng(7)
    vecs = unit(rng, 400)
    with MilvusIndex(uri, "typed", DIM, create=True, index_type=index_type) as idx:
        idx.add(np.arange(400, dtype=np.int64), vecs)
        idx.flush()
        _, found = idx.search(vecs[:20], 1)
        assert np.mean(found[:, 0] == np.arange(20)) >= 0.9
    with MilvusIndex(uri, "typed", DIM) as again:
        assert again.index_type == index_type


LOCK_PROBE = textwrap.dedent("""
    import sys
    from qa.errors import IndexUnavailable
    from qa.milvus_backend import MilvusIndex
    try:
        with MilvusIndex(sys.argv[1], "vectors_a", 16) as idx:
            print("opened", idx.ntotal)
    except IndexUnavailable as e:
        print("unavailable", e)
""")


def test_second_process_is_locked_out(uri):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=root)

    def probe() -> str:
        out = subprocess.run([sys.executable, "-c", LOCK_PROBE, uri], capture_output=True, text=True, env=env,
                             timeout=120)
        return out.stdout.strip()

    idx = MilvusIndex(uri, "vectors_a", DIM, create=True)
    idx.add(np.arange(3, dtype=np.int64), unit(np.random.default_rng(6), 3))
    try:
        assert probe().startswith("unavailable Milvus Lite database")
    finally:
        idx.close()  # the last user in this process releases the Lite lock
    assert probe() == "opened 3"
