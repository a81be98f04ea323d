"""The index folder on Milvus Lite (real, no mocks) with the hash embedder: build, check, search, update, rebuild."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")
pytestmark = pytest.mark.slow  # every test builds index folders on Milvus Lite, seconds each

from qa.embed import HashEmbedder  # noqa: E402
from qa.vectors import milvus as mb  # noqa: E402
from qa.errors import BadRequest  # noqa: E402
from qa.index import add_documents, build_index, check_index, load_index, remove_documents  # noqa: E402
from qa.manifest import Manifest  # noqa: E402
from qa.params import make_filters  # noqa: E402
from qa.search import MODES, search  # noqa: E402

from conftest import ROOT, SQUAD_SMALL  # noqa: E402

ARTICLES = os.path.join(SQUAD_SMALL, "articles.jsonl")


def _articles() -> list[dict]:
    with open(ARTICLES, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _jsonl(path, articles: list[dict]) -> str:
    path.write_text("".join(json.dumps(a) + "\n" for a in articles))
    return str(path)


def _few(n: int = 4) -> list[dict]:
    """The small corpus' articles cut to their first `n` paragraphs (quick to embed)."""
    return [{**a, "paragraphs": a["paragraphs"][:n]} for a in _articles()]


@pytest.fixture(scope="module")
def milvus_dir(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("milvus") / "index")
    build_index([ARTICLES], path, embedder=HashEmbedder(), vector_backend="milvus", milvus_token="not-a-secret")
    return path


@pytest.fixture(scope="module")
def faiss_dir(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("faiss") / "index")
    build_index([ARTICLES], path, embedder=HashEmbedder())
    return path


@pytest.fixture(scope="module")
def milvus_index(milvus_dir):
    index = load_index(milvus_dir, embedder=HashEmbedder())
    yield index
    index.close()


def test_build_manifest_and_check(milvus_dir):
    manifest = Manifest.load(milvus_dir)
    assert manifest.vector_backend == "milvus" and manifest.milvus_uri == mb.LITE_FILE
    assert manifest.milvus_collection.startswith(manifest.milvus_alias + "_")
    assert os.path.isdir(os.path.join(milvus_dir, mb.LITE_FILE))  # top level, shared by builds
    data = os.path.join(milvus_dir, manifest.data_dir)
    for name in ("manifest.json", os.path.join(manifest.data_dir, "vectors.json")):
        with open(os.path.join(milvus_dir, name), encoding="utf-8") as f:
            assert "not-a-secret" not in f.read()
    assert not os.path.exists(os.path.join(data, "vectors.faiss"))
    assert check_index(milvus_dir) == []


def test_search_modes_and_filters(milvus_index):
    assert milvus_index.vectors.kind == "milvus"
    assert milvus_index.vectors.ntotal == milvus_index.manifest.counts.windows
    for mode in ("hybrid", "dense", "lexical"):
        hits = search(milvus_index, "Super Bowl 50 at Levi's Stadium in Santa Clara", 5, mode=mode).hits
        assert hits and hits[0].passage.doc_id == "Super_Bowl_50", mode
    for mode in ("hybrid", "dense"):
        hits = search(milvus_index, "Where did Super Bowl 50 take place?", 5, mode=mode,
                      filters=make_filters(doc_id="Warsaw")).hits
        assert hits and {h.passage.doc_id for h in hits} == {"Warsaw"}, mode
    assert not search(milvus_index, "Super Bowl", 5, mode="dense", filters=make_filters(source="Nobody")).hits


def test_dense_parity_with_faiss(milvus_index, faiss_dir, fake_embedder):
    faiss_index = load_index(faiss_dir, embedder=fake_embedder)
    with open(os.path.join(SQUAD_SMALL, "questions.jsonl"), encoding="utf-8") as f:
        questions = [json.loads(line)["question"] for line in f][:50]
    overlaps, vector_overlaps = [], []
    for q in questions:
        a = [h.passage.passage_id for h in search(milvus_index, q, 10, mode="dense").hits]
        b = [h.passage.passage_id for h in search(faiss_index, q, 10, mode="dense").hits]
        overlaps.append(len(set(a) & set(b)) / max(len(b), 1))
        qvec = fake_embedder.encode([q])
        _, m_ids = milvus_index.vectors.search(qvec, 10)
        _, f_ids = faiss_index.vectors.search(qvec, 10)
        vector_overlaps.append(len(set(m_ids[0].tolist()) & set(f_ids[0].tolist())) / 10)
    faiss_index.close()
    assert len(questions) == 50
    assert np.mean(overlaps) >= 0.99 and np.mean(vector_overlaps) >= 0.99


