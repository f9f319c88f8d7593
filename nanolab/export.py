"""`nanolab export RUN_FOLDER --to hf OUT_DIR`: a run's checkpoint and tokenizer as a Hugging Face directory that
`transformers` loads without nanolab (AutoModelForCausalLM, AutoTokenizer; safetensors weights).

Only exact mappings are exported: the HF model computes nanolab's logits up to float rounding, or nothing is written.

| nanolab                                      | transformers                                                       |
| -------------------------------------------- | ------------------------------------------------------------------ |
| position learned, sinusoidal or none (NoPE)  | GPT2LMHeadModel; wpe = the scheme's vector at positions 0..T-1     |
| norm layernorm (eps 1e-5)                    | layer_norm_epsilon 1e-5; zero biases when model.bias is false      |
| activation gelu, relu, relu2                 | activation_function gelu (exact erf, not gelu_new), relu, relu2    |
| position rotary (half-split pairs)           | LlamaForCausalLM, rope_theta = model.rope_base (rotate_half pairs) |
| norm rmsnorm (eps 1e-6)                      | rms_norm_eps 1e-6                                                  |
| activation swiglu, geglu ([gate, up] fused)  | hidden_act silu, gelu; gate_proj, up_proj                          |
| model.bias, tie_weights, block_size, heads   | biases, tie_word_embeddings, n_positions / max_position_embeddings |

Special tokens cost the model nothing: BOS, EOS and PAD (and, for the char tokenizer, UNK) are all the newline
(`boundary_id`), no extra row, so every logit stays nanolab's (docs/interop.md says why and what it costs).
generation_config.json's max_length is the context, so generation never runs past the position table. README.md
is a model card (nanolab.model_card).

Refused, each with no exact equivalent: post-norm, qk_norm, logit_softcap, value_embeds, μP away from its base width,
ALiBi, any other pairing of position, norm and activation, and components of other packages. Dropout and init-only
keys change no logits.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator

import tokenizers
from safetensors import SafetensorError
import torch
from torch import nn

from nanolab.components.norms import LayerNorm, RMSNorm
from nanolab.config import ModelConfig
from nanolab.data.tokenizer import BPETokenizer, CharTokenizer, TokenIds, Tokenizer
from nanolab.errors import NanolabError
from nanolab.files import WriteFailed, atomic_dir, remove_dead_partial_dirs
from nanolab.model import GPT
from nanolab.model_card import model_card
from nanolab.runfolder import RunFolder
from nanolab.runner import load_trained, resume_config

EXACT_ATTENTION = ("naive", "sdpa")  # both compute softmax(q k^T / sqrt(hs) + causal mask) v
Weights = dict[str, torch.Tensor]


# ----------------------------------------------------------------------------- GPT-2


def conv1d(name: str, linear: nn.Linear) -> Weights:
    """GPT-2's Conv1D holds the transpose of nn.Linear's (out, in) weight, and always a bias (0 adds nothing)."""
    bias = linear.bias if linear.bias is not None else torch.zeros(linear.out_features)
    return {f"{name}.weight": linear.weight.T, f"{name}.bias": bias}


def layernorm(name: str, norm: nn.Module) -> Weights:
    bias = norm.bias if norm.bias is not None else torch.zeros_like(norm.weight)
    return {f"{name}.weight": norm.weight, f"{name}.bias": bias}


def gpt2_weights(model: GPT) -> Weights:
    T, C = model.cfg.block_size, model.cfg.n_embd
    # every exported scheme adds one vector per position to the tokens: its vectors at 0..T-1 are GPT-2's table
    positions = model.position.embed(torch.zeros(T, C), torch.arange(T))
    weights = {"transformer.wte.weight": model.wte.weight, "transformer.wpe.weight": positions,
               **layernorm("transformer.ln_f", model.norm_f), "lm_head.weight": model.lm_head.weight}
    for i, block in enumerate(model.blocks):
        h = f"transformer.h.{i}"
        weights |= {**layernorm(f"{h}.ln_1", block.norm1), **conv1d(f"{h}.attn.c_attn", block.attn.c_attn),
                    **conv1d(f"{h}.attn.c_proj", block.attn.c_proj), **layernorm(f"{h}.ln_2", block.norm2),
                    **conv1d(f"{h}.mlp.c_fc", block.mlp.c_fc), **conv1d(f"{h}.mlp.c_proj", block.mlp.c_proj)}
    return weights


def gpt2_config(transformers: ModuleType, model: GPT, activation: str) -> Any:
    cfg = model.cfg
    return transformers.GPT2Config(
        vocab_size=model.wte.num_embeddings, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, n_inner=model.blocks[0].mlp.c_fc.out_features, activation_function=activation,
        layer_norm_epsilon=LayerNorm.eps, tie_word_embeddings=cfg.tie_weights, resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout)


# ----------------------------------------------------------------------------- Llama


def split_linear(linear: nn.Linear, names: list[str]) -> Weights:
    """A fused projection's rows, in order, as the separate projections `names` ([q, k, v] or [gate, up])."""
    n = len(names)
    biases = linear.bias.chunk(n) if linear.bias is not None else ()
    return ({f"{name}.weight": w for name, w in zip(names, linear.weight.chunk(n))}
            | {f"{name}.bias": b for name, b in zip(names, biases)})


