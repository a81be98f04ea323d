"""FaissIndex kinds against brute-force numpy search: recall, filters, removals, save/load."""
from __future__ import annotations

import numpy as np
import pytest

from qa.vectors import base as B, faiss as V

N, NQ, DIM, K = 20_000, 50, 384, 10


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    # like sentence embeddings: clusters with variation along a few dozen directions, plus a little isotropic noise
    # (isotropic 384-d noise alone makes neighbours near-ties that no compressed index resolves)
    centres = unit(rng.normal(size=(200, DIM)))
    basis = rng.normal(size=(32, DIM)) / np.sqrt(DIM)

    def draw(n):
        return unit(centres[rng.integers(0, 200, n)] + 0.5 * rng.normal(size=(n, 32)) @ basis
                    + 0.01 * rng.normal(size=(n, DIM)))

    xb, xq = draw(N), draw(NQ)
    ids = rng.permutation(10 * N)[:N].astype(np.int64) + 1_000_000  # sparse, non-contiguous ids
    return ids, xb, xq


def exact(ids, xb, xq, k=K, allow=None):
    scores = xq @ xb.T
    if allow is not None:
        scores[:, ~np.isin(ids, allow)] = -np.inf
    top = np.argsort(-scores, axis=1)[:, :k]
    return ids[top]


def recall(got, want):
    return np.mean([len(set(g[g >= 0].tolist()) & set(w.tolist())) / len(w) for g, w in zip(got, want)])


@pytest.fixture(scope="module", params=["flat", *(pytest.param(kind, marks=pytest.mark.slow)  # trained: seconds
                                                  for kind in ("hnsw", "ivfpq"))])
def built(request, data):
    ids, xb, _ = data
    idx = V.FaissIndex(DIM, request.param)
    half = N // 2
    idx.add(ids[:half], xb[:half])  # the first add trains the approximate kinds
    idx.add(ids[half:], xb[half:])  # incremental add after training
    return request.param, idx


def test_choose_kind():
    assert B.choose_kind("auto", 10) == "flat"
    assert B.choose_kind("auto", B.HNSW_THRESHOLD) == B.LARGE_KIND
    assert B.choose_kind("ivfpq", 10) == "ivfpq"
    with pytest.raises(Exception):
        B.choose_kind("nope", 10)


def test_hnsw_searches_wider_from_a_size_on(data, monkeypatch):
    ids, xb, xq = data
    assert V.ef_search(V.HNSW_LARGE - 1) == V.HNSW_EF_SEARCH < V.ef_search(V.HNSW_LARGE) == V.HNSW_EF_SEARCH_LARGE
    idx = V.FaissIndex(DIM, "hnsw")
    idx.add(ids[:2_000], xb[:2_000])
    import faiss

    used, real = [], faiss.SearchParametersHNSW

    def recording(**kw):
        used.append(kw["efSearch"])
        return real(**kw)

    monkeypatch.setattr(faiss, "SearchParametersHNSW", recording)
    idx.search(xq[:1], K)
    monkeypatch.setattr(V, "HNSW_LARGE", 2_000)
    idx.search(xq[:1], K)
    assert used == [V.HNSW_EF_SEARCH, V.HNSW_EF_SEARCH_LARGE]


def test_recall(built, data):
    kind, idx = built
    ids, xb, xq = data
    assert idx.ntotal == N
    _, got = idx.search(xq, K)
    r = recall(got, exact(ids, xb, xq))
    assert r == 1.0 if kind == "flat" else r >= 0.95, (kind, r)


@pytest.mark.parametrize("n_allow", [300, 15_000])  # exact-subset path and selector path
def test_allow_filter(built, data, n_allow):
    kind, idx = built
    ids, xb, xq = data
    allow = np.random.default_rng(1).choice(ids, n_allow, replace=False)
    _, got = idx.search(xq, K, allow=allow)
    assert np.isin(got[got >= 0], allow).all()
    r = recall(got, exact(ids, xb, xq, allow=allow))
    assert r >= (0.999 if kind == "flat" else 0.9), (kind, n_allow, r)
    assert idx.search(xq, K, allow=np.zeros(0, np.int64))[1].shape == (NQ, 0)


