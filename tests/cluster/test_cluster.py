"""The cluster index on Milvus Lite (real, no mocks) with the hash embedder: build, parity with the local engine,
two engines on one database standing for two replicas, a rebuild under queries, half-done writes, Milvus away."""
from __future__ import annotations

import json
import logging
import os
import threading
import time

import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")
pytestmark = pytest.mark.slow  # every test works on Milvus Lite collections, seconds each

from click.testing import CliRunner  # noqa: E402

from qa.answer import answer_question  # noqa: E402
from qa.cli import main  # noqa: E402
from qa.cluster.build import ClusterBuild  # noqa: E402
from qa.cluster.collections import passage_rowid, rows_of  # noqa: E402
from qa.cluster.index import open_store  # noqa: E402
from qa.cluster.terms import LONG_WORD  # noqa: E402
from qa.embed import HashEmbedder  # noqa: E402
from qa.errors import BadRequest  # noqa: E402
from qa.index import add_documents, build_index, check_index, describe_index, load_index, write_lock  # noqa: E402
from qa.ingest import Article, Paragraph  # noqa: E402
from qa.manifest import Manifest  # noqa: E402
from qa.prepare import prepare_articles  # noqa: E402
from qa.search import MODES, search  # noqa: E402
from qa.vectors import build_settings  # noqa: E402

from conftest import SQUAD_SMALL, free_port, make_app, wait_for  # noqa: E402

TOKEN = "cluster-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _articles(n: int = 5) -> list[dict]:
    with open(os.path.join(SQUAD_SMALL, "articles.jsonl"), encoding="utf-8") as f:
        return [{**a, "paragraphs": a["paragraphs"][:n]} for a in map(json.loads, f) if a]


def _questions(n: int) -> list[str]:
    with open(os.path.join(SQUAD_SMALL, "questions.jsonl"), encoding="utf-8") as f:
        return [json.loads(line)["question"] for line in f][::12][:n]


LONG = "Pneumonoultramicroscopicsilicovolcanoconiosis" + "x" * 4  # 49 letters: too long to index
LONG_WORDS = {"id": "long-words", "title": "Apple pie", "paragraphs": [f"The apple {LONG} pie won the prize.",
                                                                        f"Apple pie and {LONG} cider, apple pie."]}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("corpus") / "articles.jsonl"
    path.write_text("".join(json.dumps(a) + "\n" for a in [*_articles(), LONG_WORDS]))
    return str(path)


@pytest.fixture(scope="module")
def local_dir(tmp_path_factory, corpus) -> str:
    path = str(tmp_path_factory.mktemp("local") / "index")
    build_index([corpus], path, embedder=HashEmbedder())
    return path


@pytest.fixture(scope="module")
def cluster_dir(tmp_path_factory, corpus) -> str:
    path = str(tmp_path_factory.mktemp("cluster") / "index")
    build_index([corpus], path, embedder=HashEmbedder(), vector_backend="milvus", store="milvus")
    return path


@pytest.fixture(scope="module")
def replicas(cluster_dir):
    """Two engines on one index, one Lite database: two replicas, polling Milvus every 50 ms."""
    return [make_app(cluster_dir, HashEmbedder(), admin_token=TOKEN, reload_interval=0.05).test_client()
            for _ in range(2)]


def test_folder_holds_only_the_manifest_and_check_passes(cluster_dir, local_dir):
    manifest = Manifest.load(cluster_dir)
    assert manifest.store == "milvus" and manifest.vector_backend == "milvus"
    assert sorted(n for n in os.listdir(cluster_dir) if not n.startswith(".")) == ["manifest.json", "milvus.db"]
    assert "store" not in json.load(open(os.path.join(local_dir, "manifest.json")))  # SQLite indexes unchanged
    assert check_index(cluster_dir) == []
    live, local = describe_index(cluster_dir).counts, Manifest.load(local_dir).counts
    assert (live.documents, live.passages, live.windows, live.sentences) == \
        (local.documents, local.passages, local.windows, local.sentences)