# on the real model: its ranking is checked
def test_add_remove(tmp_path, embedder):
    few = _few()
    path = str(tmp_path / "index")
    build_index([_jsonl(tmp_path / "a.jsonl", few[:2])], path, embedder=embedder, vector_backend="milvus")
    report = add_documents([_jsonl(tmp_path / "b.jsonl", few[2:])], path, embedder=embedder)
    assert report.added == 1 and report.documents == 3
    assert check_index(path) == []
    index = load_index(path, embedder=embedder)
    try:
        assert index.vectors.ntotal == index.manifest.counts.windows
        assert search(index, "Who were the Normans?", 3, mode="dense").hits[0].passage.doc_id == "Normans"
        hits = search(index, "Who were the Normans?", 3, mode="dense", filters=make_filters(doc_id="Normans")).hits
        assert hits and {h.passage.doc_id for h in hits} == {"Normans"}  # the added rows carry their fields
    finally:
        index.close()
    assert remove_documents(["Super_Bowl_50"], path).removed == 1
    assert check_index(path) == []
    index = load_index(path, embedder=embedder)
    try:
        assert index.manifest.counts.documents == 2
        assert index.vectors.ntotal == index.manifest.counts.windows
        hits = search(index, "Where did Super Bowl 50 take place?", 10, mode="dense").hits
        assert hits and "Super_Bowl_50" not in {h.passage.doc_id for h in hits}
    finally:
        index.close()


# collection names sort by the microsecond a build started, so three quick builds keep their order
def test_rebuild_switches_alias_and_drops_old(tmp_path, fake_embedder, monkeypatch):
    path = str(tmp_path / "index")
    corpus = _jsonl(tmp_path / "a.jsonl", _few(2))
    build_index([corpus], path, embedder=fake_embedder, vector_backend="milvus")
    names = [Manifest.load(path).milvus_collection]
    build_index([corpus], path, embedder=fake_embedder)  # no backend given: the live index's
    names.append(Manifest.load(path).milvus_collection)
    manifest = Manifest.load(path)
    with mb.MilvusIndex(mb.resolve_uri(path, manifest.milvus_uri), manifest.milvus_alias,
                        fake_embedder.dim) as live:
        assert live.live_collection == names[1]
        assert mb.collections_behind(live.client, manifest.milvus_alias) == names  # previous kept
    build_index([corpus], path, embedder=fake_embedder)
    names.append(Manifest.load(path).milvus_collection)
    manifest = Manifest.load(path)
    assert len(set(names)) == 3 and manifest.vector_backend == "milvus"
    with mb.MilvusIndex(mb.resolve_uri(path, manifest.milvus_uri), manifest.milvus_alias,
                        fake_embedder.dim) as live:
        assert live.live_collection == names[-1]
        assert mb.collections_behind(live.client, manifest.milvus_alias) == names[-2:]  # previous kept
    assert check_index(path) == []

    def killed(self, directory, generation):
        raise KeyboardInterrupt

    monkeypatch.setattr(mb.MilvusIndex, "save", killed)  # dies after inserting into its new collection
    with pytest.raises(KeyboardInterrupt):
        build_index([corpus], path, embedder=fake_embedder)
    monkeypatch.undo()
    assert Manifest.load(path) == manifest
    with mb.MilvusIndex(mb.resolve_uri(path, manifest.milvus_uri), manifest.milvus_alias,
                        fake_embedder.dim) as live:
        assert live.live_collection == names[-1]
        assert mb.collections_behind(live.client, manifest.milvus_alias) == names[-2:]
    assert check_index(path) == []


# --- filters: pushed down to Milvus, identical to FAISS with the store's allow list --------------------------------

