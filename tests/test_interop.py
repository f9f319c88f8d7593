"""`nanolab import nanogpt` on a checkpoint written in nanoGPT's exact format (its model.py GPT, copied below in
small, and train.py's checkpoint dict), then sample, export, --resume; and `nanolab eval` on lm-evaluation-harness."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from helpers import inspect, nanogpt_prepare, offline_runs, shared_shakespeare
from torch.nn import functional as F

from nanolab.cli import main
from nanolab.config_dicts import to_dict
from nanolab.spec import load_spec
from nanolab.runfolder import RunFolder
from nanolab.vocab import EXIT_OK, EXIT_USAGE


# ----------------------------------------------------------------------------- nanoGPT's model.py (master), abridged
# to what a checkpoint holds: the same modules, names, shapes and computation


class LayerNorm(nn.Module):
    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, input):
        return F.layer_norm(input, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.n_head, self.n_embd = config.n_head, config.n_embd
        # nanoGPT registers the mask only without flash attention: kept here so the import must drop it
        self.register_buffer("bias", torch.tril(torch.ones(config.block_size, config.block_size))
                             .view(1, 1, config.block_size, config.block_size))

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
        y = F.softmax(att, dim=-1) @ v
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd), wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout), h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, bias=config.bias)))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(lambda m: nn.init.normal_(m.weight, 0.0, 0.02) if isinstance(m, (nn.Linear, nn.Embedding)) else None)

    def forward(self, idx):  # nanoGPT's training path: the logits of every position
        pos = torch.arange(0, idx.size(1), dtype=torch.long)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))

    def configure_optimizers(self, weight_decay, learning_rate, betas):
        params = {pn: p for pn, p in self.named_parameters() if p.requires_grad}
        groups = [{"params": [p for p in params.values() if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params.values() if p.dim() < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas)


# ----------------------------------------------------------------------------- a nanoGPT out folder


MODEL_ARGS = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, bias=True, vocab_size=65, dropout=0.0)
TRAIN_CONFIG = dict(out_dir="out-shakespeare-char", eval_interval=5, log_interval=5, eval_iters=2,
                    dataset="shakespeare_char", gradient_accumulation_steps=1, batch_size=8, block_size=32,
                    learning_rate=1e-3, max_iters=12, weight_decay=0.1, beta1=0.9, beta2=0.99, grad_clip=1.0,
                    decay_lr=True, warmup_iters=2, lr_decay_iters=12, min_lr=1e-4, compile=True,
                    **{k: v for k, v in MODEL_ARGS.items() if k not in ("block_size", "vocab_size")})


@pytest.fixture(scope="module")
def nanogpt_out(tmp_path_factory) -> tuple[Path, GPT, dict]:
    """nanoGPT's layout: nanoGPT/data/shakespeare_char/ and nanoGPT/out-shakespeare-char/ckpt.pt after 6 of 12
    steps, saved by train.py's code (compiled: every key under _orig_mod.)."""
    root = tmp_path_factory.mktemp("nanoGPT")
    nanogpt_prepare(root / "data" / "shakespeare_char", shared_shakespeare().read_text(encoding="utf-8"))
    torch.manual_seed(1337)
    model = GPT(GPTConfig(**MODEL_ARGS))
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99))
    data = np.memmap(root / "data" / "shakespeare_char" / "train.bin", dtype=np.uint16, mode="r")
    for _ in range(6):
        ix = torch.randint(len(data) - 33, (8,))
        x = torch.stack([torch.from_numpy(data[i:i + 32].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1:i + 33].astype(np.int64)) for i in ix])
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    checkpoint = {"model": {f"_orig_mod.{k}": v for k, v in model.state_dict().items()},
                  "optimizer": optimizer.state_dict(), "model_args": MODEL_ARGS, "iter_num": 6,
                  "best_val_loss": torch.tensor(loss.item()), "config": TRAIN_CONFIG}
    out = root / "out-shakespeare-char"
    out.mkdir()
    torch.save(checkpoint, out / "ckpt.pt")
    return out, model.eval(), optimizer.state_dict()


@pytest.fixture(scope="module")
def imported(nanogpt_out, tmp_path_factory) -> Path:
    out, _, _ = nanogpt_out
    run_dir = tmp_path_factory.mktemp("runs") / "nanogpt" / "imported"
    assert main(["import", "nanogpt", str(out), "--to", str(run_dir)]) == EXIT_OK
    return run_dir


