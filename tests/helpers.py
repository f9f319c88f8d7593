"""What more than one test module uses: the tiny specs, nanolab's command line (in a child or in this process),
polling, data-preparation stand-ins, run folders to analyse, W&B and PostgreSQL access, fuzz strategies.

Test modules import from here (`from helpers import ...`), never from one another; shared fixtures live in
conftest.py. pytest puts this folder on sys.path, as it does for conftest.py; a child that imports a test module
puts it there itself.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import math
import os
import pickle
import subprocess
import sys
import time
import types
import typing
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import yaml
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from nanolab import Config, registry
from nanolab.config_dicts import spec_fields
from nanolab.runfolder import RunFolder, RunStore, runs_root
from nanolab.spec import dump_spec, spec_from_dict
from nanolab.vocab import (
    BEST_STEP,
    BEST_VAL_LOSS,
    BEST_VAL_PPL,
    FLOPS,
    MFU,
    STEP_MS,
    STEPS,
    TOKENS,
    TOKENS_PER_SEC,
    TOKENS_SEEN,
    TRAIN_EVAL_LOSS,
    TRAIN_GRAD_NORM,
    TRAIN_LOSS,
    TRAIN_LR,
    VAL_BPC,
    VAL_LOSS,
    VAL_PPL,
    WALL,
    WALL_TIME,
    RunStatus,
    final,
)

# ----------------------------------------------------------------------------- the corpus

SHARED_SHAKESPEARE = Path(__file__).parents[2] / "shared/data/tinyshakespeare/input.txt"


def shared_shakespeare() -> Path:
    """The local copy of Tiny Shakespeare the tests use instead of the internet."""
    return Path(os.environ.get("NANOLAB_TEST_SHAKESPEARE") or SHARED_SHAKESPEARE)


# ----------------------------------------------------------------------------- tiny specs

_TINY_DATA = {"block_size": 16}
_TINY_MODEL = {"n_layer": 1, "n_head": 2, "n_embd": 16}
_TINY_TRAIN = {"batch_size": 4, "max_iters": 20, "warmup_iters": 2, "eval_interval": 10, "eval_iters": 2,
              "log_interval": 5, "sample_tokens": 8}


def tiny_yaml(name: str = "tiny", seed: int | None = None, data: dict | None = None, model: dict | None = None,
              **train) -> str:
    """The text of a tiny spec (one layer, 16 wide, 16-token blocks, batch 4, 20 steps, W&B disabled): `data`,
    `model` and the keyword arguments (train.*) change or add keys; no `seed:` line unless `seed` is given."""
    spec = {"name": name, **({"seed": seed} if seed is not None else {}), "data": {**_TINY_DATA, **(data or {})},
            "model": {**_TINY_MODEL, **(model or {})}, "train": {**_TINY_TRAIN, **train},
            "tracking": {"wandb": {"mode": "disabled"}}}
    return yaml.safe_dump(spec, sort_keys=False, default_flow_style=None, width=math.inf)


def tiny_spec(folder: Path, name: str = "tiny", iters: int = 30, eval: int = 10, ckpt: int = 10,
              embd: int = 16) -> Path:
    """`folder`/`name`.yaml: the tiny spec with seed 7, lr 3e-3, 5 warmup steps, 16 sampled tokens, `iters` steps,
    an evaluation every `eval` and a checkpoint every `ckpt`, `embd` wide. Its path."""
    path = folder / f"{name}.yaml"
    path.write_text(tiny_yaml(name, seed=7, model={"n_embd": embd}, max_iters=iters, lr=3.0e-3, warmup_iters=5,
                              eval_interval=eval, checkpoint_interval=ckpt, sample_tokens=16))
    return path


SWEEP_EXPERIMENT = tiny_yaml(seed=1, eval_interval=5, warmup_iters=0, min_lr=0.0, sample_tokens=0)
LR = "space: {train.lr: {float: [1.0e-3, 1.0e-2], log: true}}\nsampler: {name: random, seed: 0}\n"


def sweep_file(folder: Path, name: str, body: str) -> Path:
    """A sweep file `name`.yaml over SWEEP_EXPERIMENT (written beside it as tiny.yaml), in `folder`."""
    (folder / "tiny.yaml").write_text(SWEEP_EXPERIMENT)
    path = folder / f"{name}.yaml"
    path.write_text(f"experiment: tiny.yaml\n{body}")
    return path


# ----------------------------------------------------------------------------- the command line


def cli(*args, runs: Path | None = None, env: dict | None = None,
        timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m nanolab ARGS` in a child, its output captured as text. `runs` sets $NANOLAB_RUNS; `env` is laid
    over this process's environment; a child still running after `timeout` seconds is killed (TimeoutExpired)."""
    env = {**os.environ, **({"NANOLAB_RUNS": str(runs)} if runs else {}), **(env or {})}
    return subprocess.run([sys.executable, "-m", "nanolab", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout, check=False)


def start_cli(*args, env: dict | None = None) -> subprocess.Popen:
    """`python -m nanolab ARGS` started in a child, its stdout and stderr pipes of text; `env` as in cli()."""
    return subprocess.Popen([sys.executable, "-m", "nanolab", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def cli_main(capsys, *argv: str) -> tuple[int, str, str]:
    """`nanolab ARGV` in this process (cli.main): (exit status, stdout, stderr); argparse's own exits (--help 0,
    its usage errors 2) are returned too."""
    from nanolab.cli import main

    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------- processes


def wait_for(condition: Callable[[], object], timeout: float = 120, what: str = "", every: float = 0.2,
             watch: Sequence[subprocess.Popen] = ()) -> None:
    """Return once `condition()` is true, asked every `every` seconds. Fail, naming `what`, after `timeout`
    seconds, or as soon as a process in `watch` has exited with a nonzero status (its output in the message)."""
    deadline = time.monotonic() + timeout
    while not condition():
        failed = [p for p in watch if p.poll() not in (None, 0)]
        assert not failed, f"while waiting for {what}: " + "\n".join(_exit_report(p) for p in failed)
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(every)


def _exit_report(proc: subprocess.Popen) -> str:
    """How a child ended: its arguments, exit status and whatever it left on its stdout and stderr pipes."""
    out, err = proc.communicate(timeout=5)
    return f"{proc.args} exited {proc.returncode}\n{out or ''}{err or ''}"


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie has exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat")
    return not (state.is_file() and state.read_text().split()[2] == "Z")


# ----------------------------------------------------------------------------- runs


def rows(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the timing figures, which no two runs share."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if not k.startswith("perf/")} for line in lines]


def trial_rows(name: str) -> list[dict]:
    """The rows of sweep `name`'s trials.csv under the runs root."""
    with open(runs_root() / "sweeps" / name / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def build_fingerprint() -> str:
    """torch's version, its BLAS / LAPACK / oneDNN builds and the CPU code path it dispatches to: what decides
    the float rounding of a CPU run besides nanolab's own code."""
    import torch

    config = torch.__config__.show().splitlines()
    keep = [line.strip() for line in config if any(k in line for k in ("Math Kernel", "MKL-DNN", "OpenBLAS",
                                                                        "BLAS", "CPU capability"))
            and "Build settings" not in line]
    settings_line = next((line for line in config if "Build settings" in line), "")
    keep += [item.strip() for item in settings_line.split(",") if item.strip().split("=")[0] in ("BLAS_INFO",
                                                                                                  "LAPACK_INFO")]
    return torch.__version__ + ":" + hashlib.sha256("\n".join(keep).encode()).hexdigest()[:16]


def nan_at(monkeypatch, at: int):
    """The model's training forward returns a NaN loss at its `at`-th call."""
    from nanolab import runner

    real_build = runner.build_model

    def poisoned(*args, **kwargs):
        model = real_build(*args, **kwargs)
        forward, calls = model.forward, {"n": 0}

        def forward_with_nan(idx, targets=None, **kw):
            out = forward(idx, targets, **kw)
            if not model.training or targets is None:
                return out
            calls["n"] += 1
            return out[0], out[1] * float("nan") if calls["n"] == at else out[1]

        model.forward = forward_with_nan
        return model

    monkeypatch.setattr(runner, "build_model", poisoned)


# ----------------------------------------------------------------------------- nanoGPT's prepared files


def nanogpt_prepare(folder: Path, text: str, meta_format: str = "pkl") -> dict:
    """What nanoGPT's data/shakespeare_char/prepare.py writes, given the text."""
    chars = sorted(set(text))
    stoi, itos = {ch: i for i, ch in enumerate(chars)}, {i: ch for i, ch in enumerate(chars)}
    n = len(text)
    folder.mkdir(parents=True, exist_ok=True)
    np.array([stoi[c] for c in text[:int(n * 0.9)]], dtype=np.uint16).tofile(folder / "train.bin")
    np.array([stoi[c] for c in text[int(n * 0.9):]], dtype=np.uint16).tofile(folder / "val.bin")
    meta = {"vocab_size": len(chars), "itos": itos, "stoi": stoi}
    if meta_format == "pkl":
        with open(folder / "meta.pkl", "wb") as f:
            pickle.dump(meta, f)
    else:
        (folder / "meta.json").write_text(json.dumps(meta))
    return meta


def gpt2_prepare(folder: Path, text: str) -> list[int]:
    """What nanoGPT's data/shakespeare/prepare.py writes (uint16 BPE ids, 90/10, no meta file), with a BPE of 512
    tokens trained here standing in for tiktoken's GPT-2 encoding, which needs a download."""
    from nanolab.data import BPETokenizer

    ids = BPETokenizer.from_texts([text], 512).encode(text)
    folder.mkdir(parents=True)
    n = int(len(ids) * 0.9)
    np.array(ids[:n], dtype=np.uint16).tofile(folder / "train.bin")
    np.array(ids[n:], dtype=np.uint16).tofile(folder / "val.bin")
    return ids


# ----------------------------------------------------------------------------- run folders to analyse

GELU = [1.50, 1.52, 1.49]
RELU = [1.45, 1.48, 1.44]  # per seed, not gelu shifted by a constant: that would leave the paired test no spread
START, END = "2025-03-01T10:00:00+00:00", "2025-03-01T10:01:40+00:00"
FAKE_TOKENS_PER_STEP, FAKE_FLOPS_PER_TOKEN, FAKE_SECONDS_PER_STEP = 4 * 64, 150_000, 2.5  # batch x block; meta; a guess


def _fake_config(name: str, seed: int, activation: str, group: str | None, lr: float = 1e-3) -> Config:
    """The config of a written run: 40 steps of a 2-layer model with `activation`, its W&B offline."""
    return spec_from_dict({
        "name": name, "seed": seed, "data": {"block_size": 64},
        "model": {"n_layer": 2, "n_head": 2, "n_embd": 32, "activation": activation},
        "train": {"batch_size": 4, "max_iters": 40, "eval_interval": 20, "lr": lr},
        "tracking": {"wandb": {"mode": "offline"}, "group": group, "job_type": "ablate",
                     "tags": ["ablation", activation]},
    })


def _fake_meta(run_id: str, name: str, group: str | None, status: str, activation: str) -> dict:
    """meta.json with the fields the runner writes (runner._run: at the start, then at the end)."""
    return {
        "run_id": run_id, "name": name, "group": group, "job_type": "ablate", "tags": ["ablation", activation],
        "variant": {"model.activation": activation}, "start_time": START, "params": 26_000,
        "non_embedding_params": 24_000, "flops_per_token": FAKE_FLOPS_PER_TOKEN, "dataset": "shakespeare_char",
        "world_size": 1, "git": {"commit": "abc123", "dirty": False}, "versions": {"torch": "2.13.0"}, "device": "cpu",
        "status": status, "resumed_at": None, "reason": "", "end_time": END, WALL_TIME: 100.0, STEPS: 40,
    }


def _fake_eval_row(best: float, step: int) -> dict:
    """An evaluation at `step` of a run whose best (last) val/loss is `best`: the loss falls 0.05 a step."""
    loss = best + (40 - step) / 20
    return {VAL_LOSS: loss, VAL_PPL: math.exp(loss), VAL_BPC: loss / math.log(2), TRAIN_EVAL_LOSS: loss - 0.02}


def _fake_summary(best: float) -> dict:
    """What Loop.summary() writes: best, final (the last evaluation) and counters."""
    return {BEST_VAL_LOSS: best, BEST_VAL_PPL: math.exp(best), BEST_STEP: 40, TOKENS_SEEN: 10_240, STEPS: 40,
            WALL_TIME: 100.0, **{final(k): v for k, v in _fake_eval_row(best, 40).items()}}


def fake_metrics(best: float, counters: bool = True) -> list[tuple[int, dict]]:
    """(step, metrics) as the runner logs them: train rows at 10..40, eval rows at 20 and 40 as separate rows, each
    with the cumulative compute counters (`counters`; runs from before them logged none)."""
    train = [(s, {TRAIN_LOSS: 3.0 - s / 40, TRAIN_LR: 1e-3, TRAIN_GRAD_NORM: 0.5, TOKENS_PER_SEC: 5000.0,
                  STEP_MS: 10.0, MFU: 0.01}) for s in (10, 20, 30, 40)]
    evals = [(s, _fake_eval_row(best, s)) for s in (20, 40)]
    metrics = train[:2] + evals[:1] + train[2:] + evals[1:]
    if counters:
        metrics = [(s, {**row, TOKENS: s * FAKE_TOKENS_PER_STEP, FLOPS: s * FAKE_TOKENS_PER_STEP * FAKE_FLOPS_PER_TOKEN,
                        WALL: s * FAKE_SECONDS_PER_STEP}) for s, row in metrics]
    return metrics


def write_run(root: Path, run_id: str, activation: str = "gelu", best: float = 1.5, seed: int = 1,
              status: str = RunStatus.FINISHED.value, group: str | None = "activation", name: str = "act",
              counters: bool = True, lr: float | None = None) -> RunFolder:
    """A run folder through RunFolder's writers; every status has a summary (the runner writes it in `finally`).

    `lr`: the final run of a tuned ablation, whose study chose this train.lr (meta's `tuned`)."""
    folder = RunStore(root).new(name, run_id)
    folder.write_config(dump_spec(_fake_config(name, seed, activation, group, lr or 1e-3)))
    folder.write_meta({**_fake_meta(run_id, name, group, status, activation),
                       **({"tuned": {"train.lr": lr}} if lr else {})})
    folder.write_summary(_fake_summary(best))
    with folder.open_metrics() as f:
        for step, row in fake_metrics(best, counters):
            f.write(RunFolder.metrics_line(row, step))
    return folder


def write_ablation(root: Path, counters: bool = True) -> None:
    """gelu and relu x 3 seeds, finished, plus a failed relu run and a pruned gelu run with tempting losses."""
    for activation, losses in (("gelu", GELU), ("relu", RELU)):
        for seed, best in enumerate(losses):
            write_run(root, f"{activation}-{seed}", activation, best, seed, counters=counters)
    write_run(root, "relu-failed", "relu", 0.1, 9, status=RunStatus.FAILED.value, counters=counters)
    write_run(root, "gelu-pruned", "gelu", 0.1, 9, status=RunStatus.PRUNED.value, counters=counters)


# ----------------------------------------------------------------------------- W&B offline runs


def inspect(path: Path, summary: bool = True):
    """A W&B run read back with W&B's own reader: the --summary object, or the list of records."""
    args = ["--summary", "--json"] if summary else ["--json"]
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", *args, str(path)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return json.loads(out) if summary else [json.loads(line) for line in out.splitlines() if line.strip()]


def offline_runs(root: Path) -> list[Path]:
    """The offline W&B runs under `root`, oldest first."""
    return sorted(root.glob("wandb/offline-run-*"))


# ----------------------------------------------------------------------------- PostgreSQL

POSTGRES_URL = os.environ.get("NANOLAB_TEST_POSTGRES")


def admin_url(url: str) -> str:
    """The URL as libpq takes it: no SQLAlchemy `+driver`."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextlib.contextmanager
def fresh_database(url: str):
    """A new, empty database on the server of `url` (SQLAlchemy URL of it yielded), dropped afterwards."""
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"nanolab_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url(url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin_url(url), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ----------------------------------------------------------------------------- fuzz strategies

FUZZ = settings(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])


def key_table(cls: type = Config, prefix: str = "") -> dict[str, tuple[typing.Any, dict]]:
    """Every dotted key a spec may set -> (its type hint, its field metadata), walked from the dataclasses."""
    hints, table = typing.get_type_hints(cls), {}
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    for name in spec_fields(cls):
        if dataclasses.is_dataclass(hints[name]):
            table.update(key_table(hints[name], f"{prefix}{name}."))
        else:
            table[f"{prefix}{name}"] = (hints[name], dict(by_name[name].metadata))
    return table


KEYS = key_table()
HUGE_INTS = [2**31, 2**62, 2**62 + 1, 2**63, 2**64, -(2**63) - 1, 10**400]
FLOAT_TEXTS = ["1e-3", "3e400", "inf", "-inf", "nan", ".inf", "1_0", " 2 ", "0x10"]
KNOWN_TEXT = {"train.device": ["auto", "cpu", "cuda", "cuda:1", "mps", "gpu", "cpu "],
              "train.dtype": ["auto", "float32", "bfloat16", "float16", "fp16"],
              "tracking.wandb.mode": ["auto", "online", "offline", "disabled", "off"],
              "tracking.wandb.project": ["nanolab", "a/b", "x" * 129], "model.norm_placement": ["pre", "post", "mid"],
              "name": ["fuzz", "a" * 100, "a" * 101, "-x", "a b", "ok.v2=+_-"]}


def misspelled(word: str) -> st.SearchStrategy[str]:
    """`word` with one character dropped, doubled or replaced."""
    edits = [lambda i, c: word[:i] + word[i + 1:], lambda i, c: word[:i] + word[i] + word[i:],
             lambda i, c: word[:i] + c + word[i + 1:]]
    return st.builds(lambda edit, i, c: edit(i, c), st.sampled_from(edits), st.integers(0, len(word) - 1),
                     st.characters())


def typed_values(key: str) -> st.SearchStrategy:
    """Values of `key`'s declared type, over and beyond its accepted range."""
    hint, meta = KEYS[key]
    if isinstance(hint, types.UnionType):  # `X | None`
        inner = next(a for a in typing.get_args(hint) if a is not type(None))
        return st.none() | typed_values_of(inner, meta, key)
    return typed_values_of(hint, meta, key)


def typed_values_of(hint, meta: dict, key: str) -> st.SearchStrategy:
    """Values of type `hint` (a field's type without `| None`, `meta` its metadata) for `key`."""
    if "kind" in meta:
        names = registry.names(meta["kind"])
        return st.sampled_from(names) | st.sampled_from(names).flatmap(misspelled)
    if hint is bool:
        return st.booleans()
    if hint is int:
        return st.integers(1, 64) | st.integers(-2, 300) | st.sampled_from(HUGE_INTS) | st.integers()
    if hint is float:
        return st.floats(0, 1) | st.floats() | st.sampled_from(FLOAT_TEXTS) | st.integers(-3, 10) | st.sampled_from(
            HUGE_INTS)
    if typing.get_origin(hint) is tuple:
        return st.lists(st.text(max_size=70), max_size=3) | st.text(max_size=70)
    assert hint is str, f"no strategy for {key}: {hint}"
    return st.sampled_from(KNOWN_TEXT.get(key, ["x"])) | st.text(max_size=120)
