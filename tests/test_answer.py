"""Answer sentence scoring: token alignment with the question, and its cache of passages' token vectors."""
import numpy as np
import pytest

from qa.answer import TokenVectors, alignments

TESLA = ("In 1873, Tesla returned to his birthtown, Smiljan. Shortly after he arrived, Tesla contracted "
         "cholera; he was bedridden for nine months and was near death multiple times.")


def sentences(text):
    first = text.index(". ") + 1
    return [(text, 0, first), (text, first + 1, len(text))]


def test_token_vectors_are_unit_rows_with_offsets_into_the_text(embedder, fake_embedder):
    for e in (embedder, fake_embedder):
        (vecs, offsets), (empty, none) = e.token_vectors([TESLA, ""])
        assert vecs.shape == (len(offsets), e.dim) and len(offsets) > 20
        assert np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
        assert (offsets[:, 0] < offsets[:, 1]).all() and offsets[-1, 1] <= len(TESLA)
        assert TESLA[offsets[3, 0]:offsets[3, 1]] in TESLA.split()[2] + TESLA.split()[3]
        assert empty.shape == (0, e.dim) and none.shape == (0, 2)


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
    assert exact == pytest.approx(1, abs=1e-3)  # float16 vectors; every question word is in the sentence: the hash embedder's words match exactly
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
    question, passages = calls
    assert question == ["what actions has China taken?"]
    assert 1 <= len(passages) <= ALIGN_SENTENCES < len(plain)
    assert result.hits[plain[0][1]].passage.text in passages  # the best sentence by the other signals is aligned
    assert sorted(r[1:7] for r in aligned) == sorted(r[1:7] for r in plain)  # the same sentences, rescored
    assert all(r[7] is None for r in plain) and any(r[7] is not None for r in aligned)


def test_a_sentence_is_aligned_together_with_the_one_before_it(seed_index_dir, embedder, monkeypatch):
    import qa.answer as A
    from qa.index import load_index
    from qa.search import search

    spans = []

    def recording(e, question, sentences):
        spans.extend(sentences)
        return alignments(e, question, sentences)

    monkeypatch.setattr(A, "alignments", recording)
    index = load_index(seed_index_dir, embedder=embedder)
    try:
        result = search(index, "what actions has China taken?", 5)
        scored = A.score_sentences(result, embedder)
    finally:
        index.close()
    sentences = {(result.hits[pos].passage.text, idx): (start, end) for _, pos, idx, start, end, *_ in scored}
    assert spans and any(start != sentences[(text, 0)][0] for text, start, _ in spans)  # some second sentence
    for text, start, end in spans:
        idx = next(i for (t, i), (_, e) in sentences.items() if t == text and e == end)
        assert start == sentences[(text, max(idx - 1, 0))][0]  # from the sentence before it (or its own, if first)


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
            if row[7] is not None:  # the raw alignment of the sentence read with the one before it
                span = A.with_previous(result, *row[1:5])
                assert row[7] == pytest.approx(float(A.alignments(embedder, result.query, [span])[0]), abs=1e-6)
        unaligned = [r for r in scored if r[7] is None]
        assert any(r[2] > 0 for r in unaligned)  # a sentence with one before it in its passage among them
        monkeypatch.setattr(A, "ALIGN_SENTENCES", 10**6)  # every passage aligned while scoring
        everything = {r[1:3]: r[7] for r in A.score_sentences(result, embedder)}
        for row in unaligned:  # computed on demand as scoring would have computed it
            assert A.sentence_alignment(result, embedder, row) == pytest.approx(everything[row[1:3]], abs=1e-6)
    finally:
        index.close()


def test_answerable_means_aligned_with_the_question_or_holding_its_rare_words():
    from qa.answer import NO_ANSWER_ALIGNMENT, NO_ANSWER_COVERAGE, NO_ANSWER_ESCAPE_ALIGNMENT, is_answerable

    assert is_answerable(NO_ANSWER_ALIGNMENT, 0.0)
    assert not is_answerable(NO_ANSWER_ALIGNMENT - 0.01, NO_ANSWER_COVERAGE - 0.01)
    assert is_answerable(NO_ANSWER_ESCAPE_ALIGNMENT, NO_ANSWER_COVERAGE)  # the question's rare words, some alignment
    assert not is_answerable(NO_ANSWER_ESCAPE_ALIGNMENT - 0.01, 1.0)  # its words, but nothing else of it


def test_no_answer_is_decided_on_the_best_sentence_s_alignment(seed_index_dir, embedder, monkeypatch):
    import qa.answer as A
    from qa.index import load_index

    index = load_index(seed_index_dir, embedder=embedder)
    try:
        question = "How did China describe the talks?"
        answered = A.answer_question(index, question)
        assert "in-depth and pragmatic" in answered.sentences[0].text
        best = A.score_sentences(answered.search, embedder)[0]
        assert best[7] >= A.NO_ANSWER_ALIGNMENT and best[6] < A.NO_ANSWER_COVERAGE  # answered on alignment alone
        assert A.answer_question(index, "What is the boiling point of liquid nitrogen in Kelvin?").no_answer
        # "France" finds "Francisco" by its stem's prefix: coverage 0.5, but the sentence does not align
        france = A.answer_question(index, "What is the capital of France?")
        top = A.score_sentences(france.search, embedder)[0]
        assert france.no_answer and top[6] >= A.NO_ANSWER_COVERAGE and top[7] < A.NO_ANSWER_ESCAPE_ALIGNMENT
        monkeypatch.setattr(A, "NO_ANSWER_ALIGNMENT", best[7] + 0.01)  # the same sentence just under the bar
        assert A.answer_question(index, question).no_answer
    finally:
        index.close()