ODD_ID = 'Super "Bowl" 50\\b'  # quotes and a backslash in a filter value
METADATA = [  # (doc id, source, published) of the halves of the small corpus' articles
    ("Super_Bowl_50", "AP", "2016-02-08"), (ODD_ID, "ap", None),
    ("Warsaw", "Reuters", "2015-05-01"), ("Warsaw_2", "REUTERS", "2016-01-01"),
    ("Normans", "BBC", None), ("Normans_2", "Élan", "2014-12-31"),
]
FILTERS = [
    dict(source="ap"), dict(source="reuters"), dict(source="élan"), dict(source="ÉLAN"), dict(source="nobody"),
    dict(doc_id=ODD_ID), dict(doc_id="Warsaw"), dict(doc_id="warsaw"),
    dict(published_after="2015-01-01", published_before="2016-01-01"), dict(published_after="2016-01-01"),
    dict(published_before="2015-12-31"), dict(source="AP", published_before="2030-01-01"),
    dict(source="Reuters", published_after="2015-06-01"),
]


def _with_metadata(tmp_path) -> str:
    """Each article of the small corpus cut in two documents of 3 paragraphs, with sources and dates (or none)."""
    out = []
    for i, a in enumerate(_articles()):
        for half in range(2):
            doc_id, source, published = METADATA[2 * i + half]
            out.append({**a, "id": doc_id, "source": source, "published": published,
                        "paragraphs": a["paragraphs"][3 * half:3 * half + 3]})
    return _jsonl(tmp_path / "metadata.jsonl", out)


@pytest.fixture(scope="module")
def filtered_pair(tmp_path_factory):
    """The same corpus with metadata built on FAISS, on Milvus, and as a cluster index (all on Milvus), loaded."""
    tmp = tmp_path_factory.mktemp("filtered")
    corpus = _with_metadata(tmp)
    build_index([corpus], str(tmp / "faiss"), embedder=HashEmbedder())
    build_index([corpus], str(tmp / "milvus"), embedder=HashEmbedder(), vector_backend="milvus")
    build_index([corpus], str(tmp / "cluster"), embedder=HashEmbedder(), vector_backend="milvus", store="milvus")
    pair = tuple(load_index(str(tmp / name), embedder=HashEmbedder()) for name in ("faiss", "milvus", "cluster"))
    yield pair
    for index in pair:
        index.close()


def _questions(n: int) -> list[str]:
    with open(os.path.join(SQUAD_SMALL, "questions.jsonl"), encoding="utf-8") as f:
        return [json.loads(line)["question"] for line in f][::10][:n]


@pytest.mark.parametrize("filters", FILTERS, ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()))
def test_filtered_parity_with_faiss(filtered_pair, fake_embedder, filters):
    faiss_index, milvus_index, _ = filtered_pair
    assert milvus_index.vectors.needs_docs  # pushed down, not id lists
    f = make_filters(**filters)
    allowed = set(faiss_index.store.filtered_window_ids(f).tolist())
    for q in _questions(6):
        qvec = fake_embedder.encode([q])
        f_scores, f_ids = faiss_index.vectors.search_filtered(qvec, 40, f, faiss_index.store)
        m_scores, m_ids = milvus_index.vectors.search_filtered(qvec, 40, f, milvus_index.store)
        n = f_ids.shape[1]
        assert np.array_equal(m_ids[:, :n], f_ids) and np.allclose(m_scores[:, :n], f_scores, atol=1e-5)
        assert set(m_ids[0].tolist()) - {-1} == {i for i in f_ids[0].tolist() if i >= 0} <= allowed
        for mode in ("dense", "hybrid"):
            a = [h.passage.passage_id for h in search(milvus_index, q, 10, mode=mode, filters=f).hits]
            b = [h.passage.passage_id for h in search(faiss_index, q, 10, mode=mode, filters=f).hits]
            assert a == b, (q, mode)


@pytest.mark.parametrize("filters", FILTERS, ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()))
def test_filtered_parity_of_the_cluster_index(filtered_pair, filters):
    """Filters on a cluster index: pushed down to Milvus's window and BM25 searches, the same hits as locally."""
    faiss_index, _, cluster = filtered_pair
    f = make_filters(**filters)
    for q in _questions(2):
        for mode in MODES:
            a = [h.passage.passage_id for h in search(cluster, q, 10, mode=mode, filters=f).hits]
            b = [h.passage.passage_id for h in search(faiss_index, q, 10, mode=mode, filters=f).hits]
            assert a == b, (q, mode)


