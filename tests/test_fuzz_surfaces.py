"""Property-based fuzz of issue #28's newer surfaces: `nanolab sample` flags, `nanolab export`, `report`/`status`
plan files, `compare --at`, budgets (`train.max_tokens`/`max_flops`/`max_iters`) and ablation `tune:` blocks. Every
example exits 0, or 2 with one `nanolab: error:` line (or argparse's usage, exit 2), within SECONDS_PER_EXAMPLE,
and never with a traceback. The trained fixtures are built once per module.

NANOLAB_FUZZ_EXAMPLES=2000 runs the issue's 2,000 examples per surface; the default keeps the suite short.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import time
import types
from pathlib import Path
from unittest import mock

import pytest
import yaml
from helpers import FUZZ, HUGE_INTS, tiny_yaml
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from nanolab.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

EXAMPLES = int(os.environ.get("NANOLAB_FUZZ_EXAMPLES", "40"))
SECONDS_PER_EXAMPLE = 20  # a tiny model samples, exports or trains 3 steps in about a second
EXPERIMENT = tiny_yaml(data={"block_size": 8}, batch_size=2, max_iters=2, warmup_iters=0, eval_interval=1, eval_iters=1,
                       log_interval=1, sample_tokens=0)
TOKENS_PER_STEP = 2 * 8
ABLATION = """\
name: act
experiment: tiny.yaml
grid: {model.activation: [relu, swiglu]}
seeds: [1]
"""
TUNED = """\
name: tuned
experiment: tiny.yaml
grid: {model.activation: [relu, swiglu]}
seeds: [1]
tune:
  space: {train.lr: {choice: [1.0e-3, 3.0e-2]}}
  sampler: grid
  trials: 2
  overrides: {train.max_iters: 1}
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A folder with tiny.yaml, a trained run (`run`), a finished ablation `act` (2 runs) and a tuned ablation file
    that never ran; its runs root is $NANOLAB_RUNS for the module."""
    folder = tmp_path_factory.mktemp("surfaces")
    (folder / "tiny.yaml").write_text(EXPERIMENT)
    (folder / "act.yaml").write_text(ABLATION)
    (folder / "tuned.yaml").write_text(TUNED)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NANOLAB_RUNS", str(folder / "runs"))
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["run", str(folder / "tiny.yaml")]) == 0
            assert main(["ablate", str(folder / "act.yaml")]) == 0
        (run,) = (folder / "runs" / "tiny").iterdir()
        yield types.SimpleNamespace(folder=folder, run=run, runs=folder / "runs")


def nanolab(argv: list[str]) -> tuple[int, str, str]:
    """`nanolab ARGV` in this process: (exit status, stdout, stderr); argparse's exit 2 is (2, '', 'usage')."""
    out, err = io.StringIO(), io.StringIO()
    start = time.monotonic()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main(argv)
    except SystemExit as exc:  # argparse: its usage and one line, exit 2
        assert exc.code == 2, (argv, exc.code, err.getvalue())
        event("argparse")
        return 2, "", "usage"
    assert time.monotonic() - start < SECONDS_PER_EXAMPLE, argv
    return code, out.getvalue(), err.getvalue()


def assert_exit_0_or_one_line(code: int, err: str, count: bool = True) -> None:
    if err == "usage":
        return
    if count:
        event(f"exit {code}")
    assert "Traceback" not in err, err
    if code != 0:
        assert code == 2 and err.startswith("nanolab: error: ") and err.count("\n") == 1, (code, err)


def run_names(runs: Path) -> list[str]:
    return sorted(str(p.relative_to(runs)) for p in runs.glob("*/*") if p.is_dir())


ints = st.integers(-3, 40) | st.sampled_from(HUGE_INTS) | st.integers()
numbers = st.floats() | st.integers(-3, 10) | st.sampled_from(["1e-3", "inf", "nan", "-0", "1_0", "x", ""])


# ----------------------------------------------------------------------------- 1. sample flags

