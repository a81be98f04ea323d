"""`Passage`: one per paragraph, with its offsets, its sentences, and the windows that cover a long paragraph."""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

from .ingest import PARAGRAPH_SEP, Article

Span = tuple[int, int]


@dataclasses.dataclass
class Passage:
    """A paragraph of an article, the unit of retrieval; offsets are into the document's text."""

    doc_id: str
    paragraph_index: int
    text: str
    char_start: int
    char_end: int
    sentences: list[Span] = dataclasses.field(default_factory=list)  # offsets into `text`
    windows: list[Span] = dataclasses.field(default_factory=list)  # embedded spans of `text`

    @property
    def passage_id(self) -> str:
        """Stable public id: the document id and the paragraph index."""
        return passage_id(self.doc_id, self.paragraph_index)


def passage_id(doc_id: str, paragraph_index: int) -> str:
    """The public id of a passage."""
    return f"{doc_id}#{paragraph_index}"


_INITIAL = re.compile(r"[A-Z]\.")


def split_sentences(text: str) -> list[Span]:
    """Sentence spans of `text` (trailing white space excluded), from sentencex's rule-based segmenter.

    A boundary inside an initialism is undone: sentencex knows "U.S." but cuts "Sino-U.S." and "non-U.S." after
    the "U.", with no white space between the pieces."""
    import sentencex

    spans: list[Span] = []
    for b in sentencex.get_sentence_boundaries("en", text):
        start, end = b["start_index"], b["end_index"]
        while end > start and text[end - 1].isspace():
            end -= 1
        while start < end and text[start].isspace():
            start += 1
        if end <= start:
            continue
        if spans and spans[-1][1] == start and _INITIAL.match(text, start):
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
    return spans or ([(0, len(text))] if text.strip() else [])


def make_windows(sentences: list[Span], token_counts: list[int], max_tokens: int,
                 overlap: int = 1) -> list[Span]:
    """Group consecutive sentences into windows of at most `max_tokens`, consecutive windows sharing
    `overlap` sentences; a sentence longer than the window stands alone (the embedder splits it further)."""
    if not sentences:
        return []
    if sum(token_counts) <= max_tokens:
        return [(sentences[0][0], sentences[-1][1])]
    windows, i, n = [], 0, len(sentences)
    while i < n:
        j, total = i, 0
        while j < n and (j == i or total + token_counts[j] <= max_tokens):
            total += token_counts[j]
            j += 1
        windows.append((sentences[i][0], sentences[j - 1][1]))
        if j >= n:
            break
        i = max(i + 1, j - overlap)
    return windows


def chunk_article(article: Article, count_tokens: Callable[[list[str]], list[int]] | None = None,
                  max_tokens: int = 254) -> list[Passage]:
    """One passage per kept paragraph; long paragraphs get overlapping sentence windows for embedding."""
    passages, offset = [], 0
    for para in article.paragraphs:
        text = para.text
        sentences = split_sentences(text)
        passage = Passage(article.id, para.index, text, offset, offset + len(text), sentences,
                          [(0, len(text))])
        if count_tokens is not None and sentences:
            counts = count_tokens([text[s:e] for s, e in sentences])
            passage.windows = make_windows(sentences, counts, max_tokens)
        passages.append(passage)
        offset += len(text) + len(PARAGRAPH_SEP)
    return passages