def test_writer_resyncs_rows_with_their_document_fields(tmp_path, fake_embedder):
    """A collection behind the store (a writer killed between the two) is resynced by the next writer, fields too."""
    path = str(tmp_path / "index")
    build_index([_with_metadata(tmp_path)], path, embedder=fake_embedder, vector_backend="milvus")
    manifest = Manifest.load(path)
    data = os.path.join(path, manifest.data_dir)
    uri = mb.resolve_uri(path, manifest.milvus_uri)
    with mb.MilvusIndex(uri, manifest.milvus_collection, fake_embedder.dim) as live:
        ids, _ = live.reconstruct_all()
        live.remove(ids)  # every row lost
        live.save(data, -1)
    assert remove_documents(["Normans"], path).removed == 1
    assert check_index(path) == []
    index = load_index(path, embedder=fake_embedder)
    try:
        assert index.vectors.ntotal == index.manifest.counts.windows
        for filters, docs in ((dict(source="REUTERS"), {"Warsaw", "Warsaw_2"}), (dict(doc_id=ODD_ID), {ODD_ID}),
                              (dict(published_before="2015-01-01"), {"Normans_2"})):
            hits = search(index, "Where is Warsaw?", 10, mode="dense", filters=make_filters(**filters)).hits
            assert {h.passage.doc_id for h in hits} == docs, filters
    finally:
        index.close()


HOLDER = textwrap.dedent("""
    import sys
    from qa.vectors.milvus import MilvusIndex
    idx = MilvusIndex(sys.argv[1], sys.argv[2], int(sys.argv[3]))
    print("holding", flush=True)
    sys.stdin.read()
""")


def test_cli_add_while_another_process_holds_lite(tmp_path, fake_embedder):
    path = str(tmp_path / "index")
    few = _few(2)
    build_index([_jsonl(tmp_path / "a.jsonl", few[:1])], path, embedder=fake_embedder, vector_backend="milvus")
    manifest = Manifest.load(path)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=ROOT)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, os.path.join(path, mb.LITE_FILE),
                               manifest.milvus_collection, str(fake_embedder.dim)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "holding"
        out = subprocess.run([sys.executable, "-m", "qa.cli", "add", _jsonl(tmp_path / "b.jsonl", few[1:]),
                              "--index-dir", path], capture_output=True, text=True, env=env, timeout=300)
    finally:
        holder.communicate("", timeout=60)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Milvus Lite database") and "admin API" in lines[0]
    assert Manifest.load(path) == manifest  # nothing written
    assert check_index(path) == []


# --- folders sharing one Milvus, index types, serving workers ------------------------------------------------------

def _dense_top(path: str, embedder, question: str) -> str:
    """The document of the best dense hit for `question` in the index folder `path`."""
    index = load_index(path, embedder=embedder)
    try:
        return search(index, question, 3, mode="dense").hits[0].passage.doc_id
    finally:
        index.close()


# on the real model: its ranking is checked
def test_moved_folder_and_a_new_one_at_its_path_share_a_uri(tmp_path, embedder):
    """A folder moved away and a fresh one built at its old path, on one Milvus: neither takes the other's alias."""
    shared = tmp_path / "x" / "shared.db"
    shared.parent.mkdir()
    corpus = _jsonl(tmp_path / "a.jsonl", _few(2))
    path, moved = str(tmp_path / "h" / "index"), str(tmp_path / "h1_old")
    build_index([corpus], path, embedder=embedder, milvus_uri=str(shared))
    os.rename(path, moved)
    build_index([corpus], path, embedder=embedder, milvus_uri=str(shared))
    alias = Manifest.load(path).milvus_alias
    build_index([corpus], path, embedder=embedder, milvus_uri=str(shared))
    assert Manifest.load(path).milvus_alias == alias  # later builds follow the manifest's alias
    assert check_index(moved) == []  # its collection was not dropped by the new folder's builds
    assert Manifest.load(moved).milvus_alias != alias
    build_index([corpus], moved, embedder=embedder)  # the moved folder rebuilt too, on its own alias
    for p in (path, moved):
        assert check_index(p) == [], p
        assert _dense_top(p, embedder, "Who were the Normans?") == "Normans"


