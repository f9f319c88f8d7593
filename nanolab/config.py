"""Typed, frozen configs: every spec key is declared here once, with its default.

Cross-field checks and derived values live in `__post_init__`; they raise `ConfigError(key, value, accepted)`
with the key relative to the section, and `nanolab.spec` adds the file and the section to the message.
Every float field must be finite, and fields whose metadata names a registry `kind` must hold a registered name
of that kind. Each field carries its doc (`key`). The conversion to and from plain dicts is `nanolab.config_dicts`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any

from nanolab import registry
from nanolab.errors import shown


class ConfigError(ValueError):
    """One bad value: `key` (dotted, relative to the dataclass), the `value`, and what is `accepted`."""

    def __init__(self, key: str, value: object, accepted: str):
        super().__init__(f"{key} = {shown(value)}: {accepted}")
        self.key, self.value, self.accepted = key, value, accepted


def key(default: Any, doc: str, **metadata: Any):
    """A spec key with its default and its one-line doc, written once: `nanolab keys`, `nanolab run --help` and the
    docs site's spec reference all read it (as litgpt's configs keep each field's doc on the field)."""
    if dataclasses.is_dataclass(default):
        return field(default_factory=type(default), metadata={"doc": doc, **metadata})
    return field(default=default, metadata={"doc": doc, **metadata})


def component(kind: str, default: str, doc: str):
    """A string field holding a registry name of `kind`."""
    return key(default, doc, kind=kind)


