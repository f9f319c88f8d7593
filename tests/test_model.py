"""nanolab.model: every component combination builds a causal GPT whose kernels agree and whose KV cache
changes nothing; parameter counts, initialisation switches, sampling and a tiny overfit."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
import torch

from nanolab import registry
from nanolab.config import ModelConfig
from nanolab.model import KVCache, build_model, sample

pytestmark = pytest.mark.usefixtures("one_thread")  # one intra-op thread for tiny models

VOCAB = 11
TINY = ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, attention="naive")


def make_model(cfg: ModelConfig, vocab_size: int = VOCAB):
    """build_model with the context `cfg.block_size` that these tests write into their model configs."""
    return build_model(cfg, vocab_size=vocab_size, block_size=cfg.block_size)


def tiny(**changes) -> ModelConfig:
    return replace(TINY, **changes)


def randomise(model, std=0.5):
    """Weights far from GPT-2's small init, so that the layers interact strongly and a wrong cache shows."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    return model.eval()


def naive_and_sdpa(cfg):
    """The same weights behind both attention kernels."""
    torch.manual_seed(0)
    naive = randomise(make_model(replace(cfg, attention="naive"), VOCAB))
    sdpa = make_model(replace(cfg, attention="sdpa"), VOCAB).eval()
    sdpa.load_state_dict(naive.state_dict())
    return naive, sdpa


def check_model(cfg):
    naive, sdpa = naive_and_sdpa(cfg)
    torch.manual_seed(2)
    idx = torch.randint(0, VOCAB, (2, cfg.block_size))
    logits = naive(idx)
    assert logits.shape == (2, cfg.block_size, VOCAB)

    # causality: tokens after t leave the logits up to t unchanged
    t = 3
    changed = idx.clone()
    changed[:, t + 1:] = (changed[:, t + 1:] + 1) % VOCAB
    for model in (naive, sdpa):
        torch.testing.assert_close(model(changed)[:, : t + 1], model(idx)[:, : t + 1])
        assert not torch.allclose(model(changed)[:, t + 1:], model(idx)[:, t + 1:])

    # both kernels compute the same function
    assert ((sdpa(idx) - logits).norm() / logits.norm()).item() < 1e-5

    # greedy generation past block_size: the KV cache changes nothing
    prompt = idx[:, :3]
    for model in (naive, sdpa):
        uncached = model.generate(prompt, 20, temperature=0, use_cache=False)
        assert uncached.shape == (2, 23)
        assert torch.equal(model.generate(prompt, 20, temperature=0, use_cache=True), uncached)


COMBOS = list(itertools.product(registry.available("position"), registry.available("activation"),
                                registry.available("norm")))


@pytest.mark.parametrize("position, activation, norm", COMBOS)
@pytest.mark.parametrize("placement", ["pre", "post"])
def test_every_combination(position, activation, norm, placement):
    check_model(tiny(position=position, activation=activation, norm=norm, norm_placement=placement))


@pytest.mark.parametrize("position", registry.available("position"))
@pytest.mark.parametrize("changes", [
    dict(qk_norm=True), dict(tie_weights=False, bias=True), dict(zero_init_proj=True, mlp_ratio=2.0),
    dict(n_head=3, n_embd=24), dict(n_layer=3, n_head=4, n_embd=32, block_size=5),
], ids=["qk_norm", "untied+bias", "zero_init+ratio2", "3heads", "3layers"])
def test_switches(position, changes):
    check_model(tiny(position=position, **changes))


@pytest.mark.parametrize("position", registry.available("position"))
def test_cached_forward_equals_full_forward(position):
    """Prefill 3 tokens, then feed one token at a time: every step's logits are the full pass's."""
    model, _ = naive_and_sdpa(tiny(position=position))
    idx = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(3))
    full = model(idx)
    cache = [KVCache() for _ in model.blocks]
    torch.testing.assert_close(model(idx[:, :3], cache=cache), full[:, :3])
    for t in range(3, 8):
        torch.testing.assert_close(model(idx[:, t:t + 1], pos=torch.tensor([t]), cache=cache), full[:, t:t + 1])
    assert cache[0].k.shape == (2, 2, 8, 8)  # (B, nh, Tk, hs)


