"""Position schemes, registered as kind `position`.

A scheme is constructed with the arguments it names (n_embd, n_head, head_dim, block_size, rope_base) and
acts through three hooks, each a no-op in the base class `Position` (which is itself NoPE):

    embed(x, pos)          (B, T, C) token embeddings -> (B, T, C), absolute schemes add a vector per position
    rotate(q, k, pos)      (B, nh, T, hs) each -> rotated (q, k), RoPE
    bias(pos_q, pos_k)     -> (nh, Tq, Tk) additive attention bias, or None, ALiBi

`pos` are consecutive integer positions (T,), any value (also >= block_size, which `learned` rejects).
`relative` says whether attention scores depend only on the offsets between positions, so that shifting every
position changes nothing (rotary, alibi, none), or on the absolute positions (learned, sinusoidal).
"""

import math

import torch
import torch.nn as nn

from nanolab import registry
from nanolab.errors import NanolabError


@registry.register("position", "none", "no position information (NoPE, Kazemnejad et al. 2023, arXiv:2305.19466)")
class Position(nn.Module):
    """NoPE: causal attention alone tells the model where it is. The base class of every scheme."""

    relative = True

    def embed(self, x, pos):
        return x

    def rotate(self, q, k, pos):
        return q, k

    def bias(self, pos_q, pos_k):
        return None


@registry.register("position", "learned", "learned absolute table added to the tokens (GPT-2)")
class Learned(Position):
    """A block_size x n_embd table, one trained vector per position (Radford et al. 2019)."""

    relative = False

    def __init__(self, block_size: int, n_embd: int):
        super().__init__()
        self.wpe = nn.Embedding(block_size, n_embd)

    def embed(self, x, pos):
        return x + self.wpe(pos)  # (B, T, C) + (T, C)


@registry.register("position", "sinusoidal", "fixed sine/cosine table added to the tokens, with a learned scale")
class Sinusoidal(Position):
    """PE(p, 2i) = sin(p / 10000^(2i/C)), PE(p, 2i+1) = cos(p / 10000^(2i/C)) (Vaswani et al. 2017,
    arXiv:1706.03762, sec. 3.5), times one learned scalar initialised to C^-1/2.

    Vaswani et al. add the unit-amplitude table to token embeddings multiplied by sqrt(C); under GPT-2's init
    (embeddings of std 0.02, not rescaled) the bare table would outweigh the tokens ~35 to 1. The learned scale
    (Hua et al. 2022, arXiv:2202.10447, "scaled sinusoidal"; x-transformers' ScaledSinusoidalEmbedding) lets
    the model set the balance.
    """

    relative = False

    def __init__(self, n_embd: int):
        super().__init__()
        self.n_embd = n_embd
        inv_freq = 10000.0 ** (-torch.arange(0, n_embd, 2, dtype=torch.float32) / n_embd)  # (ceil(C/2),)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.scale = nn.Parameter(torch.tensor(n_embd**-0.5))

    def embed(self, x, pos):
        angle = pos.float().unsqueeze(1) * self.inv_freq  # (T, ceil(C/2))
        pe = torch.stack((angle.sin(), angle.cos()), dim=-1).flatten(1)[:, : self.n_embd]  # (T, C) sin, cos, ...
        return x + (self.scale * pe).to(x.dtype)


@registry.register("position", "rotary", "RoPE: rotate q and k by position (Su et al. 2021, arXiv:2104.09864)")
class Rotary(Position):
    """Rotates each pair (q_i, q_{i+hs/2}) by angle p * base^(-2i/hs), so q_m . k_n depends on m - n only.

    The angles are computed from the positions on every call, so any position works, also >= block_size.
    """

    def __init__(self, head_dim: int, rope_base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise NanolabError(f"position 'rotary' needs an even head size (n_embd / n_head), got {head_dim}")
        inv_freq = rope_base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (hs/2,)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def rotate(self, q, k, pos):
        angle = pos.float().unsqueeze(1) * self.inv_freq  # (T, hs/2)
        cos, sin = angle.cos().to(q.dtype), angle.sin().to(q.dtype)
        return self._rotate(q, cos, sin), self._rotate(k, cos, sin)

    @staticmethod
    def _rotate(x, cos, sin):
        x1, x2 = x.chunk(2, dim=-1)  # (B, nh, T, hs/2) each: the two halves are the pairs' coordinates
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)  # (B, nh, T, hs)


def alibi_slopes(n_head: int) -> list[float]:
    """2^(-8h/n) for h = 1..n when n is a power of two; else those of the power of two below n, then every
    other slope of the one above (the reference implementation, github.com/ofirpress/attention_with_linear_biases)."""
    if math.log2(n_head).is_integer():
        return [2 ** (-8 * h / n_head) for h in range(1, n_head + 1)]
    p = 2 ** math.floor(math.log2(n_head))
    return alibi_slopes(p) + alibi_slopes(2 * p)[0::2][: n_head - p]


@registry.register("position", "alibi", "ALiBi: linear distance bias per head (Press et al. 2021, arXiv:2108.12409)")
class ALiBi(Position):
    """Adds -slope_h * (i - j) to the score of query i and key j in head h; no embedding, no rotation."""

    def __init__(self, n_head: int):
        super().__init__()
        self.register_buffer("slopes", torch.tensor(alibi_slopes(n_head)), persistent=False)  # (nh,)

    def bias(self, pos_q, pos_k):
        distance = (pos_q.unsqueeze(1) - pos_k.unsqueeze(0)).float()  # (Tq, Tk)
        return -self.slopes.view(-1, 1, 1) * distance  # (nh, Tq, Tk)
