"""`nanolab import nanogpt OUT_DIR [--to RUN_FOLDER]`: nanoGPT's out folder as a run folder.

Checked against nanoGPT master's train.py checkpoint dict (`model`, `optimizer`, `model_args`, `iter_num`,
`best_val_loss`, `config`) and model.py's GPT (the same format since its first checkpoints: `model_args` holds
n_layer, n_head, n_embd, block_size, bias, vocab_size, dropout). Its model is nanolab's default one exactly: learned
positions, pre-norm LayerNorm (eps 1e-5, optional bias), exact-erf GELU MLP of 4 x n_embd, tied head. The weights
map one to one, by the renames in RENAMES; `_orig_mod.` (torch.compile's prefix) is stripped and the causal-mask
buffers `attn.bias` (absent with flash attention) are dropped. Any other key is refused in one line.

AdamW's moments map by parameter name. nanoGPT decays the embeddings and nanolab does not: a resumed run keeps
nanolab's groups (their learning rate and decay), with nanoGPT's moments and step count for every parameter.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from nanolab.config import Config
from nanolab.config_dicts import from_dict, to_dict
from nanolab.data.nanogpt import META_FILES, bin_tokenizer, is_nanogpt_folder, meta_file
from nanolab.errors import NanolabError
from nanolab.model import GPT, build_model
from nanolab.runfolder import RunFolder, RunStore, now
from nanolab.spec import dump_spec
from nanolab.train_loop import TrainState, rng_state
from nanolab.vocab import BEST_STEP, BEST_VAL_LOSS, BEST_VAL_PPL, STEPS, RunStatus, perplexity

MODEL_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout")
RENAMES = (  # nanoGPT's key (a regex) -> nanolab's
    (r"transformer\.wte\.", "wte."), (r"transformer\.wpe\.", "position.wpe."),
    (r"transformer\.h\.(\d+)\.ln_1\.", r"blocks.\1.norm1."), (r"transformer\.h\.(\d+)\.ln_2\.", r"blocks.\1.norm2."),
    (r"transformer\.h\.(\d+)\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.", r"blocks.\1.\2."),
    (r"transformer\.ln_f\.", "norm_f."), (r"lm_head\.", "lm_head."),
)
TRAIN_KEYS = {"batch_size": "batch_size", "gradient_accumulation_steps": "grad_accum", "max_iters": "max_iters",
              "learning_rate": "lr", "min_lr": "min_lr", "warmup_iters": "warmup_iters",
              "lr_decay_iters": "lr_decay_iters", "weight_decay": "weight_decay", "beta1": "beta1", "beta2": "beta2",
              "grad_clip": "grad_clip", "eval_interval": "eval_interval", "eval_iters": "eval_iters",
              "log_interval": "log_interval"}


def nanolab_key(key: str, source: Path) -> str | None:
    """nanolab's name of a nanoGPT state-dict key; None for a mask buffer; one line for anything else."""
    key = key.removeprefix("_orig_mod.")
    if re.fullmatch(r"transformer\.h\.\d+\.attn\.bias", key):
        return None  # the causal mask, a buffer that nanolab's kernels do not need
    for pattern, name in RENAMES:
        if re.match(pattern, key):
            return re.sub(pattern, name, key, count=1)
    raise NanolabError(f"{source}: model key {key!r} has no nanolab equivalent; nanolab imports nanoGPT's GPT "
                       "(transformer.wte/wpe/h.N.ln_1/attn/ln_2/mlp/ln_f, lm_head)")


def read_checkpoint(path: Path) -> dict:
    if not path.is_file():
        raise NanolabError(f"{path}: no such file; nanolab import nanogpt reads the out folder holding ckpt.pt")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain values only
    except Exception as exc:
        raise NanolabError(f"{path}: not a loadable nanoGPT checkpoint ({type(exc).__name__}: {exc})") from None
    missing = [k for k in ("model", "model_args") if not isinstance(ckpt, dict) or k not in ckpt]
    missing += [f"model_args.{k}" for k in MODEL_ARGS if not missing and k not in ckpt["model_args"]]
    if missing:
        raise NanolabError(f"{path}: not nanoGPT's checkpoint format: no {', '.join(missing)}")
    return ckpt


def import_config(ckpt: dict, data: Path | None, name: str, source: Path) -> Config:
    """A nanolab config of nanoGPT's model and training settings, on its prepared data when at hand."""
    args, trained = ckpt["model_args"], ckpt.get("config") or {}
    train = {ours: trained[theirs] for theirs, ours in TRAIN_KEYS.items() if theirs in trained}
    if trained.get("decay_lr") is False:
        train["schedule"] = "constant"
    raw = {"name": name, "seed": 1337,
           "data": {"block_size": args["block_size"], **({"path": str(data.resolve()), "format": "nanogpt_bin",
                                                          "vocab_size": args["vocab_size"]} if data else {})},
           "model": {**{k: args[k] for k in ("n_layer", "n_head", "n_embd", "dropout", "bias")},
                     "activation": "gelu", "position": "learned", "norm": "layernorm", "tie_weights": True},
           "train": {**train, "sample_tokens": 0}, "tracking": {"tags": ["nanogpt"]}}
    return from_dict(Config, raw, f"{source} (nanoGPT's config)")


