"""The `nanolab` command itself: help, version, --print-config, --set order, the registry listing, one-line errors."""

import argparse
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import cli_main

from nanolab import __version__, registry
from nanolab.ablate import load_ablation
from nanolab.cli import build_parser, main
from nanolab.spec import load_spec
from nanolab.config_dicts import to_dict
from nanolab.sweep import load_sweep
from nanolab.vocab import EXIT_OK, EXIT_USAGE

SPEC, SWEEP, ABLATION = "experiments/baseline.yaml", "sweeps/lr.yaml", "experiments/ablations/activation.yaml"


def verbs() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


@pytest.fixture
def in_repo(monkeypatch):
    """The CLI in this process, run from the repository root (the paths below are relative to it)."""
    monkeypatch.chdir(Path(__file__).resolve().parents[1])


def test_components_lists_every_registered_name_with_its_description(capsys):
    code, out, _ = cli_main(capsys, "components")
    assert code == 0
    for kind in registry.kinds():
        assert f"\n{kind}\n" in f"\n{out}"
        for entry in registry.entries(kind):
            assert f"  {entry.name:<18} {entry.description}" in out


@pytest.mark.parametrize("verb, flags", [("run", ["--resume", "--set", "--nproc"]),
                                         ("sample", ["--prompt", "--tokens", "--top-k", "--top-p", "--seed"]),
                                         ("sweep", ["--trials", "--workers", "--storage", "--status"]),
                                         ("ablate", ["--seeds", "--workers", "--set"]),
                                         ("compare", ["--group", "--by", "--csv", "--markdown", "--plot"]),
                                         ("sync", ["RUN_FOLDER"])])
def test_every_verb_documents_its_flags(verb, flags, capsys):
    code, out, _ = cli_main(capsys, verb, "--help")
    assert code == 0
    for flag in flags:
        assert flag in out


@pytest.mark.parametrize("args, fragment", [
    (["run"], "needs a SPEC file"),
    (["run", "nope.yaml"], "nope.yaml: no such file"),
    (["run", "--resume", "nowhere"], "not a run folder"),
    (["sample", "nowhere"], "not a run folder"),
    (["run", "experiments/baseline.yaml", "--set", "train.lr=fast"], "train.lr = 'fast': expected a number"),
    (["compare", "nowhere", "--group", "x"], "nowhere: no such run folder or directory"),
    (["sync", "nowhere"], "nowhere: no such run folder"),
    (["run", "--set", "train.max_iters=10"], "needs a SPEC file"),
    (["sweep", "--set", "train.max_iters=10"], "needs a SWEEP file"),
    (["ablate"], "needs an ablation FILE"),
    (["ablate", "experiments/ablations/position.yaml", "--workers", "0"], "--workers 0: expected a number of processes"),
    (["sweep", "sweeps/lr.yaml", "--workers", "0"], "--workers 0: expected a number of processes"),
    (["sweep", "sweeps/lr.yaml", "--trials", "0"], "--trials 0: expected a number of trials"),
    (["run", "experiments/baseline.yaml", "--nproc", "0"], "--nproc 0: expected a number of processes"),
])
def test_user_errors_are_one_line_and_exit_2(args, fragment, capsys, in_repo, tmp_path, monkeypatch):
    monkeypatch.setenv("NANOLAB_RUNS", str(tmp_path / "runs"))  # nothing may be written; if it were, not here
    code, _, err = cli_main(capsys, *args)
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert fragment in err


def test_version_is_the_installed_one(capsys):
    installed = importlib.metadata.version("nanolab")
    assert __version__ == installed
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == EXIT_OK and capsys.readouterr().out == f"nanolab {installed}\n"


