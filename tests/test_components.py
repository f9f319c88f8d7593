"""The registered components one by one: norms, MLPs, attention kernels, position schemes, the registry."""

from __future__ import annotations

import math
import sys

import pytest
import torch
import torch.nn.functional as F

from nanolab import registry
from nanolab.components.attention import causal_mask
from nanolab.components.positions import alibi_slopes
from nanolab.config import ModelConfig
from nanolab.errors import NanolabError
from nanolab.model import build, build_model, component_args

ARGS = component_args(ModelConfig(n_layer=1, n_head=4, n_embd=16, block_size=8))


def make(kind, name, **changes):
    return build(kind, name, {**ARGS, **changes})


def test_builtin_names():
    assert set(registry.available("attention")) >= {"naive", "sdpa"}
    assert set(registry.available("position")) >= {"learned", "sinusoidal", "rotary", "alibi", "none"}
    assert set(registry.available("activation")) >= {"relu", "gelu", "relu2", "swiglu", "geglu"}
    assert set(registry.available("norm")) >= {"layernorm", "rmsnorm"}
    assert all(entry.description for kind in ("attention", "position", "activation", "norm")
               for entry in registry.entries(kind))


# ----------------------------------------------------------------------------- norms


def test_layernorm_normalises_and_has_optional_bias():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16) * 5 + 3
    y = make("norm", "layernorm")(x)
    variance = x.var(-1, unbiased=False, keepdim=True)
    torch.testing.assert_close(y, (x - x.mean(-1, keepdim=True)) / torch.sqrt(variance + 1e-5))
    assert make("norm", "layernorm", bias=False).bias is None
    assert make("norm", "layernorm", bias=True).bias.shape == (16,)


def test_rmsnorm_matches_its_formula_and_has_no_bias():
    torch.manual_seed(0)
    norm = make("norm", "rmsnorm", bias=True)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(16.0))
    x = torch.randn(2, 3, 16)
    torch.testing.assert_close(norm(x), x / torch.sqrt(x.square().mean(-1, keepdim=True) + 1e-6) * torch.arange(16.0))
    assert [name for name, _ in norm.named_parameters()] == ["weight"]


# ----------------------------------------------------------------------------- MLPs


@pytest.mark.parametrize("name", registry.available("activation"))
def test_mlp_shape_and_output_projection(name):
    mlp = make("activation", name, n_embd=24, mlp_ratio=4.0, bias=False)
    assert mlp(torch.randn(2, 5, 24)).shape == (2, 5, 24)
    assert mlp.c_proj.out_features == 24
    glu = name.endswith("glu")
    assert mlp.c_proj.in_features == (int(2 / 3 * 4.0 * 24) if glu else 4 * 24)  # 64 or 96
    assert sum(p.numel() for p in mlp.parameters()) == (3 * 24 * 64 if glu else 2 * 24 * 96)  # 4608 either way


@pytest.mark.parametrize("name, act", [
    ("relu", F.relu), ("gelu", F.gelu), ("relu2", lambda h: F.relu(h) ** 2),
])
def test_plain_mlp_applies_its_activation(name, act):
    torch.manual_seed(0)
    mlp, x = make("activation", name), torch.randn(2, 3, 16)
    torch.testing.assert_close(mlp(x), mlp.c_proj(act(mlp.c_fc(x))))


def test_relu_squared_has_the_gradient_of_its_formula():
    from nanolab.components.mlp import relu_squared

    x = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    x.data[0, :3] = 0.0  # relu's kink: both give 0 there
    g = torch.randn(4, 7, dtype=torch.float64)
    (ours,) = torch.autograd.grad(relu_squared(x), x, g)
    (autograd,) = torch.autograd.grad(F.relu(x).square(), x, g)
    assert torch.equal(relu_squared(x), F.relu(x).square())
    torch.testing.assert_close(ours, autograd, rtol=0, atol=1e-15)
    assert torch.autograd.gradcheck(relu_squared, (x,))


@pytest.mark.parametrize("name, act", [("swiglu", F.silu), ("geglu", F.gelu)])
def test_glu_gates_the_up_projection(name, act):
    torch.manual_seed(0)
    mlp, x = make("activation", name), torch.randn(2, 3, 16)
    hidden = mlp.c_proj.in_features
    w_gate, w_up = mlp.c_fc.weight[:hidden], mlp.c_fc.weight[hidden:]
    torch.testing.assert_close(mlp(x), mlp.c_proj(act(x @ w_gate.T) * (x @ w_up.T)))


# ----------------------------------------------------------------------------- attention kernels


def reference_attention(q, k, v, bias=None):
    tq, tk = q.size(-2), k.size(-2)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    visible = torch.arange(tk)[None, :] <= torch.arange(tq)[:, None] + tk - tq
    scores = scores.masked_fill(~visible, float("-inf")) + (0 if bias is None else bias)
    return scores.softmax(-1) @ v