@settings(FUZZ, max_examples=EXAMPLES)
@given(flags=st.fixed_dictionaries({}, optional={
    "--tokens": st.integers(0, 8) | st.sampled_from([1_000_001, 10**9, -1, *HUGE_INTS]),
    "--temperature": numbers | st.floats(0, 3), "--top-k": ints, "--top-p": numbers | st.floats(0, 1),
    "--seed": ints, "--prompt": st.text(max_size=12) | st.sampled_from(["", "\n", "é漢\x00", "\ud7ff", "-x"]),
    "--checkpoint": st.sampled_from(["best", "last", "first", ""])}))
def test_sample_flags(trained, flags):
    flags.setdefault("--tokens", 4)
    argv = ["sample", str(trained.run), *(f"{k}={v}" for k, v in flags.items())]
    code, out, err = nanolab(argv)
    assert_exit_0_or_one_line(code, err)


def test_sample_refuses_a_million_and_one_tokens_at_once(trained):
    start = time.monotonic()
    code, _, err = nanolab(["sample", str(trained.run), "--tokens=1000001"])
    assert code == 2 and "--tokens 1000001: expected an integer in [0, 1,000,000]" in err
    assert time.monotonic() - start < 1


# ----------------------------------------------------------------------------- 2. export

OUT_SHAPES = ["new", "nested/a/b", "file", "full", "empty", "odd name é;$(x)", "", ".", "file/below", "-"]


@settings(FUZZ, max_examples=EXAMPLES)
@given(shape=st.sampled_from(OUT_SHAPES) | st.text(max_size=10), checkpoint=st.sampled_from(["best", "last", "best", "last", "x"]),
       run=st.sampled_from(["run", "runs", "missing", "tiny.yaml"]), to=st.sampled_from(["hf"] * 5 + ["gguf"]))
@example(shape="\x00", checkpoint="best", run="run", to="hf")  # ValueError from os.mkdir (found by this fuzz)
def test_export(trained, shape, checkpoint, run, to):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "file").write_text("x")
        (folder / "full").mkdir()
        (folder / "full" / "x").write_text("x")
        (folder / "empty").mkdir()
        source = {"run": trained.run, "runs": trained.runs, "missing": folder / "missing",
                  "tiny.yaml": trained.folder / "tiny.yaml"}[run]
        out = str(folder / shape) if shape not in ("", "-") else shape
        with contextlib.chdir(folder):
            code, _, err = nanolab(["export", str(source), "--to", to, f"--checkpoint={checkpoint}", "--", out]
                                   if out == "-" else ["export", str(source), "--to", to, out,
                                                       f"--checkpoint={checkpoint}"])
        assert_exit_0_or_one_line(code, err)
        if code == 0:
            assert (Path(folder, out) / "config.json").is_file()


# ----------------------------------------------------------------------------- 3. report / status plan files

plan_keys = st.sampled_from(["experiment", "grid", "variants", "space", "tune", "seeds", "name", "overrides",
                             "trials", "sampler", "pruner", "objective", "launcher"]) | st.text(max_size=6)
plan_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 5) | st.sampled_from(HUGE_INTS) | st.floats() | st.text(max_size=8)
    | st.sampled_from(["tiny.yaml", "missing.yaml", "act", "model.activation", "train.lr", "relu", "grid", "tpe"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["model.activation", "train.lr", "float", "choice", "int", "log", "name", "seed", "space"])
        | st.text(max_size=5), inner, max_size=3), max_leaves=8)
base_plans = st.sampled_from([ABLATION, TUNED, "experiment: tiny.yaml\nspace: {train.lr: {float: [0.001, 0.01]}}\n",
                              "", "[]\n", "3\n", "name: act\n", ": :\n"]).map(lambda t: yaml.safe_load(t) if t.strip()
                                                                                and t != ": :\n" else t)


@settings(FUZZ, max_examples=EXAMPLES)
@given(base=base_plans, changes=st.dictionaries(plan_keys, plan_values, max_size=3),
       raw=st.none() | st.none() | st.none() | st.text(max_size=30), verb=st.sampled_from(["report", "status"]))
