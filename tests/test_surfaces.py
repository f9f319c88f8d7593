"""Issue #28: bad input on every surface is one line and exit 2 (or a bounded answer), never a traceback, a
memory or time bomb, or a silent accept; what a failed run leaves on disk is what its summary says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import cli, tiny_yaml

from nanolab import load_spec, run

TINY = tiny_yaml(seed=7, max_iters=10, warmup_iters=0, eval_iters=1, sample_tokens=0)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    return proc.stderr.strip().removeprefix("nanolab: error: ")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny finished run folder (10 steps, one evaluation, best and last checkpoints)."""
    folder = tmp_path_factory.mktemp("trained")
    path = folder / "tiny.yaml"
    path.write_text(TINY)
    return Path(run(load_spec(path)).run_dir)


# --------------------------------------------------------------------------- a value too large to print


def test_a_yaml_alias_bomb_is_named_in_a_short_line(tmp_path):
    levels = ["    - &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    levels += [f"    - &{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi")]
    path = tmp_path / "bomb.yaml"
    path.write_text("name: bomb\ntracking:\n  tags:\n" + "\n".join(levels) + "\n")
    message = one_error_line(cli("run", path, "--print-config", timeout=60))
    assert message.endswith(": expected a list of strings") and len(message) < 400 + len(str(path))
    assert message.startswith(f"{path}: tracking.tags = [['lol', 'lol', 'lol', 'lol', ...], [[...], ")


# --------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("flag", [["--temperature", "1e-300"], ["--top-p", "1e-300"]])
def test_a_tiny_temperature_or_nucleus_samples_the_most_likely_token(trained, flag):
    greedy = cli("sample", trained, "--tokens", "20", "--temperature", "0")
    tiny = cli("sample", trained, "--tokens", "20", *flag)
    assert tiny.returncode == 0, tiny.stderr
    assert tiny.stdout == greedy.stdout


@pytest.mark.parametrize("seed", [str(2**70), "-1", str(2**64)])
def test_a_seed_outside_64_bits_is_one_line(trained, seed):
    assert one_error_line(cli("sample", trained, "--seed", seed)) == f"--seed {seed}: expected an integer in [0, 2**64)"


def test_sample_tokens_are_bounded_and_streamed(trained):
    assert one_error_line(cli("sample", trained, "--tokens", str(10**12))) == (
        f"--tokens {10**12}: expected an integer in [0, 1,000,000]")
    proc = subprocess.Popen([sys.executable, "-m", "nanolab", "sample", str(trained), "--tokens", "1000000",
                             "--prompt", "A"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.read(200)[0] == "A"  # text while the million tokens are still being sampled
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_a_streamed_sample_is_the_generated_text(trained):
    import torch

    from nanolab.runner import load_trained

    model, tokenizer, _ = load_trained(trained, "best", device="cpu")
    idx = torch.tensor([tokenizer.encode("ROMEO:")])
    out = model.generate(idx, 40, temperature=0.8, generator=torch.Generator().manual_seed(3))
    proc = cli("sample", trained, "--tokens", "40", "--prompt", "ROMEO:", "--seed", "3")
    assert proc.stdout == tokenizer.decode(out[0].tolist()) + "\n"


# --------------------------------------------------------------------------- files that are not what the verb reads


@pytest.mark.parametrize("verb", ["run", "status", "ablate", "report", "sweep"])
def test_an_empty_file_is_one_line(tmp_path, verb):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n")
    assert one_error_line(cli(verb, path, runs=tmp_path / "runs")) == (
        f"{path}: the file is empty (or only comments); expected a mapping of keys")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("verb", ["status", "report", "ablate"])
def test_a_spec_given_to_a_plan_verb_is_named_a_spec(tmp_path, verb):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    assert one_error_line(cli(verb, path, runs=tmp_path / "runs")) == (
        f"{path}: a spec, not an ablation (grid: or variants:) or a sweep (space:); `nanolab run {path}` trains it")


def test_an_ablation_without_its_experiment_is_one_line(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("grid: {seed: [1, 2]}\n")
    assert one_error_line(cli("ablate", path, runs=tmp_path / "runs")) == f"{path}: experiment: required"


@pytest.mark.parametrize("timeout", ["-5", "nan", "0"])
def test_a_sweep_timeout_is_a_positive_number_of_seconds(tmp_path, timeout):
    proc = cli("sweep", Path(__file__).parents[1] / "sweeps/lr.yaml", f"--timeout={timeout}", runs=tmp_path / "runs")
    assert one_error_line(proc) == f"--timeout {float(timeout)}: expected a number of seconds > 0"


def test_slurm_without_slurm_is_one_line(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    proc = cli("run", path, "--launcher", "slurm", runs=tmp_path / "runs", env={"PATH": str(tmp_path)})
    assert one_error_line(proc) == ("--launcher slurm: no Slurm here (srun is not on PATH); run it on a machine of "
                                    "the cluster (a login node), or use --launcher local")


# --------------------------------------------------------------------------- export


def test_export_of_a_run_whose_config_was_edited_is_one_line(trained, tmp_path):
    import shutil

    edited = tmp_path / "edited"
    shutil.copytree(trained, edited)
    config = edited / "config.yaml"
    config.write_text(config.read_text().replace("n_embd: 16", "n_embd: 32"))
    message = one_error_line(cli("export", edited, "--to", "hf", tmp_path / "out"))
    assert message == (f"{edited}/ckpt/best.pt does not fit {edited}/config.yaml (edited since the run?): size "
                       "mismatch for wte.weight: copying a param with shape torch.Size([65, 16]) from checkpoint, "
                       "the shape in current model is torch.Size([65, 32]).")
    assert not (tmp_path / "out").exists()


def test_export_onto_a_full_disk_is_one_line_and_leaves_nothing(trained, small_tmpfs):
    filler = small_tmpfs / "filler"
    with open(filler, "wb", buffering=0) as f:  # fill the disk, then free 8 KiB: less than the model's ~30 KB
        with pytest.raises(OSError):
            while True:
                f.write(b"\0" * 4096)
    os.truncate(filler, filler.stat().st_size - 8192)
    out = small_tmpfs / "export"
    message = one_error_line(cli("export", trained, "--to", "hf", out))
    assert message == f"no space left on device while writing {out}/model.safetensors"
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["filler"]


def test_export_onto_a_link_to_an_empty_folder_writes_the_folder(trained, tmp_path):
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    proc = cli("export", trained, "--to", "hf", tmp_path / "link")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "target/model.safetensors").is_file()


def test_a_killed_exports_hidden_copy_goes_with_the_next_export(trained, tmp_path):
    out = tmp_path / "export"
    killed = subprocess.run([sys.executable, "-c", "import os, signal; from pathlib import Path\n"
                             "from nanolab.files import atomic_dir\n"
                             f"with atomic_dir(Path({str(out)!r})) as tmp:\n"
                             "    (tmp / 'model.safetensors').write_bytes(b'0' * 1000)\n"
                             "    os.kill(os.getpid(), signal.SIGKILL)\n"])
    assert killed.returncode == -9 and len(list(tmp_path.glob(".export.*.tmp"))) == 1
    assert cli("export", trained, "--to", "hf", out).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


# --------------------------------------------------------------------------- budgets


@pytest.mark.parametrize("override, message", [
    (f"train.max_tokens={2**70}", f"train.max_tokens = {2**70}: 18,446,744,073,709,551,616 steps of 64 tokens; "
     "at most 1,000,000,000 steps"),
    (f"train.max_iters={10**10}", f"train.max_iters = {10**10}: must be at most 1,000,000,000"),
    ("train.max_flops=1e30", None)])
def test_a_budget_is_bounded(tmp_path, override, message):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    proc = cli("run", path, "--set", override, runs=tmp_path / "runs")
    line = one_error_line(proc)
    if message:
        assert line == f"{path}: {message}"
    else:
        assert line.startswith("train.max_flops = 1e+30: ") and line.endswith("; at most 1,000,000,000 steps")