def test_fixed_alias_option(tmp_path, fake_embedder):
    path = str(tmp_path / "index")
    corpus = _jsonl(tmp_path / "a.jsonl", _few(1))
    with pytest.raises(BadRequest, match="Milvus alias"):
        build_index([corpus], path, embedder=fake_embedder, milvus_alias="1news")
    with pytest.raises(BadRequest, match="--milvus-alias needs --backend milvus"):
        build_index([corpus], path, embedder=fake_embedder, vector_backend="faiss", milvus_alias="news")
    assert not os.path.exists(path)
    build_index([corpus], path, embedder=fake_embedder, milvus_alias="news_desk")  # implies --backend milvus
    build_index([corpus], path, embedder=fake_embedder)
    manifest = Manifest.load(path)
    assert manifest.vector_backend == "milvus" and manifest.milvus_alias == "news_desk"
    assert manifest.milvus_collection.startswith("news_desk_") and check_index(path) == []


# on the real model: its ranking is checked
@pytest.mark.parametrize("kind, index_type", [("auto", "FLAT"), ("flat", "FLAT"), ("hnsw", "HNSW")])
def test_index_kinds_map_to_milvus_types(tmp_path, embedder, kind, index_type):
    path = str(tmp_path / "index")
    build_index([_jsonl(tmp_path / "a.jsonl", _few(2))], path, embedder=embedder, vector_backend="milvus",
                kind=kind)
    index = load_index(path, embedder=embedder)
    try:
        assert index.vectors.index_type == index_type
        assert search(index, "Who were the Normans?", 3, mode="dense").hits[0].passage.doc_id == "Normans"
    finally:
        index.close()
    assert check_index(path) == []


def test_ivfpq_on_milvus_is_refused_before_any_work(tmp_path, fake_embedder):
    from click.testing import CliRunner

    from qa.cli import main

    path = tmp_path / "new" / "index"
    res = CliRunner().invoke(main, ["build", ARTICLES, "--backend", "milvus", "--index-type", "ivfpq", "--quiet",
                                    "--index-dir", str(path)])
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and "Traceback" not in res.output
    assert lines[0].startswith("error: --index-type ivfpq") and "flat or hnsw" in lines[0]
    assert not (tmp_path / "new").exists()
    live = str(tmp_path / "live")  # the backend taken from the live index: refused as well, nothing touched
    corpus = _jsonl(tmp_path / "a.jsonl", _few(1))
    build_index([corpus], live, embedder=fake_embedder, vector_backend="milvus")
    before = sorted(os.listdir(live))
    with pytest.raises(BadRequest, match="ivfpq"):
        build_index([corpus], live, embedder=fake_embedder, kind="ivfpq")
    assert sorted(os.listdir(live)) == before and check_index(live) == []


def test_serve_refuses_workers_on_milvus_lite(tmp_path, fake_embedder, monkeypatch):
    from click.testing import CliRunner

    from qa import cli, process
    from qa.web import server

    path = str(tmp_path / "index")
    build_index([_jsonl(tmp_path / "a.jsonl", _few(1))], path, embedder=fake_embedder, vector_backend="milvus")
    started = []
    monkeypatch.setattr(server, "run_granian", lambda *args: started.append(args))  # never a real server
    monkeypatch.setattr(process, "tune_malloc", lambda: None)
    monkeypatch.setenv("QA_EMBED_THREADS", "1")
    res = CliRunner().invoke(cli.main, ["serve", "--workers", "2", "--index-dir", path])
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2 and not started and len(lines) == 1
    assert lines[0].startswith("error: ") and "Milvus Lite" in lines[0] and "one process" in lines[0]
    assert "--workers 1" in lines[0] and "Milvus server" in lines[0]
    manifest = Manifest.load(path)  # on a Milvus server, workers are fine
    dataclasses.replace(manifest, milvus_uri="http://127.0.0.1:19530").save(path)
    res = CliRunner().invoke(cli.main, ["serve", "--workers", "2", "--index-dir", path])
    assert res.exit_code == 0 and len(started) == 1
