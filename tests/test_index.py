"""Index build, add, remove and check with the fake embedder (fast), and load errors that name the fix."""
import glob
import json
import os

import numpy as np
import pytest

from qa.errors import IndexUnavailable, NotFound
from qa.index import PassageCosines, add_documents, build_index, check_index, load_index, remove_documents
from qa.ingest import article_from_dict
from qa.search import DUPLICATE_COSINE, dense_candidates, search
from qa.store import Filters

from conftest import WOMBAT, ZEBRA, write_jsonl

def _load(idx, emb):
    return load_index(idx, embedder=emb)


def test_build_writes_manifest_and_agrees(built, fake_embedder):
    m = json.load(open(os.path.join(built, "manifest.json")))
    assert m["counts"]["documents"] == 2 and m["counts"]["passages"] == 4
    assert m["model"] == "hash" and m["dim"] == fake_embedder.dim and m["index_kind"] == "flat"
    assert check_index(built) == []


def test_add_is_idempotent_and_updates_replace(built, fake_embedder):
    art = article_from_dict({"id": "a3", "title": "Zebra crossings",
                             "paragraphs": ["Eleven zebra crossings were painted."]})
    r = add_documents(None, built, articles=[art], embedder=fake_embedder)
    assert (r.added, r.passages) == (1, 5)
    r = add_documents(None, built, articles=[art], embedder=fake_embedder)
    assert (r.unchanged, r.passages) == (1, 5)
    changed = article_from_dict({"id": "a3", "title": "Zebra crossings",
                                 "paragraphs": ["Twelve.", "Two paragraphs now."]})
    r = add_documents(None, built, articles=[changed], embedder=fake_embedder)
    assert (r.updated, r.passages) == (1, 6)
    assert check_index(built) == []
    idx = _load(built, fake_embedder)
    assert [h.passage.doc_id for h in search(idx, "two paragraphs now", 1, mode="lexical").hits] == ["a3"]


def test_readers_map_the_vectors_and_writes_replace_the_file_under_them(built, fake_embedder):
    """A loaded index maps its FAISS file read-only; a write replaces the file by rename, so the old map keeps
    serving the old contents until the next load, which sees the new ones."""
    old = _load(built, fake_embedder)
    assert old.vectors.mapped
    before = [h.passage.passage_id for h in search(old, "rail fares rise", 4, mode="dense").hits]
    art = article_from_dict({"id": "a3", "title": "Rail fares",
                             "paragraphs": ["Rail fares will rise by four percent."]})
    add_documents(None, built, articles=[art], embedder=fake_embedder)
    assert [h.passage.passage_id for h in search(old, "rail fares rise", 4, mode="dense").hits] == before
    new = _load(built, fake_embedder)
    assert new.vectors.mapped and new.vectors.ntotal == old.vectors.ntotal + 1
    assert "a3" in {h.passage.doc_id for h in search(new, "rail fares will rise by four percent", 4, mode="dense").hits}


def test_remove_and_unknown_id(built, fake_embedder):
    r = remove_documents(["a1"], built)
    assert (r.removed, r.documents, r.passages) == (1, 1, 2)
    assert check_index(built) == []
    with pytest.raises(NotFound):
        remove_documents(["nope"], built)
    idx = _load(built, fake_embedder)
    assert all(h.passage.doc_id == "a2" for h in search(idx, "dock workers harbour", 5).hits)


def test_filters_apply_before_the_cut(built, fake_embedder):
    idx = _load(built, fake_embedder)
    for mode in ("hybrid", "dense", "lexical"):
        hits = search(idx, "workers pay", 1, mode=mode, filters=Filters(source="Gazette")).hits
        assert hits and hits[0].passage.doc_id == "a2", mode
    hits = search(idx, "workers pay", 10, filters=Filters(published_before="2024-02-01")).hits
    assert {h.passage.doc_id for h in hits} == {"a1"}
    assert search(idx, "workers", 10, filters=Filters(doc_id="zzz")).hits == []


