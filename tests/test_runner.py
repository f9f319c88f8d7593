"""The runner: reproducibility, signals and resume, divergence, atomic checkpoints, the run folder, sampling."""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import build_fingerprint, cli, nan_at, rows, tiny_spec

from nanolab import load_spec, run
from nanolab.components.optim import Optimizers, lr_factor
from nanolab.errors import NanolabError
from nanolab.runfolder import RunFolder
from nanolab.runner import Stop
from nanolab.vocab import RunStatus


def meta(run_dir: Path) -> dict:
    return json.loads((run_dir / "meta.json").read_text())


def load_checkpoint(path: Path) -> dict:
    """The checkpoint at `path` (RunFolder(run).ckpt(kind)), through the run folder's reader."""
    return RunFolder(path.parent.parent).load_checkpoint(path.stem)


def test_same_seed_same_losses_and_a_complete_run_folder(tmp_path):
    cfg = load_spec(tiny_spec(tmp_path))
    a, b = run(cfg, show_progress=False), run(cfg, show_progress=False)
    assert a.status == b.status == "finished" and a.run_dir != b.run_dir
    assert rows(a.run_dir) == rows(b.run_dir)
    names = {p.name for p in a.run_dir.iterdir()}
    assert {"config.yaml", "meta.json", "metrics.jsonl", "summary.json", "samples.txt", "ckpt", "tokenizer.json"} <= names
    assert load_spec(a.run_dir / "config.yaml") == cfg  # `nanolab run <run>/config.yaml` repeats it
    m = meta(a.run_dir)
    assert m["status"] == "finished" and m["steps"] == 30 and m["params"] > 0
    assert m["git"]["commit"] and "torch" in m["versions"] and m["device"] == "cpu"
    assert sorted(p.name for p in (a.run_dir / "ckpt").iterdir()) == ["best.pt", "last.pt"]
    assert not (a.run_dir / "wandb").exists()


def test_eval_metrics_are_consistent(tmp_path):
    result = run(load_spec(tiny_spec(tmp_path)), show_progress=False)
    evals = [r for r in rows(result.run_dir) if "val/loss" in r]
    assert [r["step"] for r in evals] == [10, 20, 30]
    for r in evals:
        assert r["val/ppl"] == pytest.approx(math.exp(r["val/loss"]), rel=1e-12)
        assert r["val/bpc"] == pytest.approx(r["val/loss"] / math.log(2), rel=1e-12)
    train = [r for r in rows(result.run_dir) if "train/loss" in r]
    assert [r["step"] for r in train] == [5, 10, 15, 20, 25, 30]
    summary = json.loads((result.run_dir / "summary.json").read_text())
    best = min(evals, key=lambda r: r["val/loss"])
    assert summary["best/val_loss"] == best["val/loss"] and summary["best/step"] == best["step"]
    assert summary["best/val_ppl"] == pytest.approx(math.exp(best["val/loss"]))
    assert summary["tokens_seen"] == 30 * 4 * 16


def test_the_logged_rates_are_those_the_optimizers_stepped_with(tmp_path, monkeypatch):
    """With Muon, train/lr is the rate train.lr sets (AdamW's groups) and train/lr_muon the rate train.muon_lr sets
    (Muon's): each row's, exactly, the rate in the param groups at the step it logs."""
    stepped = []  # per optimizer step: (Muon's rate, AdamW's rate), from the param groups
    step = Optimizers.step

    def recording_step(self):
        muon, adamw = self.optimizers
        assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
        assert len({g["lr"] for g in muon.param_groups}) == len({g["lr"] for g in adamw.param_groups}) == 1
        stepped.append((muon.param_groups[0]["lr"], adamw.param_groups[0]["lr"]))
        step(self)

    monkeypatch.setattr(Optimizers, "step", recording_step)
    cfg = load_spec(tiny_spec(tmp_path, iters=10), overrides=["train.optimizer=muon", "train.muon_lr=0.05",
                                                              "train.log_interval=1"])
    result = run(cfg, show_progress=False)
    logged = [(r["step"], r["train/lr_muon"], r["train/lr"]) for r in rows(result.run_dir) if "train/loss" in r]
    assert logged == [(s + 1, muon, adamw) for s, (muon, adamw) in enumerate(stepped)]
    assert [(muon, adamw) for _, muon, adamw in logged] == [
        (0.05 * lr_factor(s, cfg.train), 3e-3 * lr_factor(s, cfg.train)) for s in range(10)]