def test_causal_mask_with_offset():
    assert causal_mask(2, 4).tolist() == [[0, 0, 0, float("-inf")], [0, 0, 0, 0]]
    upper = torch.ones(3, 3).triu(1).bool()
    assert torch.equal(causal_mask(3, 3), torch.zeros(3, 3).masked_fill(upper, float("-inf")))


@pytest.mark.parametrize("name", registry.available("attention"))
@pytest.mark.parametrize("tq, tk", [(6, 6), (2, 6), (1, 6)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_kernel_matches_reference_with_cache_offset(name, tq, tk, with_bias):
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, tq, 8), torch.randn(2, 3, tk, 8), torch.randn(2, 3, tk, 8)
    bias = torch.randn(3, tq, tk) if with_bias else None
    kernel = make("attention", name).eval()
    torch.testing.assert_close(kernel(q, k, v, bias), reference_attention(q, k, v, bias))


@pytest.mark.parametrize("name", registry.available("attention"))
def test_kernel_last_queries_equal_the_full_computation(name):
    """What a KV cache relies on: the last Tq queries over all Tk keys are the last Tq rows of the full result."""
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 2, 7, 4).unbind(0)
    kernel = make("attention", name).eval()
    torch.testing.assert_close(kernel(q[:, :, -3:], k, v), kernel(q, k, v)[:, :, -3:])


@pytest.mark.parametrize("name", registry.available("attention"))
def test_kernel_dropout_only_in_training(name):
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 2, 5, 4).unbind(0)
    kernel = make("attention", name, dropout=0.5)
    assert torch.equal(kernel.eval()(q, k, v), kernel(q, k, v))
    assert not torch.allclose(kernel.train()(q, k, v), kernel.eval()(q, k, v))


# ----------------------------------------------------------------------------- positions


def test_alibi_slopes_power_of_two_and_interpolated():
    assert alibi_slopes(8) == [1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64, 1 / 128, 1 / 256]
    # 6 heads: the 4-head slopes, then every other 8-head slope
    assert alibi_slopes(6) == [1 / 4, 1 / 16, 1 / 64, 1 / 256, 1 / 2, 1 / 8]
    alibi = make("position", "alibi", n_head=8)
    assert alibi.slopes.tolist() == [2.0 ** -h for h in range(1, 9)]


def test_alibi_bias_is_minus_slope_times_distance():
    alibi = make("position", "alibi", n_head=2)  # slopes 2^-4, 2^-8
    bias = alibi.bias(torch.tensor([5, 6]), torch.tensor([3, 4, 5, 6]))
    assert bias.shape == (2, 2, 4)
    assert bias[0].tolist() == [[-2 / 16, -1 / 16, 0, 1 / 16], [-3 / 16, -2 / 16, -1 / 16, 0]]
    assert torch.equal(bias[1], bias[0] / 16)


