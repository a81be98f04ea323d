"""Answer sentence scoring: token alignment with the question, and its cache of passages' token vectors."""
import os

import numpy as np
import pytest

from qa.answer import TokenVectors, alignments

TESLA = ("In 1873, Tesla returned to his birthtown, Smiljan. Shortly after he arrived, Tesla contracted "
         "cholera; he was bedridden for nine months and was near death multiple times.")


def sentences(text):
    first = text.index(". ") + 1
    return [(text, 0, first), (text, first + 1, len(text))]


@pytest.mark.slow
def test_token_vectors_are_unit_rows_with_offsets_into_the_text(embedder, fake_embedder):
    for e in (embedder, fake_embedder):
        (vecs, offsets), (empty, none) = e.token_vectors([TESLA, ""])
        assert vecs.shape == (len(offsets), e.dim) and len(offsets) > 20
        assert np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
        assert (offsets[:, 0] < offsets[:, 1]).all() and offsets[-1, 1] <= len(TESLA)
        assert TESLA[offsets[3, 0]:offsets[3, 1]] in TESLA.split()[2] + TESLA.split()[3]
        assert empty.shape == (0, e.dim) and none.shape == (0, 2)


@pytest.mark.slow
def test_alignment_matches_words_by_meaning_in_context(embedder):
    # no word of the question is in either sentence; "illness" and "catch" find "cholera" and "contracted"
    text = "The bridge over the river opened in the spring. Shortly after he arrived, he contracted cholera."
    other, answers = alignments(embedder, "Which illness did he catch?", sentences(text))
    assert answers > other + 0.05


def test_alignment_is_recall_over_the_question_s_pieces(fake_embedder):
    text = "Tickets cost four dollars. The ferry sails on Monday."
    first, second = alignments(fake_embedder, "When does the ferry sail Monday", sentences(text))
    assert second > first
    (exact,) = alignments(fake_embedder, "ferry Monday", [(text, 27, len(text))])
    # every question word is in the sentence, and the hash embedder's words match exactly (to float16's precision)
    assert exact == pytest.approx(1, abs=1e-3)
    assert alignments(fake_embedder, "ferry", []).shape == (0,)


def test_token_vectors_are_computed_once_per_text_and_the_oldest_are_dropped(fake_embedder):
    calls = []

    class Counting:
        model_name = "hash"

        def token_vectors(self, texts):
            calls.append(list(texts))
            return fake_embedder.token_vectors(texts)

    cache = TokenVectors(size=2)
    a, b, again = cache.get(Counting(), ["one two", "three", "one two"])
    assert calls == [["one two", "three"]] and again is a and a[0].dtype == np.float16 and len(b[1]) == 1
    cache.get(Counting(), ["three", "four"])
    assert calls[-1] == ["four"]
    cache.get(Counting(), ["one two"])  # evicted: the two most recent are "three" and "four"
    assert calls[-1] == ["one two"]


@pytest.mark.slow
def test_only_the_passages_of_the_best_sentences_are_aligned(seed_index_dir, embedder):
    from qa.answer import ALIGN_SENTENCES, score_sentences
    from qa.index import load_index
    from qa.search import search

    calls = []

    class Counting:
        model_name = "counting"  # its own entries in the token-vector cache

        def token_vectors(self, texts):
            calls.append(list(texts))
            return embedder.token_vectors(texts)

    index = load_index(seed_index_dir, embedder=embedder)
    try:
        result = search(index, "what actions has China taken?", 5)
        plain = score_sentences(result)
        aligned = score_sentences(result, Counting())
    finally:
        index.close()
    (passages,) = calls  # the question's word pieces come from its search's forward pass
    assert result.query_tokens is not None and len(result.query_tokens.offsets) == 6
    assert 1 <= len(passages) <= ALIGN_SENTENCES < len(plain)
    assert result.hits[plain[0].pos].passage.text in passages  # the best sentence by the other signals is aligned
    unscored = lambda rows: sorted(r._replace(score=0.0, alignment=None) for r in rows)  # noqa: E731
    assert unscored(aligned) == unscored(plain)  # the same sentences, rescored
    assert all(r.alignment is None for r in plain) and any(r.alignment is not None for r in aligned)