def test_remove_save_load(built, data, tmp_path):
    kind, src = built
    ids, xb, xq = data
    import faiss

    idx = V.FaissIndex(DIM, kind, faiss.clone_index(src.index))  # a copy: removals must not leak into other tests
    _, before = idx.search(xq, K)
    gone = np.unique(before[:, :3])
    idx.remove(gone)
    assert idx.ntotal == N - len(gone)
    _, after = idx.search(xq, K)
    assert not np.isin(after, gone).any()
    _, filt = idx.search(xq, K, allow=np.concatenate([gone, ids[:100]]))
    assert not np.isin(filt, gone).any()
    idx.save(str(tmp_path), 7)
    loaded, gen = V.FaissIndex.load(str(tmp_path), DIM)
    assert gen == 7 and loaded.kind == kind and loaded.ntotal == idx.ntotal
    assert np.array_equal(loaded.search(xq, K)[1], after)
    live, _ = loaded.reconstruct_all()
    assert len(live) == loaded.ntotal and not np.isin(live, gone).any()


def test_inner_products_score_every_vector_of_an_exact_index(built, data, tmp_path):
    """A flat index scores every stored vector in storage order, alike when its file is mapped (unaligned for
    numpy); its ids follow removals and adds. The approximate kinds cannot."""
    kind, src = built
    ids, xb, xq = data
    import faiss

    idx = V.FaissIndex(DIM, kind, faiss.clone_index(src.index))
    if kind != "flat":
        assert idx.stored_ids() is None
        return
    assert np.array_equal(idx.stored_ids(), ids)
    assert np.allclose(idx.inner_products(xq[0]), xb @ xq[0], atol=1e-5)
    idx.remove(ids[:10])
    idx.add(ids[:3], xb[:3])
    stored = idx.stored_ids()
    assert sorted(stored.tolist()) == sorted(ids[10:].tolist() + ids[:3].tolist())
    by_id = dict(zip(ids.tolist(), xb @ xq[1]))
    assert np.allclose(idx.inner_products(xq[1]), [by_id[i] for i in stored.tolist()], atol=1e-5)
    idx.save(str(tmp_path), 1)
    mapped, _ = V.FaissIndex.load(str(tmp_path), DIM, mmap=True)
    assert np.array_equal(mapped.stored_ids(), stored)
    assert np.array_equal(mapped.inner_products(xq[1]), idx.inner_products(xq[1]))


def _mapped_files() -> set[str]:
    with open("/proc/self/maps", encoding="utf-8") as f:  # address perms offset dev inode [path]
        return {fields[5].strip() for fields in (line.split(maxsplit=5) for line in f) if len(fields) == 6}


def test_mapped_load_matches_and_is_read_only(built, data, tmp_path):
    """A reader's load maps the file (codes and graph stay in the page cache, shared across processes) and gives the
    same results, filters and tombstones included; the map cannot be changed."""
    kind, src = built
    ids, xb, xq = data
    import faiss

    idx = V.FaissIndex(DIM, kind, faiss.clone_index(src.index))
    idx.remove(ids[:50])
    idx.save(str(tmp_path), 3)
    read, _ = V.FaissIndex.load(str(tmp_path), DIM)
    mapped, gen = V.FaissIndex.load(str(tmp_path), DIM, mmap=True)
    assert gen == 3 and mapped.mapped and not read.mapped
    assert str(tmp_path / V.FAISS_FILE) in _mapped_files()
    for allow in (None, ids[:5000]):
        got, want = mapped.search(xq, K, allow=allow), read.search(xq, K, allow=allow)
        assert np.array_equal(got[1], want[1]) and np.allclose(got[0], want[0])
    assert np.array_equal(mapped.reconstruct_all()[0], read.reconstruct_all()[0])
    for change in (lambda: mapped.add(ids[:1], xb[:1]), lambda: mapped.remove(ids[100:101])):
        with pytest.raises(RuntimeError, match="read-only"):
            change()
    del mapped
    import gc

    gc.collect()
    assert str(tmp_path / V.FAISS_FILE) not in _mapped_files()  # dropping the index unmaps the file


def test_empty_and_small_first_batch(tmp_path):
    rng = np.random.default_rng(2)
    for kind in ("flat", "hnsw", "ivfpq"):
        idx = V.FaissIndex(DIM, kind)
        q = unit(rng.normal(size=(1, DIM)))
        assert idx.search(q, K)[1].shape == (1, 0)
        idx.save(str(tmp_path), 1)
        idx, _ = V.FaissIndex.load(str(tmp_path), DIM)
        x = unit(rng.normal(size=(5, DIM)))
        idx.add(np.arange(5, dtype=np.int64), x)
        _, got = idx.search(x[:1], 3)
        assert got[0, 0] == 0, kind
