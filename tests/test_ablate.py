"""`nanolab ablate` and `nanolab compare` end to end on tiny runs."""

import json
from pathlib import Path

import pandas as pd
import pytest
from helpers import cli, tiny_yaml

from nanolab.ablate import ablate, load_ablation
from nanolab.analysis import load_runs
from nanolab.errors import SpecError

REPO = Path(__file__).resolve().parents[1]
ABLATION = """\
name: act
experiment: tiny.yaml
overrides: {train.max_iters: 20}
grid: {model.activation: [relu, swiglu]}
seeds: [1, 2]
"""


@pytest.fixture
def plan(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOLAB_RUNS", str(tmp_path / "runs"))
    (tmp_path / "tiny.yaml").write_text(tiny_yaml())
    path = tmp_path / "act.yaml"
    path.write_text(ABLATION)
    return path


def test_plan_runs_sample_nothing_unless_the_file_or_set_asks(plan, tmp_path):
    assert load_ablation(plan).plan.config().train.sample_tokens == 0  # the experiment says 8
    assert load_ablation(plan, extra=("train.sample_tokens=16",)).plan.config().train.sample_tokens == 16
    plan.write_text(ABLATION.replace("overrides: {train.max_iters: 20}",
                                     "overrides: {train.max_iters: 20, train.sample_tokens: 4}"))
    assert load_ablation(plan).plan.config().train.sample_tokens == 4


def test_two_variants_two_seeds_make_four_runs_then_nothing_new(plan, tmp_path):
    ablation, results = ablate(plan)
    assert sorted(results) == ["activation=relu-s1", "activation=relu-s2", "activation=swiglu-s1",
                               "activation=swiglu-s2"]
    assert set(results.values()) == {"finished"}
    df = load_runs(tmp_path / "runs", group="act")
    assert len(df) == 4
    assert set(df["model.activation"]) == {"relu", "swiglu"} and set(df["seed"]) == {1, 2}
    recorded = json.loads((tmp_path / "runs" / "act" / "plan.json").read_text())
    assert recorded["fingerprint"] == ablation.fingerprint and recorded["resolved"] == ablation.resolved()
    for run_dir in [p for p in (tmp_path / "runs" / "act").iterdir() if p.is_dir()]:
        meta = json.loads((run_dir / "meta.json").read_text())
        assert meta["group"] == "act" and meta["job_type"] == "ablate" and meta["plan_fingerprint"] == recorded["fingerprint"]
        assert meta["variant"] == {"model.activation": run_dir.name.split("=")[1].split("-")[0]}
        assert "act" in meta["tags"] and f"activation={meta['variant']['model.activation']}" in meta["tags"]
    again, results = ablate(plan)
    assert results == {}
    assert len(load_runs(tmp_path / "runs", group="act")) == 4


def test_an_interrupted_cell_is_resumed_and_a_crashed_one_set_aside(plan, tmp_path):
    ablation, _ = ablate(plan, seeds=[1])
    folder = tmp_path / "runs" / "act"
    relu, swiglu = folder / "activation=relu-s1", folder / "activation=swiglu-s1"
    for run_dir, status in ((relu, "interrupted"), (swiglu, "failed")):
        meta = json.loads((run_dir / "meta.json").read_text())
        (run_dir / "meta.json").write_text(json.dumps({**meta, "status": status}))
    _, results = ablate(plan, seeds=[1])
    assert results == {"activation=relu-s1": "finished", "activation=swiglu-s1": "finished"}
    assert (folder / "activation=swiglu-s1.attempt1" / "metrics.jsonl").is_file()  # kept, not deleted


def test_cli_ablate_then_compare_writes_csv_markdown_and_plot(plan, tmp_path):
    env = {"NANOLAB_RUNS": str(tmp_path / "runs")}
    proc = cli("ablate", str(plan), "--workers", "2", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "relu" in proc.stdout and "swiglu" in proc.stdout  # the comparison table follows the runs
    out = tmp_path / "out"
    proc = cli("compare", str(tmp_path / "runs"), "--group", "act", "--csv", str(out / "t.csv"),
               "--markdown", str(out / "t.md"), "--plot", str(out / "t.png"), env=env)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(out / "t.csv")
    assert sorted(table["model.activation"]) == ["relu", "swiglu"] and list(table["n"]) == [2, 2]
    runs = load_runs(tmp_path / "runs", group="act")
    for _, row in table.iterrows():
        losses = runs.loc[runs["model.activation"] == row["model.activation"], "best/val_loss"]
        assert row["mean"] == pytest.approx(losses.mean())
    assert "| model.activation" in (out / "t.md").read_text()
    assert (out / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_ablation_files(tmp_path):
    (tmp_path / "tiny.yaml").write_text(tiny_yaml())
    cases = {
        "grid: {model.activation: [relu, gelu3]}\n": ["act.yaml", "gelu3", "did you mean"],
        "grid: {model.activaton: [relu]}\n": ["act.yaml: grid: model.activaton", "did you mean 'activation'"],
        "grid: {model.activation: relu}\n": ["grid.model.activation", "non-empty list"],
        "grid: {model.activation: [relu]}\nseeds: [a]\n": ["seeds", "list of integers"],
        "grid: {model.activation: [relu]}\nsedes: [1]\n": ["sedes", "did you mean 'seeds'"],
        "grid: {model.activation: [relu]}\noverrides: [train.max_iter=5]\n": ["overrides", "train.max_iter"],
        "seeds: [1]\n": ["act.yaml: grid = None: expected a grid", "or named variants"],
        "grid: {model.activation: [relu]}\nvariants: {a: {}}\n": ["grid = ", "one of them"],
        "variants: {a: relu}\n": ["variants.a = 'relu'", "a mapping of dotted keys"],
        "variants: {a b: {}}\n": ["variants = 'a b'", "it names its runs"],
        "variants: {a: {model.activaton: relu}}\n": ["act.yaml: variants.a: model.activaton", "did you mean"],
        "variants: {a: {model.activation: relu3}}\n": ["run a-s1", "relu3"],
    }
    for body, fragments in cases.items():
        path = tmp_path / "act.yaml"
        path.write_text(f"experiment: tiny.yaml\n{body}")
        with pytest.raises(SpecError) as info:
            load_ablation(path)
        for fragment in fragments:
            assert fragment in str(info.value), str(info.value)
    proc = cli("ablate", str(tmp_path / "act.yaml"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_named_variants_each_change_their_own_keys_and_the_empty_one_is_the_baseline(plan, tmp_path):
    plan.write_text("name: loo\nexperiment: tiny.yaml\nseeds: [1]\noverrides: {train.max_iters: 4}\n"
                    "variants: {record: {}, relu: {model.activation: relu}, wide: {model.n_embd: 32}}\n")
    ablation = load_ablation(plan)
    assert [c.run_id for c in ablation.cells] == ["record-s1", "relu-s1", "wide-s1"]
    assert ablation.baseline == {"model.activation": "gelu", "model.n_embd": 16}
    assert [c.variant for c in ablation.cells] == [{"model.activation": "gelu", "model.n_embd": 16},
                                                   {"model.activation": "relu", "model.n_embd": 16},
                                                   {"model.activation": "gelu", "model.n_embd": 32}]
    ablation, results = ablate(plan)
    assert set(results.values()) == {"finished"}
    frame = load_runs(tmp_path / "runs", group="loo").set_index("run_id")
    assert frame.loc["relu-s1", "model.activation"] == "relu" and frame.loc["relu-s1", "model.n_embd"] == 16
    assert frame.loc["wide-s1", "model.activation"] == "gelu" and frame.loc["wide-s1", "model.n_embd"] == 32
    assert set(frame.loc["record-s1", "tracking.tags"]) == {"loo", "record"}


def test_the_experiments_own_variant_is_the_baseline(plan, tmp_path):
    assert load_ablation(plan).baseline is None  # the experiment's gelu is not in the grid
    plan.write_text(ABLATION.replace("[relu, swiglu]", "[relu, gelu]"))
    assert load_ablation(plan).baseline == {"model.activation": "gelu"}


def test_runs_keep_the_experiments_tags_and_print_config_shows_them(plan, tmp_path, capsys):
    from nanolab.cli import main

    plan.write_text(ABLATION.replace("seeds: [1, 2]", "seeds: [1]").replace(
        "overrides: {train.max_iters: 20}", "overrides: {train.max_iters: 4, tracking.tags: [mine, act]}"))
    assert main(["ablate", str(plan), "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "tracking.tags: [mine, act, activation=relu]" in printed
    assert "tracking.tags: [mine, act, activation=swiglu]" in printed
    ablate(plan)
    meta = json.loads((tmp_path / "runs" / "act" / "activation=relu-s1" / "meta.json").read_text())
    assert meta["tags"] == ["mine", "act", "activation=relu"]  # the experiment's, then the plan's, each once