# final/val_loss of tiny_spec(), 1 thread, and the build it was recorded on (see build_fingerprint)
REFERENCE_VAL_LOSS = 3.7634496688842773
REFERENCE_BUILD = "2.13.0+cpu:abce025a316a23db"


def test_reference_loss_of_a_tiny_cpu_run(tmp_path):
    """A change that alters the maths (init, model, optimizer, schedule, batches) moves this number.

    On the build the reference was recorded on, one thread gives the same floats every time: the value must
    match to 1e-9. Another torch / BLAS build or CPU code path rounds differently, and 30 steps carry that
    into about the 5th digit, so there the test checks 1e-3 relative: still far below what a change of the
    maths moves (a different init or learning rate moves it by > 1%), but it can no longer see a change that
    only touches the last digits. The message names the build."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = run(load_spec(tiny_spec(tmp_path)), show_progress=False)
    finally:
        torch.set_num_threads(threads)
    same_build = build_fingerprint() == REFERENCE_BUILD
    rel = 1e-9 if same_build else 1e-3
    assert result.summary["final/val_loss"] == pytest.approx(REFERENCE_VAL_LOSS, rel=rel), (
        f"build {build_fingerprint()} ({'the reference build' if same_build else 'not ' + REFERENCE_BUILD})")


STOPPED_AT = 155
# `nanolab run` whose step STOPPED_AT waits (up to 120 s) for a signal after saying so on stdout: the test signals
# inside that step whatever the machine's speed, where a run polled from outside could end before the signal
STOPPABLE = f"""
import sys, threading
import nanolab.runner as runner, nanolab.train_loop as loop
from nanolab.cli import main
arrived, real_step, real_handle = threading.Event(), loop.train_step, runner.SignalFlag._handle
def handle(self, signum, frame):
    real_handle(self, signum, frame)
    arrived.set()
def step(*args, step, **kwargs):
    if step == {STOPPED_AT}:
        print("inside step {STOPPED_AT}", flush=True)
        arrived.wait(120)
    return real_step(*args, step=step, **kwargs)
runner.SignalFlag._handle, loop.train_step = handle, step
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """(spec, run folder) of a run that nothing stopped, trained in a fresh process like the stopped ones."""
    tmp_path = tmp_path_factory.mktemp("uninterrupted")
    spec = tiny_spec(tmp_path, iters=400, eval=100, ckpt=50)
    proc = cli("run", str(spec), env={**os.environ, "NANOLAB_RUNS": str(tmp_path / "runs")})
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()
    return spec, run_dir


@pytest.mark.parametrize("signum, code, status", [(signal.SIGTERM, 143, "interrupted"),
                                                  (signal.SIGINT, 130, "interrupted"),
                                                  (signal.SIGKILL, -9, "running")])