@pytest.mark.slow
def test_a_sentence_is_aligned_together_with_the_one_before_it(seed_index_dir, embedder, monkeypatch):
    import qa.answer as A
    from qa.index import load_index
    from qa.search import search

    spans = []
    real = A.token_alignments

    def recording(e, question, sentences, known=A.KnownTokens()):
        spans.extend(sentences)
        return real(e, question, sentences, known)

    monkeypatch.setattr(A, "token_alignments", recording)
    index = load_index(seed_index_dir, embedder=embedder)
    try:
        result = search(index, "what actions has China taken?", 5)
        scored = A.score_sentences(result, embedder)
    finally:
        index.close()
    sentences = {(result.hits[r.pos].passage.text, r.idx): (r.start, r.end) for r in scored}
    assert spans and any(start != sentences[(text, 0)][0] for text, start, _ in spans)  # some second sentence
    for text, start, end in spans:
        idx = next(i for (t, i), (_, e) in sentences.items() if t == text and e == end)
        assert start == sentences[(text, max(idx - 1, 0))][0]  # from the sentence before it (or its own, if first)


@pytest.mark.slow
def test_the_raw_alignment_is_kept_and_computed_for_a_sentence_left_unaligned(seed_index_dir, embedder,
                                                                             monkeypatch):
    import qa.answer as A
    from qa.index import load_index
    from qa.search import search

    index = load_index(seed_index_dir, embedder=embedder)
    try:
        result = search(index, "what actions has China taken?", 5)
        monkeypatch.setattr(A, "ALIGN_SENTENCES", 1)  # only the best sentence's passage aligned while scoring
        scored = A.score_sentences(result, embedder)
        for row in scored:
            if row.alignment is not None:  # the raw alignment of the sentence read with the one before it
                span = A.with_previous(result, row)
                assert row.alignment == pytest.approx(float(A.alignments(embedder, result.query, [span])[0]),
                                                      abs=1e-6)
        unaligned = [r for r in scored if r.alignment is None]
        assert any(r.idx > 0 for r in unaligned)  # a sentence with one before it in its passage among them
        monkeypatch.setattr(A, "ALIGN_SENTENCES", 10**6)  # every passage aligned while scoring
        everything = {r.place: r.alignment for r in A.score_sentences(result, embedder)}
        for row in unaligned:  # computed on demand as scoring would have computed it
            assert A.sentence_alignment(result, embedder, row) == pytest.approx(everything[row.place], abs=1e-6)
    finally:
        index.close()


def test_answers_align_the_stored_word_pieces_without_a_forward_pass(built):
    from qa.answer import KnownTokens, alignments, answer_question, known_tokens
    from qa.embed import HashEmbedder
    from qa.index import load_index
    from qa.prepare import window_prefix
    from qa.ingest import article_from_dict

    from conftest import ARTS

    class Counting(HashEmbedder):
        calls: list = []

        def token_vectors(self, texts):
            self.calls.append(list(texts))
            return super().token_vectors(texts)

    embedder = Counting()
    index = load_index(built, embedder=embedder)
    try:
        answer = answer_question(index, "When would talks resume, the union leader said?")
        assert not answer.no_answer and embedder.calls == []
        result = answer.search
        hit = result.hits[0].passage
        stored = known_tokens(result).passages([hit.text])[hit.text]
        # the word pieces as the build read them: after the article's title, offsets into the passage
        head = window_prefix(article_from_dict(next(a for a in ARTS if a["id"] == hit.doc_id)))
        (vecs, offsets), = embedder.token_vectors([head + hit.text])
        keep = offsets[:, 0] >= len(head)
        assert np.array_equal(stored.offsets, offsets[keep] - len(head))
        assert np.abs(stored.vectors - vecs[keep]).max() < 0.01  # int8 with a scale a piece
        span = [(hit.text, 0, len(hit.text))]
        exact = KnownTokens(result.query_tokens, lambda texts: {hit.text: (vecs[keep], offsets[keep] - len(head))})
        assert alignments(embedder, result.query, span, known_tokens(result)) == pytest.approx(
            alignments(embedder, result.query, span, exact), abs=0.01)
    finally:
        index.close()


