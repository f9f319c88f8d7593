"""nanolab.analysis on run folders written by the real writers (RunFolder, and one real run), and fake W&B runs."""

from __future__ import annotations

import math
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from helpers import (FAKE_FLOPS_PER_TOKEN, FAKE_SECONDS_PER_STEP, FAKE_TOKENS_PER_STEP, GELU, RELU, fake_metrics,
                     tiny_yaml, write_ablation, write_run)
from matplotlib.figure import Figure
from scipy import stats

from nanolab import run
from nanolab.analysis import (BASE_COLUMNS, compare, compare_command, format_table, load_history, load_runs,
                              load_wandb_runs, metric_at, to_markdown, varying_keys)
from nanolab.analysis.load import interpolate
from nanolab.analysis.render import _on_one_grid
from nanolab.analysis.stats import COUNTED
from nanolab.analysis.wandb_runs import wandb_run_history, wandb_run_row
from nanolab.cli import main
from nanolab.errors import NanolabError
from nanolab.runfolder import RunFolder, RunStore
from nanolab.spec import spec_from_dict
from nanolab.vocab import (BEST_STEP, BEST_VAL_LOSS, BEST_VAL_PPL, EVAL_METRICS, EXIT_OK, EXIT_USAGE, FLOPS, STEPS,
                           TOKENS, TOKENS_PER_SEC, TOKENS_SEEN, TRAIN_GRAD_NORM, TRAIN_LOSS, TRAIN_LR, UNFINISHED,
                           VAL_BPC, VAL_LOSS, WALL, WALL_TIME, RunStatus, final)

FINISHED, FAILED, PRUNED = RunStatus.FINISHED.value, RunStatus.FAILED.value, RunStatus.PRUNED.value


def welch_by_hand(a: list[float], b: list[float], confidence: float = 0.95) -> tuple[float, float, float, float]:
    """mean(a) - mean(b), the Welch interval and the two-sided p-value, from the textbook formulas."""
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    diff, se = np.mean(a) - np.mean(b), math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = stats.t.ppf((1 + confidence) / 2, dof) * se
    return diff, diff - half, diff + half, 2 * stats.t.sf(abs(diff / se), dof)


# ----------------------------------------------------------------------------- loading


def test_load_runs_one_row_per_run_with_dotted_config(tmp_path):
    write_ablation(tmp_path)
    write_run(tmp_path, "base-0", name="baseline", group=None)
    sweep = tmp_path / "sweeps" / "lr"
    sweep.mkdir(parents=True)
    (sweep / "trials.csv").write_text("number,value\n0,1.5\n")
    (sweep / "best.yaml").write_text("train: {lr: 0.001}\n")
    broken = RunStore(tmp_path).new("act", "broken")
    broken.write_config("name: act\n")
    broken.meta_path.write_text("{not json")  # a meta.json no writer would leave: read, warned about, skipped

    with pytest.warns(UserWarning, match="broken"):
        runs = load_runs(tmp_path)

    assert len(runs) == 9 and runs["run_id"].is_unique
    assert list(runs.columns[:len(BASE_COLUMNS)]) == BASE_COLUMNS
    row = runs.set_index("run_id").loc["relu-1"]
    assert row["model.activation"] == "relu" and row["train.lr"] == 1e-3 and row["model.n_layer"] == 2
    assert row["tracking.wandb.project"] == "nanolab"
    assert row["tracking.tags"] == ["ablation", "relu"]
    assert row[BEST_VAL_LOSS] == RELU[1] and row[TOKENS_SEEN] == 10_240 and row["params"] == 26_000
    assert row[final(VAL_LOSS)] == RELU[1]
    assert row["status"] == FINISHED and row["group"] == "activation" and row[WALL_TIME] == 100.0
    assert pd.api.types.is_datetime64_any_dtype(runs["start_time"])
    assert row["end_time"] - row["start_time"] == pd.Timedelta(seconds=100)
    assert Path(row["path"]) == (tmp_path / "act" / "relu-1").resolve()


def test_load_runs_group_filter_and_narrower_paths(tmp_path):
    write_ablation(tmp_path)
    write_run(tmp_path, "base-0", name="baseline", group=None)
    assert len(load_runs(tmp_path, group="activation")) == 8
    assert load_runs(tmp_path, group="nope").empty
    assert list(load_runs(tmp_path / "baseline")["run_id"]) == ["base-0"]
    assert list(load_runs([tmp_path / "act" / "gelu-0", str(tmp_path / "act" / "gelu-1")])["run_id"]) == [
        "gelu-0", "gelu-1"]
    assert len(load_runs([tmp_path, tmp_path / "act"])) == 9  # found twice, listed once


def test_group_falls_back_to_tracking_group(tmp_path):
    folder = write_run(tmp_path, "r1", group="lr")
    folder.write_meta({k: v for k, v in folder.read_meta().items() if k != "group"})
    assert list(load_runs(tmp_path, group="lr")["run_id"]) == ["r1"]


def test_missing_path_warns_and_gives_empty_frame_with_base_columns(tmp_path):
    with pytest.warns(UserWarning, match="no such"):
        runs = load_runs(tmp_path / "absent")
    assert runs.empty and set(BASE_COLUMNS) <= set(runs.columns)
    RunFolder(tmp_path / "half" / "r").write_meta({"run_id": "r"})
    with pytest.warns(UserWarning, match="without config.yaml"):
        assert load_runs(tmp_path).empty