def test_version_in_a_source_checkout_that_was_never_installed():
    code = ("import importlib.metadata as m\n"
            "def missing(name): raise m.PackageNotFoundError(name)\n"
            "m.version = missing\n"
            "import nanolab; print(nanolab.__version__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "0+unknown", proc.stderr


def test_every_argument_of_every_verb_is_explained():
    for verb, parser in verbs().items():
        for action in parser._actions:
            assert action.help, (verb, action.option_strings or action.dest)


def test_help_prints_percent_signs_once(capsys):
    assert "95% confidence" in " ".join(cli_main(capsys, "compare", "--help")[1].split())


def documents(text: str) -> list:
    return list(yaml.safe_load_all(text))


def test_run_print_config_prints_the_resolved_spec_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NANOLAB_RUNS", str(tmp_path / "runs"))
    assert main(["run", SPEC, "--set", "train.lr=3e-3", "model.position=rotary", "--print-config"]) == EXIT_OK
    assert documents(capsys.readouterr().out) == [to_dict(load_spec(SPEC, ["train.lr=3e-3", "model.position=rotary"]))]
    assert not (tmp_path / "runs").exists()


def test_sweep_print_config_prints_the_experiment_then_the_study_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NANOLAB_RUNS", str(tmp_path / "runs"))
    assert main(["sweep", SWEEP, "--set", "train.max_iters=10", "--trials", "3", "--print-config"]) == EXIT_OK
    experiment, study = documents(capsys.readouterr().out)
    assert experiment == to_dict(load_sweep(SWEEP, ("train.max_iters=10",)).config({}))  # what every trial gets
    assert experiment["train"]["max_iters"] == 10 and experiment["tracking"]["tags"] == ["sweep", "lr"]
    assert study == {"sweep": "lr", "objectives": [{"metric": "val/loss", "direction": "minimize"}],
                     "space": {"train.lr": {"float": [1.0e-4, 3.0e-2], "log": True},
                               "train.warmup_iters": {"int": [0, 100], "step": 10}},
                     "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 4},
                     "pruner": {"name": "median", "n_startup_trials": 3, "n_warmup_steps": 100},
                     "trials": 3, "storage": str((tmp_path / "runs/sweeps/lr/journal.log").resolve())}
    assert not (tmp_path / "runs").exists()


def test_ablate_print_config_prints_the_experiment_then_every_run_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NANOLAB_RUNS", str(tmp_path / "runs"))
    assert main(["ablate", ABLATION, "--seeds", "4", "5", "--print-config"]) == EXIT_OK
    experiment, runs = documents(capsys.readouterr().out)
    assert experiment == to_dict(load_ablation(ABLATION).plan.config())
    assert runs["ablation"] == "activation" and len(runs["runs"]) == 8
    assert runs["runs"]["activation=swiglu-s5"] == {"model.activation": "swiglu", "seed": 5, "tracking.tags": [
        *load_ablation(ABLATION).plan.base["tracking"]["tags"], "activation", "activation=swiglu"]}
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("verb, file", [("run", SPEC), ("sweep", SWEEP), ("ablate", ABLATION)])
def test_set_comes_before_or_after_the_file(verb, file, capsys):
    sets = ["--set", "train.max_iters=10", "train.eval_iters=5"]
    assert main([verb, file, *sets, "--print-config"]) == EXIT_OK
    after = capsys.readouterr().out
    assert main([verb, *sets, file, "--print-config"]) == EXIT_OK
    assert capsys.readouterr().out == after and "max_iters: 10" in after


@pytest.mark.parametrize("flag, value, fragment", [
    ("--top-k", "0", "--top-k 0: expected an integer >= 1"),
    ("--top-k", "-3", "--top-k -3: expected an integer >= 1"),
    ("--top-p", "0", "--top-p 0.0: expected a number in (0, 1]"),
    ("--top-p", "1.5", "--top-p 1.5: expected a number in (0, 1]"),
    ("--temperature", "nan", "--temperature nan: expected a finite number >= 0"),
    ("--temperature", "-1", "--temperature -1.0: expected a finite number >= 0"),
    ("--tokens", "-5", "--tokens -5: expected an integer in [0, 1,000,000]"),
])
def test_sample_ranges_are_checked_before_the_run_folder_is_read(flag, value, fragment, capsys):
    assert main(["sample", "nowhere", flag, value]) == EXIT_USAGE
    assert capsys.readouterr().err == f"nanolab: error: {fragment}\n"