def test_rankings_and_answers_equal_the_local_engine(cluster_dir, local_dir, monkeypatch):
    embedder = HashEmbedder()
    cluster, local = load_index(cluster_dir, embedder=embedder), load_index(local_dir, embedder=embedder)
    # the cluster keeps no word pieces: answers compute them, as the local engine does for a passage without them
    monkeypatch.setattr(local.store, "passage_tokens", lambda rowids, dim: {})
    try:
        for q in _questions(8):
            for mode in MODES:
                a, b = search(cluster, q, 10, mode=mode).hits, search(local, q, 10, mode=mode).hits
                assert [h.passage.passage_id for h in a] == [h.passage.passage_id for h in b], (q, mode)
                assert a[0].scores["fused"] == pytest.approx(b[0].scores["fused"], rel=0.02, abs=0.02)
            assert answer_question(cluster, q, 5).text == answer_question(local, q, 5).text
    finally:
        cluster.close()


def test_lexical_scores_equal_the_local_engines_across_words_too_long_to_index(cluster_dir, local_dir):
    from qa.text import query_pairs, query_terms

    cluster, local = load_index(cluster_dir, embedder=HashEmbedder()), load_index(local_dir, embedder=HashEmbedder())
    try:
        ids = [row.rowid for row in local.store.passage_rows()]  # every passage, two with the long words
        rowids = {rid: passage_rowid(p.passage_id) for rid, p in local.store.passages(ids).items()}  # the cluster's
        assert len(rowids) == len(ids) > 10
        assert cluster.store.term_counts([LONG_WORD]) == {LONG_WORD: (0, 0)}  # a place in a body, not a term
        for q in ("apple pie", "pie apple", "apple pie cider", "the apple pie prize"):
            terms, pairs = query_terms(q), query_pairs(q)
            expected = local.lexical_scores(terms, ids, pairs)
            found = cluster.lexical_scores(terms, list(rowids.values()), pairs)
            for rid in ids:
                assert found[rowids[rid]] == pytest.approx(expected[rid], rel=1e-5), (q, rid)
    finally:
        cluster.close()


def test_an_engine_warms_a_cluster_index_without_error(cluster_dir, caplog):
    from qa.config import Config
    from qa.service import Engine

    engine = Engine(Config(index_dir=cluster_dir, reload_interval=0), embedder=HashEmbedder())
    with caplog.at_level(logging.WARNING):
        engine.warm_up()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert engine.search({"q": _questions(1)[0]})["results"]


# read only where the engine checks for them first: a cluster index's own (`hasattr`), a local store's row cache
CLUSTER_ONLY = {"stale", "check_reachable"}
LOCAL_STORE_ONLY = {"set_row_budget", "carry_rows"}


def _read_of_an_index() -> tuple[set[str], set[str]]:
    """The attributes the search, answer, evaluation and engine code reads of an index (`index.x`, `self._index.x`,
    `self.index().x`) and of its store (`index.store.x`)."""
    import ast
    import glob

    import qa

    root = os.path.dirname(qa.__file__)
    names = ["search.py", "answer.py", "service.py", "evaluate.py", "text.py"]
    files = [os.path.join(root, n) for n in names] + glob.glob(os.path.join(root, "web", "*.py"))

    def is_index(node: ast.AST) -> bool:
        if isinstance(node, ast.Name):
            return node.id == "index"
        if isinstance(node, ast.Attribute):
            return node.attr == "_index" and isinstance(node.value, ast.Name) and node.value.id == "self"
        return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "index"

    of_index, of_store = set(), set()
    for path in files:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            if is_index(node.value):
                of_index.add(node.attr)
            elif isinstance(node.value, ast.Attribute) and node.value.attr == "store" and is_index(node.value.value):
                of_store.add(node.attr)
    return of_index, of_store


def test_a_cluster_index_has_what_the_code_reads_of_an_index(cluster_dir, local_dir):
    """The engine serves a local or a cluster index alike: whatever it and the searches read of one, the other has
    (a method added to one alone failed only on the other)."""
    of_index, of_store = _read_of_an_index()
    assert {"store", "embedder", "passage_cosines", "window_layout", "lexical_scores", "doc_freqs"} <= of_index
    assert {"snapshot", "sentences", "prewarm", "count_passages"} <= of_store
    embedder = HashEmbedder()
    cluster, local = load_index(cluster_dir, embedder=embedder), load_index(local_dir, embedder=embedder)
    try:
        assert [n for n in sorted(of_index) if not hasattr(cluster, n)] == []
        assert [n for n in sorted(of_index - CLUSTER_ONLY) if not hasattr(local, n)] == []
        assert [n for n in sorted(of_store - LOCAL_STORE_ONLY) if not hasattr(cluster.store, n)] == []
        assert [n for n in sorted(of_store) if not hasattr(local.store, n)] == []
    finally:
        cluster.close()
        local.close()


