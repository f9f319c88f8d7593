"""The CLI conventions every verb shares: dotted flags, -q/-v, --json, keys, completion, bare `nanolab`."""

import io
import json
import os
import shutil
import subprocess

import pytest
import yaml
from helpers import cli_main, tiny_yaml

from nanolab import cli, registry
from nanolab.config import Config
from nanolab.config_dicts import to_dict
from nanolab.reference import _subcommands
from nanolab.progress import QUIET_ENV, Progress


def test_bare_nanolab_prints_the_help_and_exits_0(capsys):
    code, out, _ = cli_main(capsys)
    assert code == 0 and out.startswith("usage: nanolab") and "keys" in out and "completion" in out


def test_print_config_without_a_spec_prints_the_defaults(capsys):
    code, out, _ = cli_main(capsys, "run", "--print-config")
    assert code == 0 and yaml.safe_load(out) == to_dict(Config())


def test_dotted_flags_are_set_with_both_spellings(capsys):
    code, out, _ = cli_main(capsys, "run", "--print-config", "--train.lr", "3e-3", "--model.position=rotary")
    printed = yaml.safe_load(out)
    assert code == 0 and printed["train"]["lr"] == 0.003 and printed["model"]["position"] == "rotary"
    assert cli.conventions.expand_dotted_flags(["run", "s.yaml", "--train.lr", "1", "--", "--model.x"]) == [
        "run", "s.yaml", "--set", "train.lr=1", "--", "--model.x"]


def test_a_dotted_flag_is_checked_like_set(capsys):
    code, _, err = cli_main(capsys, "run", "--print-config", "--train.lrr", "3")
    assert code == 2 and err.startswith("nanolab: error: --set: train.lrr: unknown key;") and "did you mean 'lr'" in err
    assert len(err.strip().splitlines()) == 1


def test_verbose_adds_the_traceback_to_the_one_line(capsys):
    _, _, quiet_err = cli_main(capsys, "run", "--print-config", "--set", "train.lrr=3")
    _, _, verbose_err = cli_main(capsys, "run", "-v", "--print-config", "--set", "train.lrr=3")
    assert "Traceback" not in quiet_err and "Traceback (most recent call last)" in verbose_err
    assert verbose_err.strip().splitlines()[-1] == quiet_err.strip()


def test_keys_lists_type_default_and_doc(capsys):
    code, out, _ = cli_main(capsys, "keys", "train.lr")
    assert code == 0 and out.split() == ["train.lr", "float", "0.001", "peak", "learning", "rate"]
    code, out, _ = cli_main(capsys, "keys", "model", "--json")
    rows = json.loads(out)
    assert code == 0 and rows[0] == {"key": "model.n_layer", "type": "int", "default": 4, "doc": "transformer blocks"}
    assert {r["key"] for r in rows} == {f"model.{k}" for k in to_dict(Config())["model"]}


def test_components_json_is_the_registry(capsys):
    code, out, _ = cli_main(capsys, "components", "--json")
    listed = json.loads(out)
    assert code == 0 and {kind: sorted(names) for kind, names in listed.items()} == {
        kind: sorted(registry.available(kind)) for kind in registry.kinds()}


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_scripts_name_every_verb(capsys, shell):
    code, out, _ = cli_main(capsys, "completion", shell)
    assert code == 0 and all(verb in out for verb in _subcommands(cli.build_parser()))
    if shell == "bash" and shutil.which("bash"):
        loaded = subprocess.run(["bash", "-c", f"{out}\ncomplete -p nanolab"], capture_output=True, text=True)
        assert loaded.returncode == 0 and "nanolab" in loaded.stdout, loaded.stderr