def test_answerable_means_aligned_with_the_question_or_holding_its_rare_words():
    from qa.answer import NO_ANSWER_ALIGNMENT, NO_ANSWER_COVERAGE, NO_ANSWER_ESCAPE_ALIGNMENT, is_answerable

    assert is_answerable(NO_ANSWER_ALIGNMENT, 0.0)
    assert not is_answerable(NO_ANSWER_ALIGNMENT - 0.01, NO_ANSWER_COVERAGE - 0.01)
    assert is_answerable(NO_ANSWER_ESCAPE_ALIGNMENT, NO_ANSWER_COVERAGE)  # the question's rare words, some alignment
    assert not is_answerable(NO_ANSWER_ESCAPE_ALIGNMENT - 0.01, 1.0)  # its words, but nothing else of it


@pytest.mark.slow
def test_no_answer_is_decided_on_the_best_sentence_s_alignment(seed_index_dir, embedder, monkeypatch):
    import qa.answer as A
    from qa.index import load_index

    index = load_index(seed_index_dir, embedder=embedder)
    try:
        question = "How did China describe the talks?"
        answered = A.answer_question(index, question)
        assert "in-depth and pragmatic" in answered.sentences[0].text
        best = A.score_sentences(answered.search, embedder)[0]
        assert best.alignment >= A.NO_ANSWER_ALIGNMENT and best.coverage < A.NO_ANSWER_COVERAGE  # on alignment alone
        assert A.answer_question(index, "What is the boiling point of liquid nitrogen in Kelvin?").no_answer
        # "France" finds "Francisco" by its stem's prefix: coverage 0.5, but the sentence does not align
        france = A.answer_question(index, "What is the capital of France?")
        top = A.score_sentences(france.search, embedder)[0]
        assert france.no_answer
        assert top.coverage >= A.NO_ANSWER_COVERAGE and top.alignment < A.NO_ANSWER_ESCAPE_ALIGNMENT
        monkeypatch.setattr(A, "NO_ANSWER_ALIGNMENT", best.alignment + 0.01)  # the same sentence just under the bar
        assert A.answer_question(index, question).no_answer
    finally:
        index.close()


def test_local_coverage_weighs_the_words_that_set_a_candidate_apart():
    from qa.answer import local_coverage

    # stems: "khan" (in every candidate), "die" (in one), "song" (in two)
    held = np.array([[1, 0, 1], [1, 1, 0], [1, 0, 1], [1, 0, 0]], bool)
    cov = local_coverage(held)
    assert cov[1] > cov[0] == cov[2] > cov[3] > 0  # the one that holds "die" leads; "khan" alone counts least
    assert cov.max() < 1 and local_coverage(np.ones((3, 2), bool)).tolist() == pytest.approx([1, 1, 1])
    assert local_coverage(np.zeros((2, 0), bool)).tolist() == [0, 0]  # a question without content words
    assert local_coverage(np.zeros((0, 2), bool)).shape == (0,)


@pytest.fixture(scope="module")
def doctor_who_index(tmp_path_factory, embedder):
    """squad-dev's Doctor Who article, built with the real model."""
    import json

    from conftest import SQUAD
    from qa.index import build_index

    folder = tmp_path_factory.mktemp("doctor-who")
    with open(os.path.join(SQUAD, "articles.jsonl"), encoding="utf-8") as f:
        article = next(line for line in f if json.loads(line)["id"] == "Doctor_Who")
    (folder / "doctor-who.jsonl").write_text(article, encoding="utf-8")
    build_index([str(folder / "doctor-who.jsonl")], str(folder / "index"), embedder=embedder)
    return str(folder / "index")