NEW = {"id": "quokka-news", "title": "Quokka census", "source": "Island Post", "published": "2026-11-30",
       "paragraphs": ["Rangers counted twelve thousand quokkas on Rottnest Island this spring.",
                      "The quokka census runs every five years."]}


def test_cli_commands_work_unchanged(cluster_dir, replicas, tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["search", "Super Bowl", "-k", "3", "--json", "--index-dir", cluster_dir])
    assert res.exit_code == 0 and len(json.loads(res.output)["results"]) == 3
    res = runner.invoke(main, ["ask", "Where did Super Bowl 50 take place?", "--json", "--index-dir", cluster_dir])
    assert res.exit_code == 0 and json.loads(res.output)["citations"]
    res = runner.invoke(main, ["stats", "--json", "--index-dir", cluster_dir])
    stats = json.loads(res.output)
    assert stats["store"] == "milvus" and stats["counts"]["passages"] == describe_index(cluster_dir).counts.passages
    assert runner.invoke(main, ["check", "--index-dir", cluster_dir]).exit_code == 0
    a, b = replicas  # a CLI write is seen by every replica
    source = tmp_path / "cli.jsonl"
    source.write_text(json.dumps({**NEW, "id": "cli-quokka"}) + "\n")
    assert runner.invoke(main, ["add", str(source), "--quiet", "--index-dir", cluster_dir]).exit_code == 0
    assert all(wait_for(lambda c=c: "cli-quokka" in _search_ids(c, "quokka census Rottnest")) for c in (a, b))
    assert runner.invoke(main, ["remove", "cli-quokka", "--index-dir", cluster_dir]).exit_code == 0
    assert all(wait_for(lambda c=c: "cli-quokka" not in _search_ids(c, "quokka census Rottnest")) for c in (a, b))


def test_store_milvus_needs_milvus_vectors(tmp_path, corpus):
    with pytest.raises(BadRequest, match="--backend milvus"):
        build_index([corpus], str(tmp_path / "x"), embedder=HashEmbedder(), store="milvus")
    res = CliRunner().invoke(main, ["build", corpus, "--store", "milvus", "--model", "hash", "--quiet",
                                    "--index-dir", str(tmp_path / "y")])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "--backend milvus" in res.output
    assert not os.path.exists(tmp_path / "y" / "manifest.json")


def _search_ids(client, q: str) -> list[str]:
    res = client.get("/api/search", query_string={"q": q, "k": 5})
    assert res.status_code == 200, res.get_json()
    return [r["doc_id"] for r in res.get_json()["results"]]


def test_a_write_through_one_replica_is_seen_by_the_other(replicas):
    a, b = replicas
    before = [c.get("/healthz").get_json() for c in (a, b)]
    assert before[0]["status"] == "ok" and before[0]["generation"] == before[1]["generation"]
    res = a.post("/api/documents", json=NEW, headers=AUTH)
    assert res.status_code == 201, res.get_json()
    assert wait_for(lambda: "quokka-news" in _search_ids(b, "quokka census Rottnest"))
    assert b.get("/api/documents/quokka-news").get_json()["paragraphs"][0]["text"].startswith("Rangers")
    health = b.get("/healthz").get_json()
    assert health["generation"] > before[1]["generation"] and health["documents"] == before[1]["documents"] + 1
    outlets = b.get("/documents").get_data(as_text=True)
    assert "Island Post" in outlets
    assert b.delete("/api/documents/quokka-news", headers=AUTH).status_code == 200
    assert wait_for(lambda: "quokka-news" not in _search_ids(a, "quokka census Rottnest"))
    assert a.get("/api/documents/quokka-news").status_code == 404
    assert b.delete("/api/documents/quokka-news", headers=AUTH).status_code == 404


