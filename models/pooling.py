"""The sentence-embedding head in torch: mean pooling over the mask, then L2 norm.

Imported only by code that already needs torch (the artifact build and the torch
runtime). It matches sentence-transformers' `Pooling(mean)` + `Normalize` modules.
"""

from __future__ import annotations

from typing import Any

import torch


class SentenceEmbedding(torch.nn.Module):
    """Wraps a transformer encoder so a forward pass returns normalised sentence vectors."""

    def __init__(self, encoder: Any) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # Single-segment inputs: token types are all zero, built here so the graph has
        # two inputs only.
        token_type_ids = torch.zeros_like(input_ids)
        hidden = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        summed = (hidden * mask).sum(dim=1)
        counts = mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(summed / counts, p=2.0, dim=1)
