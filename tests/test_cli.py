"""The `nanolab` command itself: help, the registry listing, one-line errors."""

import subprocess
import sys

import pytest

from nanolab import registry


def nanolab(*args):
    return subprocess.run([sys.executable, "-m", "nanolab", *args], capture_output=True, text=True)


def test_components_lists_every_registered_name_with_its_description():
    proc = nanolab("components")
    assert proc.returncode == 0
    for kind in registry.kinds():
        assert f"\n{kind}\n" in f"\n{proc.stdout}"
        for entry in registry.entries(kind):
            assert f"  {entry.name:<18} {entry.description}" in proc.stdout


@pytest.mark.parametrize("verb, flags", [("run", ["--resume", "--set", "--nproc"]),
                                         ("sample", ["--prompt", "--tokens", "--top-k", "--top-p", "--seed"]),
                                         ("sweep", ["--trials", "--workers", "--storage", "--status"]),
                                         ("ablate", ["--seeds", "--workers", "--set"]),
                                         ("compare", ["--group", "--by", "--csv", "--markdown", "--plot"]),
                                         ("sync", ["RUN_FOLDER"])])
def test_every_verb_documents_its_flags(verb, flags):
    proc = nanolab(verb, "--help")
    assert proc.returncode == 0
    for flag in flags:
        assert flag in proc.stdout


@pytest.mark.parametrize("args, fragment", [
    (["run"], "needs a SPEC file"),
    (["run", "nope.yaml"], "nope.yaml: no such file"),
    (["run", "--resume", "nowhere"], "not a run folder"),
    (["sample", "nowhere"], "not a run folder"),
    (["run", "experiments/baseline.yaml", "--set", "train.lr=fast"], "train.lr = 'fast': expected a number"),
    (["compare", "nowhere", "--group", "x"], "nowhere: no such run folder or directory"),
    (["sync", "nowhere"], "nowhere: no such run folder"),
])
def test_user_errors_are_one_line_and_exit_2(args, fragment):
    proc = nanolab(*args)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert fragment in proc.stderr