def test_a_write_that_stopped_half_way_is_finished_by_running_it_again(cluster_dir):
    article = Article(id="half-done", title="Half done", paragraphs=[Paragraph(0, "Wombats dig long burrows."),
                                                                      Paragraph(1, "Their burrows shelter others.")])
    prepared = prepare_articles([article], HashEmbedder())
    store = open_store(cluster_dir, Manifest.load(cluster_dir))
    try:
        store.put_content(rows_of(prepared))  # a writer killed before its document row, the commit mark
        assert store.content_hash("half-done") is None
    finally:
        store.windows.close()
    assert any("passages" in p for p in check_index(cluster_dir))
    report = add_documents(None, cluster_dir, articles=[article], embedder=HashEmbedder())
    assert report.added == 1 and check_index(cluster_dir) == []
    assert add_documents(None, cluster_dir, articles=[article], embedder=HashEmbedder()).unchanged == 1


def test_a_write_during_a_build_is_replayed_into_it(cluster_dir, corpus):
    manifest = Manifest.load(cluster_dir)
    settings = build_settings(cluster_dir, "milvus", "auto")
    build = ClusterBuild(cluster_dir, settings, manifest.dim, "flat", time.time_ns())
    try:
        extra = Article(id="late-news", title="Late news", paragraphs=[Paragraph(0, "Penguins arrived late.")])
        add_documents(None, cluster_dir, articles=[extra], embedder=HashEmbedder())  # after the build began
        build.insert(prepare_articles([Article(id="only-in-build", title="Build",
                                               paragraphs=[Paragraph(0, "Only the build has it.")])],
                                      HashEmbedder()))
        with write_lock(cluster_dir):
            assert build.swap(lambda: None) >= 1
    finally:
        build.close()
    store = open_store(cluster_dir, manifest)
    try:
        assert store.build == build.build
        assert store.content_hash("late-news") is not None and store.content_hash("only-in-build") is not None
    finally:
        store.windows.close()


def test_a_rebuild_under_queries_switches_every_replica_without_a_failed_request(replicas, cluster_dir, corpus,
                                                                                  tmp_path):
    a, b = replicas
    bigger = tmp_path / "bigger.jsonl"
    bigger.write_text(open(corpus).read() + json.dumps(NEW) + "\n")
    failures, stop = [], threading.Event()

    def query() -> None:
        while not stop.is_set():
            for client in (a, b):
                res = client.get("/api/search", query_string={"q": "Super Bowl", "k": 3})
                if res.status_code != 200 or not res.get_json()["results"]:
                    failures.append((res.status_code, res.get_data(as_text=True)[:200]))

    thread = threading.Thread(target=query)
    thread.start()
    try:
        build_index([str(bigger)], cluster_dir, embedder=HashEmbedder())  # the live index's settings: a cluster
        assert all(wait_for(lambda c=c: "quokka-news" in _search_ids(c, "quokka census Rottnest")) for c in (a, b))
    finally:
        stop.set()
        thread.join()
    assert failures == []
    assert Manifest.load(cluster_dir).store == "milvus" and check_index(cluster_dir) == []


def test_milvus_away_at_start_answers_503_then_recovers(tmp_path):
    """A Milvus Lite gRPC server in this process, reached over http:// as a server would be, stopped and started."""
    from milvus_lite.adapter.grpc.server import start_server_in_thread

    port = free_port()
    server, db, _ = start_server_in_thread(str(tmp_path / "milvus"), port=port)
    index_dir = str(tmp_path / "index")
    small = tmp_path / "small.jsonl"
    small.write_text(json.dumps(_articles(2)[0]) + "\n")
    try:
        build_index([str(small)], index_dir, embedder=HashEmbedder(), vector_backend="milvus", store="milvus",
                    milvus_uri=f"http://127.0.0.1:{port}")
    finally:
        server.stop(grace=0)
        db.close()
    client = make_app(index_dir, HashEmbedder()).test_client()
    res = client.get("/healthz")
    assert res.status_code == 503 and "Milvus" in res.get_json()["error"]
    assert client.get("/api/search?q=Super+Bowl").status_code == 503
    server, db, _ = start_server_in_thread(str(tmp_path / "milvus"), port=port)
    try:
        assert wait_for(lambda: client.get("/healthz").status_code == 200)
        assert _search_ids(client, "Super Bowl")
    finally:
        server.stop(grace=0)
        db.close()
    for path in ("/api/search?q=Super+Bowl", "/healthz", "/api/documents"):  # lost while serving: 503, not 500
        res = client.get(path)
        assert res.status_code == 503 and "Milvus" in res.get_json()["error"], path
