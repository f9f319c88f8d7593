"""μP (model.parametrization: mup): at the base width it is the standard model, step for step; away from it, the
scalings of Yang et al. 2022 Table 3 (hidden init and Adam lr / m, attention sqrt(hs_base)/hs, logits / m)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from nanolab.config import ModelConfig, TrainConfig
from nanolab.components.optim import build_optimizer, split_params
from nanolab.errors import SpecError
from nanolab.model import build_model
from nanolab.spec import load_spec

pytestmark = pytest.mark.usefixtures("one_thread")  # one intra-op thread for tiny models

VOCAB = 13

TINY = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=8, attention="naive")


def built(cfg: ModelConfig, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(cfg, vocab_size=VOCAB, block_size=cfg.block_size)


def trained(cfg: ModelConfig, optimizer: str, steps: int = 3):
    """The model after `steps` optimizer steps on fixed random batches, and its logits on a probe batch."""
    model = built(cfg)
    opt = build_optimizer(model, TrainConfig(optimizer=optimizer, lr=1e-2), "cpu")
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        idx = torch.randint(0, VOCAB, (4, cfg.block_size), generator=gen)
        _, loss = model(idx, torch.roll(idx, -1, dims=1))
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model(torch.randint(0, VOCAB, (2, cfg.block_size), generator=gen))


@pytest.mark.parametrize("changes", [{}, {"tie_weights": False}, {"qk_norm": True, "attention": "sdpa"}])
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_mup_at_the_base_width_is_the_standard_model_step_for_step(changes, optimizer):
    standard = replace(TINY, **changes)
    mup = replace(standard, parametrization="mup", mup_base_width=standard.n_embd)
    probe = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(3))
    assert torch.equal(built(standard)(probe), built(mup)(probe))
    assert torch.equal(trained(standard, optimizer), trained(mup, optimizer))


def test_mup_scales_hidden_init_and_adam_lr_by_the_width_multiplier():
    wide = replace(TINY, n_embd=128, parametrization="mup", mup_base_width=32)  # m = 4
    standard, mup = built(replace(TINY, n_embd=128)), built(wide)
    hidden_std = [p.std().item() / q.std().item() for p, q in zip(split_params(mup)[0], split_params(standard)[0])]
    assert hidden_std == pytest.approx([0.5] * len(hidden_std), rel=1e-6)  # the same draws, times 1/sqrt(4)
    assert torch.equal(mup.wte.weight, standard.wte.weight)  # the embedding (and tied readout) keep their init
    assert mup.blocks[0].attn.q_scale == 0.5  # sqrt(hs_base / hs): scores q k^T sqrt(16) / 64
    opt = build_optimizer(mup, TrainConfig(lr=1e-2), "cpu")
    lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert {lrs[id(p)] for p in split_params(mup)[0]} == {1e-2 / 4}
    assert {lrs[id(p)] for p in [*split_params(mup)[1], *split_params(mup)[2]]} == {1e-2}
    assert opt.lr() == 1e-2  # train/lr stays train.lr
    idx = torch.randint(0, VOCAB, (1, 8))
    with torch.no_grad():
        h = mup.norm_f(mup.blocks[1](mup.blocks[0](mup.position.embed(mup.wte(idx), torch.arange(8)),
                                                   mup.position, torch.arange(8)), mup.position, torch.arange(8)))
        assert torch.allclose(mup(idx), mup.lm_head(h) / 4, atol=1e-6)  # the output multiplier 1/m


def test_muon_keeps_its_lr_under_mup():
    model = built(replace(TINY, n_embd=64, parametrization="mup", mup_base_width=32))
    opt = build_optimizer(model, TrainConfig(optimizer="muon", lr=1e-2, muon_lr=0.02), "cpu")
    assert [g["lr"] for g in opt.optimizers[0].param_groups] == [0.02]


@pytest.mark.parametrize("override, message", [
    ("model.parametrization=mup", "model.mup_base_width = None: the n_embd the hyperparameters were tuned at, "
     "with parametrization mup (and null under standard)"),
    ("model.mup_base_width=64", "model.mup_base_width = 64: the n_embd the hyperparameters were tuned at, "
     "with parametrization mup (and null under standard)"),
    ("model.parametrization=mu", "model.parametrization = 'mu': one of: standard, mup"),
])
def test_bad_parametrization_is_one_line_naming_file_and_key(tmp_path, override, message):
    spec = tmp_path / "s.yaml"
    spec.write_text("model: {n_embd: 32}\n")
    with pytest.raises(SpecError) as err:
        load_spec(spec, [override])
    assert str(err.value).endswith(message) and str(spec) in str(err.value) and "\n" not in str(err.value)


def test_mup_width_multiplier():
    assert replace(TINY, parametrization="mup", mup_base_width=16).width_mult == 2.0
    assert TINY.width_mult == 1.0 and math.isclose(replace(TINY, n_embd=8, parametrization="mup",
                                                           mup_base_width=32).width_mult, 0.25)