def _check_fields(cfg) -> None:
    """The checks every field of its type gets: floats finite (no config float means anything at inf or nan,
    and nan passes every `<` check), component names registered."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f.name, value, "must be a finite number")
        kind = f.metadata.get("kind")
        if kind and value not in registry.names(kind):  # names: no torch import
            raise ConfigError(f.name, value, registry.unknown_message(kind, value))


# data.vocab_size's bound: 4x the largest LM vocabularies (Gemma's 262,144); a BPE trainer given 2**32 panics
MAX_VOCAB = 1 << 20


def _check(ok: bool, key: str, value: object, accepted: str) -> None:
    if not ok:
        raise ConfigError(key, value, accepted)


def _positive(cfg, *names: str) -> None:
    for name in names:
        _check(getattr(cfg, name) > 0, name, getattr(cfg, name), "must be > 0")


DATA_FORMATS = ("auto", "text", "nanogpt_bin")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = component("dataset", "shakespeare_char", "a registered corpus (downloaded once, verified by "
                             "SHA-256), used when `path` is not set")
    path: str | None = key(None, "UTF-8 text instead: a file, a folder (its files by name, recursively) or a glob, "
                           "relative to the spec file; or a folder of nanoGPT's train.bin, val.bin and meta.pkl")
    val_path: str | None = key(None, "the val split's own text (file, folder or glob); null: the last 10% of "
                               "`path`'s tokens")
    format: str = key("auto", "text, nanogpt_bin (nanoGPT's prepared data, read in place) or auto: nanogpt_bin for "
                      "a folder holding train.bin, val.bin and a meta file")
    tokenizer: str = component("tokenizer", "char", "saved with the run as tokenizer.json")
    vocab_size: int | None = key(None, "BPE vocabulary size (null: 4096; at least 256), or that of GPT-2 .bin files "
                                 "without meta; char ignores it")
    block_size: int = key(64, "context length in tokens; the model's too")

    def __post_init__(self):
        _check_fields(self)
        _positive(self, "block_size")
        _check(self.path != "", "path", self.path,
               f"a text file, folder or glob pattern (or null for dataset {shown(self.dataset)})")
        _check(self.format in DATA_FORMATS, "format", self.format, f"one of: {', '.join(DATA_FORMATS)}")
        _check(self.format != "nanogpt_bin" or self.path is not None, "format", self.format,
               "nanogpt_bin reads the folder that data.path names: set data.path")
        _check(self.val_path is None or (self.val_path != "" and self.path is not None), "val_path", self.val_path,
               "a text file, folder or glob pattern beside data.path (or null for the last 10% of its tokens)")
        _check(self.val_path is None or self.format != "nanogpt_bin", "val_path", self.val_path,
               "null with format nanogpt_bin, whose val.bin is the val split")
        _check(self.vocab_size is None or 0 < self.vocab_size <= MAX_VOCAB, "vocab_size", self.vocab_size,
               f"must be > 0 and <= {MAX_VOCAB:,} (or null for the tokenizer's default)")
        if self.tokenizer == "bpe" and self.vocab_size is not None:
            _check(self.vocab_size >= 256, "vocab_size", self.vocab_size,
                   "must be >= 256 for bpe, whose base vocabulary is the 256 byte values (or null for its default)")


PARAMETRIZATIONS = ("standard", "mup")


@dataclass(frozen=True)
class ModelConfig:
    n_layer: int = key(4, "transformer blocks")
    n_head: int = key(4, "attention heads; n_embd % n_head == 0")
    n_embd: int = key(128, "the residual stream's width")
    dropout: float = key(0.0, "embedding, attention and residual dropout, in [0, 1)")
    bias: bool = key(False, "biases in linear layers and norms")
    activation: str = component("activation", "gelu", "the MLP (`nanolab components` lists them)")
    position: str = component("position", "learned", "the position scheme")
    attention: str = component("attention", "sdpa", "the attention kernel")
    norm: str = component("norm", "layernorm", "the normalization layer")
    norm_placement: str = key("pre", "pre: x + f(norm(x)); post: norm(x + f(x))")
    qk_norm: bool = key(False, "RMS-normalise q and k per head (modded-nanogpt)")
    tie_weights: bool = key(True, "share the token embedding with the LM head")
    zero_init_proj: bool = key(False, "zero-initialise the residual output projections (modded-nanogpt)")
    rope_base: float = key(10000.0, "RoPE frequency base, used by `position: rotary`")
    mlp_ratio: float = key(4.0, "MLP hidden size / n_embd (GLU variants take 2/3 of it); mlp_ratio * n_embd >= 2")
    checkpoint_activations: bool = key(False, "recompute each block's activations in the backward pass: less "
                                       "memory for ~1/3 more compute")
    logit_softcap: float | None = key(None, "logits = c * tanh(logits / c) before the loss and sampling (Gemma 2; "
                                      "modded-nanogpt: 30, then 15); null: uncapped")
    value_embeds: int = key(0, "value embeddings (modded-nanogpt): each of the first N layers adds its own vocab x "
                            "n_embd table, looked up with the input tokens, to its attention values; at most n_layer")
    parametrization: str = key("standard", "standard, or mup: the maximal-update parametrization (Yang et al. 2022; "
                               "nanolab.model)")
    mup_base_width: int | None = key(None, "mup: the n_embd the hyperparameters were tuned at; null under standard")
    block_size: int = key(64, "the context length", derived="data.block_size")

    def __post_init__(self):
        _check_fields(self)
        _positive(self, "n_layer", "n_head", "n_embd", "rope_base", "mlp_ratio", "block_size")
        _check(self.n_embd % self.n_head == 0, "n_head", self.n_head,
               f"n_embd ({self.n_embd}) must be divisible by n_head")
        # n_embd >= 2 / mlp_ratio, not mlp_ratio * n_embd >= 2: a huge n_embd would overflow the float
        _check(self.n_embd >= 2 / self.mlp_ratio, "mlp_ratio", self.mlp_ratio, f"mlp_ratio * n_embd ({self.n_embd}) "
               "must be >= 2: the MLP needs a hidden unit, also at the 2/3 width of swiglu and geglu")
        _check(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "must be in [0, 1)")
        _check(self.norm_placement in ("pre", "post"), "norm_placement", self.norm_placement, "one of: pre, post")
        _check(self.logit_softcap is None or self.logit_softcap > 0, "logit_softcap", self.logit_softcap,
               "must be > 0 (or null for uncapped logits)")
        _check(0 <= self.value_embeds <= self.n_layer, "value_embeds", self.value_embeds,
               f"must be in [0, n_layer={self.n_layer}]: the number of layers, from the first, that get a table")
        _check(self.parametrization in PARAMETRIZATIONS, "parametrization", self.parametrization,
               f"one of: {', '.join(PARAMETRIZATIONS)}")
        mup = self.parametrization == "mup"
        _check((self.mup_base_width is not None) == mup, "mup_base_width", self.mup_base_width,
               "the n_embd the hyperparameters were tuned at, with parametrization mup (and null under standard)")
        _check(self.mup_base_width is None or self.mup_base_width > 0, "mup_base_width", self.mup_base_width,
               "must be > 0")

    @property
    def width_mult(self) -> float:
        """μP's width multiplier m = n_embd / mup_base_width; 1 under the standard parametrization."""
        return self.n_embd / self.mup_base_width if self.mup_base_width else 1.0

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


DEVICE_PATTERN = re.compile(r"(auto|cpu|mps|cuda(:\d+)?)\Z")  # \Z: `$` would let "cpu\n" through