def llama_weights(model: GPT) -> Weights:
    """nanolab rotates the pairs (i, i + hs/2) as Llama's rotate_half does: q and k rows keep their order."""
    weights = {"model.embed_tokens.weight": model.wte.weight, "model.norm.weight": model.norm_f.weight,
               "lm_head.weight": model.lm_head.weight}
    for i, block in enumerate(model.blocks):
        layer, attn, mlp = f"model.layers.{i}", f"model.layers.{i}.self_attn", f"model.layers.{i}.mlp"
        weights |= {f"{layer}.input_layernorm.weight": block.norm1.weight,
                    f"{layer}.post_attention_layernorm.weight": block.norm2.weight,
                    **split_linear(block.attn.c_attn, [f"{attn}.q_proj", f"{attn}.k_proj", f"{attn}.v_proj"]),
                    **split_linear(block.attn.c_proj, [f"{attn}.o_proj"]),
                    **split_linear(block.mlp.c_fc, [f"{mlp}.gate_proj", f"{mlp}.up_proj"]),
                    **split_linear(block.mlp.c_proj, [f"{mlp}.down_proj"])}
    return weights


def llama_config(transformers: ModuleType, model: GPT, activation: str) -> Any:
    cfg = model.cfg
    config = transformers.LlamaConfig(
        vocab_size=model.wte.num_embeddings, hidden_size=cfg.n_embd, num_hidden_layers=cfg.n_layer,
        intermediate_size=model.blocks[0].mlp.c_proj.in_features, num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.n_head, head_dim=cfg.head_dim, hidden_act=activation,
        max_position_embeddings=cfg.block_size, rms_norm_eps=RMSNorm.eps, rope_theta=cfg.rope_base,
        attention_bias=cfg.bias, mlp_bias=cfg.bias, tie_word_embeddings=cfg.tie_weights,
        attention_dropout=cfg.dropout)
    config.rope_theta = cfg.rope_base  # also at config.json's top level, where transformers 4 reads it
    return config


# ----------------------------------------------------------------------------- choosing one


@dataclass(frozen=True)
class Architecture:
    model_class: str  # the transformers class, also config.json's `architectures`
    positions: tuple[str, ...]
    norm: str
    activations: dict[str, str]  # nanolab's activation -> the transformers activation that computes it
    config: Callable[[ModuleType, GPT, str], Any]
    weights: Callable[[GPT], Weights]

    def describe(self) -> str:
        return (f"{self.model_class} (position {'|'.join(self.positions)}, norm {self.norm}, "
                f"activation {'|'.join(self.activations)})")


ARCHITECTURES = (
    Architecture("GPT2LMHeadModel", ("learned", "sinusoidal", "none"), "layernorm",
                 {"gelu": "gelu", "relu": "relu", "relu2": "relu2"}, gpt2_config, gpt2_weights),
    Architecture("LlamaForCausalLM", ("rotary",), "rmsnorm", {"swiglu": "silu", "geglu": "gelu"},
                 llama_config, llama_weights),
)
EXPORTABLE = (" or ".join(a.describe() for a in ARCHITECTURES) + ", with norm_placement pre, qk_norm false, "
              f"logit_softcap null, value_embeds 0, parametrization standard (or mup at its base width) and attention "
              f"{'|'.join(EXACT_ATTENTION)}")


