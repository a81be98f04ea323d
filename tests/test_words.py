"""Exact BM25 with term proximity from the passages' stored words (`qa.words`), held to tantivy's own scores; the
words follow every write, and a store made before them is scored by tantivy."""
import json
import os
import random
import sqlite3

import numpy as np
import pytest

import qa.index
from qa.index import add_documents, build_index, check_index, load_index, remove_documents
from qa.lexical import LexicalIndex
from qa.store import STORE_FILE
from qa.text import query_pairs, query_terms
from qa.words import NORM_LENGTHS, Analyzer, norm_lengths, slop_count
from conftest import ROOT

LONG = "Pneumonoultramicroscopicsilicovolcanoconiosis" + "x" * 4  # 49 letters: tantivy does not index it
ODD = [  # the walks and edges of tantivy's counting, beside ordinary text
    {"id": "t1", "title": "Nikola Tesla",
     "paragraphs": ["In 1928, Tesla received his last patent, U.S. patent 1,655,114, for a biplane.",
                    "Tesla thought the plane would sell for less than $1,000; Tesla said so to Tesla's friends."]},
    {"id": "t2", "title": "Tesla in New York",
     "paragraphs": ["Tesla lived in New York, where Tesla worked on Tesla coils and Tesla turbines."]},
    {"id": "t3", "title": "Patents and coils",
     "paragraphs": [f"The {LONG} coil patent came before the second coil patent and the third patent coil.",
                    "Café owners in İstanbul and Zürich filed a patent on a coffee coil; the coffee coil patent "
                    "was the café's."]},
    {"id": "t4", "title": "Repeats",
     "paragraphs": ["coil coil patent coil patent patent coil tesla patent coil coil tesla tesla patent"]},
]
QUERIES = ["Tesla patent", "When did Tesla receive his last patent?", "coil patent", "patent coil tesla",
           f"the {LONG} coil patent", "café coil patent in İstanbul", "coffee coil", "New York Tesla coils"]


def _articles(tmp_path, extra):
    """ODD, squad-dev's first four articles, and `extra`, as one JSON Lines file."""
    squad = os.path.join(ROOT, "eval", "squad-dev", "articles.jsonl")
    with open(squad, encoding="utf-8") as f:
        articles = [json.loads(line) for line, _ in zip(f, range(4))]
    path = tmp_path / "articles.jsonl"
    path.write_text("".join(json.dumps(a) + "\n" for a in [*ODD, *articles, *extra]))
    return str(path)


def _random_articles(n: int = 150, seed: int = 7) -> list[dict]:
    """Paragraphs of a few words drawn again and again, so pairs occur several times a passage in every order."""
    rng = random.Random(seed)
    words = ["tesla", "patent", "coil", "storm", "harbour", "bridge", "the", "of", "a"]
    weights = [3, 2, 4, 1, 1, 1, 6, 4, 4]
    return [{"id": f"r{i}", "title": f"Random {i}",
             "paragraphs": [" ".join(rng.choices(words, weights, k=rng.randint(5, 60)))]} for i in range(n)]


def _questions(n: int) -> list[str]:
    with open(os.path.join(ROOT, "eval", "squad-dev", "questions.jsonl"), encoding="utf-8") as f:
        return [json.loads(line)["question"] for line, _ in zip(f, range(n))]


def _compare(index, queries) -> int:
    """Every query's candidates (its lexical top 60 and some passages it misses) scored from the words and by
    tantivy: the same scores; how many were above 0."""
    positive = 0
    for query in queries:
        terms, pairs = query_terms(query), query_pairs(query)
        ids = list(dict.fromkeys([rid for rid, _ in index.lexical_search(terms, 60)] + list(range(1, 30))))
        with index.store.snapshot():
            words = index.lexical_scores(terms, ids, pairs)
        tantivy = index.lexical.scores(terms, ids, pairs)
        for rid in ids:
            assert words[rid] == pytest.approx(tantivy.get(rid, 0.0), rel=1e-5, abs=1e-6), (query, rid)
        positive += sum(1 for rid in ids if words[rid] > 0)
    return positive


@pytest.fixture()
def from_words(monkeypatch):
    """Score from the stored words whatever the collection's size."""
    monkeypatch.setattr(qa.index, "WORDS_FROM", 0)


def test_scores_from_stored_words_are_tantivys(tmp_path, fake_embedder, from_words):
    idx = str(tmp_path / "index")
    build_index([_articles(tmp_path, _random_articles())], idx, embedder=fake_embedder)
    index = load_index(idx)
    assert index.scores_from_words
    # the squad questions on their articles, the odd cases, and pairs of the random paragraphs' words
    random_queries = [f"{a} {b}" for a in ("tesla", "patent", "coil", "the") for b in ("coil", "of the", "tesla")]
    assert _compare(index, _questions(120) + QUERIES + random_queries) > 3000