MAX_STEPS = 10**9  # optimizer steps a run may plan, however its budget is given: a bound on the loop, not a limit
# anyone meets (a billion steps is years on one GPU); beyond it a typo such as max_tokens: 2**70 would be accepted


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = key(12, "sequences per micro-step")
    grad_accum: int = key(1, "micro-steps per optimizer step")
    max_iters: int = key(2000, f"optimizer steps, at most {MAX_STEPS:,} (so are the steps a budget plans)")
    # A compute budget instead of max_iters (which the run then sets to the steps that spend it, rounded up), so
    # that every cell of an ablation trains on equal tokens or FLOPs. No wall-time budget: it would make the steps,
    # and so the run, depend on the machine's speed and load.
    max_tokens: int | None = key(None, "a budget in training tokens instead of max_iters, which becomes "
                                 "ceil(max_tokens / tokens per step); a line on stderr names the max_iters replaced")
    max_flops: float | None = key(None, "a budget in training FLOPs (tokens x the model's training FLOPs per token, "
                                  "PaLM's 6N + attention), the same way; one budget at most")
    optimizer: str = component("optimizer", "adamw", "the optimizer")
    lr: float = key(1.0e-3, "peak learning rate")
    min_lr: float = key(1.0e-4, "final learning rate, in [0, lr]")
    schedule: str = component("schedule", "cosine", "decay after warmup")
    warmup_iters: int = key(100, "linear warmup steps")
    # A fraction, not a step, so that it follows max_iters when a budget sets it; a key of its own because the
    # schedule is called with the arguments it names, and only wsd names this one
    cooldown_frac: float = key(0.2, "wsd only: decay linearly over this last fraction of the steps after warmup "
                               "(1: linear); in (0, 1]")
    lr_decay_iters: int | None = key(None, "decay until this step (null: max_iters)")
    weight_decay: float = key(0.1, "AdamW's decoupled weight decay")
    beta1: float = key(0.9, "Adam's beta1, in [0, 1)")
    beta2: float = key(0.99, "Adam's beta2, in [0, 1)")
    muon_lr: float = key(0.02, "Muon's learning rate for the hidden matrices")
    grad_clip: float = key(1.0, "clip the global gradient norm (0: off); the logged norm is pre-clip")
    eval_interval: int = key(250, "evaluate every N steps (and at the end)")
    eval_iters: int = key(20, "batches per split in each evaluation")
    log_interval: int = key(10, "train/loss is the mean over these steps")
    checkpoint_interval: int | None = key(None, "write ckpt/last.pt every N steps (null: eval_interval)")
    sample_tokens: int = key(200, "length of the sample generated (and logged) at each evaluation")
    device: str = key("auto", "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    dtype: str = key("auto", "auto (bfloat16 autocast on CUDA, float32 elsewhere), float32, bfloat16, float16 "
                     "(CUDA/MPS, with a loss scaler)")
    compile: bool = key(False, "torch.compile the model (checkpoints stay loadable without it)")
    final_eval: bool = key(False, "at the run's last step, log val/loss_whole: the loss over the whole val split")

    def __post_init__(self):
        _check_fields(self)
        _positive(self, "batch_size", "grad_accum", "max_iters", "lr", "eval_interval", "eval_iters", "log_interval")
        _check(self.max_iters <= MAX_STEPS, "max_iters", self.max_iters, f"must be at most {MAX_STEPS:,}")
        _check(0 <= self.min_lr <= self.lr, "min_lr", self.min_lr, f"must be in [0, lr={self.lr}]")
        _check(self.warmup_iters >= 0, "warmup_iters", self.warmup_iters, "must be >= 0")
        _check(0 < self.cooldown_frac <= 1, "cooldown_frac", self.cooldown_frac,
               "must be in (0, 1]: the fraction of the steps after warmup that wsd decays over")
        for budget in ("max_tokens", "max_flops"):
            value = getattr(self, budget)
            _check(value is None or value > 0, budget, value, "must be > 0 (or null for max_iters)")
        _check(self.max_tokens is None or self.max_flops is None, "max_flops", self.max_flops,
               f"set one budget: train.max_tokens is {self.max_tokens} already (or null)")
        _check(self.lr_decay_iters is None or self.lr_decay_iters > 0, "lr_decay_iters", self.lr_decay_iters,
               "must be > 0 (or null for max_iters)")
        _check(self.checkpoint_interval is None or self.checkpoint_interval > 0, "checkpoint_interval",
               self.checkpoint_interval, "must be > 0 (or null for eval_interval)")
        _check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")
        _check(self.grad_clip >= 0, "grad_clip", self.grad_clip, "must be >= 0 (0 disables clipping)")
        _check(self.sample_tokens >= 0, "sample_tokens", self.sample_tokens, "must be >= 0")
        for beta in ("beta1", "beta2"):
            _check(0 <= getattr(self, beta) < 1, beta, getattr(self, beta), "must be in [0, 1)")
        _check(bool(DEVICE_PATTERN.match(self.device)), "device", self.device, "one of: auto, cpu, cuda, cuda:N, mps")
        _check(self.dtype in ("auto", "float32", "bfloat16", "float16"), "dtype", self.dtype,
               "one of: auto, float32, bfloat16, float16")

    def budget_steps(self, tokens_per_step: int, flops_per_token: int) -> int:
        """The optimizer steps the budget allows: max_iters, or the fewest steps that spend max_tokens / max_flops."""
        if self.max_tokens is not None:
            return -(-self.max_tokens // tokens_per_step)
        if self.max_flops is not None:
            return math.ceil(self.max_flops / (tokens_per_step * flops_per_token))
        return self.max_iters

    @property
    def decay_iters(self) -> int:
        return self.lr_decay_iters or self.max_iters

    @property
    def save_interval(self) -> int:
        return self.checkpoint_interval or self.eval_interval


WANDB_PROJECT_FORBIDS = "/\\#?%:"  # W&B refuses project names holding any of these (wandb_settings.py)
WANDB_TAG_MAX = 64


@dataclass(frozen=True)
class WandbConfig:
    project: str = key("nanolab", f"the W&B project: 1 to 128 characters, none of {WANDB_PROJECT_FORBIDS}")
    entity: str | None = key(None, "the W&B entity (null: your default)")
    mode: str = key("auto", "auto (online when logged in, else offline), online, offline, disabled; WANDB_MODE wins")
    dir: str | None = key(None, "where W&B writes its files (null: the run folder)")
    log_checkpoints: bool = key(False, "upload the best and last checkpoints as a W&B Artifact")

    def __post_init__(self):
        _check_fields(self)
        _check(self.mode in ("auto", "online", "offline", "disabled"), "mode", self.mode,
               "one of: auto, online, offline, disabled")
        _check(0 < len(self.project) <= 128 and not set(self.project) & set(WANDB_PROJECT_FORBIDS), "project",
               self.project, f"1 to 128 characters, none of {WANDB_PROJECT_FORBIDS} (W&B's rule for project names)")


@dataclass(frozen=True)
class TrackingConfig:
    wandb: WandbConfig = key(WandbConfig(), "Weights & Biases")
    group: str | None = key(None, "the W&B group; sweeps and ablations set it to their name")
    job_type: str = key("run", "the W&B job type: run, sweep or ablate")
    tags: tuple[str, ...] = key((), f"W&B tags, each 1 to {WANDB_TAG_MAX} characters; plans add their own")
    notes: str | None = key(None, "W&B notes")

    def __post_init__(self):
        _check_fields(self)
        for tag in self.tags:
            _check(0 < len(tag) <= WANDB_TAG_MAX, "tags", tag, f"every tag must be 1 to {WANDB_TAG_MAX} characters "
                   "(W&B's rule)")


NAME_MAX = 100  # a folder name (and W&B group) below the usual 255-byte limit, with room for the run id after it
NAME_PATTERN = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.=+-]{{0,{NAME_MAX - 1}}}\Z")  # \Z: `$` would let "a\n" through
NAME_RULE = f"1 to {NAME_MAX} letters, digits and _ . = + -, starting with a letter or digit"
# Seeds go to torch.manual_seed (at most 2**64 - 1) and random.seed, plus small offsets (eval batches: seed + 1,
# samples: seed + step, sweeps: seed + trial number): a bound far below the generators' leaves room for them.
SEED_BITS = 62


