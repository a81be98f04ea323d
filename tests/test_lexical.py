"""The tantivy BM25 index: matches what a scan of the store matches, follows every write, filters exactly, rebuilt
when behind."""
import json
import os

import pytest

from qa.index import add_documents, build_index, check_index, load_index, remove_documents
from qa.ingest import article_from_dict
from qa.lexical import DIRNAME, LexicalIndex, date_number, read_generation
from qa.search import search
from qa.store import Filters
from qa.text import query_pairs, query_terms
from conftest import ARTS as INDEX_ARTS

ARTS = [
    *INDEX_ARTS,  # two dated articles from different sources
    {"id": "a3", "title": "Undated note", "source": "gazette",
     "paragraphs": ["Workers at the café on the pier asked for better pay."]},
    {"id": 'quo"te\\s', "title": "Odd id", "source": 'Wire "Desk"', "published": "2023-12-31",
     "paragraphs": ["Harbour pilots guided the ferry through fog."]},
]

QUERIES = ["workers pay", "harbour", "Marta Quist talks", "rail fares March", "cafe pier", "ferry fog pilots",
           "nothing matches zzzz"]


@pytest.fixture()
def built(tmp_path, fake_embedder):
    path = tmp_path / "arts.jsonl"
    path.write_text("".join(json.dumps(a) + "\n" for a in ARTS))
    idx = str(tmp_path / "index")
    build_index([str(path)], idx, embedder=fake_embedder)
    return idx


def _data(idx_dir):
    return os.path.join(idx_dir, json.load(open(os.path.join(idx_dir, "manifest.json")))["data_dir"])


def _ids(hits):
    return {rid for rid, _ in hits}


def _scan(index, terms, filters=None):
    """The passages a brute-force scan of the store finds: those of documents passing `filters` (SQLite's own
    reading of them) whose title or text holds a token of the terms, by the index's own analyzer."""
    wanted = set(index.lexical.tokens(terms))
    where, params = (filters or Filters()).sql("d")
    rows = index.store.con.execute("SELECT p.id, d.title, p.text FROM passages p JOIN documents d "
                                   f"ON d.doc_id = p.doc_id WHERE {where}", params)
    return {rid for rid, title, text in rows if wanted & set(index.lexical.tokens([title, text]))}


def test_same_matches_as_a_scan_of_the_store(built, fake_embedder):
    index = load_index(built, embedder=fake_embedder)
    try:
        assert index.lexical is not None and index.lexical.num_docs == 6
        for q in QUERIES:
            terms = query_terms(q)
            ours = index.lexical_search(terms, 10)
            assert _ids(ours) == _scan(index, terms), q  # same matching passages
            assert [s for _, s in ours] == sorted((s for _, s in ours), reverse=True)
        top = index.lexical_search(query_terms("Marta Quist talks"), 1)[0][0]
        assert index.store.passages([top])[top].text.startswith("The union leader Marta Quist")
        assert index.lexical_search(query_terms("cafe"), 5)  # folded to ASCII: "café" matches "cafe"
    finally:
        index.close()


@pytest.mark.parametrize("filters", [
    Filters(source="GAZETTE"), Filters(source="gazette"), Filters(source='wire "desk"'),
    Filters(doc_id="a1"), Filters(doc_id='quo"te\\s'), Filters(doc_id="zzz"),
    Filters(published_after="2024-01-05"), Filters(published_before="2024-01-05"),
    Filters(published_after="2024-01-01", published_before="2024-02-01"),
    Filters(source="Wire", published_after="2023-12-31"),
])
def test_filters_select_what_the_store_selects(built, fake_embedder, filters):
    index = load_index(built, embedder=fake_embedder)
    try:
        for q in ("workers pay harbour fares ferry", "harbour"):
            terms = query_terms(q)
            found = index.lexical_search(terms, 50, filters)
            assert _ids(found) == _scan(index, terms, filters)
    finally:
        index.close()


def test_follows_add_update_remove(built, fake_embedder):
    add_documents(None, built, articles=[article_from_dict(
        {"id": "z", "title": "Zebra", "paragraphs": ["Eleven zebra crossings were painted."]})], embedder=fake_embedder)
    add_documents(None, built, articles=[article_from_dict(
        {"id": "a1", "title": "Harbour strike", "paragraphs": ["The strike ended with a new wage deal."]})],
        embedder=fake_embedder)
    remove_documents(["a2"], built)
    assert check_index(built) == []
    index = load_index(built, embedder=fake_embedder)
    try:
        assert index.lexical.generation == index.store.generation and index.lexical.num_docs == 4
        for q in ("zebra crossings", "wage deal", "dock workers monday", "rail fares"):
            terms = query_terms(q)
            assert _ids(index.lexical_search(terms, 10)) == _scan(index, terms), q
        assert index.lexical_search(query_terms("dock monday"), 5) == []  # a1's old passages are gone
    finally:
        index.close()