def test_passage_cosines_top_and_lookup():
    cos = PassageCosines(np.array([2, 5, 7, 9]), np.array([0.5, 0.9, 0.5, 0.1], np.float32))
    assert cos.top(2) == [(5, pytest.approx(0.9)), (2, 0.5)]  # a tie at the cut goes to the lower rowid
    assert [rid for rid, _ in cos.top(10)] == [5, 2, 7, 9]
    assert cos.of([9, 3, 5]) == {9: pytest.approx(0.1), 5: pytest.approx(0.9)}  # 3 has no windows
    assert PassageCosines(np.zeros(0, np.int64), np.zeros(0, np.float32)).of([1]) == {}


def test_an_exact_index_gives_every_passage_its_best_window(fake_seed_index_dir, fake_embedder):
    """A flat index's every-window pass gives each passage the cosine of its best stored window, and the dense
    candidates FAISS's own search gives; a filtered search takes FAISS's path and finds the same."""
    idx = _load(fake_seed_index_dir, fake_embedder)
    qvec = fake_embedder.encode_query("what actions has China taken?")[0]
    exact = idx.passage_cosines(qvec)
    rowids = np.unique(idx.window_passages).tolist()
    windows = idx.store.window_vectors(rowids, idx.dim)  # int8 codes: close, not equal
    best: dict[int, float] = {}
    for rid, c in zip(windows.passages.tolist(), windows.cosines(qvec).tolist()):
        best[rid] = max(c, best.get(rid, -1.0))
    assert exact.passages.tolist() == rowids
    assert np.allclose(exact.best, [best[r] for r in rowids], atol=0.02)
    assert exact.top(5) == [(rid, pytest.approx(s, abs=1e-6)) for rid, s in dense_candidates(idx, qvec, 5, None)]
    plain = search(idx, "what actions has China taken?", 5, mode="dense")
    every = Filters(doc_id=plain.hits[0].passage.doc_id)  # the seed is one article
    filtered = search(idx, "what actions has China taken?", 5, mode="dense", filters=every)
    assert [(h.passage.rowid, h.scores["dense"]) for h in plain.hits] == \
        [(h.passage.rowid, pytest.approx(h.scores["dense"], abs=1e-6)) for h in filtered.hits]


def test_sentence_signals_only_for_the_shortlist(built, fake_embedder):
    idx = _load(built, fake_embedder)
    full = search(idx, "workers pay harbour", 10)
    assert all(h.scores["sentence"] is not None for h in full.hits)
    short = search(idx, "workers pay harbour", 1, rerank=1, collapse=False)
    scored = {rid for rid, *_ in short.sentence_rows[0]}
    assert idx.passage_count > 3 and len(full.sentence_rows[0]) > len(short.sentence_rows[0])
    assert len(short.hits) == 1 and len(scored) <= 3  # the shortlist is max(rerank, 3k) passages
    assert short.hits[0].passage.rowid in scored


def test_near_duplicates_collapse(tmp_path, fake_embedder):
    text = "The central bank raised interest rates by half a point on Thursday to fight inflation."
    # the third copy differs in spacing and case only (re-wrapped wire text) under a headline of its own, so only
    # the same-text rule folds it
    copies = [text, text, text.upper().replace(" ", "  ").replace("RATES BY", "RATES\nBY")]
    titles = ["Rates 0", "Rates 1", "Markets wrap: stocks, bonds and the pound on a busy day for central banks"]
    arts = [{"id": f"w{i}", "title": title, "source": s, "paragraphs": [copy]}
            for i, (s, title, copy) in enumerate(zip(["AP", "Reuters", "AFP"], titles, copies))]
    arts.append({"id": "other", "title": "Other", "paragraphs": ["Farmers expect a record wheat harvest this summer."]})
    path = tmp_path / "dups.jsonl"
    path.write_text("".join(json.dumps(a) + "\n" for a in arts))
    idx_dir = str(tmp_path / "index")
    build_index([str(path)], idx_dir, embedder=fake_embedder)
    idx = _load(idx_dir, fake_embedder)
    hits = search(idx, "interest rates inflation", 5).hits
    assert hits[0].passage.doc_id.startswith("w") and len(hits[0].duplicates) == 2
    vecs = {h.doc_id: v for h, v in zip([hits[0].passage, *hits[0].duplicates], idx.store.passage_vectors(
        [hits[0].passage.rowid] + [d.rowid for d in hits[0].duplicates], idx.dim))}
    assert float(vecs["w0"] @ vecs["w2"]) < DUPLICATE_COSINE
    assert sum(1 for h in hits if h.passage.doc_id.startswith("w")) == 1
    assert "duplicates" in hits[0].to_dict(1)