@dataclass(frozen=True)
class Config:
    name: str = key("run", f"the run folder runs/<name>/<run-id>: {NAME_RULE}")
    seed: int = key(1337, f"model init, batches, dropout and samples; 0 to 2**{SEED_BITS}")
    data: DataConfig = key(DataConfig(), "the corpus, its tokenizer and the context")
    model: ModelConfig = key(ModelConfig(), "the transformer and its components")
    train: TrainConfig = key(TrainConfig(), "the optimizer, schedule, budget, evaluation and device")
    tracking: TrackingConfig = key(TrackingConfig(), "W&B and the run's labels")

    def __post_init__(self):
        _check_fields(self)
        _check(bool(NAME_PATTERN.match(self.name)), "name", self.name, f"{NAME_RULE} (it names the run folder)")
        _check(0 <= self.seed <= 2**SEED_BITS, "seed", self.seed, f"must be in [0, 2**{SEED_BITS}] (64-bit "
               "generators, with room for the offsets nanolab adds)")
        if self.train.max_tokens is not None:
            steps = -(-self.train.max_tokens // self.tokens_per_step)  # integers: 10**400 tokens is no float
            _check(steps <= MAX_STEPS, "train.max_tokens", self.train.max_tokens, f"{steps:,} steps of "
                   f"{self.tokens_per_step:,} tokens; at most {MAX_STEPS:,} steps")
        if self.model.block_size != self.data.block_size:  # the model's context is the data's
            object.__setattr__(self, "model", replace(self.model, block_size=self.data.block_size))

    @property
    def tokens_per_step(self) -> int:
        """Training tokens of one optimizer step, over every rank: sequences x micro-steps x context."""
        return self.train.batch_size * self.train.grad_accum * self.data.block_size