@pytest.mark.slow
def test_coverage_weighs_words_by_how_few_candidates_hold_them_not_by_collection_rarity(doctor_who_index, embedder,
                                                                                        monkeypatch):
    # the answer holds "Fourth" and "Doctor"; a sentence on spoofs of the show holds "Doctor" and "comedians", the
    # rarer word in the collection. Among the candidates (16 of 21 hold "Doctor") both are held once: they tie on
    # coverage, and the other signals pick the answer ("often" finds "frequently" by meaning)
    import qa.answer as A
    from qa.index import load_index
    from qa.text import TermMatcher, query_terms

    index = load_index(doctor_who_index, embedder=embedder)
    try:
        question = "Who often plays the Fourth Doctor in comedy parodies?"
        first = A.answer_question(index, question).sentences[0].text
        assert first == "Jon Culshaw frequently impersonates the Fourth Doctor in the BBC Dead Ringers series."
        # the question's share of IDF weight over the collection in its place: the sentence on spoofs
        matcher = TermMatcher.for_query(index, query_terms(question), index.passage_count)
        local = A.local_coverage
        monkeypatch.setattr(A, "local_coverage", lambda h: matcher.coverage(h) if h.dtype == bool else local(h))
        assert "Culshaw" not in A.answer_question(index, question).sentences[0].text
    finally:
        index.close()


def test_the_kind_of_answer_asked_for_is_read_from_the_question_s_words():
    from qa.answer import answer_kind

    number, date = answer_kind("How many troops?"), answer_kind("When did it open?")
    assert answer_kind("how much did it cost") is number and answer_kind("What percentage voted?") is number
    assert answer_kind("In what year was it built?") is date and answer_kind("Which century?") is date
    assert answer_kind("Who built it?") is None and answer_kind("What is a whenua?") is None
    assert number.search("It cost $4 million") and number.search("twelve ships") and not number.search("one of them")
    assert date.search("in the 1930s") and date.search("on 4 May") and not date.search("it may rain")
    assert not date.search("five ships")


def test_a_sentence_holding_the_kind_of_answer_asked_for_counts_as_holding_a_word_more(tmp_path, fake_embedder,
                                                                                     monkeypatch):
    import json

    import qa.answer as A
    from qa.index import build_index, load_index
    from qa.search import search

    path = tmp_path / "bridge.jsonl"
    path.write_text(json.dumps({"id": "bridge", "title": "Bridge", "paragraphs": [
        "The new bridge was opened by the mayor. The new bridge was opened in 1932 after years of work."]}) + "\n")
    build_index([str(path)], str(tmp_path / "index"), embedder=fake_embedder)
    index = load_index(str(tmp_path / "index"), embedder=fake_embedder)
    try:
        def lead(question):  # the 1932 sentence's score less the other's
            scores = {row.idx: row.score for row in A.score_sentences(search(index, question, 5))}
            return scores[1] - scores[0]

        asked = lead("When was the new bridge opened?")
        monkeypatch.setattr(A, "answer_kind", lambda question: None)
        assert asked > lead("When was the new bridge opened?") + 0.5
    finally:
        index.close()


def test_token_alignments_are_each_question_piece_s_best_cosine(fake_embedder):
    from qa.answer import recall, token_alignments

    text = "Tickets cost four dollars. The ferry sails on Monday."
    pieces = token_alignments(fake_embedder, "ferry Monday", sentences(text))
    assert pieces.shape == (2, 2) and pieces[1] == pytest.approx([1, 1], abs=1e-3) and (pieces[0] < 0.5).all()
    assert recall(pieces).tolist() == pytest.approx(alignments(fake_embedder, "ferry Monday", sentences(text)))
    assert token_alignments(fake_embedder, "ferry", []).shape == (0, 1) and recall(np.zeros((2, 0))).tolist() == [0, 0]


