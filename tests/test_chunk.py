from qa.chunk import chunk_article, make_windows, split_sentences
from qa.ingest import Article, Paragraph


def test_sentence_spans_are_exact_offsets():
    text = "Mr. Smith went to Washington on Jan. 5. He said “yes.” Then U.S. officials left."
    spans = split_sentences(text)
    assert [text[s:e] for s, e in spans] == ["Mr. Smith went to Washington on Jan. 5.", "He said “yes.”",
                                             "Then U.S. officials left."]


def test_a_sentence_is_not_cut_inside_an_initialism():
    text = ("In an unusual disclosure of Sino-U.S. cooperation, the police acted. A non-U.K. firm bought it. "
            "They shared these stories.Political geographers disagree.")
    assert [text[s:e] for s, e in split_sentences(text)] == [
        "In an unusual disclosure of Sino-U.S. cooperation, the police acted.", "A non-U.K. firm bought it.",
        "They shared these stories.", "Political geographers disagree."]


def test_windows_cover_every_sentence_with_overlap():
    spans = [(i * 10, i * 10 + 9) for i in range(10)]
    windows = make_windows(spans, [100] * 10, max_tokens=250)
    assert windows[0] == (0, 19) and windows[-1][1] == 99
    covered = {s for s in spans for w in windows if w[0] <= s[0] and s[1] <= w[1]}
    assert covered == set(spans)
    assert all(a[1] > b[0] for a, b in zip(windows, windows[1:]))  # consecutive windows overlap


def test_passages_keep_offsets_into_the_document_text():
    a = Article("d", "T", [Paragraph(0, "First one. Second one."), Paragraph(4, "Later paragraph.")])
    ps = chunk_article(a, lambda texts: [len(t.split()) for t in texts], max_tokens=2)
    assert [p.paragraph_index for p in ps] == [0, 4]
    assert all(a.text[p.char_start:p.char_end] == p.text for p in ps)
    assert ps[0].passage_id == "d#0"
    assert len(ps[0].windows) == 2  # over the window: sentence windows, never truncated
