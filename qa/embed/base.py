"""The `Embedder` protocol, the transformer pipeline both model backends share, and helpers to read a model folder.

Vectors are float32 and L2-normalised, so inner product is cosine. One forward pass per paragraph gives the paragraph
vector and its sentence (span) vectors, with no repeated work.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol

import numpy as np

from ..chunk import Span

if TYPE_CHECKING:
    from tqdm import tqdm

SORT_CHUNK = 2048  # texts embedded (length-sorted, token states held) at a time


class TextTokens(NamedTuple):
    """One text's word pieces (special tokens left out): contextual vectors and character offsets."""

    vectors: np.ndarray  # normalised [n, dim], float32 (float16 from `encode_spans`)
    offsets: np.ndarray  # int64 [n, 2]


class EncodedSpans(NamedTuple):
    """What `encode_spans` returns: one vector per text, and per text one vector per span and, when asked for, its
    word pieces' vectors."""

    text_vectors: np.ndarray  # float32 [texts, dim]
    span_vectors: list[np.ndarray]  # per text: float32 [spans, dim]
    tokens: list[TextTokens] = []  # per text, with `tokens=True`


class EncodedQuery(NamedTuple):
    """One text's vector and its word pieces' vectors, from one forward pass (`encode_query`)."""

    vector: np.ndarray  # normalised float32 [dim]
    tokens: TextTokens


class Embedder(Protocol):
    """What the index and the answers need from an embedding model."""

    model_name: str
    backend: str  # recorded in the manifest: "torch", "onnx" or "hash"
    dim: int
    max_tokens: int

    def encode(self, texts: Sequence[str], *, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """Normalised float32 vectors, one row per text; long texts are covered whole, never truncated."""

    def encode_spans(self, texts: Sequence[str], spans: Sequence[Sequence[Span]], *, batch_size: int = 32,
                     progress: bool = False, tokens: bool = False) -> EncodedSpans:
        """Text vectors and, per text, one vector per span (char offsets) and with `tokens` its word pieces'
        vectors, from the same forward pass."""

    def encode_query(self, text: str) -> EncodedQuery:
        """One text's vector (as `encode` gives it) and its word pieces' vectors, from one forward pass."""

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Word pieces per text, without special tokens."""

    def token_vectors(self, texts: Sequence[str]) -> list[TextTokens]:
        """Per text: its word pieces' contextual vectors and their character offsets."""


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), as float32."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def model_fingerprint(path: str) -> str:
    """A short hash of a model folder's configuration and weight sizes, to tell models apart."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if os.path.isfile(full):
            h.update(name.encode())
            h.update(str(os.path.getsize(full)).encode())
            if name.endswith(".json") and os.path.getsize(full) < 1_000_000:
                with open(full, "rb") as f:
                    h.update(f.read())
    return h.hexdigest()[:16]


def model_max_tokens(model_path: str, position_limit: int) -> int:
    """The sentence-transformers window (`max_seq_length`), else the model's position limit."""
    cfg = os.path.join(model_path, "sentence_bert_config.json")
    if os.path.exists(cfg):
        with open(cfg) as f:
            value = json.load(f).get("max_seq_length")
        if value:
            return int(min(value, position_limit))
    return int(position_limit)


class TokenStates(NamedTuple):
    """One text's forward pass: token vectors and offsets without specials, and the sum and count of every token
    of every piece (specials included) for mean pooling."""

    tokens: np.ndarray  # float32 [n, dim]
    offsets: np.ndarray  # int64 [n, 2]
    total: np.ndarray  # float32 [dim]
    count: int

    def mean(self) -> np.ndarray:
        """The text's mean-pooled (not yet normalised) vector."""
        return self.total / max(self.count, 1)


class StatesChunk(NamedTuple):
    """Token states of consecutive texts, starting at text `first`."""

    first: int
    states: list[TokenStates]