def test_field_norms_are_lucenes_byte4():
    assert NORM_LENGTHS[:42].tolist() == list(range(41)) + [42] and NORM_LENGTHS[48:52].tolist() == [56, 60, 64, 68]
    assert norm_lengths(np.array([40, 41, 43, 57, 100])).tolist() == [40, 40, 42, 56, 96]


def test_slop_count_takes_each_position_once_walking_the_left_side():
    # Tesla at 1 and 4 (shifted one on: 2 and 5), patent at 8 and 11: walked from Tesla's side, 8 takes 5 and
    # uses up 2 with it; walked from patent's (when patent is the rarer word), 2 and 5 each find one
    assert slop_count([2, 5, 47], [8, 11], 7) == 1
    assert slop_count([8, 11], [2, 5, 47], 7) == 2
    assert slop_count([1, 3, 5], [2, 4, 6], 1) == 3
    assert slop_count([1, 3, 5], [2, 4, 6], 0) == 0
    assert slop_count([], [2], 9) == 0 and slop_count([3], [11], 7) == 0 and slop_count([11], [4], 7) == 1


def test_words_keep_positions_of_words_too_long_to_index():
    words = Analyzer().words("A title", f"the {LONG} coil; Café İstanbul")
    assert words == ["a", "titl", "the", "", "coil", "cafe", "istanbul"]


def _sums(idx):
    data = os.path.join(idx, json.load(open(os.path.join(idx, "manifest.json")))["data_dir"])
    con = sqlite3.connect(os.path.join(data, STORE_FILE))
    total = int(con.execute("SELECT value FROM meta WHERE key = 'words_total'").fetchone()[0])
    counted = con.execute("SELECT COALESCE(SUM(indexed), 0) FROM passage_words").fetchone()[0]
    without = con.execute("SELECT COUNT(*) FROM passages WHERE id NOT IN (SELECT passage FROM passage_words)"
                          ).fetchone()[0]
    con.close()
    return total, counted, without


def test_words_follow_every_write(tmp_path, fake_embedder, from_words):
    idx = str(tmp_path / "index")
    build_index([_articles(tmp_path, [])], idx, embedder=fake_embedder)
    total, counted, without = _sums(idx)
    assert total == counted > 0 and without == 0
    new = tmp_path / "new.jsonl"
    later = {"id": "t9", "title": "Later", "paragraphs": ["Tesla coil patent zanzibarite, again."]}
    new.write_text(json.dumps(later) + "\n")
    add_documents([str(new)], idx, embedder=fake_embedder)
    remove_documents(["t4"], idx)
    after, counted, without = _sums(idx)
    assert after == counted and without == 0 and after != total and check_index(idx) == []
    index = load_index(idx)
    # tantivy's statistics count removed passages until its segments merge, the words' only live ones: held to
    # a tantivy index of the store as it is now
    index.lexical = LexicalIndex.create(None)
    index.lexical.rebuild(index.store)
    assert _compare(index, QUERIES + ["later zanzibarite again"]) > 10
    rows = {p.passage_id: p.rowid for p in index.store.passages(range(1, 500)).values()}
    with index.store.snapshot():
        new_words = index.store.passage_words([rows["t9#0"]])
    words = ["later", "tesla", "coil", "patent", "zanzibarit", "again"]
    vocabulary = index.store.word_ids(words)
    assert new_words.ids.tolist() == [vocabulary[w] for w in words]
    assert not any(pid.startswith("t4#") for pid in rows)
    data = os.path.join(idx, json.load(open(os.path.join(idx, "manifest.json")))["data_dir"])
    con = sqlite3.connect(os.path.join(data, STORE_FILE))
    with con:
        con.execute("DELETE FROM passage_words WHERE passage = ?", (rows["t9#0"],))
    con.close()
    problems = check_index(idx)
    assert "1 passages have no stored words" in problems and any("word count says" in p for p in problems)


def _by_passage(words) -> dict[int, list[int]]:
    ends = np.cumsum(words.counts).tolist()
    return {rowid: words.ids[end - count:end].tolist()
            for rowid, count, end in zip(words.rowids.tolist(), words.counts.tolist(), ends)}


def test_the_row_cache_holds_the_words_in_a_table(tmp_path, fake_embedder):
    idx = str(tmp_path / "index")
    build_index([_articles(tmp_path, [])], idx, embedder=fake_embedder)
    index = load_index(idx)
    ids = [5, 1, 9, 3, 10_000, 7]  # 10,000: no such passage
    with index.store.snapshot():
        read = index.store.passage_words(ids)  # from SQLite, then entries
    index.store.prewarm(index.dim, words=True)
    with index.store.snapshot():
        assert "words" in index.store._snapshot_rows().tables
        tabled = index.store.passage_words(ids)
    assert _by_passage(tabled) == _by_passage(read) and sorted(_by_passage(read)) == [1, 3, 5, 7, 9]
    assert tabled.rowids.tolist() == [5, 1, 9, 3, 7]  # in the order asked
    with index.store.snapshot():  # some passages from the table, others (read from SQLite meanwhile) as entries
        index.store._snapshot_rows().tables["words"]._starts[7] = -1
        mixed = index.store.passage_words(ids)
    assert _by_passage(mixed) == _by_passage(read)


