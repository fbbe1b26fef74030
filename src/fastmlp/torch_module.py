"""The model as a torch.nn.Module, for users who continue in PyTorch (``MLP.to_torch()``)
and come back (``MLP.from_torch(module)``). Importing this module imports torch;
fastmlp itself never needs it."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .model import BN_EPS, buffer_names, param_names, param_shapes

PARAM_NAMES = ("C", "W1", "b1", "W2", "b2")


class TorchMLP(nn.Module):
    """emb = C[X] concatenated; h = tanh(emb W1 + b1); ...; logits = hL W{L+1} + b{L+1} (the
    lecture's code, n_layers deep). With BatchNorm each hidden layer is tanh(batch_norm(x Wl))
    with gammal, betal and the buffers running_meanl, running_varl: torch.nn.BatchNorm1d's own
    function (F.batch_norm), in training or evaluation mode as module.train() / .eval() say."""

    def __init__(self, vocab_size: int, block_size: int, n_embd: int, n_hidden: int, n_layers: int = 1,
                 batchnorm: bool = False, bn_momentum: float = 0.1):
        super().__init__()
        self.block_size, self.n_layers, self.batchnorm, self.bn_momentum = block_size, n_layers, batchnorm, bn_momentum
        T, E, H, V = block_size, n_embd, n_hidden, vocab_size
        for k, shape in param_shapes(V, T, E, H, n_layers, batchnorm).items():
            setattr(self, k, nn.Parameter(torch.zeros(shape)))
        for k in buffer_names(n_layers, batchnorm):
            self.register_buffer(k, torch.zeros(H) if k.startswith("running_mean") else torch.ones(H))

    @classmethod
    def from_arrays(cls, params, buffers=None, bn_momentum: float = 0.1) -> "TorchMLP":
        V, E = params["C"].shape
        TE, H = params["W1"].shape
        bn = "gamma1" in params
        L = sum(1 for k in params if k.startswith("W")) - 1
        module = cls(V, TE // E, E, H, L, bn, bn_momentum)
        with torch.no_grad():
            for k in param_names(L, bn):
                getattr(module, k).copy_(torch.from_numpy(params[k]))
            for k in buffer_names(L, bn):
                if buffers is not None:
                    getattr(module, k).copy_(torch.from_numpy(buffers[k]))
        return module

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        x = self.C[X].view(X.shape[0], -1)  # (N, T*E)
        for l in range(1, self.n_layers + 1):
            W = getattr(self, f"W{l}")
            if self.batchnorm:
                pre = F.batch_norm(x @ W, getattr(self, f"running_mean{l}"), getattr(self, f"running_var{l}"),
                                   getattr(self, f"gamma{l}"), getattr(self, f"beta{l}"), self.training,
                                   self.bn_momentum, BN_EPS)
            else:
                pre = x @ W + getattr(self, f"b{l}")
            x = torch.tanh(pre)
        L1 = self.n_layers + 1
        return x @ getattr(self, f"W{L1}") + getattr(self, f"b{L1}")