def test_a_paragraph_repeated_in_one_article_is_not_folded(tmp_path, fake_embedder):
    """Copies are of one story in other outlets: a paragraph an article repeats stays two hits, and a third copy in
    another article folds into the first, not into the second."""
    text = "Dock workers at the harbour walked out over pay on Monday morning."
    arts = [{"id": "a", "title": "Strike", "paragraphs": [text, "Talks resume next week.", text]},
            {"id": "b", "title": "Strike", "paragraphs": [text]}]
    path = tmp_path / "repeat.jsonl"
    path.write_text("".join(json.dumps(a) + "\n" for a in arts))
    idx_dir = str(tmp_path / "index")
    build_index([str(path)], idx_dir, embedder=fake_embedder)
    hits = search(_load(idx_dir, fake_embedder), "dock workers harbour pay", 5).hits
    copies = [h for h in hits if h.passage.text == text]
    assert [(h.passage.doc_id, h.passage.paragraph_index) for h in copies] == [("a", 0), ("a", 2)]
    assert [d.doc_id for d in copies[0].duplicates] == ["b"] and copies[1].duplicates == []


def test_other_model_is_refused(built):
    from qa.embed import HashEmbedder

    other = HashEmbedder(dim=32)
    other.model_name = "another-model"
    with pytest.raises(IndexUnavailable, match="qa build"):
        load_index(built, embedder=other)


def test_check_reports_disagreement(built):
    m = json.load(open(os.path.join(built, "manifest.json")))
    m["counts"]["passages"] = 99
    json.dump(m, open(os.path.join(built, "manifest.json"), "w"))
    assert any("passages" in p for p in check_index(built))


def test_check_reports_passages_without_word_piece_vectors(built):
    import sqlite3

    assert check_index(built) == []
    m = json.load(open(os.path.join(built, "manifest.json")))
    with sqlite3.connect(os.path.join(built, m["data_dir"], "store.sqlite")) as con:
        con.execute("DELETE FROM passage_tokens WHERE passage = (SELECT MIN(id) FROM passages)")
    assert check_index(built) == ["1 passages have no stored word-piece vectors"]


def test_stale_vectors_are_rebuilt_from_the_store(built, fake_embedder):
    m = json.load(open(os.path.join(built, "manifest.json")))
    os.remove(os.path.join(built, m["data_dir"], "vectors.faiss"))
    idx = _load(built, fake_embedder)
    assert idx.vectors.ntotal == 4


@pytest.mark.parametrize("kind", ["flat", "hnsw"])  # ivfpq needs a dim divisible by 48
def test_a_build_in_small_batches_is_the_same_build(tmp_path, corpus, fake_embedder, monkeypatch, kind):
    """Full builds embed and write BUILD_BATCH paragraphs at a time, then train (on a random sample of the stored
    vectors) and fill the vector index; one paragraph at a time gives the same index."""
    import qa.index

    whole = str(tmp_path / "whole")
    build_index([corpus], whole, embedder=fake_embedder, kind=kind)
    monkeypatch.setattr(qa.index, "BUILD_BATCH", 1)
    batched = str(tmp_path / "batched")
    report = build_index([corpus], batched, embedder=fake_embedder, kind=kind)
    assert (report.documents, report.passages) == (2, 4) and check_index(batched) == []
    a, b = _load(whole, fake_embedder), _load(batched, fake_embedder)
    try:
        assert a.vectors.kind == b.vectors.kind == kind and b.vectors.ntotal == 4
        for q in ("dock workers pay", "rail fares", "union talks friday"):
            assert [h.passage.passage_id for h in search(a, q, 4).hits] == \
                   [h.passage.passage_id for h in search(b, q, 4).hits]
    finally:
        a.close()
        b.close()


# --- writes made during a full build are replayed at the swap -----------------------------------------------

HARBOUR = {"id": "lc-harbour", "title": "Night ferry returns to Quokka Harbour",
           "paragraphs": ["The night ferry between Quokka Harbour and Platypus Bay sails again from Monday.",
                          "Tickets cost four dollars, the same as before the service was suspended."]}