def test_load_history_is_long_with_train_and_eval_rows_merged(tmp_path):
    write_run(tmp_path, "g0", "gelu", 1.5)
    write_run(tmp_path, "r0", "relu", 1.4)
    assert load_history(tmp_path, group="activation")["run_id"].nunique() == 2
    assert load_history(tmp_path, group="other").empty
    with (tmp_path / "act" / "r0" / "metrics.jsonl").open("a") as f:
        f.write('{"step": 50, "train/lo')  # a run killed mid-write: the torn line is left out
    history = load_history(tmp_path)
    assert list(history.columns[:4]) == ["run_id", "name", "group", "step"]
    assert {TRAIN_LOSS, VAL_LOSS, VAL_BPC, TOKENS_PER_SEC} <= set(history.columns)
    g0 = history[history["run_id"] == "g0"].set_index("step")
    assert list(g0.index) == [10, 20, 30, 40]
    assert g0.loc[20, TRAIN_LOSS] == 2.5 and g0.loc[20, VAL_LOSS] == 2.5
    assert pd.isna(g0.loc[10, VAL_LOSS])
    assert list(history[history["run_id"] == "r0"]["step"]) == [10, 20, 30, 40]


def test_load_history_takes_the_frame_load_runs_returns_and_run_folders(tmp_path):
    write_ablation(tmp_path)
    runs = load_runs(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the old loader read the frame's column names as paths: a warning each
        history = load_history(runs)
    pd.testing.assert_frame_equal(history, load_history(tmp_path))
    assert history["run_id"].nunique() == 8
    finished = runs[runs["status"] == FINISHED]
    assert set(load_history(finished)["run_id"]) == set(finished["run_id"])
    assert load_history(runs.iloc[:0]).empty
    gelu0 = RunFolder(tmp_path / "act" / "gelu-0")
    assert set(load_history(gelu0)["run_id"]) == {"gelu-0"}
    assert set(load_history([gelu0, RunFolder(tmp_path / "act" / "relu-0")])["run_id"]) == {"gelu-0", "relu-0"}
    with pytest.raises(NanolabError, match="path"):
        load_history(runs.drop(columns="path"))


SET_ASIDE = [("lr", "trial-0", "trial-0.old-20261127-101500"), ("x", "x-s1", "x-s1.attempt1")]


@pytest.mark.parametrize("group, run_id, copy", SET_ASIDE)
def test_set_aside_folders_are_never_runs_of_the_group(tmp_path, group, run_id, copy):
    folder = write_run(tmp_path, run_id, group=group, name=group)
    shutil.copytree(folder.path, folder.path.with_name(copy))  # meta still says run_id: the old code counted it
    runs = load_runs(tmp_path, group=group)
    assert list(runs["run_id"]) == [run_id] and Path(runs.loc[0, "path"]).name == run_id
    assert len(load_history(tmp_path, group=group)) == 4  # steps 10..40 once, not twice
    text = compare_command(tmp_path, group=group, by="model.activation")
    assert ": 1 runs, 1 finished" in text


def test_a_real_run_loads(tmp_path, monkeypatch):
    """A tiny run by the runner itself, so these loaders cannot drift from what it writes."""
    monkeypatch.setenv("NANOLAB_RUNS", str(tmp_path))
    cfg = spec_from_dict({"name": "tiny", "seed": 7, "data": {"block_size": 16},
                          "model": {"n_layer": 1, "n_head": 2, "n_embd": 16},
                          "train": {"batch_size": 4, "max_iters": 10, "warmup_iters": 2, "eval_interval": 5,
                                    "eval_iters": 2, "log_interval": 5, "sample_tokens": 0},
                          "tracking": {"wandb": {"mode": "disabled"}, "group": "g"}})
    result = run(cfg, run_id="x-s1", show_progress=False)
    shutil.copytree(result.run_dir, result.run_dir.with_name("x-s1.attempt1"))
    runs = load_runs(tmp_path)
    assert list(runs["run_id"]) == ["x-s1"] and runs.loc[0, "status"] == FINISHED and runs.loc[0, "group"] == "g"
    assert runs.loc[0, BEST_VAL_LOSS] == result.summary[BEST_VAL_LOSS]
    assert {final(m) for m in EVAL_METRICS} | {BEST_VAL_PPL, BEST_STEP, TOKENS_SEEN, STEPS} <= set(runs.columns)
    history = load_history(runs)
    assert list(history["step"]) == [5, 10]
    assert {TRAIN_LOSS, TRAIN_LR, TRAIN_GRAD_NORM, TOKENS_PER_SEC, *EVAL_METRICS} <= set(history.columns)


# ----------------------------------------------------------------------------- comparison


def ablation_frame() -> pd.DataFrame:
    rows = [{"run_id": f"g{i}", "model.activation": "gelu", "status": FINISHED, BEST_VAL_LOSS: v}
            for i, v in enumerate(GELU)]
    rows += [{"run_id": f"r{i}", "model.activation": "relu", "status": FINISHED, BEST_VAL_LOSS: v}
             for i, v in enumerate(RELU)]
    rows += [{"run_id": "rf", "model.activation": "relu", "status": FAILED, BEST_VAL_LOSS: 0.1},
             {"run_id": "gp", "model.activation": "gelu", "status": PRUNED, BEST_VAL_LOSS: 0.1},
             {"run_id": "gd", "model.activation": "gelu", "status": RunStatus.DIVERGED.value, BEST_VAL_LOSS: np.nan}]
    return pd.DataFrame(rows)


def test_compare_matches_hand_computed_welch():
    table = compare(ablation_frame(), by="model.activation")  # no seed column: nothing to pair, Welch
    assert list(table["model.activation"]) == ["relu", "gelu"]  # best (lowest) first
    relu, gelu = table.iloc[0], table.iloc[1]
    assert gelu["baseline"] and not relu["baseline"]  # tie on n: the variant seen first
    assert relu["n"] == 3 and gelu["n"] == 3
    assert relu["mean"] == pytest.approx(sum(RELU) / 3)
    assert relu["std"] == pytest.approx(math.sqrt(sum((x - sum(RELU) / 3) ** 2 for x in RELU) / 2))
    assert relu["min"] == 1.44 and relu["max"] == 1.48
    diff, low, high, p = welch_by_hand(RELU, GELU)
    assert relu["test"] == "welch"
    assert relu["diff"] == pytest.approx(diff) == pytest.approx(-0.14 / 3)
    assert (relu["ci_low"], relu["ci_high"]) == (pytest.approx(low), pytest.approx(high))
    assert relu["p_value"] == pytest.approx(p) == pytest.approx(0.0395679)
    assert relu["p_adjusted"] == relu["p_value"]  # one comparison: Holm leaves it as it is
    assert relu["significant"] and high < 0
    assert gelu["diff"] == 0 and pd.isna(gelu["ci_low"]) and not gelu["significant"] and pd.isna(gelu["test"])
    # failed, pruned and diverged runs are counted, not averaged
    assert (relu["n_failed"], relu["n_pruned"]) == (1, 0)
    assert (gelu["n_failed"], gelu["n_pruned"], gelu["n_diverged"]) == (0, 1, 1)


@pytest.mark.parametrize("status", [s.value for s in UNFINISHED])
def test_only_finished_runs_enter_the_statistics(tmp_path, status):
    write_ablation(tmp_path)
    write_run(tmp_path, "relu-odd", "relu", 0.01, 8, status=status)  # its summary would win every figure
    table = compare(load_runs(tmp_path), "model.activation").set_index("model.activation")
    assert set(COUNTED.values()) == {f"n_{s.value}" for s in UNFINISHED} <= set(table.columns)
    assert table.loc["relu", "n"] == 3 and table.loc["relu", "min"] == min(RELU)
    assert table.loc["relu", "mean"] == pytest.approx(np.mean(RELU))
    assert table.loc["relu", f"n_{status}"] == 1 + (status == FAILED)


def test_compare_named_baseline_confidence_and_direction():
    df = ablation_frame()
    for baseline in ("relu", ("relu",), {"model.activation": "relu"}):
        table = compare(df, ["model.activation"], baseline=baseline).set_index("model.activation")
        assert table.loc["relu", "baseline"] and table.loc["gelu", "diff"] == pytest.approx(0.14 / 3)
    _, low, high, _ = welch_by_hand(GELU, RELU, confidence=0.99)
    table = compare(df, "model.activation", baseline="relu", confidence=0.99).set_index("model.activation")
    assert table.loc["gelu", "ci_low"] == pytest.approx(low) and table.loc["gelu", "ci_high"] == pytest.approx(high)
    assert list(compare(df, "model.activation", direction="maximize")["model.activation"]) == ["gelu", "relu"]
    with pytest.raises(NanolabError, match="no such variant.*model.activation=gelu"):
        compare(df, "model.activation", baseline="swiglu")


def test_compare_default_baseline_is_the_variant_with_most_runs():
    df = pd.concat([ablation_frame(), pd.DataFrame([{"run_id": "r3", "model.activation": "relu",
                                                     "status": FINISHED, BEST_VAL_LOSS: 1.46}])])
    table = compare(df, "model.activation").set_index("model.activation")
    assert table.loc["relu", "baseline"] and table.attrs["baseline"] == "model.activation=relu"


def test_compare_small_samples_give_nan_not_errors():
    df = pd.DataFrame([
        {"model.activation": "gelu", "train.lr": 1e-3, "status": FINISHED, BEST_VAL_LOSS: 1.5},
        {"model.activation": "gelu", "train.lr": 1e-3, "status": FINISHED, BEST_VAL_LOSS: 1.6},
        {"model.activation": "relu", "train.lr": 1e-3, "status": FINISHED, BEST_VAL_LOSS: 1.4},
        {"model.activation": "swiglu", "train.lr": 1e-3, "status": FAILED, BEST_VAL_LOSS: np.nan},
    ])
    table = compare(df, ["model.activation", "train.lr"]).set_index("model.activation")
    assert list(table.index) == ["relu", "gelu", "swiglu"]  # no runs: last
    assert table.loc["relu", "n"] == 1 and pd.isna(table.loc["relu", "std"])
    assert table.loc["relu", "diff"] == pytest.approx(-0.15)
    assert pd.isna(table.loc["relu", "ci_low"]) and pd.isna(table.loc["relu", "p_value"])
    assert not table.loc["relu", "significant"]
    assert table.loc["swiglu", "n"] == 0 and pd.isna(table.loc["swiglu", "mean"])
    assert table.loc["swiglu", "n_failed"] == 1
    text = format_table(table.reset_index())
    assert "swiglu" in text and "n_failed" in text and "n_pruned" not in text


def test_compare_rejects_unknown_keys_and_metrics():
    df = ablation_frame()
    with pytest.raises(NanolabError, match=r"'model.activaton'.*did you mean 'model.activation'"):
        compare(df, "model.activaton")
    with pytest.raises(NanolabError, match=r"'best/val_los'.*did you mean 'best/val_loss'"):
        compare(df, "model.activation", metric="best/val_los")
    with pytest.raises(NanolabError, match="direction"):
        compare(df, "model.activation", direction="down")


def test_varying_keys_ignores_seed_name_and_tracking(tmp_path):
    write_ablation(tmp_path)
    runs = load_runs(tmp_path)
    assert runs["seed"].nunique() > 1 and runs["tracking.tags"].map(tuple).nunique() > 1
    assert varying_keys(runs) == ["model.activation"]


def test_format_table_and_markdown_mark_significance():
    table = compare(ablation_frame(), "model.activation")
    text = format_table(table)
    assert "95% CI" in text and "*" in text and "baseline" in text
    lines = to_markdown(table).splitlines()
    assert lines[0] == ("| model.activation | n | mean | std | min | diff | 95% CI | rel diff | g | test | p | p adj "
                        "| sig | n_diverged | n_pruned | n_failed |")
    assert lines[1].startswith("| --- | ---: |")
    # rel diff: -0.0467 / 1.5033 = -3.1%, the interval's ends -0.0896 / 1.5033 = -6.0% and -0.0038 / 1.5033 = -0.3%;
    # g: -0.0467 / sqrt((0.0208^2 + 0.0153^2) / 2) = -2.56, times J(4) = 0.798: -2.04
    assert lines[2] == ("| relu | 3 | 1.4567 | 0.0208 | 1.4400 | -0.0467 | [-0.0896, -0.0038] | -3.1% [-6.0%, -0.3%] "
                        "| -2.04 | welch | 0.0396 | 0.0396 | * | 0 | 0 | 1 |")
    assert lines[3] == "| gelu | 3 | 1.5033 | 0.0153 | 1.4900 | baseline | - | - | - | - | - | - |  | 1 | 1 | 0 |"


# ----------------------------------------------------------------------------- the CLI entry


def test_compare_command_writes_csv_markdown_and_png(tmp_path):
    write_ablation(tmp_path / "runs")
    out = tmp_path / "out"
    text = compare_command(tmp_path / "runs", group="activation", csv=str(out / "cmp.csv"),
                           markdown=str(out / "cmp.md"), plot=str(out / "val.png"))
    assert "best/val_loss by model.activation" in text and ": 8 runs, 6 finished" in text
    assert "relu" in text and "*" in text
    assert text.splitlines()[-3:] == [f"wrote {out / name}" for name in ("cmp.csv", "cmp.md", "val.png")]

    csv = pd.read_csv(out / "cmp.csv").set_index("model.activation")
    paired = stats.ttest_rel(RELU, GELU)  # both ran seeds 0, 1, 2: the runs pair up by seed
    assert csv.loc["relu", "mean"] == pytest.approx(np.mean(RELU))
    assert csv.loc["gelu", "std"] == pytest.approx(np.std(GELU, ddof=1))
    assert csv.loc["relu", "test"] == "paired"
    assert (csv.loc["relu", "diff"], csv.loc["relu", "ci_low"], csv.loc["relu", "p_value"]) == (
        pytest.approx(np.mean(RELU) - np.mean(GELU)), pytest.approx(paired.confidence_interval().low),
        pytest.approx(paired.pvalue))
    assert (csv.loc["relu", "n_failed"], csv.loc["gelu", "n_pruned"]) == (1, 1)

    markdown = (out / "cmp.md").read_text()
    assert markdown.startswith(text.split("\nmodel.activation")[0] + "\n\n| model.activation | n | mean |")
    assert "| relu | 3 | 1.4567 |" in markdown and "| gelu | 3 | 1.5033 |" in markdown

    png = (out / "val.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


def test_compare_command_explicit_by_baseline_and_metric(tmp_path):
    write_ablation(tmp_path)
    text = compare_command([tmp_path], group="activation", by="model.activation,train.lr",
                           metric=final(VAL_LOSS), baseline="model.activation=relu,train.lr=1e-3")
    assert "final/val_loss by model.activation, train.lr" in text
    assert "baseline model.activation=relu, train.lr=0.001" in text


def test_compare_command_errors_name_the_value(tmp_path, monkeypatch):
    write_ablation(tmp_path)
    with pytest.raises(NanolabError,
                       match=r"no runs of group 'activaton'.*did you mean 'activation'.*groups: activation"):
        compare_command(tmp_path, group="activaton")
    with pytest.raises(NanolabError, match=r"did you mean 'model.activation'"):
        compare_command(tmp_path, group="activation", by="model.activaton")
    with pytest.raises(NanolabError, match=r"unknown metric 'val_loss'.*best/val_loss"):
        compare_command(tmp_path, group="activation", metric="val_loss")
    with pytest.raises(NanolabError, match="empty: no such run folder or directory"):
        compare_command(tmp_path / "empty")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NanolabError, match="no runs found"):
        compare_command(tmp_path / "empty")
    monkeypatch.setenv("NANOLAB_RUNS", str(tmp_path))
    assert "relu" in compare_command(group="activation")


def test_unknown_compare_key_lists_the_keys_that_exist_when_none_varies(tmp_path):
    for seed in (1, 2):
        write_run(tmp_path, f"gelu-{seed}", seed=seed)
    with pytest.raises(NanolabError) as error:
        compare_command(tmp_path, by="model.activaton")
    message = str(error.value)
    assert message.startswith("unknown key 'model.activaton' to compare by (did you mean 'model.activation'?); "
                              "no config key varies across these runs; their keys: data.")
    assert "model.activation, " in message and "vary across" not in message.replace("no config key varies across", "")


@pytest.mark.parametrize("flags, fragment", [
    (["--csv", "/proc/nope/t.csv"], "no such file or directory while writing /proc/nope/t.csv"),
    (["--markdown", "/proc/nope/t.md"], "no such file or directory while writing /proc/nope/t.md"),
    (["--csv", "{out}/t.csv", "--plot", "{out}/p.xyz"],
     "{out}/p.xyz: unknown plot format '.xyz'; accepted: .avif, .eps,"),
    (["--plot", "{out}/p.pgn"], "(did you mean '.png'?)"),
])
def test_compare_files_that_cannot_be_written_are_one_line_and_nothing_is_written(tmp_path, capsys, flags, fragment):
    write_ablation(tmp_path / "runs")
    out = tmp_path / "out"
    argv = ["compare", str(tmp_path / "runs"), *(f.format(out=out) for f in flags)]
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("nanolab: error: ") and fragment.format(out=out) in err and err.count("\n") == 1, err
    assert not out.exists()


def test_compare_from_wandb_needs_no_run_folders(tmp_path, monkeypatch, capsys):
    write_ablation(tmp_path)
    monkeypatch.setattr("nanolab.analysis.command.load_wandb_runs", lambda path, group: load_runs(tmp_path, group))
    assert main(["compare", "--wandb", "me/nanolab", "--group", "activation"]) == EXIT_OK
    assert "best/val_loss by model.activation in W&B me/nanolab (group activation)" in capsys.readouterr().out
    assert main(["compare", str(tmp_path), "--wandb", "me/nanolab"]) == EXIT_USAGE
    assert capsys.readouterr().err == (f"nanolab: error: {tmp_path} and --wandb me/nanolab: runs come from run "
                                       "folders or from W&B; give one of them\n")


def test_compare_at_a_point_of_compute_from_wandb_takes_the_finished_runs_history(tmp_path, monkeypatch):
    write_ablation(tmp_path)
    running = write_run(tmp_path, "relu-running", "relu", 1.4, 5, status=RunStatus.RUNNING.value)
    lines = running.metrics_path.read_text().splitlines(keepends=True)
    running.metrics_path.write_text("".join(lines[:3]))  # up to step 20: short of wall=75, yet not compared
    monkeypatch.setattr("nanolab.analysis.command.load_wandb_runs", lambda path, group: load_runs(tmp_path, group))
    monkeypatch.setattr("nanolab.analysis.command.load_wandb_history",
                        lambda path, group: load_history(tmp_path, group))
    remote = compare_command(wandb_path="me/nanolab", group="activation", at="wall=75")
    local = compare_command(tmp_path, group="activation", at="wall=75")
    assert remote.replace("W&B me/nanolab", str(tmp_path)) == local


# ----------------------------------------------------------------------------- equal compute (--at, --x)


def test_interpolate_is_the_straight_line_between_two_evaluations():
    x, y = np.array([100.0, 300.0]), np.array([3.0, 2.0])
    assert interpolate(x, y, 200) == 2.5  # halfway: (3.0 + 2.0) / 2
    assert interpolate(x, y, 150) == 2.75  # a quarter of the way: 3.0 - 0.25 x 1.0
    assert interpolate(x, y, 300) == 2.0 and interpolate(x, y, 100) == 3.0  # at an evaluation: its value


def history_by_hand() -> pd.DataFrame:
    """Two runs' rows on the flops axis, out of order, with a train row (no val/loss) between evaluations."""
    rows = [("a", 300, 2.0), ("a", 100, 3.0), ("a", 200, np.nan), ("b", 250, 3.0), ("b", 50, 4.0), ("b", 400, 1.0)]
    return pd.DataFrame([{"run_id": run, "step": i, FLOPS: x, VAL_LOSS: y} for i, (run, x, y) in enumerate(rows)])


def test_metric_at_interpolates_each_run_between_its_evaluations():
    at = metric_at(history_by_hand(), "flops", 200)
    # a: halfway from 100 (3.0) to 300 (2.0); b: 150/200 of the way from 50 (4.0) to 250 (3.0)
    assert at.to_dict() == {"a": 2.5, "b": 3.25} and at.name == "val/loss@flops=200"
    # a: its evaluation at 300; b: 50/150 of the way from 250 (3.0) to 400 (1.0)
    assert metric_at(history_by_hand(), "flops", 300).to_dict() == {"a": 2.0, "b": pytest.approx(3.0 - 2 / 3)}


def test_metric_at_refuses_a_point_a_run_did_not_reach():
    with pytest.raises(NanolabError) as error:
        metric_at(history_by_hand(), "flops", 350)
    assert str(error.value) == "--at flops=350 is outside the evaluated range of 1 run(s): a (100..300)"
    with pytest.raises(NanolabError, match=r"of 2 run\(s\): a \(100..300\), b \(50..400\)$"):
        metric_at(history_by_hand(), "flops", 40)


# every axis at the point of step 30, halfway between the evaluations at 20 and 40: each run's best + 0.5
STEP_30 = ["step=30", f"tokens={30 * FAKE_TOKENS_PER_STEP}",
           f"flops={30 * FAKE_TOKENS_PER_STEP * FAKE_FLOPS_PER_TOKEN:.4g}", f"wall={30 * FAKE_SECONDS_PER_STEP}"]


@pytest.mark.parametrize("at", STEP_30)
def test_compare_at_a_point_of_compute(tmp_path, at):
    write_ablation(tmp_path / "runs")
    csv = tmp_path / "t.csv"
    text = compare_command(tmp_path / "runs", group="activation", at=at, csv=str(csv))
    name = f"val/loss@{at.split('=')[0]}={float(at.split('=')[1]):.12g}"
    assert text.startswith(f"{name} by model.activation in ")
    table = pd.read_csv(csv).set_index("model.activation")
    assert table.loc["relu", "mean"] == pytest.approx(np.mean(RELU) + 0.5)
    assert table.loc["gelu", "mean"] == pytest.approx(np.mean(GELU) + 0.5)
    assert table.loc["relu", "test"] == "paired"
    assert table.loc["relu", "p_value"] == pytest.approx(stats.ttest_rel(np.add(RELU, 0.5), np.add(GELU, 0.5)).pvalue)


def test_compare_at_a_logged_metric_other_than_val_loss(tmp_path):
    write_ablation(tmp_path / "runs")
    csv = tmp_path / "t.csv"
    text = compare_command(tmp_path / "runs", group="activation", at="step=30", metric=VAL_BPC, csv=str(csv))
    assert text.startswith("val/bpc@step=30 by model.activation")
    assert pd.read_csv(csv).set_index("model.activation").loc["relu", "mean"] == pytest.approx(
        (np.mean(RELU) + 0.5) / math.log(2))


def test_runs_from_before_the_counters_get_tokens_and_flops_derived_but_not_wall(tmp_path):
    write_ablation(tmp_path / "new")
    write_ablation(tmp_path / "old", counters=False)
    new, old = load_history(tmp_path / "new"), load_history(tmp_path / "old")
    assert WALL not in old
    pd.testing.assert_frame_equal(old[["run_id", "step", TOKENS, FLOPS]], new[["run_id", "step", TOKENS, FLOPS]],
                                  check_dtype=False)
    assert list(old.loc[old["run_id"] == "gelu-0", FLOPS]) == [s * 256 * 150_000 for s in (10, 20, 30, 40)]
    assert compare_command(tmp_path / "old", at=STEP_30[2]) == compare_command(tmp_path / "new", at=STEP_30[2]).replace(
        str(tmp_path / "new"), str(tmp_path / "old"))
    with pytest.raises(NanolabError) as error:
        compare_command(tmp_path / "old", at="wall=75")
    assert str(error.value) == ("6 run(s) logged val/loss without perf/wall_time, which cannot be derived for runs "
                                "from before it was logged: gelu-0, gelu-1, gelu-2, relu-0, relu-1, relu-2")


@pytest.mark.parametrize("at, message", [
    ("step=10", "--at step=10 is outside the evaluated range of 6 run(s): gelu-0 (20..40), gelu-1 (20..40), "
                "gelu-2 (20..40), relu-0 (20..40), relu-1 (20..40), relu-2 (20..40)"),
    *[(bad, f"--at {bad}: expected KEY=NUMBER, one of step=N, tokens=N, flops=N, wall=N (e.g. --at flops=1e12)")
      for bad in ("flops", "flop=1e12", "flops=many", "flops=inf", "=3")],
])
def test_at_errors_are_one_line(tmp_path, capsys, at, message):
    write_ablation(tmp_path)
    assert main(["compare", str(tmp_path), "--at", at]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.endswith(f"error: {message}\n") and err.count("\n") == 1, err


def test_on_one_grid_interpolates_runs_within_their_common_range():
    curves = [(np.array([0.0, 10.0, 20.0]), np.array([3.0, 2.0, 1.0])),
              (np.array([5.0, 15.0, 25.0]), np.array([3.0, 2.0, 1.0]))]
    grid, values = _on_one_grid(curves)
    # common range 5..20; the union of x there: 5, 10, 15, 20; each run on the line between its points
    assert list(grid) == [5, 10, 15, 20]
    assert values.tolist() == [[2.5, 2.0, 1.5, 1.0], [3.0, 2.5, 2.0, 1.5]]


class RecordedFigure(Figure):
    """matplotlib's Figure, remembered so a test can read back what was drawn."""

    made: list = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        RecordedFigure.made.append(self)


@pytest.mark.parametrize("x, label, values", [("step", "step", [20, 40]),
                                              ("flops", "FLOPs", [20 * 256 * 150_000, 40 * 256 * 150_000]),
                                              ("wall", "wall time (s)", [50.0, 100.0])])
def test_plot_against_an_axis_draws_the_mean_of_the_seeds(tmp_path, monkeypatch, x, label, values):
    write_ablation(tmp_path / "runs")
    monkeypatch.setattr("nanolab.analysis.render.Figure", RecordedFigure)
    RecordedFigure.made.clear()
    compare_command(tmp_path / "runs", plot=str(tmp_path / "p.png"), x=x)
    (ax,) = RecordedFigure.made[0].axes
    assert ax.get_xlabel() == label
    relu = next(line for line in ax.lines if line.get_label().startswith("model.activation=relu"))
    assert relu.get_label() == "model.activation=relu (n=3)" and list(relu.get_xdata()) == values
    assert relu.get_ydata() == pytest.approx([np.mean(RELU) + 1, np.mean(RELU)])  # as written: best + (40 - step) / 20


def test_plot_axis_errors_come_before_any_file_is_written(tmp_path):
    write_ablation(tmp_path / "runs", counters=False)
    out = tmp_path / "out"
    with pytest.raises(NanolabError, match=r"^axis 'time' \(--x, --at\): expected one of step, tokens, flops, wall"):
        compare_command(tmp_path / "runs", csv=str(out / "t.csv"), plot=str(out / "p.png"), x="time")
    assert not out.exists()
    with pytest.raises(NanolabError, match="without perf/wall_time"):
        compare_command(tmp_path / "runs", plot=str(out / "p.png"), x="wall")


# ----------------------------------------------------------------------------- tuned ablations


def test_a_tuned_ablations_chosen_values_are_columns_shown_per_variant(tmp_path):
    for activation, losses, lr in (("gelu", GELU, 0.0023145678), ("relu", RELU, 0.0017)):
        for seed, best in enumerate(losses):
            write_run(tmp_path, f"{activation}-{seed}", activation, best, seed, lr=lr)
    write_run(tmp_path, "untuned", "swiglu", 1.4, 0)
    runs = load_runs(tmp_path).set_index("run_id")
    assert runs.loc["gelu-1", "tuned.train.lr"] == 0.0023145678 == runs.loc["gelu-1", "train.lr"]
    assert pd.isna(runs.loc["untuned", "tuned.train.lr"])
    assert varying_keys(runs) == ["model.activation"]  # train.lr varies because it was tuned: not a variant key
    table = compare(runs, "model.activation", baseline="gelu")
    assert list(table.columns[:3]) == ["model.activation", "tuned.train.lr", "n"]
    assert table.set_index("model.activation")["tuned.train.lr"].to_dict() == pytest.approx(
        {"swiglu": np.nan, "relu": 0.0017, "gelu": 0.0023145678}, nan_ok=True)
    lines = format_table(table).splitlines()
    assert lines[0].split()[:4] == ["model.activation", "tuned", "train.lr", "n"]
    assert [line.split()[:2] for line in lines[1:]] == [["swiglu", "-"], ["relu", "0.0017"], ["gelu", "0.002315"]]



# ----------------------------------------------------------------------------- W&B


class FakeWandbRun(SimpleNamespace):
    """The attributes nanolab reads from a `wandb.apis.public.Run`."""

    def history(self, samples=500, pandas=True):
        return self.history_frame


def fake_wandb_run(folder: RunFolder, named_by_id: bool = False) -> FakeWandbRun:
    """The W&B twin of a local run folder as nanolab's tracker writes it: named `<name>/<run-id>` with the run's
    keys in the config (or, `named_by_id`, as before: named by the run id alone); config holds the spec plus
    meta's figures; summary.json, the status, the last step metrics (losses as min/last) and W&B's own keys in
    the summary; the samples table in the history."""
    local_meta, local_summary = folder.read_meta(), folder.read_summary()
    history = pd.DataFrame([{"step": step, **row} for step, row in fake_metrics(local_summary[BEST_VAL_LOSS])])
    history = history.rename(columns={"step": "_step"}).assign(_runtime=1.0, _timestamp=1.7e9)
    history["samples"] = [None] * (len(history) - 1) + [{"_type": "table-file", "path": "media/t.json"}]
    run_keys = {"run_id": local_meta["run_id"], "ablation": local_meta["group"], "variant": local_meta["variant"],
                "sweep": None, "trial": None, "swept_keys": None}
    return FakeWandbRun(
        id="k3j9x0qa", name=local_meta["run_id"] if named_by_id else f"{local_meta['name']}/{local_meta['run_id']}",
        group=local_meta["group"], job_type="ablate", state="finished", path=["me", "nanolab", "k3j9x0qa"],
        created_at="2025-03-01T10:00:00Z",
        config={**folder.read_config(), "_wandb": {"cli_version": "0.31.0"}, "params": 26_000,
                "non_embedding_params": 24_000, "flops_per_token": 150_000, "device": "cpu",
                "run_dir": str(folder.path), **({} if named_by_id else run_keys)},
        summary={**local_summary, "status": FINISHED, TRAIN_LOSS: {"min": 2.0, "last": 2.0},
                 TRAIN_LR: 1e-3, TOKENS_PER_SEC: 5000.0, "_runtime": 100.0, "_step": 40,
                 "samples": {"_type": "table-file"}},
        history_frame=history,
    )


@pytest.mark.parametrize("named_by_id", [False, True])
def test_wandb_run_maps_to_the_same_columns_as_a_local_run(tmp_path, monkeypatch, named_by_id):
    folder = write_run(tmp_path, "g0", "gelu", 1.5)
    local = load_runs(tmp_path)
    fake = fake_wandb_run(folder, named_by_id)
    calls = []

    class FakeApi:
        def runs(self, path, filters):
            calls.append((path, filters))
            return [fake]

    monkeypatch.setattr("wandb.Api", FakeApi)
    remote = load_wandb_runs("me/nanolab", group="activation")
    assert calls == [("me/nanolab", {"group": "activation"})]
    assert list(remote.columns) == list(local.columns)
    same = [c for c in local.columns if c != "path"]
    pd.testing.assert_frame_equal(remote[same], local[same], check_dtype=False)
    assert remote.loc[0, "run_id"] == "g0" and remote.loc[0, "path"] == "me/nanolab/k3j9x0qa"

    history = wandb_run_history(fake)
    local_history = load_history(tmp_path)
    assert list(history.columns) == list(local_history.columns)
    pd.testing.assert_frame_equal(history, local_history, check_dtype=False)


def test_wandb_states_map_to_nanolab_statuses():
    fake = dict(id="k3j9x0qa", name="x", group="g", job_type="run", path=["e", "p", "x"],
                created_at="2025-03-01T10:00:00", config={"name": "exp"}, history_frame=pd.DataFrame())
    assert wandb_run_row(FakeWandbRun(state="crashed", summary={}, **fake))["status"] == FAILED
    assert wandb_run_row(FakeWandbRun(state="killed", summary={}, **fake))["status"] == RunStatus.INTERRUPTED.value
    row = wandb_run_row(FakeWandbRun(state="finished", summary={"status": "diverged", "_runtime": 5}, **fake))
    assert row["status"] == "diverged" and row["name"] == "exp" and row["run_id"] == "x" and row[WALL_TIME] == 5
    assert wandb_run_history(FakeWandbRun(state="running", summary={}, **fake)).empty


# ----------------------------------------------------------------------------- compare knows an ablation's baseline

GRID_ABLATION = """\
name: grid
experiment: tiny.yaml
grid: {model.activation: [gelu, relu], model.norm: [layernorm, rmsnorm]}
seeds: [1, 2]
"""


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """A 2 x 2 ablation whose grid holds the experiment's own values (gelu, layernorm), run in full; tests copy it."""
    folder = tmp_path_factory.mktemp("grid")
    (folder / "tiny.yaml").write_text(tiny_yaml())
    (folder / "grid.yaml").write_text(GRID_ABLATION)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NANOLAB_RUNS", str(folder / "runs"))
        assert main(["ablate", str(folder / "grid.yaml")]) == EXIT_OK
    return folder


def test_compare_takes_an_ablations_baseline_from_its_file_or_its_group(grid, monkeypatch):
    monkeypatch.setenv("NANOLAB_RUNS", str(grid / "runs"))
    why = (f"baseline model.activation=gelu, model.norm=layernorm (the baseline of the ablation {grid / 'grid.yaml'}:"
           " the experiment's own values)")
    for text in (compare_command(str(grid / "grid.yaml")), compare_command(group="grid"),
                 compare_command([grid / "runs" / "grid"])):
        assert text.splitlines()[1].startswith(why + "; diff:")
    text = compare_command([grid / "runs" / "grid"], baseline="model.activation=relu,model.norm=rmsnorm")
    assert text.splitlines()[1].startswith("baseline model.activation=relu, model.norm=rmsnorm (--baseline); diff:")
    text = compare_command([grid / "runs" / "grid"], by="model.activation")
    assert text.splitlines()[1].startswith("baseline model.activation=gelu (the variant with the most finished "
                                           "runs, the first seen of a tie; the ablation's baseline is not a variant "
                                           "of --by model.activation)")


def test_a_partly_run_ablation_compares_its_finished_runs_and_names_the_missing(grid, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(grid / "runs", root)
    for activation in ("gelu", "relu"):  # as if the rmsnorm half had not run yet
        shutil.rmtree(root / "grid" / f"activation={activation}_norm=rmsnorm-s1")
        shutil.rmtree(root / "grid" / f"activation={activation}_norm=rmsnorm-s2")
    folder = RunFolder(root / "grid" / "activation=relu_norm=layernorm-s2")
    folder.write_meta({**folder.read_meta(), "status": RunStatus.INTERRUPTED.value})
    # before: "baseline key 'model.norm' is not among the compared keys" (model.norm no longer varied)
    text = compare_command([root / "grid"], group="grid")
    lines = text.splitlines()
    assert lines[0] == f"best/val_loss by model.activation, model.norm in {root / 'grid'} (group grid): 4 runs, 3 finished"
    assert lines[3] == ("not finished (5 of 8 variant x seed, over the seeds started so far): model.activation=gelu, "
                        "model.norm=rmsnorm seed 1 (not started); model.activation=gelu, model.norm=rmsnorm seed 2 "
                        "(not started); model.activation=relu, model.norm=layernorm seed 2 (interrupted); "
                        "model.activation=relu, model.norm=rmsnorm seed 1 (not started); model.activation=relu, "
                        "model.norm=rmsnorm seed 2 (not started)")
    table = [line.split() for line in lines[5:]]
    assert sorted((r[0], r[1], r[2]) for r in table) == [("gelu", "layernorm", "2"), ("relu", "layernorm", "1")]


def test_compare_target_counts_each_variants_seeds_that_met_it(tmp_path, capsys):
    write_ablation(tmp_path)  # gelu 1.50, 1.52, 1.49; relu 1.45, 1.48, 1.44 at seeds 0, 1, 2; failed runs left out
    assert main(["compare", str(tmp_path), "--target", "1.49"]) == EXIT_OK
    assert capsys.readouterr().out.splitlines()[-2:] == [
        "model.activation=gelu: 1 of 3 seeds at or below 1.49 (seed 0: 1.5000, seed 1: 1.5200, seed 2: 1.4900); "
        "mean 1.5033",
        "model.activation=relu: 3 of 3 seeds at or below 1.49 (seed 0: 1.4500, seed 1: 1.4800, seed 2: 1.4400); "
        "mean 1.4567"]


def test_a_null_config_value_is_the_nan_pandas_makes_of_it():
    """An ablation whose variant sets a key to null (`model.logit_softcap: null`) had its finished runs listed as
    'not started': the record's None never equalled the runs' NaN."""
    from nanolab.analysis.command import missing_note

    record = {"resolved": {"variants": {"capped": {"model.logit_softcap": 30.0},
                                        "uncapped": {"model.logit_softcap": None}}}}
    runs = pd.DataFrame({"seed": [1, 1, 2], "status": ["finished", "finished", "running"],
                         "model.logit_softcap": [30.0, None, None]})
    assert missing_note(record, runs, ["model.logit_softcap"]) == (
        "\nnot finished (2 of 4 variant x seed, over the seeds started so far): model.logit_softcap=30.0 seed 2 "
        "(not started); model.logit_softcap=None seed 2 (running)")
