"""Specs: extends chains, overrides, the dump/load round trip, and one clear message per kind of bad spec."""

import subprocess
import sys
from pathlib import Path

import pytest

from nanolab import Config, SpecError, load_spec
from nanolab.spec import dump_spec

REPO = Path(__file__).resolve().parents[1]
BASELINE = REPO / "experiments" / "baseline.yaml"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_baseline_loads_with_declared_values():
    cfg = load_spec(BASELINE)
    assert cfg.name == "baseline"
    assert (cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd) == (4, 4, 128)
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)
    assert cfg.model.block_size == cfg.data.block_size == 64
    assert cfg.tracking.tags == ("baseline",)


def test_extends_chain_and_relative_paths(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "base.yaml", "name: base\nmodel: {n_layer: 2, n_embd: 64}\ntrain: {lr: 1e-3}\n")
    write(tmp_path / "sub" / "mid.yaml", "extends: ../base.yaml\nmodel: {n_layer: 3}\n")
    top = write(tmp_path / "sub" / "top.yaml", "extends: mid.yaml\nname: top\ndata: {path: corpus.txt}\n")
    cfg = load_spec(top)
    assert cfg.name == "top"
    assert cfg.model.n_layer == 3 and cfg.model.n_embd == 64  # merged key by key, nearest file wins
    assert cfg.train.lr == 1e-3  # YAML 1.1 reads 1e-3 as a string; float fields convert it
    assert cfg.data.path == str(tmp_path / "sub" / "corpus.txt")


def test_overrides_parse_as_yaml_scalars():
    cfg = load_spec(BASELINE, ["model.position=rotary", "train.lr=3e-3", "model.qk_norm=true",
                               "tracking.tags=[a, b]", "train.lr_decay_iters=null"])
    assert cfg.model.position == "rotary"
    assert cfg.train.lr == 3e-3
    assert cfg.model.qk_norm is True
    assert cfg.tracking.tags == ("a", "b")
    assert cfg.train.lr_decay_iters is None


def test_dump_load_round_trip(tmp_path):
    cfg = load_spec(BASELINE, ["model.activation=swiglu", "data.block_size=32", "tracking.notes=hi"])
    path = write(tmp_path / "config.yaml", dump_spec(cfg))
    again = load_spec(path)
    assert again == cfg
    assert again.model.block_size == 32
    assert load_spec(write(tmp_path / "empty.yaml", "")) == Config()


BAD_SPECS = [
    # (spec text, override, fragments the one-line message must hold)
    ("model: {activaton: gelu}\n", None, ["model.activaton", "unknown key", "did you mean 'activation'"]),
    ("nmae: x\n", None, ["nmae", "unknown key", "did you mean 'name'"]),
    ("model: {n_layer: four}\n", None, ["model.n_layer", "'four'", "expected an integer"]),
    ("model: {n_layer: 2.5}\n", None, ["model.n_layer", "2.5", "expected an integer"]),
    ("train: {lr: fast}\n", None, ["train.lr", "'fast'", "expected a number"]),
    ("model: {qk_norm: 1}\n", None, ["model.qk_norm", "expected true or false"]),
    ("model: {n_embd: 100, n_head: 3}\n", None, ["model.n_head", "3", "divisible"]),
    ("model: {dropout: 1.5}\n", None, ["model.dropout", "1.5", "[0, 1)"]),
    ("train: {min_lr: 0.1, lr: 0.01}\n", None, ["train.min_lr", "0.1", "lr=0.01"]),
    ("model: {attention: flash}\n", None, ["model.attention", "'flash'", "naive", "sdpa"]),
    ("model: {position: rotery}\n", None, ["model.position", "did you mean 'rotary'"]),
    ("model: {norm_placement: middle}\n", None, ["model.norm_placement", "pre, post"]),
    ("model: {block_size: 32}\n", None, ["model.block_size", "derived from data.block_size"]),
    ("model: [1, 2]\n", None, ["model", "expected a mapping"]),
    ("- a\n- b\n", None, ["expected a mapping of keys at the top level"]),
    ("model: {n_layer: 2\n", None, ["malformed YAML", "line"]),
    ("model: !!python/object/apply:os.system [echo pwned]\n", None, ["YAML tag not allowed"]),
    ("tracking: {wandb: {mode: sometimes}}\n", None, ["tracking.wandb.mode", "auto, online, offline, disabled"]),
    ("train: {device: gpu}\n", None, ["train.device", "'gpu'", "cuda"]),
    ("name: 'my run/1'\n", None, ["name", "'my run/1'"]),
    ("", "model.n_layr=3", ["--set", "model.n_layr", "did you mean 'n_layer'"]),
    ("", "model.n_layer", ["--set", "expected KEY=VALUE"]),
    ("", "model.n_layer.x=3", ["--set", "model.n_layer is a value, not a section"]),
]


@pytest.mark.parametrize("text, override, fragments", BAD_SPECS)
def test_bad_spec_message(tmp_path, text, override, fragments):
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(SpecError) as info:
        load_spec(path, [override] if override else [])
    message = str(info.value)
    assert "\n" not in message
    if override is None:
        assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message


def test_missing_file_and_extends_problems(tmp_path):
    with pytest.raises(SpecError, match="no such file"):
        load_spec(tmp_path / "nope.yaml")
    a = write(tmp_path / "a.yaml", "extends: b.yaml\n")
    write(tmp_path / "b.yaml", "extends: a.yaml\n")
    with pytest.raises(SpecError, match="extends cycle"):
        load_spec(a)
    c = write(tmp_path / "c.yaml", "extends: missing.yaml\n")
    with pytest.raises(SpecError, match="extends = 'missing.yaml': no such file"):
        load_spec(c)


def test_cli_prints_one_line_and_exits_2(tmp_path):
    path = write(tmp_path / "bad.yaml", "model: {activation: gelu2}\n")
    proc = subprocess.run([sys.executable, "-m", "nanolab", "run", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.activation" in lines[0] and "'gelu2'" in lines[0], proc.stderr
    assert not (tmp_path / "runs").exists()


NO_TORCH = f"""
import sys
from nanolab import SpecError, load_spec
cfg = load_spec({str(BASELINE)!r}, overrides=["model.activation=swiglu", "model.position=rotary",
                                               "data.tokenizer=bpe", "train.optimizer=muon"])
assert cfg.model.activation == "swiglu"
try:
    load_spec({str(BASELINE)!r}, overrides=["model.attention=sdpaa"])
except SpecError as exc:
    assert "did you mean 'sdpa'" in str(exc), exc
else:
    raise AssertionError("an unknown component name passed")
assert "torch" not in sys.modules, "checking component names imported torch"
"""


def test_checking_component_names_does_not_import_torch():
    proc = subprocess.run([sys.executable, "-c", NO_TORCH], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
