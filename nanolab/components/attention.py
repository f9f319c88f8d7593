"""Attention kernels, registered as kind `attention`: softmax(q k^T / sqrt(hs) + mask + bias) v.

A kernel is constructed as `Kernel(dropout)` and called as `kernel(q, k, v, bias=None) -> y` with
q (B, nh, Tq, hs), k and v (B, nh, Tk, hs), Tk >= Tq, and an optional additive float bias (nh, Tq, Tk)
(ALiBi's). The queries are the LAST Tq of the Tk positions (a KV cache holds the earlier ones), so query i
sees keys j <= i + (Tk - Tq). The projections, rotations and the cache live in model.CausalSelfAttention.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanolab import registry


def causal_mask(tq: int, tk: int, device=None, dtype=torch.float32):
    """(Tq, Tk) additive mask: 0 where query i may see key j (j <= i + Tk - Tq), -inf after it."""
    i = torch.arange(tq, device=device).unsqueeze(1) + (tk - tq)
    j = torch.arange(tk, device=device).unsqueeze(0)
    return torch.zeros(tq, tk, device=device, dtype=dtype).masked_fill(j > i, float("-inf"))


@registry.register("attention", "naive", "explicit softmax(q k^T / sqrt(hs) + mask) v (Vaswani et al. 2017)")
class NaiveAttention(nn.Module):
    """The textbook computation, one step per line: easy to read and to instrument, O(T^2) memory."""

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.attn_dropout = nn.Dropout(dropout)

    def forward(self, q, k, v, bias=None):
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, nh, Tq, Tk)
        att = att + causal_mask(q.size(-2), k.size(-2), q.device, att.dtype)
        if bias is not None:
            att = att + bias  # (nh, Tq, Tk) broadcast over B
        att = self.attn_dropout(F.softmax(att, dim=-1))
        return att @ v  # (B, nh, Tq, hs)


@registry.register("attention", "sdpa", "F.scaled_dot_product_attention: Flash / memory-efficient kernels on GPU")
class SDPAttention(nn.Module):
    """PyTorch's fused attention (FlashAttention, Dao et al. 2022, arXiv:2205.14135, where the device has it)."""

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.dropout = dropout

    def forward(self, q, k, v, bias=None):
        dropout_p = self.dropout if self.training else 0.0
        tq, tk = q.size(-2), k.size(-2)
        if bias is None and tq in (1, tk):  # no mask tensor: a square causal mask, or one query that sees every key
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=tq > 1)
        mask = causal_mask(tq, tk, q.device, q.dtype)  # (Tq, Tk)
        if bias is not None:
            mask = mask + bias.to(q.dtype)  # (nh, Tq, Tk)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)  # (B, nh, Tq, hs)
