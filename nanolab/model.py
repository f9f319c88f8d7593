"""A decoder-only GPT assembled from registry components, with a KV cache for generation.

    model = build_model(cfg.model, vocab_size=65, block_size=64)
    logits = model(idx)                     # (B, T, vocab)
    logits, loss = model(idx, targets)      # loss: mean cross-entropy over all B*T targets
    out = model.generate(idx, max_new_tokens=100, temperature=0.8, top_k=50)

Every swappable piece is looked up by name in the registry (`ModelConfig.attention`, `.position`,
`.activation`, `.norm`) and constructed with the arguments its constructor names, taken from `component_args`.
The structure follows nanoGPT (github.com/karpathy/nanoGPT, model.py) and GPT-2 (Radford et al. 2019).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from nanolab import registry
from nanolab.config import ModelConfig


def component_args(cfg: ModelConfig) -> dict:
    """The arguments a component's constructor may name, by name."""
    return dict(n_embd=cfg.n_embd, n_head=cfg.n_head, head_dim=cfg.head_dim, block_size=cfg.block_size,
                dropout=cfg.dropout, bias=cfg.bias, mlp_ratio=cfg.mlp_ratio, rope_base=cfg.rope_base)


def build(kind: str, name: str, args: dict) -> nn.Module:
    """The registered component `name` of `kind`, constructed with the entries of `args` its constructor names."""
    return registry.construct(kind, name, args)


class KVCache:
    """One layer's rotated keys and values (B, nh, Tk, hs) of the positions run so far.

    They live in buffers with room for `capacity` positions (doubled when full), so that a step writes its own
    keys and values in place instead of copying the whole cache into a new tensor.
    """

    def __init__(self, capacity: int = 0):
        self.capacity, self.length = capacity, 0
        self.keys = self.values = None  # (B, nh, room, hs) buffers; the first `length` positions are filled

    def __len__(self) -> int:
        return self.length

    @property
    def k(self):
        return None if self.keys is None else self.keys[:, :, :self.length]

    @property
    def v(self):
        return None if self.values is None else self.values[:, :, :self.length]

    def update(self, k, v):
        """Append this step's keys and values (B, nh, T, hs); return all of them (B, nh, Tk, hs)."""
        end = self.length + k.size(2)
        if self.keys is None or end > self.keys.size(2):
            room = max(end, self.capacity, 2 * self.length)
            keys, values = (t.new_empty(*t.shape[:2], room, t.size(3)) for t in (k, v))
            if self.length:
                keys[:, :, :self.length], values[:, :, :self.length] = self.k, self.v
            self.keys, self.values = keys, values
        self.keys[:, :, self.length:end], self.values[:, :, self.length:end] = k, v
        self.length = end
        return self.k, self.v


class CausalSelfAttention(nn.Module):
    """Projections, qk-norm, position rotation and KV cache around a registered attention kernel."""

    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool, qk_norm: bool, kernel: nn.Module,
                 q_scale: float = 1.0):
        super().__init__()
        self.n_head, self.qk_norm, self.kernel, self.q_scale = n_head, qk_norm, kernel, q_scale
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)  # q, k, v for all heads at once
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x, position, pos, bias=None, cache=None, ve=None):
        """x (B, T, C) at positions pos (T,); `bias` the position scheme's attention bias (nh, T, Tk) or None;
        `ve` (B, T, C) this layer's value embedding of the tokens, or None."""
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)  # (B, T, C) each
        if ve is not None:  # before the cache: a cached position keeps the value its own token gave it
            v = v + ve  # (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if self.qk_norm:  # modded-nanogpt (github.com/KellerJordan/modded-nanogpt)
            q, k = F.rms_norm(q, (q.size(-1),)), F.rms_norm(k, (k.size(-1),))
        q, k = position.rotate(q, k, pos)
        if self.q_scale != 1.0:  # μP: the kernel's 1/sqrt(hs) times q_scale is sqrt(hs_base)/hs (GPT docstring)
            q = q * self.q_scale
        if cache is not None:
            k, v = cache.update(k, v)  # (B, nh, Tk, hs): the cached positions, then these
        y = self.kernel(q, k, v, bias)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y))