def load_tokenizer(model_path: str):
    """The model folder's `tokenizers` tokenizer, without padding or truncation: every token of a text real and
    kept (long texts are split into pieces by the embedder, not cut)."""
    from tokenizers import Tokenizer

    tok_file = os.path.join(model_path, "tokenizer.json")
    if not os.path.exists(tok_file):
        raise FileNotFoundError(f"{model_path} has no tokenizer.json")
    tokenizer = Tokenizer.from_file(tok_file)
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


class TransformerEmbedder:
    """Mean-pooled transformer embeddings (the all-MiniLM-L6-v2 recipe) with our own batching and span pooling.

    Texts are tokenised once with offsets; a text longer than the model's window is split into consecutive
    pieces of at most `max_tokens` word pieces, each run through the model, and pooled together, so nothing is
    truncated. Pieces of all texts are sorted by length before batching, so padding stays small.
    """

    backend: str  # set by each backend class

    def __init__(self, model_path: str, model_name: str, max_tokens: int = 256):
        self.model_path = model_path
        self.model_name = model_name
        self.tokenizer = load_tokenizer(model_path)
        self.max_tokens = max_tokens
        self.cls_id = self.tokenizer.token_to_id("[CLS]")
        self.sep_id = self.tokenizer.token_to_id("[SEP]")
        self.pad_id = self.tokenizer.token_to_id("[PAD]") or 0
        self.dim = 0  # set by subclasses

    def _forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Token embeddings [batch, seq, dim] for padded int64 inputs: the model call, by backend."""
        raise NotImplementedError

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Word pieces per text, without special tokens."""
        return [len(e.ids) for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def _pieces(self, ids: list[int]) -> list[Span]:
        """(start, end) of the consecutive pieces of a text that fit the window with [CLS] and [SEP]."""
        step = self.max_tokens - 2
        if len(ids) <= step:
            return [(0, len(ids))]
        return [(i, min(i + step, len(ids))) for i in range(0, len(ids), step)]

    def _states_by_chunk(self, texts: Sequence[str], batch_size: int, progress: bool) -> Iterator[StatesChunk]:
        """`_token_states` of SORT_CHUNK texts at a time: a whole big build's token states would not fit in
        memory. One progress bar for all."""
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(texts), desc="embedding", unit="text", mininterval=1.0)
        try:
            for c in range(0, len(texts), SORT_CHUNK):
                yield StatesChunk(c, self._token_states(texts[c:c + SORT_CHUNK], batch_size, bar))
        finally:
            if bar is not None:
                bar.close()

    def _token_states(self, texts: Sequence[str], batch_size: int, bar: tqdm | None = None) -> list[TokenStates]:
        """Per text: its pieces run through the model and gathered into `TokenStates`."""
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        pieces = self._run_pieces([enc.ids for enc in encodings], batch_size, bar)
        result = []
        for enc, outputs in zip(encodings, pieces):
            tokens = np.concatenate([p[1:-1] for p in outputs]) if outputs else np.zeros((0, self.dim), np.float32)
            total = sum(p.sum(axis=0) for p in outputs)
            count = sum(len(p) for p in outputs)
            offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
            result.append(TokenStates(tokens, offsets, total, count))
        return result

    def _one_piece(self, text: str) -> TokenStates | None:
        """`_token_states` of one text that fits one piece, without the batching (a served query's path, the same
        floats: tests/embed/test_onnx.py); None for a longer text."""
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        if len(enc.ids) > self.max_tokens - 2:
            return None
        ids = np.array([[self.cls_id, *enc.ids, self.sep_id]], dtype=np.int64)
        states = self._forward(ids, np.ones_like(ids))[0]
        return TokenStates(states[1:-1], np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2),
                           states.sum(axis=0), len(states))

    def _run_pieces(self, ids: list[list[int]], batch_size: int, bar: tqdm | None) -> list[list[np.ndarray]]:
        """Per text, in order: each piece's token embeddings ([CLS] and [SEP] included), from length-sorted
        batches."""
        jobs = []  # (text index, piece start, piece end)
        for t, text_ids in enumerate(ids):
            for start, end in self._pieces(text_ids):
                jobs.append((t, start, end))
        order = sorted(range(len(jobs)), key=lambda j: jobs[j][2] - jobs[j][1])
        outputs: dict[int, np.ndarray] = {}
        for b in range(0, len(order), batch_size):
            batch = [jobs[j] for j in order[b:b + batch_size]]
            width = max(end - start for _, start, end in batch) + 2
            input_ids = np.full((len(batch), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(batch), width), dtype=np.int64)
            for row, (t, start, end) in enumerate(batch):
                piece = [self.cls_id, *ids[t][start:end], self.sep_id]
                input_ids[row, :len(piece)] = piece
                mask[row, :len(piece)] = 1
            out = self._forward(input_ids, mask)
            for row, j in enumerate(order[b:b + batch_size]):
                outputs[j] = out[row, :int(mask[row].sum())]
            if bar is not None:
                bar.update(sum(1 for t, start, end in batch if end == len(ids[t])))
        by_text: list[list[np.ndarray]] = [[] for _ in ids]
        for j, (t, _, _) in enumerate(jobs):
            by_text[t].append(outputs[j])
        return by_text

    def encode(self, texts: Sequence[str], *, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """Normalised float32 vectors, one row per text; long texts are covered whole, never truncated."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        # mean over every token of every piece, [CLS]/[SEP] included, as sentence-transformers pools
        return np.concatenate([normalise(np.stack([s.mean() for s in chunk.states]))
                               for chunk in self._states_by_chunk(texts, batch_size, progress)])

    def token_vectors(self, texts: Sequence[str]) -> list[TextTokens]:
        """Per text: its word pieces' contextual vectors and their character offsets."""
        if not texts:
            return []
        return [TextTokens(normalise(s.tokens), s.offsets) for chunk in self._states_by_chunk(texts, 32, False)
                for s in chunk.states]

    def encode_query(self, text: str) -> EncodedQuery:
        """One text's vector (as `encode` gives it) and its word pieces' vectors, from one forward pass."""
        states = self._one_piece(text)
        if states is None:  # pooled over its pieces, as `encode` pools them
            (states,) = self._token_states([text], 32)
        vector = normalise(states.mean()[None, :])[0]
        return EncodedQuery(vector, TextTokens(normalise(states.tokens), states.offsets))

    def encode_spans(self, texts: Sequence[str], spans: Sequence[Sequence[Span]], *, batch_size: int = 32,
                     progress: bool = False, tokens: bool = False) -> EncodedSpans:
        """Text vectors and, per text, one vector per span (char offsets) and with `tokens` its word pieces'
        vectors, from the same forward pass."""
        if not texts:
            return EncodedSpans(np.zeros((0, self.dim), np.float32), [])
        text_vecs, span_vecs, token_vecs = [], [], []
        for chunk in self._states_by_chunk(texts, batch_size, progress):
            text_vecs.append(normalise(np.stack([s.mean() for s in chunk.states])))
            for states, text_spans in zip(chunk.states, spans[chunk.first:chunk.first + len(chunk.states)]):
                span_vecs.append(self._pool_spans(states, text_spans))
                if tokens:  # float16: a build holds a batch's pieces until they are stored (as int8)
                    token_vecs.append(TextTokens(normalise(states.tokens).astype(np.float16), states.offsets))
        return EncodedSpans(np.concatenate(text_vecs), span_vecs, token_vecs)

    def _pool_spans(self, states: TokenStates, spans: Sequence[Span]) -> np.ndarray:
        """One normalised vector per span: the mean of the tokens it overlaps, else the whole text's mean."""
        rows = []
        for start, end in spans:
            offsets = states.offsets
            sel = (offsets[:, 0] < end) & (offsets[:, 1] > start) if len(offsets) else np.zeros(0, bool)
            rows.append(states.tokens[sel].mean(axis=0) if sel.any() else states.mean())
        return normalise(np.stack(rows)) if rows else np.zeros((0, self.dim), np.float32)
