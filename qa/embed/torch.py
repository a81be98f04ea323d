"""The model's transformer run by PyTorch: the reference the ONNX backend is checked against."""
from __future__ import annotations

import numpy as np

from ..config import env_number
from .base import TransformerEmbedder, model_max_tokens


class TorchEmbedder(TransformerEmbedder):
    """The model's transformer run by PyTorch (the reference implementation)."""

    backend = "torch"

    def __init__(self, model_path: str, model_name: str, max_tokens: int | None = None):
        import torch
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Loading weights" bar in CLI output
        torch.set_grad_enabled(False)
        if threads := env_number("QA_EMBED_THREADS", whole=True):
            torch.set_num_threads(threads)
        self.model = AutoModel.from_pretrained(model_path, local_files_only=True)
        self.model.eval()
        limit = max_tokens or model_max_tokens(model_path, self.model.config.max_position_embeddings)
        super().__init__(model_path, model_name, limit)
        self.dim = int(self.model.config.hidden_size)

    def _forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Token embeddings [batch, seq, dim] from the PyTorch model."""
        import torch

        with torch.inference_mode():
            out = self.model(input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(attention_mask),
                             token_type_ids=torch.zeros_like(torch.from_numpy(input_ids)))
        return out.last_hidden_state.float().numpy()
