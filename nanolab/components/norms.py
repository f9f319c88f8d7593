"""Normalisation layers over the last (channel) dimension, registered as kind `norm`.

A norm is constructed as `Norm(n_embd, bias)` (the arguments it names) and maps (B, T, C) -> (B, T, C).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanolab import registry


@registry.register("norm", "layernorm", "LayerNorm (Ba et al. 2016, arXiv:1607.06450), bias optional")
class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's nn.LayerNorm always has one)."""

    eps = 1e-5

    def __init__(self, n_embd: int, bias: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n_embd))
        self.bias = nn.Parameter(torch.zeros(n_embd)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


@registry.register("norm", "rmsnorm", "RMSNorm (Zhang & Sennrich 2019, arXiv:1910.07467), no bias")
class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight: no centring and no bias, whatever the `bias` switch says."""

    eps = 1e-6

    def __init__(self, n_embd: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n_embd))

    def forward(self, x):
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