def _store_path(idx: str) -> str:
    return os.path.join(idx, json.load(open(os.path.join(idx, "manifest.json")))["data_dir"], STORE_FILE)


def _strip_words(idx: str) -> str:
    """The index made a store of an earlier version: neither the words' tables nor their mark."""
    con = sqlite3.connect(_store_path(idx))
    with con:
        con.executescript("DROP TABLE passage_words; DROP TABLE words; DELETE FROM meta WHERE key LIKE 'words%'")
    con.close()
    return idx


def _stored_words(idx: str) -> tuple:
    """Every passage's stored words with the vocabulary's words, and the total."""
    con = sqlite3.connect(_store_path(idx))
    try:
        return (con.execute("SELECT p.passage, p.indexed, p.ids FROM passage_words p ORDER BY p.passage").fetchall(),
                con.execute("SELECT id, word FROM words ORDER BY id").fetchall(),
                con.execute("SELECT value FROM meta WHERE key IN ('words', 'words_total') ORDER BY key").fetchall())
    finally:
        con.close()


def test_a_store_made_before_words_is_scored_by_tantivy(tmp_path, fake_embedder, from_words):
    idx = str(tmp_path / "index")
    build_index([_articles(tmp_path, [])], idx, embedder=fake_embedder)
    index = load_index(_strip_words(idx))
    assert not index.scores_from_words
    terms, pairs = query_terms("Tesla patent"), query_pairs("Tesla patent")
    with index.store.snapshot():
        assert index.lexical_scores(terms, [1, 2, 3], pairs) == {
            rid: index.lexical.scores(terms, [1, 2, 3], pairs).get(rid, 0.0) for rid in [1, 2, 3]}
    new = tmp_path / "new.jsonl"
    new.write_text(json.dumps({"id": "t9", "title": "Later", "paragraphs": ["Tesla zanzibarite news."]}) + "\n")
    add_documents([str(new)], idx, embedder=fake_embedder)  # writes to it keep working, without words
    assert len(load_index(idx).lexical_search(["zanzibarite"], 5)) == 1


def test_a_server_scores_from_the_words_it_carries_across_writes(tmp_path, fake_embedder, from_words):
    # the words' table in the row cache goes from one generation to the next without the removed passages' words,
    # and a new passage's words come from SQLite until read ahead: the scores stay tantivy's
    from qa.config import Config
    from qa.service import Engine

    idx = str(tmp_path / "index")
    build_index([_articles(tmp_path, [])], idx, embedder=fake_embedder)
    engine = Engine(Config(index_dir=idx), embedder=fake_embedder)
    engine.warm_up()
    with engine.index().store.snapshot():
        assert "words" in engine.index().store._snapshot_rows().tables
    engine.add_article({"id": "t9", "title": "Later", "paragraphs": ["A zanzibarite Tesla coil, and a patent."]})
    engine.delete_document("t4")
    index = engine.index()
    hits = engine.search({"q": "zanzibarite tesla coil", "k": 3})["results"]
    assert hits[0]["doc_id"] == "t9"
    fresh = LexicalIndex.create(None)
    fresh.rebuild(index.store)
    index.lexical = fresh  # tantivy's statistics without the removed passages, as the words' are
    assert _compare(index, QUERIES + ["zanzibarite tesla coil"]) > 10


def test_qa_upgrade_stores_an_older_stores_words_as_a_build_does(tmp_path, fake_embedder, from_words):
    from click.testing import CliRunner

    from qa.cli import main

    idx, built = str(tmp_path / "index"), str(tmp_path / "built")
    build_index([_articles(tmp_path, _random_articles(40))], built, embedder=fake_embedder)
    build_index([_articles(tmp_path, _random_articles(40))], idx, embedder=fake_embedder)
    _strip_words(idx)
    res = CliRunner().invoke(main, ["upgrade", "--index-dir", idx])
    assert res.exit_code == 0 and res.output.startswith(f"upgraded {idx}: the words of ")
    assert _stored_words(idx) == _stored_words(built) and check_index(idx) == []
    index = load_index(idx)
    assert index.scores_from_words and _compare(index, QUERIES) > 50
    res = CliRunner().invoke(main, ["upgrade", "--index-dir", idx])
    assert (res.exit_code, res.output) == (0, f"up to date: {idx}\n")
    remove_documents(["t1"], idx)  # later writes keep them
    assert check_index(idx) == [] and load_index(idx).scores_from_words
    res = CliRunner().invoke(main, ["upgrade", "--index-dir", str(tmp_path / "none")])
    assert res.exit_code != 0 and "no index" in res.output and not (tmp_path / "none").exists()
