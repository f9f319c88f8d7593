"""modded-nanogpt's parts: Muon's batched float32 iteration, the wsd schedule, the whole-val evaluation, logit soft-capping, value embeddings, and
perf/eval_s; each against a reference written here, and all of them through a stopped and resumed run."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import socket
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import build_fingerprint, rows

from nanolab import load_spec, run
from nanolab.components.optim import Muon, build_optimizer, lr_factor
from nanolab.config import ConfigError, ModelConfig, TrainConfig
from nanolab.data import load_data
from nanolab.distributed import World
from nanolab.model import build_model
from nanolab.runfolder import RunFolder
from nanolab.train_loop import whole_split_loss

pytestmark = pytest.mark.usefixtures("one_thread")  # the recorded logits below were taken on one thread

VOCAB = 11


def tiny(**changes) -> ModelConfig:
    return replace(ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=8), **changes)


def make(cfg: ModelConfig, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(cfg, vocab_size=VOCAB, block_size=cfg.block_size)


def randomised(cfg: ModelConfig):
    """Weights far from GPT-2's small init, so that logits are large and every path matters."""
    model = make(cfg)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model.eval()


def tokens(shape, seed=3, high=VOCAB):
    return torch.randint(0, high, shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- config validation


@pytest.mark.parametrize("section, key, value, message", [
    (TrainConfig, "cooldown_frac", 0.0, r"cooldown_frac = 0\.0: must be in \(0, 1\]"),
    (TrainConfig, "cooldown_frac", 1.5, r"cooldown_frac = 1\.5: must be in \(0, 1\]"),
    (ModelConfig, "logit_softcap", 0.0, r"logit_softcap = 0\.0: must be > 0 \(or null"),
    (ModelConfig, "logit_softcap", -30.0, r"logit_softcap = -30\.0: must be > 0"),
    (ModelConfig, "value_embeds", -1, r"value_embeds = -1: must be in \[0, n_layer=4\]"),
    (ModelConfig, "value_embeds", 5, r"value_embeds = 5: must be in \[0, n_layer=4\]"),
])
def test_new_keys_are_validated(section, key, value, message):
    with pytest.raises(ConfigError, match=message):
        section(**{key: value})
    assert section(**{key: {"cooldown_frac": 1.0, "logit_softcap": 15.0, "value_embeds": 4}[key]})  # the bounds


# ----------------------------------------------------------------------------- wsd


def wsd_reference(step: int, warmup: int, total: int, frac: float, lr: float, min_lr: float) -> float:
    """Hägele et al. 2024 / modded-nanogpt: linear warmup, the peak, then linear to min_lr over the last `frac` of
    the steps after warmup."""
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    done = min(1.0, (step - warmup) / (total - warmup))
    return min_lr + (lr - min_lr) * (1.0 if done <= 1 - frac else (1 - done) / frac)


def test_wsd_is_warmup_then_the_peak_then_a_linear_cooldown():
    t = TrainConfig(max_iters=20, warmup_iters=5, schedule="wsd", cooldown_frac=0.4, lr=1.0, min_lr=0.1)
    factors = [lr_factor(step, t) for step in range(25)]
    assert factors[:5] == pytest.approx([1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6], rel=1e-15)
    assert factors[5:15] == [1.0] * 10  # stable: progress 0 .. 0.6 exactly at the peak
    # cooldown: progress 10/15 .. 14/15, factor (1 - progress) / 0.4 = 5/6 .. 1/6 of the way from min_lr to the peak
    assert factors[15:20] == pytest.approx([0.1 + 0.9 * (5 - k) / 6 for k in range(5)], rel=1e-12)
    assert factors[19] == pytest.approx(0.25, rel=1e-12) and factors[20:] == pytest.approx([0.1] * 5, rel=1e-12)
    assert factors == pytest.approx([wsd_reference(s, 5, 20, 0.4, 1.0, 0.1) for s in range(25)], rel=1e-12)


def test_wsd_with_the_whole_span_as_cooldown_is_linear_and_only_wsd_reads_cooldown_frac():
    base = TrainConfig(max_iters=40, warmup_iters=7, lr=3e-3, min_lr=3e-4)
    whole = replace(base, schedule="wsd", cooldown_frac=1.0)
    assert [lr_factor(s, whole) for s in range(45)] == pytest.approx(
        [lr_factor(s, replace(base, schedule="linear")) for s in range(45)], rel=1e-12)
    for name in ("cosine", "linear", "constant"):  # the key is wsd's alone
        a, b = replace(base, schedule=name, cooldown_frac=0.1), replace(base, schedule=name, cooldown_frac=0.9)
        assert [lr_factor(s, a) for s in range(45)] == [lr_factor(s, b) for s in range(45)]
    short = replace(base, schedule="wsd", cooldown_frac=0.1)
    assert lr_factor(36, short) == 1.0 and lr_factor(37, short) < 1.0  # the peak until step 7 + 0.9 x 33 = 36.7


# ----------------------------------------------------------------------------- logit soft-capping

# logits of make(tiny(**changes)) on tokens((2, 8)), recorded before logit_softcap and value_embeds existed, one
# thread, on REFERENCE_BUILD: (sha256 of the float32 bytes, float64 sum)
TODAY = {
    (): ("d4fe1e906321cc1c", 0.4848075956106186),
    (("position", "rotary"), ("qk_norm", True), ("tie_weights", False)): ("01d9ee04ded82c13", 1.9608273501507938),
}
REFERENCE_BUILD = "2.13.0+cpu:abce025a316a23db"


@pytest.mark.parametrize("changes", list(TODAY), ids=["default", "rotary+qk_norm+untied"])
def test_switched_off_parts_leave_todays_logits(changes):
    model = make(tiny(logit_softcap=None, value_embeds=0, **dict(changes))).eval()
    logits = model(tokens((2, 8)))
    digest, total = TODAY[changes]
    if build_fingerprint() == REFERENCE_BUILD:  # the same floats, bit for bit
        assert hashlib.sha256(logits.detach().numpy().tobytes()).hexdigest()[:16] == digest
    assert logits.double().sum().item() == pytest.approx(total, rel=1e-5)
    assert not any("value_embeds" in name for name in model.state_dict())


def test_logit_softcap_is_c_tanh_of_the_uncapped_logits():
    capped = randomised(tiny(logit_softcap=0.5))
    plain = make(tiny()).eval()
    plain.load_state_dict(capped.state_dict())  # the cap has no parameters
    idx, targets = tokens((2, 8)), tokens((2, 8), seed=4)
    raw = plain(idx)
    assert raw.abs().max() > 1  # the cap bites
    logits, loss = capped(idx, targets)
    assert torch.equal(logits, 0.5 * torch.tanh(raw / 0.5))
    assert logits.abs().max() < 0.5
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1)))
    assert not torch.allclose(loss, F.cross_entropy(raw.reshape(-1, VOCAB), targets.reshape(-1)))