def test_report_and_status_plan_files(trained, base, changes, raw, verb):
    if isinstance(base, dict):
        base = {**base, **changes}
    text = raw if raw is not None else base if isinstance(base, str) else yaml.safe_dump(base)
    before = run_names(trained.runs)
    with tempfile.TemporaryDirectory() as tmp:
        plan = Path(tmp) / "plan.yaml"
        shutil.copy(trained.folder / "tiny.yaml", Path(tmp) / "tiny.yaml")
        plan.write_text(text)
        argv = [verb, str(plan), *(["--out", str(Path(tmp) / "report")] if verb == "report" else [])]
        with mock.patch.dict(os.environ, {"NANOLAB_RUNS": str(trained.runs)}):
            code, _, err = nanolab(argv)
    assert_exit_0_or_one_line(code, err)
    assert run_names(trained.runs) == before, "report/status trained something"


@pytest.mark.parametrize("verb", ["report", "status"])
@pytest.mark.parametrize("name", ["act.yaml", "tuned.yaml"])
def test_report_and_status_of_the_fixtures(trained, tmp_path, verb, name):
    argv = [verb, str(trained.folder / name), *(["--out", str(tmp_path / "r")] if verb == "report" else [])]
    code, _, err = nanolab(argv)
    assert_exit_0_or_one_line(code, err, count=False)
    assert code == 0 or "no runs of ablation tuned" in err, err  # the tuned ablation never ran


# ----------------------------------------------------------------------------- 4. compare --at

at_keys = st.sampled_from(["step", "tokens", "flops", "time", "wall_time", "val/loss", "x", ""]) | st.text(max_size=6)
at_values = st.integers(-2, 5).map(str) | numbers.map(str) | st.sampled_from(["1e400", "2", "1.5", ""])


@settings(FUZZ, max_examples=EXAMPLES)
@given(at=st.none() | st.sampled_from(["step=1", "step=2", "tokens=16", "flops=1e6", "step=0"]) | st.tuples(at_keys, st.sampled_from(["=", "==", ":", ""]), at_values).map("".join),
       metric=st.none() | st.sampled_from(["val/loss", "best/val_loss", "train/loss", "lr", "x"]) | st.text(max_size=6),
       x=st.none() | st.sampled_from(["step", "tokens", "flops", "time", "x"]) | st.text(max_size=6),
       baseline=st.none() | st.sampled_from(["relu", "swiglu", "gelu", "activation=relu"]) | st.text(max_size=6),
       runs=st.sampled_from(["group", "act", "both", "tiny"]))
def test_compare_at(trained, at, metric, x, baseline, runs):
    paths = {"group": [str(trained.runs / "act")], "act": [str(p) for p in sorted((trained.runs / "act").iterdir())],
             "both": [str(trained.runs / "act"), str(trained.run)], "tiny": [str(trained.run)]}[runs]
    flags = [f"--{k}={v}" for k, v in (("at", at), ("metric", metric), ("x", x), ("baseline", baseline))
             if v is not None]
    code, _, err = nanolab(["compare", *paths, *flags])
    assert_exit_0_or_one_line(code, err)


# ----------------------------------------------------------------------------- 5. budgets

budget_values = (st.none() | st.integers(-2, 100) | st.sampled_from(HUGE_INTS) | st.floats() | st.text(max_size=6)
                 | st.sampled_from(["1e3", "1e400", "null", "0.5", "1_000"]))


@settings(FUZZ, max_examples=EXAMPLES)
@given(budgets=st.fixed_dictionaries({}, optional={f"train.{k}": budget_values
                                                   for k in ("max_tokens", "max_flops", "max_iters")}))