def test_imported_then_exported_logits_equal_nanogpts_own(nanogpt_out, imported, tmp_path):
    from transformers import AutoModelForCausalLM

    _, model, _ = nanogpt_out
    assert main(["export", str(imported), "--to", "hf", str(tmp_path / "hf")]) == EXIT_OK
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    idx = torch.randint(65, (3, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (hf(idx).logits - model(idx)).abs().max().item() <= 1e-5


def test_the_run_folder_holds_nanogpts_settings_and_samples(imported, capsys):
    cfg = load_spec(imported / "config.yaml")
    assert (cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd, cfg.model.bias) == (2, 2, 32, True)
    assert (cfg.train.lr, cfg.train.max_iters, cfg.train.batch_size, cfg.data.format) == (1e-3, 12, 8, "nanogpt_bin")
    meta, summary = RunFolder(imported).read_meta(), RunFolder(imported).read_summary()
    assert meta["status"] == "interrupted" and summary["steps"] == summary["best/step"] == 6
    from nanolab.analysis import load_runs

    frame = load_runs(imported)  # what compare tabulates
    assert len(frame) == 1 and frame["best/val_loss"].iloc[0] == summary["best/val_loss"]
    capsys.readouterr()
    assert main(["sample", str(imported), "--prompt", "ROMEO:", "--tokens", "10"]) == EXIT_OK
    assert capsys.readouterr().out.startswith("ROMEO:")


def test_resume_continues_with_nanogpts_adam_moments(nanogpt_out, imported, monkeypatch):
    _, model, saved = nanogpt_out
    folder = RunFolder(imported)
    state = folder.load_checkpoint("last")["optimizer"]["optimizers"][0]
    ours = dict(GPT(GPTConfig(**MODEL_ARGS)).named_parameters())  # nanoGPT's order: 2-D first, then the rest
    theirs = [n for n, p in ours.items() if p.dim() >= 2] + [n for n, p in ours.items() if p.dim() < 2]
    wte = state["state"][0]  # nanolab's first AdamW parameter: the first hidden matrix, blocks.0.attn.c_attn
    assert torch.equal(wte["exp_avg"], saved["state"][theirs.index("transformer.h.0.attn.c_attn.weight")]["exp_avg"])
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert main(["run", "--resume", str(imported)]) == EXIT_OK
    assert folder.read_meta()["status"] == "finished" and folder.read_summary()["steps"] == 12


def test_an_unmappable_key_is_one_line_and_writes_nothing(nanogpt_out, tmp_path, capsys):
    out, _, _ = nanogpt_out
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    ckpt["model"]["_orig_mod.transformer.h.0.attn.rotary.freqs"] = torch.zeros(4)
    (tmp_path / "out").mkdir()
    torch.save(ckpt, tmp_path / "out" / "ckpt.pt")
    capsys.readouterr()
    assert main(["import", "nanogpt", str(tmp_path / "out"), "--to", str(tmp_path / "run")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'transformer.h.0.attn.rotary.freqs' has no nanolab equivalent" in err
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- nanolab eval


EVAL_SPEC = """\
name: evaluated
seed: 7
data: {{path: {corpus}, block_size: 32}}
model: {{n_layer: 2, n_head: 2, n_embd: 32}}
train: {{batch_size: 16, max_iters: 100, lr: 3.0e-3, warmup_iters: 10, eval_interval: 50, eval_iters: 4,
        sample_tokens: 0, final_eval: true}}
tracking: {{wandb: {{mode: offline}}}}
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A run on 60,000 characters of Tiny Shakespeare (its val split: the last 6,000), with val/loss_whole, and its
    W&B run offline."""
    from nanolab import run

    folder = tmp_path_factory.mktemp("eval")
    (folder / "excerpt.txt").write_text(shared_shakespeare().read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    (folder / "spec.yaml").write_text(EVAL_SPEC.format(corpus=folder / "excerpt.txt"))
    return run(load_spec(folder / "spec.yaml"), show_progress=False).run_dir


def test_lm_eval_bits_per_byte_is_nanolabs_bpc_on_the_same_text(trained, tmp_path, capsys):
    import lm_eval
    from lm_eval.tasks import TaskManager

    from nanolab.evaluate import TASKS_DIR

    capsys.readouterr()
    assert main(["eval", str(trained), "--tasks", "nanolab_shakespeare"]) == EXIT_OK
    printed = capsys.readouterr().out
    folder = RunFolder(trained)
    record = folder.evals()[-1]
    bpb = record["figures"]["eval/nanolab_shakespeare/bits_per_byte"]
    assert f"eval/nanolab_shakespeare/bits_per_byte {bpb:.4f}" in printed and record["checkpoint"] == "best"
    whole_bpc = folder.read_summary()["final/val_loss_whole"] / math.log(2)  # char tokens: a token is a character
    assert abs(bpb - whole_bpc) / whole_bpc < 0.01
    latest = offline_runs(trained)[-1]  # the eval's session of the run's W&B run: the same id
    assert latest.name.endswith(folder.read_meta()["wandb_id"])
    assert inspect(latest)["summary"]["eval/nanolab_shakespeare/bits_per_byte"] == bpb
    # lm-eval by itself on the export, with no model_args but the folder, scores the same
    assert main(["export", str(trained), "--to", "hf", str(tmp_path / "hf")]) == EXIT_OK
    data = to_dict(load_spec(folder.config_path))["data"]  # what nanolab eval gives the task: the run's val split
    results = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={tmp_path / 'hf'}",
                                      tasks=["nanolab_shakespeare"], device="cpu", task_manager=TaskManager(
                                          include_path=str(TASKS_DIR), include_defaults=False,
                                          metadata={"data": data}))
    assert results["results"]["nanolab_shakespeare"]["bits_per_byte,none"] == pytest.approx(bpb, rel=1e-6)


@pytest.mark.timeout(900)  # lm-eval indexes its thousands of task files to look the name up
def test_an_unknown_task_is_one_line(trained, capsys):
    capsys.readouterr()
    assert main(["eval", str(trained), "--tasks", "nanolab_shakespear"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such lm-eval task (did you mean 'nanolab_shakespeare'?)" in err