# ----------------------------------------------------------------------------- value embeddings


def reference_logits(model, idx, value_embeds: int):
    """A pre-norm GPT with learned positions written out by hand; layer i < value_embeds adds the i-th table's
    rows of the input tokens to its values."""
    B, T = idx.shape
    C, nh = model.cfg.n_embd, model.cfg.n_head
    heads = lambda t: t.view(B, T, nh, C // nh).transpose(1, 2)  # noqa: E731
    x = model.wte.weight[idx] + model.position.wpe.weight[:T]
    for i, block in enumerate(model.blocks):
        q, k, v = block.attn.c_attn(block.norm1(x)).split(C, dim=2)
        if i < value_embeds:
            v = v + model.value_embeds[i].weight[idx]
        scores = heads(q) @ heads(k).transpose(-2, -1) / math.sqrt(C // nh)
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        y = (scores.softmax(dim=-1) @ heads(v)).transpose(1, 2).reshape(B, T, C)
        x = x + block.attn.c_proj(y)
        x = x + block.mlp(block.norm2(x))
    return model.lm_head(model.norm_f(x))


@pytest.mark.parametrize("attention", ["naive", "sdpa"])
def test_value_embeddings_add_a_table_to_the_values_of_the_first_layers(attention):
    model = randomised(tiny(n_layer=3, value_embeds=2, attention=attention))
    idx = tokens((2, 8))
    logits = model(idx)
    torch.testing.assert_close(logits, reference_logits(model, idx, 2), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(logits, reference_logits(model, idx, 1), rtol=1e-2, atol=1e-2)  # layer 1's table counts


def test_value_embeddings_add_exactly_their_tables_to_the_parameters():
    base, model = make(tiny()), make(tiny(value_embeds=2))
    assert model.num_params() - base.num_params() == 2 * VOCAB * 16
    assert [p.shape for p in model.value_embeds.parameters()] == [(VOCAB, 16)] * 2
    # tables are looked up, not multiplied: the non-embedding count and the FLOPs estimate stay
    assert model.num_params(non_embedding=True) == base.num_params(non_embedding=True)
    assert model.flops_per_token() == base.flops_per_token()
    assert abs(torch.cat([p.flatten() for p in model.value_embeds.parameters()]).std().item() - 0.02) < 0.005


def test_gradient_reaches_the_rows_of_the_tokens_seen_and_no_others():
    model = make(tiny(value_embeds=2)).train()
    idx, targets = tokens((2, 8), high=6), tokens((2, 8), seed=4)  # tokens 0..5 only
    _, loss = model(idx, targets)
    loss.backward()
    for table in model.value_embeds:
        grad = table.weight.grad
        assert grad[:6].abs().sum(dim=1).gt(0).all()
        assert torch.equal(grad[6:], torch.zeros_like(grad[6:]))


def test_value_embeddings_with_the_kv_cache_and_activation_checkpointing():
    cfg = tiny(value_embeds=1, position="rotary")
    model = randomised(cfg)
    prompt = tokens((2, 3))
    assert torch.equal(model.generate(prompt, 20, temperature=0, use_cache=True),
                       model.generate(prompt, 20, temperature=0, use_cache=False))
    grads = []
    for recompute in (False, True):
        twin = make(replace(cfg, checkpoint_activations=recompute)).train()
        twin.load_state_dict(model.state_dict())
        twin(prompt, tokens((2, 3), seed=5))[1].backward()
        grads.append(twin.value_embeds[0].weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


# ----------------------------------------------------------------------------- the whole-val loss


def whole_loss_reference(model, val: torch.Tensor, T: int) -> float:
    """Windows val[iT:(i+1)T] predicting val[iT+1:(i+1)T+1], the last one shorter: every token but the first once."""
    n = len(val) - 1
    full = n // T
    x, y = val[:full * T].view(full, T), val[1:full * T + 1].view(full, T)
    total = F.cross_entropy(model(x).flatten(0, 1).double(), y.flatten(), reduction="sum").item()
    if n % T:
        tail_x, tail_y = val[full * T:n], val[full * T + 1:]
        total += F.cross_entropy(model(tail_x[None])[0].double(), tail_y, reduction="sum").item()
    return total / n


def muon_steps(make_optimizer, steps: int = 3) -> list[torch.Tensor]:
    """Parameters of three shapes (two alike, so that one batch holds two matrices; one tall, one wide) after
    `steps` Muon steps on the same random gradients."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(0.1 * torch.randn(shape)) for shape in ((16, 48), (16, 48), (64, 16), (16, 16))]
    optimizer, gen = make_optimizer(params), torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        optimizer.step()
    return [p.detach() for p in params]


def test_muon_in_bfloat16_is_torchs_muon_bit_for_bit():
    theirs = muon_steps(lambda ps: torch.optim.Muon(ps, lr=0.02, weight_decay=0.1))
    ours = muon_steps(lambda ps: Muon(ps, lr=0.02, weight_decay=0.1, ns_dtype=torch.bfloat16))
    assert all(torch.equal(a, b) for a, b in zip(theirs, ours))


def test_muon_in_float32_is_the_float64_iteration_where_torchs_bfloat16_is_not():
    exact = muon_steps(lambda ps: Muon(ps, lr=0.02, weight_decay=0.1, ns_dtype=torch.float64))
    ours = muon_steps(lambda ps: Muon(ps, lr=0.02, weight_decay=0.1, ns_dtype=torch.float32))
    theirs = muon_steps(lambda ps: torch.optim.Muon(ps, lr=0.02, weight_decay=0.1))
    assert max((a - b).abs().max().item() for a, b in zip(ours, exact)) < 1e-6
    assert max((a - b).abs().max().item() for a, b in zip(theirs, exact)) > 1e-5


def test_the_muon_optimizer_iterates_in_float32_on_the_cpu_and_bfloat16_on_cuda():
    model = make(tiny())
    muons = {device: build_optimizer(model, TrainConfig(optimizer="muon"), device).optimizers[0] for device in ("cpu", "cuda")}
    assert (muons["cpu"].ns_dtype, muons["cuda"].ns_dtype) == (torch.float32, torch.bfloat16)


@pytest.mark.parametrize("length", [8 * 37 + 1, 8 * 37 + 6, 8 * 37], ids=["whole", "last-5", "last-7"])
def test_whole_split_loss_predicts_every_token_but_the_first_once(length):
    model = randomised(tiny())
    val = tokens((length,), seed=9)
    with torch.no_grad():
        expected = whole_loss_reference(model, val, 8)
    got = whole_split_loss(model, val.numpy().astype(np.uint16), block_size=8, batch_size=5)
    assert got == pytest.approx(expected, rel=1e-6)


def _rank(rank: int, port: int, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        model = randomised(tiny())
        val = tokens((8 * 37 + 6,), seed=9).numpy()
        loss = whole_split_loss(model, val, block_size=8, batch_size=3, world=World(rank, 2, rank))
        Path(out, f"{rank}.json").write_text(json.dumps(loss))
    finally:
        torch.distributed.destroy_process_group()


def test_whole_split_loss_under_two_ranks_weighs_every_token_alike(tmp_path):
    """38 windows in batches of 3: rank 0 takes 7 batches (the short last window among them), rank 1 six."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_rank, args=(port, str(tmp_path)), nprocs=2)
    losses = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)]
    model = randomised(tiny())
    with torch.no_grad():
        expected = whole_loss_reference(model, tokens((8 * 37 + 6,), seed=9), 8)
    assert losses[0] == losses[1] == pytest.approx(expected, rel=1e-6)


# ----------------------------------------------------------------------------- a run with every part

SPEC = """\
name: parts
seed: 7
data: {block_size: 16}
model: {n_layer: 2, n_head: 2, n_embd: 16, logit_softcap: 15.0, value_embeds: 1}
train: {batch_size: 4, max_iters: 10, lr: 3.0e-3, min_lr: 3.0e-4, warmup_iters: 2, schedule: wsd, cooldown_frac: 0.5,
        eval_interval: 5, eval_iters: 2, log_interval: 1, checkpoint_interval: 5, sample_tokens: 8, final_eval: true}
tracking: {wandb: {mode: disabled}}
"""


def test_a_run_with_every_part_resumes_identically_and_ends_with_the_whole_val_loss(tmp_path):
    (tmp_path / "parts.yaml").write_text(SPEC)
    cfg = load_spec(tmp_path / "parts.yaml")
    whole = run(cfg, show_progress=False)

    def interrupt(step, metrics):
        if step == 5:
            os.kill(os.getpid(), signal.SIGTERM)  # the run saves at this step and stops, as under a scheduler

    stopped = run(cfg, on_eval=interrupt, show_progress=False)
    assert stopped.status == "interrupted" and "final/val_loss_whole" not in stopped.summary
    assert not any("val/loss_whole" in row for row in rows(stopped.run_dir))
    resumed = run(cfg, resume_dir=stopped.run_dir, show_progress=False)
    assert whole.status == resumed.status == "finished"
    assert rows(resumed.run_dir) == rows(whole.run_dir)  # no perf/*: the rest bit-identical
    a, b = (RunFolder(r.run_dir).load_checkpoint("last")["model"] for r in (whole, resumed))
    assert "value_embeds.0.weight" in a and all(torch.equal(a[name], b[name]) for name in a)

    raw = [json.loads(line) for line in (whole.run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [row for row in raw if "val/loss" in row]
    assert [row["step"] for row in evals] == [5, 10] and all(row["perf/eval_s"] > 0 for row in evals)
    assert [row["step"] for row in raw if "val/loss_whole" in row] == [10]  # once, with the last evaluation
    assert not any("perf/eval_s" in row for row in raw if "val/loss" not in row)
    assert whole.summary["final/val_loss_whole"] == evals[-1]["val/loss_whole"]
    lrs = [(row["step"], row["train/lr"]) for row in raw if "train/lr" in row]
    assert [s for s, _ in lrs] == list(range(1, 11))  # each row's rate is that of the step it logs (step - 1)
    assert [lr for _, lr in lrs] == pytest.approx([wsd_reference(s - 1, 2, 10, 0.5, 3e-3, 3e-4) for s in range(1, 11)],
                                                  rel=1e-12)

    model = build_model(cfg.model, vocab_size=65, block_size=16)
    model.load_state_dict(a)
    val = torch.from_numpy(np.asarray(load_data(cfg.data).val, dtype=np.int64))
    with torch.no_grad():
        expected = whole_loss_reference(model.eval(), val, 16)
    assert evals[-1]["val/loss_whole"] == pytest.approx(expected, rel=1e-6)