@pytest.mark.parametrize("position", registry.available("position"))
def test_relative_schemes_are_shift_invariant(position):
    model, _ = naive_and_sdpa(tiny(position=position, block_size=64))
    idx = torch.randint(0, VOCAB, (1, 6), generator=torch.Generator().manual_seed(4))
    if model.position.relative:
        torch.testing.assert_close(model(idx, pos=torch.arange(6) + 50), model(idx), rtol=0, atol=1e-4)
    else:
        assert not torch.allclose(model(idx, pos=torch.arange(6) + 50), model(idx))


# ----------------------------------------------------------------------------- parameters and init


def test_parameter_count_by_hand():
    cfg = ModelConfig(n_layer=2, n_embd=32, n_head=4, block_size=16, position="learned", activation="gelu",
                      norm="layernorm", bias=False, tie_weights=True)
    model = make_model(cfg, vocab_size=65)
    wte = 65 * 32  # 2080, shared with the LM head
    wpe = 16 * 32  # 512
    attn = 32 * 3 * 32 + 32 * 32  # c_attn 3072 + c_proj 1024
    mlp = 32 * 128 + 128 * 32  # c_fc 4096 + c_proj 4096
    block = 32 + attn + 32 + mlp  # two LayerNorm weights, no biases: 12352
    total = wte + wpe + 2 * block + 32  # + final norm: 27328
    assert model.num_params() == total == 27328
    assert model.num_params(non_embedding=True) == total - wte - wpe == 24736
    # 6 * (non-embedding + tied LM head) + 12 * L * H * Q * T
    assert model.flops_per_token() == 6 * (24736 + 2080) + 12 * 2 * 4 * 8 * 16 == 173184
    untied = make_model(replace(cfg, tie_weights=False), vocab_size=65)
    assert untied.num_params() == total + 65 * 32
    assert untied.flops_per_token() == model.flops_per_token()
    assert make_model(replace(cfg, norm_placement="post"), vocab_size=65).num_params() == total - 32  # no final norm


def test_parameter_names_and_init():
    cfg = tiny(position="learned", bias=True, tie_weights=False, n_layer=4)
    model = make_model(cfg, VOCAB)
    names = dict(model.named_parameters())
    assert {"wte.weight", "position.wpe.weight", "lm_head.weight", "norm_f.weight"} <= set(names)
    assert all("norm" in name for name, p in names.items() if p.ndim == 1 and name.endswith("weight"))
    assert all(torch.equal(p, torch.zeros_like(p)) for name, p in names.items() if name.endswith(".bias")
               and "norm" not in name)
    assert all(torch.equal(p, torch.ones_like(p)) for name, p in names.items() if "norm" in name and "weight" in name)
    projections = torch.cat([torch.cat((b.attn.c_proj.weight.flatten(), b.mlp.c_proj.weight.flatten()))
                             for b in model.blocks])
    assert abs(projections.std().item() - 0.02 / (2 * 4) ** 0.5) < 0.001  # GPT-2's scaled residual init
    assert abs(model.blocks[0].attn.c_attn.weight.std().item() - 0.02) < 0.002
    tied = make_model(tiny(), VOCAB)
    assert tied.lm_head.weight is tied.wte.weight


def test_zero_init_proj_makes_blocks_identities():
    model = make_model(tiny(position="learned", zero_init_proj=True), VOCAB).eval()
    for block in model.blocks:
        assert not block.attn.c_proj.weight.any() and not block.mlp.c_proj.weight.any()
    idx = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(0))
    x = model.position.embed(model.wte(idx), torch.arange(5))
    torch.testing.assert_close(model(idx), model.lm_head(model.norm_f(x)))