def test_quiet_reaches_the_environment_workers_inherit_and_silences_progress(capsys, monkeypatch):
    monkeypatch.setenv(QUIET_ENV, "0")  # recorded, so the "1" that -q sets is undone after the test
    for expected_lines, argv in ((2, ["run", "--print-config"]), (0, ["run", "-q", "--print-config"])):
        cli_main(capsys, *argv)
        stream = io.StringIO()
        with Progress(total=10, stream=stream) as bar:
            bar.update(1, 4.0, None, 100.0)
            bar.update(10, 3.0, 3.5, 100.0)
        assert len(stream.getvalue().splitlines()) == expected_lines
    assert os.environ[QUIET_ENV] == "1"


TINY = tiny_yaml(max_iters=6, warmup_iters=0, eval_interval=3, eval_iters=1, log_interval=3, sample_tokens=0)


@pytest.fixture(scope="module")
def ablated(tmp_path_factory):
    """A finished tiny ablation (relu against the experiment's gelu, 2 seeds) and a one-trial sweep over it."""
    folder = tmp_path_factory.mktemp("json")
    (folder / "tiny.yaml").write_text(TINY)
    (folder / "act.yaml").write_text("name: act\nexperiment: tiny.yaml\ngrid: {model.activation: [gelu, relu]}\n"
                                     "seeds: [1, 2]\n")
    (folder / "lr.yaml").write_text("name: lr\nexperiment: tiny.yaml\nobjective: {metric: val/loss}\n"
                                    "space: {train.lr: {float: [1.0e-3, 1.0e-2], log: true}}\n"
                                    "sampler: {name: random, seed: 0}\ntrials: 1\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NANOLAB_RUNS", str(folder / "runs"))
        mp.setenv(QUIET_ENV, "0")  # -q sets it to "1" in this process; undone on leaving
        assert cli.main(["ablate", str(folder / "act.yaml"), "-q"]) == 0
        assert cli.main(["sweep", str(folder / "lr.yaml"), "-q"]) == 0
        yield folder


def test_status_json_is_the_rows_the_text_shows(ablated, capsys, monkeypatch):
    monkeypatch.setenv("NANOLAB_RUNS", str(ablated / "runs"))
    capsys.readouterr()
    code, out, _ = cli_main(capsys, "status", str(ablated / "act.yaml"), "--json")
    status = json.loads(out)
    assert code == 0 and status["ablation"] == "act" and status["decisions"] is None
    assert [(r["run"], r["status"]) for r in status["runs"]] == [
        ("activation=gelu-s1", "finished"), ("activation=gelu-s2", "finished"),
        ("activation=relu-s1", "finished"), ("activation=relu-s2", "finished")]
    _, text, _ = cli_main(capsys, "status", str(ablated / "act.yaml"))
    assert text.splitlines() == [f"{r['run']}  finished, best/val_loss {r['best/val_loss']:.4f}"
                                 for r in status["runs"]]


def test_compare_json_holds_every_figure_unrounded(ablated, capsys):
    code, out, _ = cli_main(capsys, "compare", str(ablated / "act.yaml"), "--json")
    compared = json.loads(out)
    rows = {row["model.activation"]: row for row in compared["rows"]}
    assert code == 0 and set(rows) == {"gelu", "relu"} and rows["gelu"]["baseline"] and rows["relu"]["test"] == "paired"
    status = json.loads(cli_main(capsys, "status", str(ablated / "act.yaml"), "--json")[1])
    relu = [r["best/val_loss"] for r in status["runs"] if "relu" in r["run"]]
    assert rows["relu"]["mean"] == pytest.approx(sum(relu) / 2, rel=1e-12)
    assert "baseline model.activation=gelu" in compared["caption"]


def test_sweep_status_json_lists_the_trials(ablated, capsys, monkeypatch):
    monkeypatch.setenv("NANOLAB_RUNS", str(ablated / "runs"))
    code, out, _ = cli_main(capsys, "sweep", str(ablated / "lr.yaml"), "--status", "--json")
    status = json.loads(out)
    assert code == 0 and status["sweep"] == "lr" and status["jobs"] == []
    (trial,) = status["trials"]
    assert trial["number"] == 0 and trial["state"] == "COMPLETE" and 1e-3 <= trial["params_train.lr"] <= 1e-2
