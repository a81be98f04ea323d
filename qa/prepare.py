"""Articles made ready for the store: cut into passages and windows, each window embedded after its title."""
from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import numpy as np

from .chunk import Passage, Span, chunk_article
from .embed import Embedder
from .embed.base import TextTokens
from .ingest import Article

TITLE_PREFIX_CHARS = 120  # a headline's length; a longer title is cut (its words still count in BM25)


@dataclasses.dataclass
class PreparedArticle:
    """An article with its passages, one window-vector matrix, one sentence-vector matrix and the word pieces'
    vectors per passage."""

    article: Article
    passages: list[Passage]
    window_vectors: list[np.ndarray]
    sentence_vectors: list[np.ndarray]
    token_vectors: list[TextTokens]

    @property
    def window_count(self) -> int:
        """How many windows (vector rows) the article adds."""
        return sum(len(w) for w in self.window_vectors)


class PassageVectors(NamedTuple):
    """Per passage: its window vectors, its sentence vectors and its word pieces' vectors with offsets into its
    text (`embed_passages`)."""

    windows: list[np.ndarray]
    sentences: list[np.ndarray]
    tokens: list[TextTokens]


def _sentences_inside(sentences: Sequence[Span], starts: Sequence[int], start: int, end: int) -> range:
    """Indexes of the (sorted, non-overlapping) sentences lying within [start, end), found by bisection."""
    lo = hi = bisect.bisect_left(starts, start)
    while hi < len(sentences) and sentences[hi][1] <= end:
        hi += 1
    return range(lo, hi)


def window_prefix(article: Article) -> str:
    """The text put before each of an article's windows when they are embedded: its title (its first
    TITLE_PREFIX_CHARS characters, cut at a space), as dense passage retrievers encode "title [SEP] passage"
    (Karpukhin et al., 2020), so a paragraph that never names its topic is still found by it. Only the window's
    vector and its sentences' context change; stored texts and spans don't."""
    title = " ".join(article.title.split())
    if len(title) > TITLE_PREFIX_CHARS:
        head = title[:TITLE_PREFIX_CHARS + 1]
        title = head.rsplit(" ", 1)[0] if " " in head else head[:-1]
    return f"{title}{'' if title[-1:] in '.!?:' else '.'} " if title else ""


def embed_passages(embedder: Embedder, passages: Sequence[Passage], *, progress: bool = False,
                   batch_size: int = 32, prefixes: Sequence[str] | None = None) -> PassageVectors:
    """Per passage: its window vectors, its sentence vectors and its word pieces' vectors, from one forward pass
    per window, each window read after its passage's prefix (`prefixes`, none by default); a sentence vector pools
    its own tokens only."""
    texts, spans, owners, inside, places = [], [], [], [], []
    for pi, passage in enumerate(passages):
        starts = [s for s, _ in passage.sentences]
        prefix = prefixes[pi] if prefixes else ""
        for start, end in passage.windows:
            held = _sentences_inside(passage.sentences, starts, start, end)
            shift = len(prefix) - start
            texts.append(prefix + passage.text[start:end])
            spans.append([(passage.sentences[i][0] + shift, passage.sentences[i][1] + shift) for i in held])
            owners.append(pi)
            inside.append(held)
            places.append((shift, (start, end)))
    encoded = embedder.encode_spans(texts, spans, progress=progress, batch_size=batch_size, tokens=True)
    window_vecs: list[list[np.ndarray]] = [[] for _ in passages]
    sentence_vecs: list[dict[int, np.ndarray]] = [{} for _ in passages]
    token_parts: list[list[TextTokens]] = [[] for _ in passages]
    for u, (pi, held) in enumerate(zip(owners, inside)):
        window_vecs[pi].append(encoded.text_vectors[u])
        for k, si in enumerate(held):
            sentence_vecs[pi].setdefault(si, encoded.span_vectors[u][k])  # first window that holds it
        token_parts[pi].append(_in_passage(encoded.tokens[u], *places[u]))
    out_s = []
    for pi, passage in enumerate(passages):
        fallback = np.mean(window_vecs[pi], axis=0)
        out_s.append(np.stack([sentence_vecs[pi].get(si, fallback) for si in range(len(passage.sentences))])
                     if passage.sentences else np.zeros((0, embedder.dim), np.float32))
    return PassageVectors([np.stack(w) for w in window_vecs], out_s,
                          [_join_windows(parts, embedder.dim) for parts in token_parts])


def _in_passage(tokens: TextTokens, shift: int, window: Span) -> TextTokens:
    """A window's word pieces with offsets into its passage's text, the prefix's pieces left out."""
    offsets = tokens.offsets - shift
    keep = offsets[:, 0] >= window[0] if len(offsets) else np.zeros(0, bool)
    return TextTokens(tokens.vectors[keep], offsets[keep])


def _join_windows(parts: Sequence[TextTokens], dim: int) -> TextTokens:
    """A passage's word pieces from its windows in order: where windows overlap, the earlier window's pieces."""
    vectors, offsets, covered = [], [], -1
    for part in parts:
        keep = part.offsets[:, 0] >= covered if len(part.offsets) else np.zeros(0, bool)
        vectors.append(part.vectors[keep])
        offsets.append(part.offsets[keep])
        if len(part.offsets):
            covered = max(covered, int(part.offsets[:, 1].max()))
    if not vectors:
        return TextTokens(np.zeros((0, dim), np.float32), np.zeros((0, 2), np.int64))
    return TextTokens(np.concatenate(vectors), np.concatenate(offsets))


def prepare_articles(articles: Iterable[Article], embedder: Embedder, *,
                     progress: bool = False) -> list[PreparedArticle]:
    """Each article's passages and vectors, embedded in one batch: each window read after its article's title
    (`window_prefix`, as the manifest's `window_prefix: title` records), its windows sized to leave the title
    room in the model's input."""
    articles = list(articles)
    heads = [window_prefix(a) for a in articles]
    room = embedder.count_tokens(heads)  # 0 for no title
    chunked = [chunk_article(a, embedder.count_tokens, embedder.max_tokens - 2 - n) for a, n in zip(articles, room)]
    flat = [p for ps in chunked for p in ps]
    prefixes = [head for head, ps in zip(heads, chunked) for _ in ps]
    vectors = embed_passages(embedder, flat, progress=progress, prefixes=prefixes)
    out, i = [], 0
    for article, passages in zip(articles, chunked):
        n = len(passages)
        out.append(PreparedArticle(article, passages, vectors.windows[i:i + n], vectors.sentences[i:i + n],
                                   vectors.tokens[i:i + n]))
        i += n
    return out


def prepare_in_batches(articles: Sequence[Article], embedder: Embedder, batch: int,
                       progress: bool = False) -> Iterator[list[PreparedArticle]]:
    """Articles prepared about `batch` paragraphs at a time (whole articles), so a build's memory stays bounded
    whatever the collection's size; a progress bar of paragraphs when `progress`."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(len(a.paragraphs) for a in articles), desc="embedding", unit="paragraph",
                   mininterval=1.0)
    try:
        start = 0
        while start < len(articles):
            end, size = start, 0
            while end < len(articles) and (size < batch or end == start):
                size += len(articles[end].paragraphs)
                end += 1
            yield prepare_articles(articles[start:end], embedder)
            if bar is not None:
                bar.update(size)
            start = end
    finally:
        if bar is not None:
            bar.close()
