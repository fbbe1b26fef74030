"""The model as a torch.nn.Module, for users who continue in PyTorch (``MLP.to_torch()``)
and come back (``MLP.from_torch(module)``). Importing this module imports torch;
fastmlp itself never needs it."""
from __future__ import annotations

import torch
from torch import nn

PARAM_NAMES = ("C", "W1", "b1", "W2", "b2")


class TorchMLP(nn.Module):
    """emb = C[X] concatenated; h = tanh(emb W1 + b1); logits = h W2 + b2 (the lecture's code)."""

    def __init__(self, vocab_size: int, block_size: int, n_embd: int, n_hidden: int):
        super().__init__()
        self.block_size = block_size
        self.C = nn.Parameter(torch.zeros(vocab_size, n_embd))
        self.W1 = nn.Parameter(torch.zeros(block_size * n_embd, n_hidden))
        self.b1 = nn.Parameter(torch.zeros(n_hidden))
        self.W2 = nn.Parameter(torch.zeros(n_hidden, vocab_size))
        self.b2 = nn.Parameter(torch.zeros(vocab_size))

    @classmethod
    def from_arrays(cls, params) -> "TorchMLP":
        V, E = params["C"].shape
        TE, H = params["W1"].shape
        module = cls(V, TE // E, E, H)
        with torch.no_grad():
            for k in PARAM_NAMES:
                getattr(module, k).copy_(torch.from_numpy(params[k]))
        return module

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        emb = self.C[X]  # (N, T, E)
        h = torch.tanh(emb.view(X.shape[0], -1) @ self.W1 + self.b1)
        return h @ self.W2 + self.b2
