"""Articles to passages and vectors: each window read after its article's title."""
import re

import numpy as np

from qa.ingest import article_from_dict

from conftest import ARTS


def test_windows_are_embedded_after_their_title(fake_embedder):
    from qa.chunk import chunk_article
    from qa.prepare import embed_passages, prepare_articles, window_prefix

    article = article_from_dict(ARTS[0])
    seen = []
    encode_spans = fake_embedder.encode_spans

    def recording(texts, spans, **kw):
        seen.extend(zip(texts, spans))
        return encode_spans(texts, spans, **kw)

    fake_embedder.encode_spans = recording
    prepared, = prepare_articles([article], fake_embedder)
    passages, titled, titled_sents = prepared.passages, prepared.window_vectors, prepared.sentence_vectors
    assert window_prefix(article) == "Harbour strike. "
    assert all(text.startswith("Harbour strike. ") for text, _ in seen)
    # every sentence span points at that sentence inside the prefixed window text
    expected = [p.text[s:e] for p in passages for s, e in p.sentences]
    assert [text[s:e] for text, spans in seen for s, e in spans] == expected
    plain, plain_sents, _ = embed_passages(fake_embedder, passages)
    assert not np.allclose(titled[0], plain[0])  # the title's words are in the window vector
    assert np.allclose(titled_sents[0], plain_sents[0])  # a sentence pools its own tokens only (bag of words here)
    assert chunk_article(article, fake_embedder.count_tokens, fake_embedder.max_tokens - 2) == passages


def test_windows_leave_room_for_the_title_and_long_titles_are_cut(fake_embedder):
    from qa.prepare import TITLE_PREFIX_CHARS, prepare_articles, window_prefix

    sentences = [f"Sentence number {i} tells of the harbour dispute and its many long rounds of talks."
                 for i in range(60)]
    title = "Harbour strike enters its third week as talks stall " * 4
    article = article_from_dict({"id": "long", "title": title, "paragraphs": [" ".join(sentences)]})
    prefix = window_prefix(article)
    words = " ".join(title.split())
    assert len(prefix) <= TITLE_PREFIX_CHARS + 2 and prefix.endswith(". ")
    assert words.startswith(prefix[:-2]) and words[len(prefix) - 2] == " "  # cut between words
    seen = []
    encode_spans = fake_embedder.encode_spans
    fake_embedder.encode_spans = lambda texts, spans, **kw: (seen.extend(texts), encode_spans(texts, spans, **kw))[1]
    prepared, = prepare_articles([article], fake_embedder)
    assert len(prepared.passages[0].windows) > 1 and len(seen) == len(prepared.window_vectors[0])
    assert all(n <= fake_embedder.max_tokens - 2 for n in fake_embedder.count_tokens(seen))  # title and window fit
    assert all(text.startswith(prefix) for text in seen)


def test_word_piece_vectors_cover_each_passage_once_with_offsets_into_its_text(fake_embedder):
    from qa.prepare import prepare_articles

    sentences = [f"Sentence number {i} tells of the harbour dispute and its many long rounds of talks."
                 for i in range(60)]
    article = article_from_dict({"id": "long", "title": "Harbour strike", "paragraphs": [
        " ".join(sentences), "Talks resume on Friday."]})
    prepared, = prepare_articles([article], fake_embedder)
    assert len(prepared.passages[0].windows) > 1  # windows overlap by a sentence
    for passage, tokens in zip(prepared.passages, prepared.token_vectors):
        words = [passage.text[s:e] for s, e in tokens.offsets.tolist()]
        assert words == re.findall(r"\w+", passage.text)  # every word once, in order; none of the title's
        assert np.allclose(np.linalg.norm(tokens.vectors, axis=1), 1.0, atol=1e-5)