def architecture(model: ModelConfig, source: Path) -> Architecture:
    """The architecture that computes `model` exactly; else one line naming the first spec key that none computes."""
    unsupported = {"norm_placement": model.norm_placement != "pre", "qk_norm": model.qk_norm,
                   "logit_softcap": model.logit_softcap is not None, "value_embeds": model.value_embeds > 0,
                   "parametrization": model.width_mult != 1.0,  # μP's logit and attention multipliers
                   "attention": model.attention not in EXACT_ATTENTION}
    arch = next((a for a in ARCHITECTURES if model.position in a.positions), None)
    if arch is None:
        unsupported["position"] = True
    else:
        unsupported |= {"norm": model.norm != arch.norm, "activation": model.activation not in arch.activations}
    key = next((key for key, refused in unsupported.items() if refused), None)
    if key is not None:
        beside = f" beside position {model.position!r}" if key in ("norm", "activation") else ""
        raise NanolabError(f"{source}: model.{key} = {getattr(model, key)!r}{beside}: no Hugging Face architecture "
                           f"computes it exactly, so it is not exported; exportable: {EXPORTABLE}")
    return arch


# ----------------------------------------------------------------------------- writing


def import_transformers() -> ModuleType:
    try:
        import transformers
    except ImportError as exc:
        raise NanolabError(f"nanolab export --to hf needs transformers, the `hf` extra: pip install 'nanolab[hf]' "
                           f"({exc})") from None
    return transformers


@contextmanager
def quiet(transformers: ModuleType) -> Iterator[None]:
    """transformers' notices and progress bars off for the export, whose one line says what it wrote."""
    logging = transformers.utils.logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def checkpoint_path(folder: RunFolder, which: str) -> Path:
    path = folder.ckpt(which)
    if not path.is_file():
        saved = [kind for kind in ("best", "last") if folder.ckpt(kind).is_file()]
        has = f"--checkpoint {' or '.join(saved)} exports what it saved" if saved else "it saved no checkpoint"
        raise NanolabError(f"{path}: the run has no {which} checkpoint; {has}")
    return path


def check_out_dir(out_dir: Path) -> None:
    """An export never overwrites: OUT_DIR is new or an empty folder."""
    if "\x00" in str(out_dir):  # os.mkdir raises ValueError on it
        raise NanolabError(f"OUT_DIR {str(out_dir)!r}: holds a NUL character; give a folder path without one")
    if out_dir.exists() and not out_dir.is_dir():
        raise NanolabError(f"{out_dir}: exists and is not a folder; give a new or empty folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise NanolabError(f"{out_dir}: folder is not empty; an export never overwrites: give a new or empty folder")


def boundary_id(tokenizer: Tokenizer) -> int | None:
    """The token of a newline, every special token of the export: a text's start, end and padding (id 0 where the
    vocabulary has no newline); None for a tokenizer without text."""
    if tokenizer.to_dict()["type"] == TokenIds.type:
        return None
    try:
        ids = tokenizer.encode("\n")
    except NanolabError:  # a char vocabulary without a newline
        return 0
    return ids[0] if len(ids) == 1 else 0


@torch.no_grad()
def hf_model(transformers: ModuleType, model: GPT, arch: Architecture, special: int | None) -> Any:
    config = arch.config(transformers, model, arch.activations[model.cfg.activation])
    config.bos_token_id = config.eos_token_id = config.pad_token_id = special
    hf = getattr(transformers, arch.model_class)(config)
    hf.load_state_dict(arch.weights(model), strict=True)  # strict: no HF weight is left at its random init
    # max_length: transformers' default of 20 total tokens otherwise, and past the context GPT-2's wpe has no row
    hf.generation_config = transformers.GenerationConfig(max_length=model.cfg.block_size, bos_token_id=special,
                                                         eos_token_id=special, pad_token_id=special)
    return hf.eval()


def char_backend(chars: list[str], unknown: str) -> tokenizers.Tokenizer:
    """nanolab's char vocabulary as a `tokenizers` WordLevel model: every character its own token (no normaliser;
    the pre-tokenizer isolates each character, newlines and spaces included), decoded by joining with nothing; a
    character outside the vocabulary becomes `unknown`'s token."""
    vocab = {c: i for i, c in enumerate(chars)}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token=unknown))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Split(tokenizers.Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = tokenizers.decoders.Fuse()
    return backend


def hf_tokenizer(transformers: ModuleType, tokenizer: Tokenizer, block_size: int, special: int | None) -> Any | None:
    """A PreTrainedTokenizerFast with nanolab's ids and `special` as BOS, EOS and PAD (and UNK for characters), or
    None for a tokenizer without text (`ids`). Padding goes on the left, where generation needs it."""
    if isinstance(tokenizer, CharTokenizer):
        backend = char_backend(tokenizer.chars, tokenizer.chars[special])
        specials = {"unk_token": tokenizer.chars[special]}
    elif isinstance(tokenizer, BPETokenizer):
        backend, specials = tokenizer.tokenizer, {}  # byte-level: no text is unknown
    else:
        return None
    token = backend.id_to_token(special)
    specials |= {"bos_token": token, "eos_token": token, "pad_token": token}
    # no clean-up: its default would turn "word ." into "word." on decode. No token_type_ids: GPT-2 would add
    # the embedding of token 0 to every position for the zeros that transformers 4 returns by default
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False,
                                                model_max_length=block_size, padding_side="left",
                                                model_input_names=["input_ids", "attention_mask"], **specials)