def test_rope_score_depends_only_on_the_offset():
    torch.manual_seed(0)
    rope = make("position", "rotary", head_dim=8, rope_base=10000.0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(m, n):
        qm, _ = rope.rotate(q, q, torch.tensor([m]))
        _, kn = rope.rotate(k, k, torch.tensor([n]))
        return (qm * kn).sum().item()

    for offset in (0, 1, 5, -3):
        scores = [score(n + offset, n) for n in (0, 3, 10, 37, 1000)]  # also far beyond block_size
        assert max(scores) - min(scores) < 1e-4 * (1 + abs(scores[0]))
    assert abs(score(4, 0) - score(1, 0)) > 1e-3  # ... and does depend on it
    torch.testing.assert_close(rope.rotate(q, k, torch.tensor([0])), (q, k))  # position 0 is the identity


def test_rope_preserves_norms_and_needs_an_even_head_size():
    torch.manual_seed(0)
    rope = make("position", "rotary", head_dim=8)
    q = torch.randn(2, 3, 5, 8)
    rq, _ = rope.rotate(q, q, torch.arange(100, 105))
    torch.testing.assert_close(rq.norm(dim=-1), q.norm(dim=-1))
    with pytest.raises(Exception, match="even head size"):
        make("position", "rotary", head_dim=7)


def test_sinusoidal_table_values():
    sin = make("position", "sinusoidal", n_embd=6)
    pe = sin.embed(torch.zeros(1, 3, 6), torch.tensor([0, 1, 7]))[0]  # (T, C)
    for p, row in zip((0, 1, 7), pe.tolist()):
        expect = []
        for i in range(3):
            expect += [math.sin(p / 10000 ** (2 * i / 6)), math.cos(p / 10000 ** (2 * i / 6))]
        assert row == pytest.approx([6**-0.5 * e for e in expect], abs=1e-6)  # the learned scale starts at C^-1/2
    assert isinstance(sin.scale, torch.nn.Parameter)


def test_learned_table_is_block_size_by_n_embd():
    learned = make("position", "learned", block_size=8, n_embd=16)
    assert learned.wpe.weight.shape == (8, 16)
    x, pos = torch.zeros(1, 3, 16), torch.tensor([2, 3, 4])
    assert torch.equal(learned.embed(x, pos)[0], learned.wpe.weight[2:5])


@pytest.mark.parametrize("name", registry.available("position"))
def test_position_interface(name):
    """Absolute schemes change the embeddings; relative ones are shift-invariant in rotate and bias."""
    torch.manual_seed(0)
    position = make("position", name)
    x, q, k = torch.randn(1, 5, 16), torch.randn(1, 4, 5, 4), torch.randn(1, 4, 5, 4)
    pos = torch.arange(5)
    assert position.embed(x, pos).shape == x.shape
    if not position.relative:
        assert not torch.equal(position.embed(x, pos), position.embed(x, pos + 1))
        return
    assert torch.equal(position.embed(x, pos), x)

    def scores(shift):
        rq, rk = position.rotate(q, k, pos + shift)
        bias = position.bias(pos + shift, pos + shift)
        return rq @ rk.transpose(-2, -1) + (0 if bias is None else bias)

    torch.testing.assert_close(scores(0), scores(1000), rtol=0, atol=1e-4)  # float32 angles of ~1000 rad


# ----------------------------------------------------------------------------- the registry


def test_unknown_name_lists_the_choices():
    with pytest.raises(registry.UnknownComponentError) as err:
        registry.get("attention", "sdpaa")
    assert "naive" in str(err.value) and "sdpa" in str(err.value) and "did you mean 'sdpa'" in str(err.value)


def test_the_static_table_of_builtin_names_is_what_the_builtins_register():
    """Configs are validated against registry.BUILTIN_NAMES, without importing the components (and torch)."""
    registered = {kind: sorted(name for name, entry in registry._entries[kind].items()
                               if entry.obj.__module__.startswith("nanolab."))
                  for kind in registry.kinds()}
    assert {kind: names for kind, names in registered.items() if names} == {
        kind: sorted(names) for kind, names in registry.BUILTIN_NAMES.items()}
    assert set(registry.names("attention")) == set(registry.available("attention"))


class TypoNorm(torch.nn.Module):
    def __init__(self, n_embd: int, n_embed_ratio: float = 1.0):  # n_embed_ratio: no component argument
        super().__init__()
        self.scale = n_embed_ratio


def test_a_constructor_parameter_that_matches_no_argument_is_an_error(monkeypatch):
    registry.kinds()  # the built-ins in the real registry before the copy below
    monkeypatch.setitem(registry._entries, "norm", dict(registry._entries["norm"]))
    registry.register("norm", "typo_norm")(TypoNorm)
    with pytest.raises(NanolabError, match=r"norm 'typo_norm' .*n_embed_ratio match no component argument.*n_embd"):
        make("norm", "typo_norm")
    with pytest.raises(NanolabError, match="n_embed_ratio"):
        build_model(ModelConfig(n_layer=1, n_head=2, n_embd=16, norm="typo_norm"), vocab_size=11, block_size=8)


def test_a_component_receives_only_its_own_arguments():
    seen = {}

    class Spy(torch.nn.Module):
        def __init__(self, n_embd: int, dropout: float):
            super().__init__()
            seen.update(n_embd=n_embd, dropout=dropout)

    registry.kinds()
    entries = dict(registry._entries.get("norm", {}))
    try:
        registry.register("norm", "spy_norm")(Spy)
        registry.construct("norm", "spy_norm", {**ARGS, "dropout": 0.25})
    finally:
        registry._entries["norm"] = entries
    assert seen == {"n_embd": 16, "dropout": 0.25}


PLUGIN = '''
import torch
from nanolab import registry
from nanolab.components.mlp import MLP


@registry.register("activation", "testplug_tanh", "tanh MLP from a test plugin")
class TanhMLP(MLP):
    act = staticmethod(torch.tanh)
'''


def test_entry_point_plugin_component_is_usable_by_name(tmp_path, monkeypatch):
    """A distribution on sys.path declaring `nanolab.components = myplug = nanolab_testplug` registers on load."""
    (tmp_path / "nanolab_testplug.py").write_text(PLUGIN)
    dist_info = tmp_path / "nanolab_testplug-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: nanolab-testplug\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text("[nanolab.components]\nmyplug = nanolab_testplug\n")
    registry.available("activation")  # the built-ins are loaded before the snapshot below
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry._entries, "activation", dict(registry._entries["activation"]))  # restored after
    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    try:
        assert "testplug_tanh" in registry.names("activation")  # a config's check loads the plugins alone
        assert "testplug_tanh" in registry.available("activation")
        cfg = ModelConfig(n_layer=1, n_head=2, n_embd=16, activation="testplug_tanh")
        model = build_model(cfg, vocab_size=11, block_size=8)
        assert type(model.blocks[0].mlp).__name__ == "TanhMLP"
        assert model(torch.zeros(1, 4, dtype=torch.long)).shape == (1, 4, 11)
    finally:
        sys.modules.pop("nanolab_testplug", None)
