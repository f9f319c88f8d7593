"""The feed-forward half of a transformer block, registered as kind `activation`.

An MLP is constructed as `MLP(n_embd, mlp_ratio, dropout, bias)` (the arguments it names), maps
(B, T, C) -> (B, T, C), and keeps its output projection as `c_proj` so that the model can scale or
zero-initialise it like the other residual projections.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanolab import registry


class ReluSquared(torch.autograd.Function):
    """relu(x)^2 with the gradient 2 relu(x) g in one pass. Autograd of relu(x).square() copies x for square's
    pow(x, 1), multiplies twice and masks again for relu: the CPU speedrun's step went from 32.5 to 30.9 ms
    (benchmarks/NOTES.md)."""

    @staticmethod
    def forward(ctx, x):
        r = F.relu(x)
        ctx.save_for_backward(r)
        return r * r

    @staticmethod
    def backward(ctx, grad):
        (r,) = ctx.saved_tensors
        return grad * r * 2  # relu's mask is in r: 0 where x <= 0


def relu_squared(x):
    return ReluSquared.apply(x)


class MLP(nn.Module):
    """c_proj(act(c_fc(x))) with hidden size int(mlp_ratio * n_embd); subclasses set `act`."""

    act = None  # the elementwise activation, a staticmethod in each subclass

    def __init__(self, n_embd: int, mlp_ratio: float = 4.0, dropout: float = 0.0, bias: bool = False):
        super().__init__()
        hidden = int(mlp_ratio * n_embd)
        self.c_fc = nn.Linear(n_embd, hidden, bias=bias)
        self.c_proj = nn.Linear(hidden, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        h = self.act(self.c_fc(x))  # (B, T, hidden)
        return self.dropout(self.c_proj(h))  # (B, T, C)


class GLU(nn.Module):
    """Gated linear unit MLP: c_proj(act(gate) * up), with [gate, up] = c_fc(x) (Shazeer 2020, arXiv:2002.05202).

    Hidden size int(2/3 * mlp_ratio * n_embd): three matrices (gate, up, down) of 2/3 the width hold about
    as many parameters as the two full-width matrices of a plain MLP, so swaps compare like with like.
    """

    act = None

    def __init__(self, n_embd: int, mlp_ratio: float = 4.0, dropout: float = 0.0, bias: bool = False):
        super().__init__()
        hidden = int(2 / 3 * mlp_ratio * n_embd)
        self.c_fc = nn.Linear(n_embd, 2 * hidden, bias=bias)  # gate and up projections, fused
        self.c_proj = nn.Linear(hidden, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        gate, up = self.c_fc(x).chunk(2, dim=-1)  # (B, T, hidden) each
        return self.dropout(self.c_proj(self.act(gate) * up))  # (B, T, C)


@registry.register("activation", "relu", "ReLU MLP (Vaswani et al. 2017, arXiv:1706.03762)")
class ReLU(MLP):
    act = staticmethod(F.relu)


@registry.register("activation", "gelu", "GELU MLP, as in GPT-2 (Hendrycks & Gimpel 2016, arXiv:1606.08415)")
class GELU(MLP):
    act = staticmethod(F.gelu)


@registry.register("activation", "relu2", "squared-ReLU MLP (So et al. 2021, Primer, arXiv:2109.08668)")
class ReLU2(MLP):
    act = staticmethod(relu_squared)


@registry.register("activation", "swiglu", "SwiGLU: SiLU-gated MLP, 2/3 width (Shazeer 2020, arXiv:2002.05202)")
class SwiGLU(GLU):
    act = staticmethod(F.silu)


@registry.register("activation", "geglu", "GEGLU: GELU-gated MLP, 2/3 width (Shazeer 2020, arXiv:2002.05202)")
class GeGLU(GLU):
    act = staticmethod(F.gelu)