def test_token_alignments_of_many_sentences_at_once_are_each_sentence_s_own(fake_embedder):
    """Sentences of several passages, in any order, one without word pieces: each row as if aligned alone."""
    from qa.answer import token_alignments

    first = "Tickets cost four dollars. The ferry sails on Monday."
    second = "The bridge opened in May. Cars pay a toll."
    spans = [(second, 26, 42), (first, 0, 26), (second, 0, 25), (first, 27, 52), (first, 26, 26), (first, 0, 52)]
    together = token_alignments(fake_embedder, "ferry toll Monday", spans)
    alone = np.array([token_alignments(fake_embedder, "ferry toll Monday", [span])[0] for span in spans])
    assert together.tolist() == alone.tolist()
    assert together[4].tolist() == [0, 0, 0] and (together[5] >= together[1]).all() and (together[0] > 0).all()


@pytest.mark.slow
def test_the_alignment_ranks_by_the_question_s_pieces_that_few_candidates_match(doctor_who_index, embedder,
                                                                                monkeypatch):
    # with the question's word pieces weighted alike in the ranking, a sentence on other actors who played the
    # Master leads ("The Master was briefly played by Peter Pratt and Geoffrey Beevers until...")
    import qa.answer as A
    from qa.index import load_index

    index = load_index(doctor_who_index, embedder=embedder)
    try:
        question = "Who first played the Master in the 2007 series?"
        assert "Derek Jacobi" in A.answer_question(index, question).sentences[0].text
        local = A.local_coverage
        # every piece weighted alike (the raw alignment) in the ranking
        monkeypatch.setattr(A, "local_coverage", lambda m: A.recall(m) if m.dtype != bool else local(m))
        assert "Derek Jacobi" not in A.answer_question(index, question).sentences[0].text
    finally:
        index.close()


COUNCIL = ["The council has taken action on the bridge. It closed the bridge to lorries in March.",
           "The mayor also said the council will repair the bridge before winter.",
           "Officials also said it was sunny.",
           "Repairs to the bridge by the council were also discussed in 1990."]


@pytest.fixture()
def council_index(tmp_path, fake_embedder):
    import json

    from qa.index import build_index

    path = tmp_path / "council.jsonl"
    path.write_text(json.dumps({"id": "council", "title": "Council", "paragraphs": COUNCIL}) + "\n")
    build_index([str(path)], str(tmp_path / "index"), embedder=fake_embedder)
    return str(tmp_path / "index")


def test_an_answer_goes_on_into_the_sentence_that_continues_it(council_index, fake_embedder, monkeypatch):
    import qa.answer as A
    from qa.index import load_index
    from qa.search import search

    index = load_index(council_index, embedder=fake_embedder)
    try:
        result = search(index, "what has the council done on the bridge", 10)
        pos = {h.passage.paragraph_index: p for p, h in enumerate(result.hits)}
        scored = {r.place: r for r in A.score_sentences(result, fake_embedder)}
        # the next sentence of the passage, then the first of the article's next paragraph, then none after the last
        assert A.next_sentence(result, scored[pos[0], 0]).place == (pos[0], 1)
        following = A.next_sentence(result, scored[pos[0], 1])
        assert (*following.place, following.start) == (pos[1], 0, 0)
        assert A.next_sentence(result, scored[pos[3], 0]) is None
        first = scored[pos[0], 1]
        out = A.with_continuations(result, fake_embedder, [first])
        assert [r.place for r in out] == [(pos[0], 1), (pos[1], 0)]  # "The mayor also said the council will..."
        assert out[1].score == first.score and out[1].alignment >= A.NO_ANSWER_ALIGNMENT
        # no continuation when the next sentence does not go on ("It closed...") or does not answer ("sunny")
        opening = scored[pos[0], 0]
        assert A.with_continuations(result, fake_embedder, [opening]) == [opening]
        mayor = next(r for r in scored.values() if r.pos == pos[1])
        assert A.with_continuations(result, fake_embedder, [mayor]) == [mayor]
        monkeypatch.setattr(A, "MAX_SENTENCES", 1)  # no room
        assert A.with_continuations(result, fake_embedder, [first]) == [first]
    finally:
        index.close()