@example(budgets={"train.max_tokens": 10**400})  # OverflowError in a float division (found by this fuzz)
def test_budgets_print_config(trained, budgets):
    sets = [f"--set={k}={'null' if v is None else v}" for k, v in budgets.items()]
    with tempfile.TemporaryDirectory() as tmp, mock.patch.dict(os.environ, {"NANOLAB_RUNS": str(Path(tmp) / "r")}):
        code, _, err = nanolab(["run", str(trained.folder / "tiny.yaml"), "--print-config", *sets])
        assert not Path(tmp, "r").exists() or not any(Path(tmp, "r").rglob("meta.json"))
    assert_exit_0_or_one_line(code, err)


@settings(FUZZ, max_examples=max(4, EXAMPLES // 10))
@given(budget=st.one_of(st.integers(1, 3 * TOKENS_PER_STEP).map(lambda n: f"train.max_tokens={n}"),
                        st.integers(1, 3).map(lambda n: f"train.max_iters={n}"),
                        st.floats(0.01, 2.99).map(lambda f: f"train.max_flops=FLOPS*{f}")))
def test_budgets_that_plan_1_to_3_steps_train(trained, budget):
    if "FLOPS" in budget:
        per_step = json.loads((trained.run / "meta.json").read_text())["flops_per_token"] * TOKENS_PER_STEP
        budget = f"train.max_flops={per_step * float(budget.split('*')[1])!r}"
    with tempfile.TemporaryDirectory() as tmp, mock.patch.dict(os.environ, {"NANOLAB_RUNS": str(Path(tmp) / "r")}):
        code, _, err = nanolab(["run", str(trained.folder / "tiny.yaml"), f"--set={budget}"])
        assert code == 0 and "Traceback" not in err, err
        (meta,) = Path(tmp, "r").glob("tiny/*/meta.json")
        assert json.loads(meta.read_text())["status"] == "finished"


# ----------------------------------------------------------------------------- 6. tune: blocks

space_values = plan_values | st.sampled_from([{"float": [1e-3, 1e-2], "log": True}, {"choice": [1, 2]},
                                              {"int": [1, 4]}, {"float": [0, -1]}, {"choice": []}, {"float": [1]}])
tune_blocks = st.fixed_dictionaries({}, optional={
    "space": st.dictionaries(st.sampled_from(["train.lr", "model.activation", "train.beta1", "x", "model.n_layer"])
                             | st.text(max_size=5), space_values, max_size=2) | plan_values,
    "trials": st.integers(-2, 5) | st.sampled_from(HUGE_INTS) | plan_values,
    "sampler": st.sampled_from(["tpe", "grid", "random", "cmaes", "x", {"name": "tpe", "seed": 0},
                                {"name": "random", "seed": -1}]) | plan_values,
    "pruner": st.sampled_from(["none", "median", "hyperband", "x", {"name": "median"}]) | plan_values,
    "objective": st.sampled_from(["val/loss", "best/val_loss", {"metric": "val/loss", "direction": "maximize"},
                                  {"metric": "x", "direction": "up"}]) | plan_values,
    "overrides": st.sampled_from([{"train.max_iters": 1}, ["train.max_iters=1"], "train.max_iters=1",
                                  {"model.activation": "gelu"}, {"x": 1}]) | plan_values,
    "x": plan_values})


@settings(FUZZ, max_examples=EXAMPLES)
@given(tune=tune_blocks | plan_values)
def test_tune_blocks_print_config(trained, tune):
    plan = yaml.safe_load(TUNED)
    plan["tune"] = tune
    with tempfile.TemporaryDirectory() as tmp, mock.patch.dict(os.environ, {"NANOLAB_RUNS": str(Path(tmp) / "r")}):
        shutil.copy(trained.folder / "tiny.yaml", Path(tmp) / "tiny.yaml")
        path = Path(tmp) / "tuned.yaml"
        path.write_text(yaml.safe_dump(plan))
        code, _, err = nanolab(["ablate", str(path), "--print-config"])
        assert not Path(tmp, "r").exists() or not any(Path(tmp, "r").rglob("meta.json"))
    assert_exit_0_or_one_line(code, err)