def portable_tokenizer_class(path: Path) -> None:
    """transformers 5 saves `tokenizer_class: TokenizersBackend`, which transformers 4's AutoTokenizer refuses;
    both load this tokenizer.json as a PreTrainedTokenizerFast."""
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "tokenizer_class": "PreTrainedTokenizerFast"}, indent=2) + "\n")


def export_hf(run_dir: Path, out_dir: Path, which: str = "best") -> str:
    """Write the run's `which` checkpoint and tokenizer to `out_dir` (new or empty); returns what it wrote. Every
    check comes before the first write, and the folder appears whole or not at all."""
    folder = RunFolder(run_dir)
    cfg = resume_config(folder.path)
    arch = architecture(cfg.model, folder.config_path)
    checkpoint = checkpoint_path(folder, which)
    out_dir = out_dir.resolve() if out_dir.is_symlink() else out_dir  # a link to a folder: the folder is written
    check_out_dir(out_dir)
    transformers = import_transformers()
    model, tokenizer, _ = load_trained(folder.path, which, device="cpu")
    special = boundary_id(tokenizer)
    hf_tok = hf_tokenizer(transformers, tokenizer, cfg.data.block_size, special)
    card = model_card(folder, cfg, which, arch.model_class)
    remove_dead_partial_dirs(out_dir)  # what a killed export to this folder left
    with quiet(transformers), atomic_dir(out_dir) as tmp:
        try:
            hf_model(transformers, model, arch, special).save_pretrained(tmp)
        except SafetensorError as exc:  # safetensors' I/O error is not an OSError; its text holds the errno:
            # "Error while serializing: I/O error: No space left on device (os error 28)"
            code = re.search(r"os error (\d+)", str(exc))
            if code is None:
                raise NanolabError(f"cannot write {out_dir / 'model.safetensors'}: {str(exc)[:200]}") from None
            raise WriteFailed(out_dir / "model.safetensors", OSError(int(code[1]), os.strerror(int(code[1])))) from None
        if hf_tok is not None:
            hf_tok.save_pretrained(tmp)
            portable_tokenizer_class(tmp / "tokenizer_config.json")
        (tmp / "README.md").write_text(card, encoding="utf-8")
    if hf_tok is None:
        kind = tokenizer.to_dict()["type"]
        warnings.warn(f"wrote no tokenizer: the run's tokenizer {kind!r} has no text form to export (char and bpe "
                      f"have); the model reads token ids below {tokenizer.vocab_size}")
    return f"exported {checkpoint} as {arch.model_class} to {out_dir}"