def test_stop_then_resume_is_bit_identical(tmp_path, uninterrupted, signum, code, status):
    spec, reference = uninterrupted
    env = {**os.environ, "NANOLAB_RUNS": str(tmp_path / "runs")}
    proc = subprocess.Popen([sys.executable, "-c", STOPPABLE, "run", str(spec)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == f"inside step {STOPPED_AT}\n", proc.communicate()
    (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()
    proc.send_signal(signum)
    assert proc.wait(timeout=60) == code
    assert meta(run_dir)["status"] == status
    if code > 0:  # a signal the run handles: it says how to continue
        assert f"continue it with: nanolab run --resume {run_dir}\n" in proc.stderr.read()
    stopped_at = len(rows(run_dir))
    assert rows(run_dir)[-1]["step"] == (STOPPED_AT if code > 0 else 150)  # saved at the step; killed: the last log
    resumed = cli("run", "--resume", str(run_dir), env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert meta(run_dir)["status"] == "finished"
    assert rows(run_dir) == rows(reference)  # no gap, duplicate or out-of-order step; same numbers
    assert stopped_at < len(rows(run_dir))
    resumed_ckpt = load_checkpoint(run_dir / "ckpt" / "last.pt")
    reference_ckpt = load_checkpoint(reference / "ckpt" / "last.pt")
    for name, tensor in reference_ckpt["model"].items():
        assert torch.equal(resumed_ckpt["model"][name], tensor), name


def test_resume_refuses_a_finished_run_and_a_non_run(tmp_path):
    result = run(load_spec(tiny_spec(tmp_path, iters=5, eval=5, ckpt=5)), show_progress=False)
    proc = cli("run", "--resume", str(result.run_dir))
    assert proc.returncode == 2 and "already finished" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("run", "--resume", str(tmp_path))
    assert proc.returncode == 2 and "not a run folder" in proc.stderr


def test_nan_loss_ends_the_run_as_diverged_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    nan_at(monkeypatch, 13)  # the 13th training step
    result = run(load_spec(tiny_spec(tmp_path)), show_progress=False)
    assert result.status == "diverged" and result.exit_code == 1
    m = meta(result.run_dir)
    assert m["status"] == "diverged" and "step 13" in m["reason"] and m["steps"] == 12
    kept = load_checkpoint(result.run_dir / "ckpt" / "last.pt")
    assert kept["state"]["step"] == 10
    assert all(torch.isfinite(t).all() for t in kept["model"].values())


KILL_WRITER = """
import sys, time, io, torch
from nanolab.runfolder import RunFolder
folder = RunFolder(sys.argv[1])
folder.save_checkpoint("last", {"step": 1, "w": torch.ones(4)})
real_save = torch.save


def save_half_then_wait(obj, f, *args, **kwargs):  # the write is cut in the middle of the file
    buffer = io.BytesIO()
    real_save(obj, buffer, *args, **kwargs)
    f.write(buffer.getvalue()[:buffer.tell() // 2])
    f.flush()
    print("inside the write", flush=True)
    time.sleep(600)


torch.save = save_half_then_wait
folder.save_checkpoint("last", {"step": 2, "w": torch.zeros(100_000)})
"""


def test_a_checkpoint_write_killed_midway_leaves_the_previous_one_loadable(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", KILL_WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "inside the write"  # the child is now inside the second write
    proc.kill()
    proc.wait()
    (leftover,) = (tmp_path / "ckpt").glob(".last.pt.*.tmp")  # the cut write, under its temporary name
    assert leftover.stat().st_size > 0
    ckpt = load_checkpoint(tmp_path / "ckpt" / "last.pt")
    assert ckpt["step"] == 1 and torch.equal(ckpt["w"], torch.ones(4))


def test_resume_removes_the_leftovers_of_a_killed_write(tmp_path):
    def stop_at_5(step, metrics):
        if step == 5:
            raise Stop(RunStatus.PRUNED, "test")

    cfg = load_spec(tiny_spec(tmp_path, iters=10, eval=5, ckpt=1))  # last.pt at step 4: stopped in step 5's eval
    stopped = run(cfg, on_eval=stop_at_5, show_progress=False)
    assert stopped.status == RunStatus.PRUNED and stopped.reason == "test" and stopped.exit_code == 0
    leftovers = [stopped.run_dir / "ckpt" / ".last.pt.k9x2ab.tmp", stopped.run_dir / ".meta.json.q1w2e3.tmp"]
    for path in leftovers:
        path.write_bytes(b"half a file")
    resumed = run(cfg, resume_dir=stopped.run_dir, show_progress=False)
    assert resumed.status == RunStatus.FINISHED and resumed.reason == ""
    assert not any(path.exists() for path in leftovers)


def test_run_folder_files_honour_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        result = run(load_spec(tiny_spec(tmp_path, iters=5, eval=5, ckpt=5)), show_progress=False)
    finally:
        os.umask(previous)
    written = ["config.yaml", "meta.json", "summary.json", "tokenizer.json", "ckpt/last.pt", "ckpt/best.pt"]
    modes = {name: oct((result.run_dir / name).stat().st_mode & 0o777) for name in written}
    assert modes == {name: oct(0o644) for name in written}


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "ckpt" / "last.pt"
    path.parent.mkdir()
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(NanolabError, match="not a loadable nanolab checkpoint"):
        load_checkpoint(path)


def test_an_existing_run_folder_is_never_overwritten(tmp_path):
    cfg = load_spec(tiny_spec(tmp_path, iters=5, eval=5, ckpt=5))
    first = run(cfg, run_id="fixed", show_progress=False)
    before = (first.run_dir / "metrics.jsonl").read_bytes()
    with pytest.raises(NanolabError, match="already exists"):
        run(cfg, run_id="fixed", show_progress=False)
    assert (first.run_dir / "metrics.jsonl").read_bytes() == before


def test_sample_from_a_run_folder_needs_no_corpus(tmp_path):
    result = run(load_spec(tiny_spec(tmp_path)), show_progress=False)
    env = {**os.environ, "NANOLAB_CACHE": str(tmp_path / "empty"), "NANOLAB_SHAKESPEARE_URL": "http://127.0.0.1:9/"}
    greedy = [cli("sample", str(result.run_dir), "--prompt", "ROMEO:", "--tokens", "40", "--temperature", "0",
                  *flag, env=env) for flag in ([], ["--no-cache"])]
    assert greedy[0].returncode == 0, greedy[0].stderr
    text = greedy[0].stdout.removesuffix("\n")  # print's own newline
    assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 40
    assert greedy[0].stdout == greedy[1].stdout  # the KV cache changes the speed, not the text
    bad = cli("sample", str(result.run_dir), "--prompt", "\u00e9", env=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_a_measured_peak_is_remembered_per_machine(tmp_path, monkeypatch):
    """The CPU's peak FLOP/s (MFU's denominator) is measured once per (device, torch, threads), not at every run's
    start; a damaged memo is measured over."""
    from nanolab import device as dev

    monkeypatch.setenv("NANOLAB_CACHE", str(tmp_path))
    measured = []
    monkeypatch.setattr(dev, "measured_matmul_flops", lambda *args: measured.append(args) or 1.5e11)
    cpu = torch.device("cpu")
    assert dev.peak_flops.__wrapped__(cpu) == dev.peak_flops.__wrapped__(cpu) == 1.5e11  # past functools.cache
    assert len(measured) == 1
    [key] = json.loads((tmp_path / "peak_flops.json").read_text())
    assert key == f"{dev.device_name(cpu)} | torch {torch.__version__} | {torch.get_num_threads()} threads | " \
                  "1024^3 fp32 matmul"
    (tmp_path / "peak_flops.json").write_text("{not json")
    assert dev.peak_flops.__wrapped__(cpu) == 1.5e11 and len(measured) == 2


FAULTS_PER_TENSOR = """
import resource, sys, torch
from nanolab import device as dev

def faults(steps=10, held=48):  # minor page faults per 1.5 MB tensor of steps that each hold `held` of them
    # (72 MB of activations: more than glibc's dynamic trim threshold can grow to, 64 MB, whatever ran before)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        activations = [torch.empty(384 * 1024).fill_(1.0) for _ in range(held)]
        del activations
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / (held * steps)

default = faults()
dev.configure(torch.device("cpu"))
faults(1)  # the heap grows once
print(default, faults(), dev.keep_freed_memory())
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc")
def test_a_cpu_run_reuses_freed_tensor_memory_instead_of_faulting_it_in_again():
    """Without `keep_freed_memory` a tensor of 128 KB or more is often a fresh mmap (or heap glibc has just trimmed)
    whose pages fault in at first touch (a 1.5 MB tensor: 384 pages); the CPU speedrun's step spent ~10% of its time
    there (benchmarks/heap.py)."""
    out = subprocess.run([sys.executable, "-c", FAULTS_PER_TENSOR], capture_output=True, text=True, check=True)
    default, kept, configured = out.stdout.split()
    assert float(default) > 50 and float(kept) < 5 and configured == "True"  # default: 77 or 383, with the layout


def test_a_gpus_datasheet_peak_takes_the_most_specific_name():
    from nanolab import device as dev

    assert dev.datasheet_peak("NVIDIA H100 PCIe") == ("H100 PCIe", 756e12)
    assert dev.datasheet_peak("NVIDIA H100 80GB HBM3") == ("H100", 989e12)
    assert dev.datasheet_peak("NVIDIA H200") == ("H200", 989e12)
    assert dev.datasheet_peak("AMD EPYC") is None