def test_dropout_acts_only_in_training():
    torch.manual_seed(0)
    model = make_model(tiny(dropout=0.3), VOCAB)
    idx = torch.randint(0, VOCAB, (2, 8))
    model.train()
    assert not torch.equal(model(idx), model(idx))
    model.eval()
    assert torch.equal(model(idx), model(idx))
    no_dropout = make_model(tiny(), VOCAB).train()
    assert torch.equal(no_dropout(idx), no_dropout(idx))


def test_loss_is_mean_cross_entropy():
    model = make_model(tiny(), VOCAB)
    idx = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))
    targets = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(1))
    logits, loss = model(idx, targets)
    assert loss.shape == ()
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1)))
    assert abs(loss.item() - torch.log(torch.tensor(VOCAB)).item()) < 0.05  # ~uniform at init


# ----------------------------------------------------------------------------- sampling


def test_sampling_is_reproducible_with_a_generator():
    model = make_model(tiny(position="rotary"), VOCAB).eval()
    prompt = torch.zeros(1, 1, dtype=torch.long)

    def run(seed, **kwargs):
        return model.generate(prompt, 12, generator=torch.Generator().manual_seed(seed), **kwargs)

    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))
    assert torch.equal(run(7, use_cache=False), run(7))
    greedy = model.generate(prompt, 12, temperature=0)
    assert torch.equal(run(7, top_k=1), greedy)
    assert torch.equal(run(7, top_p=1e-6), greedy)
    long_prompt = torch.randint(0, VOCAB, (1, 20), generator=torch.Generator().manual_seed(0))
    assert model.generate(long_prompt, 3).shape == (1, 23)  # cropped to block_size inside


def test_top_k_and_top_p_restrict_the_support():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.1, 0.06, 0.04]])).repeat(2000, 1)
    gen = torch.Generator().manual_seed(0)
    assert set(sample(logits, top_k=2, generator=gen).flatten().tolist()) == {0, 1}
    assert set(sample(logits, top_p=0.85, generator=gen).flatten().tolist()) == {0, 1, 2}  # 0.5 + 0.3 < 0.85
    assert set(sample(logits, top_p=0.75, generator=gen).flatten().tolist()) == {0, 1}
    assert set(sample(logits, generator=gen).flatten().tolist()) == {0, 1, 2, 3, 4}
    assert sample(logits[:1], temperature=0).tolist() == [[0]]


# ----------------------------------------------------------------------------- training


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model = make_model(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, position="rotary"), VOCAB)
    x = torch.randint(0, VOCAB, (4, 16))
    y = torch.roll(x, -1, dims=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(300):
        _, loss = model(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 0.1:
            break
    assert loss.item() < 0.1, f"loss {loss.item():.3f} after {step + 1} steps"


def test_activation_checkpointing_gives_the_same_gradients():
    """Recomputing the blocks in backward (same RNG for dropout) changes memory, not the maths."""
    cfgs = [ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, dropout=0.1, checkpoint_activations=flag)
            for flag in (False, True)]
    plain, ckpt = (make_model(cfg, 11) for cfg in cfgs)
    ckpt.load_state_dict(plain.state_dict())
    idx = torch.randint(0, 11, (3, 8), generator=torch.Generator().manual_seed(0))
    for model in (plain, ckpt):
        torch.manual_seed(1)
        model(idx, idx)[1].backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=1e-7, msg=name)


def test_build_model_takes_the_context_from_its_caller():
    """The model config need not know the data: block_size comes with build_model, as vocab_size does."""
    model = build_model(ModelConfig(n_layer=1, n_head=2, n_embd=16, position="learned"), vocab_size=VOCAB,
                        block_size=24)
    assert model.cfg.block_size == 24 and model.position.wpe.weight.shape == (24, 16)
    assert model.flops_per_token() > build_model(ModelConfig(n_layer=1, n_head=2, n_embd=16, position="learned"),
                                                 vocab_size=VOCAB, block_size=8).flops_per_token()
    assert model.generate(torch.zeros(1, 30, dtype=torch.long), 2).shape == (1, 32)  # cropped to 24 inside