def test_behind_or_missing_is_rebuilt_and_check_says_so(built, fake_embedder):
    directory = os.path.join(_data(built), DIRNAME)
    with open(os.path.join(directory, "generation"), "w") as f:
        f.write("0\n")
    assert any("lexical index" in p for p in check_index(built))
    index = load_index(built, embedder=fake_embedder)  # a reader rebuilds in memory, leaves the folder alone
    try:
        assert index.lexical.directory is None and index.lexical.num_docs == 6
        assert index.lexical_search(query_terms("ferry"), 1)
    finally:
        index.close()
    assert read_generation(directory) == 0
    add_documents(None, built, articles=[article_from_dict(
        {"id": "n", "title": "New", "paragraphs": ["Night buses return."]})], embedder=fake_embedder)
    assert check_index(built) == []  # a writer rebuilt it on disk before its write
    import shutil

    shutil.rmtree(directory)
    index = load_index(built, embedder=fake_embedder)
    try:
        assert index.lexical.num_docs == 7
    finally:
        index.close()


def test_open_rebuilds_a_damaged_folder(built, fake_embedder):
    directory = os.path.join(_data(built), DIRNAME)
    with open(os.path.join(directory, "meta.json"), "w") as f:
        f.write("{broken")
    from qa.store import STORE_FILE, Store

    store = Store(os.path.join(_data(built), STORE_FILE), readonly=True)
    try:
        assert LexicalIndex.open(_data(built), store).num_docs == 6
    finally:
        store.close()


def test_date_number():
    assert date_number("2024-03-01") == 20240301
    assert date_number("2024-03-01T10:00:00Z") == 20240301
    assert date_number(None) is None and date_number("soon") is None and date_number("2024") is None


def test_scores_of_given_passages_are_exact_bm25(built, fake_embedder):
    index = load_index(built, embedder=fake_embedder)
    try:
        terms = query_terms("workers pay harbour")
        ranked = dict(index.lexical_search(terms, 50))
        some = sorted(ranked)[:3] + [999_999]
        assert index.lexical_scores(terms, some) == {**{r: ranked[r] for r in some[:3]}, 999_999: 0.0}
        assert index.lexical.scores(terms, []) == {} and index.lexical.scores([], some) == {}
    finally:
        index.close()


def test_term_proximity_adds_to_bm25_and_breaks_ties_between_the_same_words(tmp_path, fake_embedder):
    apart = "Tickets for the ferry sold out before the night harbour opened."
    together = "Tickets for the night ferry sold out before the harbour opened."  # the same words, reordered
    far = "Ferry crews worked through the long dark hours of a cold winter season in the town at night."
    path = tmp_path / "arts.jsonl"
    path.write_text("".join(json.dumps({"id": f"d{i}", "title": "Port", "paragraphs": [text]}) + "\n"
                            for i, text in enumerate([apart, together, far])))
    idx = str(tmp_path / "index")
    build_index([str(path)], idx, embedder=fake_embedder)
    index = load_index(idx, embedder=fake_embedder)
    try:
        question = "night ferry"
        terms, pairs = query_terms(question), query_pairs(question)
        rowid = {p.doc_id: p.rowid for p in index.store.passages(range(1, 10)).values()}
        plain = index.lexical_scores(terms, sorted(rowid.values()))
        near = index.lexical_scores(terms, sorted(rowid.values()), pairs=pairs)
        assert plain[rowid["d0"]] == pytest.approx(plain[rowid["d1"]])  # BM25 alone cannot tell them apart
        gain = {d: near[r] - plain[r] for d, r in rowid.items()}
        assert gain["d1"] > gain["d0"] > 0  # the phrase and the window, then the window only (either order)
        assert gain["d2"] == pytest.approx(0.0, abs=1e-6)  # the two words further apart than the window
        hits = search(index, question, 3, mode="lexical", collapse=False).hits  # d0, d1 share a bag of words
        assert [h.passage.doc_id for h in hits][:2] == ["d1", "d0"]
        assert hits[0].scores["lexical"] == pytest.approx(near[rowid["d1"]])
    finally:
        index.close()


def test_a_dotted_capital_i_matches_either_spelling(tmp_path, fake_embedder):
    # lower-cased alone, İ is i with a combining dot: "İzmir" in a passage was a word no query could spell
    path = tmp_path / "arts.jsonl"
    path.write_text(json.dumps({"id": "tr", "title": "İzmir port", "paragraphs": ["Ferries left İzmir at dawn."]})
                    + "\n" + json.dumps({"id": "gr", "title": "Piraeus", "paragraphs": ["Ferries left Piraeus."]}))
    idx = str(tmp_path / "index")
    build_index([str(path)], idx, embedder=fake_embedder)
    index = load_index(idx, embedder=fake_embedder)
    try:
        for question in ("İzmir ferries", "Izmir ferries", "izmir ferries"):
            hits = search(index, question, 2, mode="lexical", collapse=False).hits
            assert [h.passage.doc_id for h in hits] == ["tr", "gr"], question
            assert hits[0].scores["lexical"] > 2 * hits[1].scores["lexical"]
    finally:
        index.close()