class WritingEmbedder:
    """A hash embedder whose first encoding, mid-build (after the sources were read, before the swap), runs
    `write`: the build takes the writer lock only at the swap, so the write goes through at once."""

    def __init__(self, embedder, write):
        self.embedder, self.write = embedder, write

    def __getattr__(self, name):
        return getattr(self.embedder, name)

    def encode_spans(self, *args, **kwargs):
        write, self.write = self.write, None
        if write is not None:
            write()
        return self.embedder.encode_spans(*args, **kwargs)


def _documents(index_dir) -> list[str]:
    from qa.index import load_index

    index = load_index(index_dir)
    try:
        return index.store.document_ids()
    finally:
        index.close()


@pytest.mark.parametrize("backend", ["faiss", "milvus"], ids=["faiss", "milvus-lite"])
def test_writes_during_a_full_build_are_replayed(tmp_path, fake_embedder, backend):
    from qa.index import add_documents, build_index, check_index, load_index, remove_documents
    from qa.ingest import article_from_dict
    from qa.text import query_terms

    index_dir = str(tmp_path / "index")
    sources = write_jsonl(tmp_path, ZEBRA, WOMBAT)
    if backend == "milvus":
        pytest.importorskip("milvus_lite")
    build_index([sources], index_dir, embedder=fake_embedder, vector_backend=backend)

    def write():
        add_documents(None, index_dir, articles=[article_from_dict(HARBOUR)], embedder=fake_embedder)
        remove_documents([WOMBAT["id"]], index_dir)
        assert _documents(index_dir) == [HARBOUR["id"], ZEBRA["id"]]  # the live index took both writes

    report = build_index([sources], index_dir, embedder=WritingEmbedder(fake_embedder, write))
    assert report.replayed == 2
    assert _documents(index_dir) == [HARBOUR["id"], ZEBRA["id"]]  # wombat stays removed though in the sources
    assert (report.documents, report.passages) == (2, 4)
    assert check_index(index_dir) == []
    index = load_index(index_dir)
    try:
        hits = index.lexical_search(query_terms("night ferry tickets"), 3)  # tantivy, replayed too
        assert hits and index.store.passages([hits[0][0]])[hits[0][0]].doc_id == HARBOUR["id"]
        assert index.store.journal()[-1].article.to_dict() == article_from_dict(HARBOUR).to_dict()
    finally:
        index.close()


def test_a_build_overlapping_more_writes_than_the_journal_keeps_fails(tmp_path, fake_embedder, monkeypatch):
    import qa.store
    from qa.errors import QAError
    from qa.index import add_documents, build_index, check_index, remove_documents
    from qa.ingest import article_from_dict

    index_dir = str(tmp_path / "index")
    sources = write_jsonl(tmp_path, ZEBRA, WOMBAT)
    build_index([sources], index_dir, embedder=fake_embedder)
    monkeypatch.setattr(qa.store, "JOURNAL_KEEP", 1)

    def write():
        add_documents(None, index_dir, articles=[article_from_dict(HARBOUR)], embedder=fake_embedder)
        remove_documents([WOMBAT["id"]], index_dir)

    with pytest.raises(QAError, match="journal keeps"):
        build_index([sources], index_dir, embedder=WritingEmbedder(fake_embedder, write))
    assert _documents(index_dir) == [HARBOUR["id"], ZEBRA["id"]]  # the live index, with both writes, stays
    assert check_index(index_dir) == []
    assert not glob.glob(os.path.join(index_dir, ".build-*"))


def test_a_build_without_concurrent_writes_replays_nothing(tmp_path, fake_embedder):
    from qa.index import add_documents, build_index, check_index
    from qa.ingest import article_from_dict

    index_dir = str(tmp_path / "index")
    sources = write_jsonl(tmp_path, ZEBRA, WOMBAT)
    assert build_index([sources], index_dir, embedder=fake_embedder).replayed == 0
    # a write before the next build started: the build's sources are the truth, nothing is replayed
    add_documents(None, index_dir, articles=[article_from_dict(HARBOUR)], embedder=fake_embedder)
    report = build_index([sources], index_dir, embedder=fake_embedder)
    assert report.replayed == 0 and report.documents == 2
    assert _documents(index_dir) == [WOMBAT["id"], ZEBRA["id"]]
    assert check_index(index_dir) == []