class Block(nn.Module):
    """Pre-norm (GPT-2): x + f(norm(x)). Post-norm (Vaswani et al. 2017): norm(x + f(x))."""

    def __init__(self, cfg: ModelConfig, args: dict):
        super().__init__()
        self.pre_norm = cfg.norm_placement == "pre"
        self.norm1 = build("norm", cfg.norm, args)
        self.attn = CausalSelfAttention(cfg.n_embd, cfg.n_head, cfg.dropout, cfg.bias, cfg.qk_norm,
                                        kernel=build("attention", cfg.attention, args), q_scale=cfg.width_mult ** -0.5)
        self.norm2 = build("norm", cfg.norm, args)
        self.mlp = build("activation", cfg.activation, args)

    def forward(self, x, position, pos, bias=None, cache=None, ve=None):
        if self.pre_norm:
            x = x + self.attn(self.norm1(x), position, pos, bias, cache, ve)
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.attn(x, position, pos, bias, cache, ve))
        return self.norm2(x + self.mlp(x))


class GPT(nn.Module):
    """Token embedding, position scheme, n_layer Blocks, final norm (pre-norm only: a post-norm stack already
    ends in a norm), LM head (optionally tied to the token embedding), optional logit soft-capping.

    Value embeddings (modded-nanogpt, Jordan et al. 2024, github.com/KellerJordan/modded-nanogpt): each of the
    first `value_embeds` layers has its own vocab x n_embd table, looked up with the input tokens and added to
    that layer's attention values V: a path from the token straight into the values, past the residual stream.
    They live here, not in the attention kernel, which sees only q, k, v (its own arguments).

    μP (`parametrization: mup`), for Adam-family optimizers, after Yang et al. 2022 ("Tensor Programs V",
    arXiv:2203.03466, Table 3 in the form of its Table 8 / EleutherAI's nanoGPT-mup), with the width multiplier
    m = n_embd / mup_base_width: the hidden matrices (every Linear in the blocks) are initialised with std
    0.02 / sqrt(m) and trained at lr / m (components/optim.py); attention scores are q k^T * sqrt(hs_base) / hs,
    1/hs scaling anchored so that it is 1/sqrt(hs) at the base width (the base has the same n_head); the logits
    are multiplied by 1 / m, so the embedding and (tied or not) readout keep their init and lr. At m = 1 every
    factor is 1: the same function, and the same training, as the standard parametrization.
    """

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        self.cfg, args = cfg, component_args(cfg)
        self.wte = nn.Embedding(vocab_size, cfg.n_embd)
        self.position = build("position", cfg.position, args)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, args) for _ in range(cfg.n_layer))
        self.value_embeds = nn.ModuleList(nn.Embedding(vocab_size, cfg.n_embd) for _ in range(cfg.value_embeds))
        self.norm_f = build("norm", cfg.norm, args) if cfg.norm_placement == "pre" else nn.Identity()
        self.lm_head = nn.Linear(cfg.n_embd, vocab_size, bias=False)
        if cfg.tie_weights:  # Press & Wolf 2017, arXiv:1608.05859
            self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        for block in self.blocks:  # residual projections: GPT-2's scaled init, or zero (modded-nanogpt)
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                if cfg.zero_init_proj:
                    nn.init.zeros_(proj.weight)
                else:
                    nn.init.normal_(proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))
        if cfg.width_mult != 1.0:  # μP: hidden init variance 1/m of the base's; scaled, not redrawn (same draws)
            with torch.no_grad():
                for module in self.blocks.modules():
                    if isinstance(module, nn.Linear):
                        module.weight.mul_(cfg.width_mult ** -0.5)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx, targets=None, *, pos=None, cache=None):
        """idx (B, T) token ids at positions `pos` (T,), default 0..T-1; `cache` a KVCache per layer, or None.

        Returns the logits (B, T, vocab); with `targets` (B, T), the pair (logits, mean cross-entropy loss).
        """
        T = idx.size(1)
        if pos is None:
            pos = torch.arange(T, device=idx.device)  # (T,)
        n_keys = T + (0 if cache is None else len(cache[0]))  # the cached positions come before these
        pos_k = pos if n_keys == T else pos[-1] + 1 - n_keys + torch.arange(n_keys, device=pos.device)  # (Tk,)
        bias = self.position.bias(pos, pos_k)  # (nh, T, Tk) or None, the same in every layer
        x = self.drop(self.position.embed(self.wte(idx), pos))  # (B, T, C)
        for i, block in enumerate(self.blocks):
            ve = self.value_embeds[i](idx) if i < len(self.value_embeds) else None  # (B, T, C) or None
            if self.cfg.checkpoint_activations and self.training and cache is None:  # recompute in backward
                x = checkpoint(block, x, self.position, pos, bias, ve=ve, use_reentrant=False)  # Chen et al. 2016
            else:
                x = block(x, self.position, pos, bias, None if cache is None else cache[i], ve)
        logits = self.lm_head(self.norm_f(x))  # (B, T, vocab)
        if self.cfg.width_mult != 1.0:  # μP's output multiplier 1/m
            logits = logits / self.cfg.width_mult
        if (cap := self.cfg.logit_softcap) is not None:  # bounded smoothly: no runaway logits (Gemma 2, 2408.00118)
            logits = cap * torch.tanh(logits / cap)
        if targets is None:
            return logits
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    @torch.no_grad()
    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, use_cache: bool = True, generator: torch.Generator | None = None):
        """idx (B, T) with `max_new_tokens` sampled tokens appended; temperature 0 takes the argmax (greedy)."""
        new = self.stream(idx, max_new_tokens, temperature, top_k, top_p, use_cache, generator)
        return torch.cat([idx, *new], dim=1)

    def stream(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None, use_cache: bool = True, generator: torch.Generator | None = None):
        """Yield each new token (B, 1) as it is sampled; only the last block_size tokens are held, so any length
        runs in the same memory.

        The context is the last block_size tokens. Without the cache every step runs the cropped context
        (nanoGPT). With it, one prefill pass fills a KV cache per layer, then each step runs one token.
        Once the context is full, every step re-prefills the last block_size tokens, so the cached
        computation equals the uncached one exactly. (Sliding the cache instead would be cheaper for
        relative schemes, but not equal: past block_size the cached keys of layer >= 2 would still carry
        information from tokens that have left the window.)
        """
        block_size, cache, n_cached = self.cfg.block_size, None, 0
        idx = idx[:, -block_size:]
        for _ in range(max_new_tokens):
            if not use_cache:
                logits = self(idx)
            elif cache is None or n_cached == block_size:  # (re-)prefill the context
                cache, n_cached = [KVCache(block_size) for _ in self.blocks], idx.size(1)
                logits = self(idx, cache=cache)
            else:  # one new token at the next position
                pos = torch.full((1,), n_cached, dtype=torch.long, device=idx.device)
                logits, n_cached = self(idx[:, -1:], pos=pos, cache=cache), n_cached + 1
            idx_next = sample(logits[:, -1, :], temperature, top_k, top_p, generator)  # (B, 1)
            idx = torch.cat((idx, idx_next), dim=1)[:, -block_size:]
            yield idx_next

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters, tied ones once; non_embedding leaves out the tables looked up, not multiplied: the token,
        the position and the value embeddings."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            tables = (self.wte, self.position, self.value_embeds)
            n -= sum(p.numel() for module in tables for p in module.parameters())
        return n

    def flops_per_token(self) -> int:
        """Training FLOPs per token (forward + backward), PaLM's estimate (Chowdhery et al. 2022, appendix B):
        6N + 12 * n_layer * n_head * head_dim * block_size, where N counts the weights of every matmul (the
        non-embedding parameters and the LM head, also when tied) and the second term the attention scores."""
        cfg = self.cfg
        head = self.lm_head.weight.numel() if self.lm_head.weight is self.wte.weight else 0
        n = self.num_params(non_embedding=True) + head
        return 6 * n + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * cfg.block_size

    def train_step_bytes(self, batch: int, amp: bool = False, device_type: str = "cpu") -> tuple[int, int]:
        """(activation bytes, weight + gradient + AdamW bytes) at the peak of one training micro-step of `batch`
        sequences of block_size tokens, in eager mode; works on a model built on the meta device.

        Fitted to the torch profiler's peak on the CPU (torch 2.13; within ~15% at T 128-512, C 64-256, V 65-4096):
        per token 16 x n_embd float32 values per layer (one layer when activations are recomputed) plus the
        block inputs, ~4 copies of the logits, 2 of the embeddings; 16-bit autocast ~0.6 of that. Attention
        scores (B, nh, T, T) are held once per layer plus ~1.5 copies in backward where they are materialised:
        `naive`, and `sdpa` with a bias (ALiBi) except on CUDA, whose fused kernels read the bias instead (16-bit
        scores under autocast)."""
        cfg, T = self.cfg, self.cfg.block_size
        pos = torch.arange(2, device=self.wte.weight.device)
        biased = self.position.bias(pos, pos) is not None
        layers = 1 if cfg.checkpoint_activations else cfg.n_layer
        per_token = 4 * (16 * cfg.n_embd * layers + 4 * self.lm_head.out_features + 2 * cfg.n_embd)
        per_token += 4 * cfg.n_embd * cfg.n_layer * cfg.checkpoint_activations  # the saved block inputs
        activations = batch * T * per_token * (0.6 if amp else 1.0)
        if cfg.attention == "naive" or (biased and device_type != "cuda"):
            activations += (2 if amp else 4) * batch * cfg.n_head * T * T * (layers + 1.5)
        elif biased:
            activations += 2 * 4 * cfg.n_head * T * T  # the bias and the mask, (nh, T, T) each
        n = self.num_params()
        return int(activations), n * (16 + 2 * amp)  # fp32 weights, grads, 2 AdamW moments; 16-bit copies


