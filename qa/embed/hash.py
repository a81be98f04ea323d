"""A deterministic fake embedder for fast tests where the model is not the subject (model name "hash")."""
from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np

from ..chunk import Span
from .base import EncodedQuery, EncodedSpans, TextTokens, normalise

WORD = re.compile(r"\w+")


class HashEmbedder:
    """A bag-of-words embedder: words hash into signed buckets, so texts sharing words have close vectors."""

    model_name = "hash"
    backend = "hash"

    def __init__(self, dim: int = 64):
        self.dim = dim
        self.max_tokens = 256

    def _word_vec(self, word: str) -> np.ndarray:
        """A word's fixed random vector, seeded by its hash."""
        seed = int.from_bytes(hashlib.blake2b(word.lower().encode(), digest_size=8).digest(), "little")
        return np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)

    def _vec(self, text: str) -> np.ndarray:
        """The sum of a text's word vectors (zeros for no words)."""
        words = WORD.findall(text.lower())
        if not words:
            return np.zeros(self.dim, np.float32)
        return np.sum([self._word_vec(w) for w in words], axis=0)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Words per text."""
        return [len(WORD.findall(t)) for t in texts]

    def encode(self, texts: Sequence[str], *, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """Normalised float32 vectors, one row per text."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return normalise(np.stack([self._vec(t) for t in texts]))

    def token_vectors(self, texts: Sequence[str]) -> list[TextTokens]:
        """Per text: its words' vectors and character offsets."""
        return [self._tokens(text) for text in texts]

    def _tokens(self, text: str) -> TextTokens:
        """A text's words' vectors and character offsets."""
        words = list(WORD.finditer(text))
        vecs = [self._word_vec(m.group()) for m in words]
        return TextTokens(normalise(np.stack(vecs)) if vecs else np.zeros((0, self.dim), np.float32),
                          np.array([m.span() for m in words], np.int64).reshape(-1, 2))

    def encode_query(self, text: str) -> EncodedQuery:
        """A text's vector and its words' vectors."""
        return EncodedQuery(self.encode([text])[0], self._tokens(text))

    def encode_spans(self, texts: Sequence[str], spans: Sequence[Sequence[Span]], *, batch_size: int = 32,
                     progress: bool = False, tokens: bool = False) -> EncodedSpans:
        """Text vectors and, per text, one vector per span (each span embedded as its own text) and with `tokens`
        its words' vectors."""
        span_vecs = [self.encode([t[s:e] for s, e in sp]) if sp else np.zeros((0, self.dim), np.float32)
                     for t, sp in zip(texts, spans)]
        return EncodedSpans(self.encode(texts), span_vecs, self.token_vectors(texts) if tokens else [])