def optimizer_state(ckpt: dict, model: GPT, cfg: Config, names: list[str]) -> dict:
    """nanolab's AdamW state_dict with nanoGPT's moments, by parameter name (`names`: nanoGPT's parameters in
    named_parameters' order); fresh moments where nanoGPT saved none."""
    from nanolab.components.optim import build_optimizer

    optimizers = build_optimizer(model, cfg.train, "cpu")
    ours = optimizers.state_dict()
    saved = ckpt.get("optimizer") or {}
    by_name = dict(model.named_parameters())
    # nanoGPT's groups: the parameters of 2+ dimensions, then the rest, each in named_parameters' order
    theirs = [n for n in names if by_name[n].dim() >= 2] + [n for n in names if by_name[n].dim() < 2]
    if not saved or sum(len(g["params"]) for g in saved.get("param_groups", [])) != len(theirs):
        return ours
    name_of = {id(p): n for n, p in by_name.items()}
    position = {name: i for i, name in enumerate(theirs)}
    for opt, state in zip(optimizers.optimizers, ours["optimizers"]):  # torch numbers params across its groups
        params = [p for group in opt.param_groups for p in group["params"]]
        state["state"] = {i: saved["state"][position[name_of[id(p)]]] for i, p in enumerate(params)
                          if position[name_of[id(p)]] in saved["state"]}
    return ours


def import_nanogpt(out_dir: Path, to: Path | None = None, data: Path | None = None) -> str:
    """Write the run folder of nanoGPT's `out_dir`; returns what it wrote."""
    ckpt = read_checkpoint(out_dir / "ckpt.pt")
    trained = ckpt.get("config") or {}
    if data is None and "dataset" in trained and is_nanogpt_folder(out_dir.parent / "data" / str(trained["dataset"])):
        data = out_dir.parent / "data" / str(trained["dataset"])
    if data is not None and not is_nanogpt_folder(data):
        raise NanolabError(f"--data {data}: not nanoGPT's prepared data (train.bin and val.bin)")
    meta = next((m for m in (meta_file(out_dir), data and meta_file(data)) if m is not None), None)
    tokenizer = bin_tokenizer(out_dir, meta, ckpt["model_args"]["vocab_size"])
    folder = RunFolder(to) if to else RunStore().folder("nanogpt", out_dir.resolve().name)
    cfg = import_config(ckpt, data, folder.path.parent.name, out_dir / "ckpt.pt")
    if tokenizer.vocab_size != ckpt["model_args"]["vocab_size"]:
        raise NanolabError(f"{meta}: {tokenizer.vocab_size} characters, but the checkpoint's vocab_size is "
                           f"{ckpt['model_args']['vocab_size']}; give the meta file of the data it trained on")
    model = build_model(cfg.model, vocab_size=tokenizer.vocab_size, block_size=cfg.data.block_size)
    weights = {nanolab_key(k, out_dir / "ckpt.pt"): v for k, v in ckpt["model"].items()}
    weights.pop(None, None)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise NanolabError(f"{out_dir / 'ckpt.pt'}: does not fit nanoGPT's model_args "
                           f"({str(exc).strip().splitlines()[-1].strip()[:300]})") from None
    names = [n for n in weights if n != "lm_head.weight" or not cfg.model.tie_weights]
    write_run(folder, cfg, model, tokenizer, ckpt, optimizer_state(ckpt, model, cfg, names), out_dir)
    source = f"meta {meta.name}" if meta else f"token ids below {tokenizer.vocab_size} (no {' or '.join(META_FILES)})"
    return f"imported {out_dir / 'ckpt.pt'} (step {ckpt.get('iter_num', 0)}, {source}) to {folder.path}"


def write_run(folder: RunFolder, cfg: Config, model: GPT, tokenizer, ckpt: dict, optimizer: dict,
              out_dir: Path) -> None:
    """config, tokenizer, meta, summary and ckpt/last.pt (best.pt a link to it) of the imported run."""
    if folder.path.exists() and (not folder.path.is_dir() or any(folder.path.iterdir())):
        raise NanolabError(f"{folder.path}: exists and is not an empty folder; an import never overwrites")
    step, best = int(ckpt.get("iter_num", 0)), float(ckpt.get("best_val_loss", float("inf")))
    done = step >= cfg.train.max_iters
    folder.path.mkdir(parents=True, exist_ok=True)
    folder.write_config(dump_spec(cfg))
    folder.write_tokenizer(tokenizer.to_dict())
    state = TrainState(step=step, best_val_loss=best, best_step=step,
                       tokens_seen=step * cfg.train.batch_size * cfg.train.grad_accum * cfg.data.block_size)
    folder.save_checkpoint("last", {
        "model": model.state_dict(), "optimizer": optimizer, "state": vars(state),
        "rng": rng_state(torch.Generator().manual_seed(cfg.seed)), "config": to_dict(cfg), "run_id": folder.run_id,
        "wandb_id": None})
    os.link(folder.ckpt("last"), folder.ckpt("best"))  # nanoGPT's one checkpoint is its best
    folder.write_summary({BEST_VAL_LOSS: best, BEST_VAL_PPL: perplexity(best), BEST_STEP: step, STEPS: step})
    folder.write_meta({"run_id": folder.run_id, "name": cfg.name, "group": None, "tags": ["nanogpt"],
                       "status": RunStatus.FINISHED if done else RunStatus.INTERRUPTED, "start_time": now(),
                       "end_time": now(), "steps": step, "params": model.num_params(), "job_type": None, "world_size": 1,
                       "non_embedding_params": model.num_params(True), "flops_per_token": model.flops_per_token(),
                       "imported_from": str((out_dir / "ckpt.pt").resolve()), "nanogpt_config": ckpt.get("config")})