def sample(logits, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
           generator: torch.Generator | None = None):
    """One token id per row of logits (B, vocab) -> (B, 1): greedy at temperature 0 (or one too small for the
    logits' dtype), else sampled from the softmax at `temperature`, restricted to the top_k most likely tokens and to the nucleus of mass top_p
    (Holtzman et al. 2019, arXiv:1904.09751)."""
    # A temperature below the logits' smallest normal number is 0 in their dtype (1e-300 in float32), and the
    # distribution at it is the argmax to that precision anyway
    if temperature < torch.finfo(logits.dtype).tiny:
        return logits.argmax(dim=-1, keepdim=True)
    # the largest logit moved to 0 first: divided by a tiny temperature it stays 0 (the others go to -inf), where
    # the raw logits would overflow to inf and the softmax to nan
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        probs, order = torch.sort(logits.softmax(dim=-1), descending=True)  # (B, vocab)
        outside = probs.cumsum(dim=-1) - probs >= top_p  # the mass before it already reaches top_p
        outside[:, 0] = False  # the most likely token always stays: a top_p of 1e-300 is 0 in float32
        logits = logits.masked_fill(torch.zeros_like(outside).scatter(1, order, outside), float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)


def build_model(model_cfg: ModelConfig, vocab_size: int, block_size: int) -> GPT:
    """The GPT that `model_cfg` describes, over a vocabulary of `vocab_size` tokens and a context of
    `block_size` positions (both given by the data: `data.vocab_size`, `cfg.data.block_size`)."""
    return GPT(replace(model_cfg, block_size=block_size), vocab_size)
