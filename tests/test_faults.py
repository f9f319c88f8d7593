"""Issue #12: every bad input one line (exit 2, nothing written), every fault survived with the truth on disk."""

import errno
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import cli, nan_at, tiny_spec

from nanolab import device as dev
from nanolab import load_spec, run
from nanolab import files
from nanolab.config import ModelConfig
from nanolab.errors import NanolabError
from nanolab.model import build_model
from nanolab.runfolder import RunFolder
from nanolab.runner import Stop
from nanolab.train_loop import train_step
from nanolab.vocab import VAL_LOSS, RunStatus


def spec(tmp_path: Path, name="faults", iters=20, eval=10, ckpt=5, embd=16) -> Path:
    """The tiny checkpointed spec (helpers.tiny_spec) with this module's defaults."""
    return tiny_spec(tmp_path, name, iters, eval, ckpt, embd)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The one line a bad input gets: exit 2, `nanolab: error: ...`, no traceback."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("nanolab: error: ")
    return proc.stderr.strip()


def meta(run_dir: Path) -> dict:
    return json.loads((run_dir / "meta.json").read_text())


# --------------------------------------------------------------------------- 1. a device the machine lacks


@pytest.mark.skipif(torch.cuda.is_available() or torch.backends.mps.is_available(), reason="has a GPU")
@pytest.mark.parametrize("device, has", [("cuda", "no CUDA device"), ("cuda:7", "no CUDA device"),
                                         ("mps", "no MPS (Apple GPU) device")])
def test_a_device_this_machine_lacks_is_one_line_and_writes_nothing(tmp_path, device, has):
    proc = cli("run", str(spec(tmp_path)), "--set", f"train.device={device}", runs=tmp_path / "runs")
    assert one_error_line(proc) == f"nanolab: error: train.device = '{device}': this machine has {has}; available: cpu"
    assert not (tmp_path / "runs").exists()


def test_a_cuda_index_beyond_the_count_names_the_count(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(NanolabError, match=r"'cuda:7': this machine has 2 CUDA devices \(cuda:0 to cuda:1\); "
                                           r"available: cpu, cuda, cuda:0, cuda:1"):
        dev.pick_device("cuda:7")


# --------------------------------------------------------------------------- 2. resume after config.yaml changed


def stopped_run(tmp_path: Path, at: int = 5, **kwargs):
    """A run stopped by a pruner-like hook at step `at` (resumable, with ckpt/last.pt)."""
    def stop(step, metrics):
        if step == at:
            raise Stop(RunStatus.PRUNED, "test")

    cfg = load_spec(spec(tmp_path, **kwargs))
    return cfg, run(cfg, on_eval=stop, show_progress=False)


def test_resume_after_the_config_changed_shape_names_the_keys_and_writes_nothing(tmp_path):
    _, stopped = stopped_run(tmp_path, at=10, eval=5)  # last.pt at step 5
    config = stopped.run_dir / "config.yaml"
    config.write_text(config.read_text().replace("n_embd: 16", "n_embd: 32").replace("n_layer: 1", "n_layer: 2"))
    before = {p: p.read_bytes() for p in stopped.run_dir.rglob("*") if p.is_file()}
    line = one_error_line(cli("run", "--resume", str(stopped.run_dir), runs=tmp_path))
    assert "model.n_embd: checkpoint 16, config.yaml 32" in line and "model.n_layer: checkpoint 1, config.yaml 2" in line
    assert {p: p.read_bytes() for p in stopped.run_dir.rglob("*") if p.is_file()} == before


# --------------------------------------------------------------------------- 3. a step that cannot fit in memory


def test_a_model_whose_step_cannot_fit_is_refused_before_the_first_step(tmp_path):
    # naive attention's scores: 12 x 4 x 100000^2 floats a layer, terabytes on any machine
    proc = cli("run", str(spec(tmp_path)), "--set", "data.block_size=100000", "train.batch_size=12",
               "model.attention=naive", runs=tmp_path / "runs", timeout=90)
    line = one_error_line(proc)
    assert "data.block_size = 100000" in line and "a training step needs ~" in line and "TiB" in line
    assert "memory" in line and not (tmp_path / "runs").exists()


def test_the_baseline_at_a_100000_context_is_refused_where_memory_is_short(tmp_path, monkeypatch):
    monkeypatch.setattr(dev, "available_memory", lambda device: (24 * 2**30, "available memory"))
    cfg = load_spec(Path(__file__).parents[1] / "experiments/baseline.yaml",
                    ["data.block_size=100000", "tracking.wandb.mode=disabled"])
    with pytest.raises(NanolabError, match=r"needs ~\d+\.\d GiB .* but cpu has 24\.0 GiB of available memory"):
        run(cfg, show_progress=False)


def measured_peak(cfg: ModelConfig, batch: int, block: int, vocab: int) -> int:
    """The torch profiler's peak of tensor bytes in one training step, above the weights and AdamW state."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from common import peak_memory

    model = build_model(cfg, vocab, block)
    optimizer = torch.optim.AdamW(model.parameters())
    x = torch.randint(0, vocab, (batch, block))

    def step():
        model(x, x)[1].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # AdamW's moments exist from here on
    return peak_memory(step, torch.device("cpu"))


@pytest.mark.parametrize("attention, position", [("sdpa", "learned"), ("naive", "learned"), ("sdpa", "alibi")])
def test_the_memory_estimate_is_within_a_factor_of_what_a_step_takes(attention, position):
    cfg = ModelConfig(n_layer=2, n_head=4, n_embd=64, attention=attention, position=position)
    peak = measured_peak(cfg, 4, 256, 512)
    with torch.device("meta"):
        model = build_model(cfg, 512, 256)
    activations, _ = model.train_step_bytes(4, device_type="cpu")
    estimate = activations + 4 * model.num_params()  # what the measurement sees: activations and gradients
    assert 0.8 < estimate / peak < 1.4, (estimate, peak)


def test_the_estimate_passes_the_baseline_on_a_cpu_and_gpt2_small_on_a_gpu():
    for path, device, free in (("experiments/baseline.yaml", "cpu", 4 * 2**30),
                               ("experiments/gpt2_small.yaml", "cuda", 40 * 2**30)):
        cfg = load_spec(Path(__file__).parents[1] / path)
        with torch.device("meta"):
            model = build_model(cfg.model, 8192, cfg.data.block_size)
        activations, weights = model.train_step_bytes(cfg.train.batch_size, device == "cuda", device)
        assert activations + weights < free / 2, path


# --------------------------------------------------------------------------- 4. float16


def test_float16_on_the_cpu_is_refused_in_one_line(tmp_path):
    line = one_error_line(cli("run", str(spec(tmp_path)), "--set", "train.dtype=float16", runs=tmp_path / "runs"))
    assert "float16 autocast on the CPU is emulated" in line and "float32 or bfloat16" in line
    assert not (tmp_path / "runs").exists()


def tiny_model_and_optimizer():
    from nanolab.components.optim import build_optimizer
    from nanolab.config import TrainConfig

    torch.manual_seed(0)
    model = build_model(ModelConfig(n_layer=1, n_head=2, n_embd=16), 65, 16)
    return model, build_optimizer(model, TrainConfig(lr=1e-2), "cpu")


def test_a_float16_step_with_a_scaler_makes_a_finite_update_with_the_unscaled_norm():
    model, optimizer = tiny_model_and_optimizer()
    x = torch.randint(0, 65, (4, 16), generator=torch.Generator().manual_seed(1))
    before = [p.detach().clone() for p in model.parameters()]
    reference = train_step(model, optimizer, lambda: (x, x), amp=torch.float16)  # no scaler: the true norm
    for p, b in zip(model.parameters(), before):
        p.data.copy_(b)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    result = train_step(model, optimizer, lambda: (x, x), amp=torch.float16, scaler=scaler, grad_clip=1.0)
    assert not result.skipped and math.isfinite(result.loss)
    assert result.grad_norm == pytest.approx(reference.grad_norm, rel=1e-3)  # unscaled, pre-clip
    after = list(model.parameters())
    assert all(torch.isfinite(p).all() for p in after) and any(not torch.equal(p, b) for p, b in zip(after, before))


def test_a_float16_overflow_is_skipped_and_the_scale_halved_not_diverged():
    model, optimizer = tiny_model_and_optimizer()
    x = torch.randint(0, 65, (4, 16))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    hook = model.lm_head.weight.register_hook(lambda g: g * float("inf"))  # gradients past float16's range
    before = [p.detach().clone() for p in model.parameters()]
    result = train_step(model, optimizer, lambda: (x, x), amp=torch.float16, scaler=scaler)
    hook.remove()
    assert result.skipped and not math.isfinite(result.grad_norm) and math.isfinite(result.loss)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))  # nothing reached the weights
    assert scaler.get_scale() == 2.0**9


def test_float16_checkpoints_carry_the_loss_scale_and_resume_exactly(tmp_path, monkeypatch):
    real = dev.autocast_dtype
    monkeypatch.setattr(dev, "autocast_dtype", lambda device, dtype: torch.float16 if dtype == "float16"
                        else real(device, dtype))  # the CPU refuses float16: let this test use it anyway
    cfg = load_spec(spec(tmp_path, iters=10, eval=5, ckpt=5), ["train.dtype=float16"])
    whole = run(cfg, show_progress=False)
    ckpt = RunFolder(whole.run_dir).load_checkpoint("last")
    assert ckpt["scaler"]["scale"] > 0 and "_growth_tracker" in ckpt["scaler"]

    def stop(step, metrics):
        if step == 10:  # in the last evaluation, before the last save: resumed from step 5
            raise Stop(RunStatus.PRUNED, "test")

    stopped = run(cfg, on_eval=stop, show_progress=False)
    resumed = run(cfg, resume_dir=stopped.run_dir, show_progress=False)
    assert resumed.status == RunStatus.FINISHED
    assert RunFolder(resumed.run_dir).load_checkpoint("last")["scaler"] == ckpt["scaler"]
    strip = [{k: v for k, v in row.items() if not k.startswith("perf/")} for row in RunFolder(whole.run_dir).metrics()]
    assert [{k: v for k, v in row.items() if not k.startswith("perf/")}
            for row in RunFolder(resumed.run_dir).metrics()] == strip


# --------------------------------------------------------------------------- 5. disk full


def fail_writes(monkeypatch, name: str, after: int = 0):
    """ENOSPC from the run folder's writer of `name` (a file name) from its (after+1)-th write on."""
    calls = {"n": 0}
    real_atomic, real_write = files.atomic_path, files.AppendFile.write

    def atomic(path):
        if Path(path).name == name:
            calls["n"] += 1
            if calls["n"] > after:
                raise files.WriteFailed(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
        return real_atomic(path)

    def append(self, text):
        if self.path.name == name:
            calls["n"] += 1
            if calls["n"] > after:
                raise files.WriteFailed(self.path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
        return real_write(self, text)

    monkeypatch.setattr(files, "atomic_path", atomic)
    monkeypatch.setattr(files.AppendFile, "write", append)


@pytest.mark.parametrize("name, where, after, kept_step", [
    ("last.pt", "ckpt/last.pt", 1, 5),  # the second save (step 10) fails; step 5's is kept
    ("metrics.jsonl", "metrics.jsonl", 3, 10),  # step 20's train row fails
    ("summary.json", "summary.json", 0, 20),  # the run trained to the end; its summary could not be written
])
def test_a_full_disk_fails_the_run_in_one_line_and_resume_continues(tmp_path, monkeypatch, capsys, name, where,
                                                                     after, kept_step):
    cfg = load_spec(spec(tmp_path))
    with monkeypatch.context() as patch:
        fail_writes(patch, name, after)
        result = run(cfg, show_progress=False)
    err = capsys.readouterr().err
    reason = f"no space left on device while writing {where}"
    assert result.status == RunStatus.FAILED and result.exit_code == 1 and result.reason == reason
    assert err.count("\n") == 1 and reason in err and f"nanolab run --resume {result.run_dir}" in err
    assert f"(step {kept_step})" in err
    assert meta(result.run_dir)["status"] == "failed" and meta(result.run_dir)["reason"] == reason
    assert RunFolder(result.run_dir).load_checkpoint("last")["state"]["step"] == kept_step
    resumed = run(cfg, resume_dir=result.run_dir, show_progress=False)
    assert resumed.status == RunStatus.FINISHED and meta(result.run_dir)["status"] == "finished"
    assert [r["step"] for r in RunFolder(result.run_dir).metrics() if VAL_LOSS in r] == [10, 20]
    assert RunFolder(result.run_dir).read_summary()["final/val_loss"] > 0


def test_meta_json_is_rewritten_in_place_when_no_copy_fits_else_stderr_says_so(tmp_path, monkeypatch, capsys):
    cfg = load_spec(spec(tmp_path))
    with monkeypatch.context() as patch:
        fail_writes(patch, "last.pt", after=1)
        real_atomic = files.atomic_path

        def no_meta(path):  # the disk is too full for a temporary copy of meta.json too
            if Path(path).name == "meta.json" and Path(path).exists() and meta(Path(path).parent)["status"] == "running":
                raise files.WriteFailed(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
            return real_atomic(path)

        patch.setattr(files, "atomic_path", no_meta)
        result = run(cfg, show_progress=False)
        assert meta(result.run_dir)["status"] == "failed"  # compact, over the old file
        def no_space(self, m):
            raise files.WriteFailed(self.meta_path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))

        patch.setattr(RunFolder, "write_meta_in_place", no_space)
        again = run(cfg, resume_dir=result.run_dir, show_progress=False)
    assert again.status == RunStatus.FAILED
    assert "could not record status failed in meta.json" in capsys.readouterr().err


def test_a_best_checkpoint_the_full_disk_refused_is_not_in_the_summary(tmp_path, small_tmpfs):
    # n_embd 112: ~1.9 MB checkpoints: step 10's best.pt fits, step 20's temporary copy beside it does not
    proc = cli("run", str(spec(tmp_path, iters=20, eval=10, ckpt=1000, embd=112)), runs=small_tmpfs, timeout=300)
    assert proc.returncode == 1 and "no space left on device while writing ckpt/best.pt" in proc.stderr
    (run_dir,) = (small_tmpfs / "faults").iterdir()
    on_disk = RunFolder(run_dir).load_checkpoint("best")["state"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["best/step"], summary["best/val_loss"]) == (on_disk["step"], on_disk["best_val_loss"]) == (
        10, on_disk["last_eval"][VAL_LOSS])
    assert summary["final/val_loss"] < summary["best/val_loss"]  # step 20's evaluation was better, and not saved


def test_a_real_full_disk_keeps_the_checkpoint_and_says_so_in_meta(tmp_path, small_tmpfs):
    # n_embd 112: ~1.9 MB checkpoints: step 5's fits, step 10's temporary copy beside it does not
    path = spec(tmp_path, iters=20, eval=20, ckpt=5, embd=112)
    proc = cli("run", str(path), runs=small_tmpfs, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "no space left on device while writing ckpt/last.pt" in proc.stderr
    (run_dir,) = (small_tmpfs / "faults").iterdir()
    assert meta(run_dir)["status"] == "failed"
    assert meta(run_dir)["reason"] == "no space left on device while writing ckpt/last.pt"
    assert RunFolder(run_dir).load_checkpoint("last")["state"]["step"] == 5
    assert not list((run_dir / "ckpt").glob(".*.tmp"))
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_tmpfs)], check=True)
    resumed = cli("run", "--resume", str(run_dir), runs=small_tmpfs, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert meta(run_dir)["status"] == "finished"


# --------------------------------------------------------------------------- 6-8. what a run says as it ends


@pytest.mark.parametrize("at, says", [(3, "no checkpoint is kept: none was saved before"),
                                      (13, "the last good checkpoint is kept: %s (step 10)")])
def test_divergence_names_the_checkpoint_it_keeps_or_that_there_is_none(tmp_path, monkeypatch, capsys, at, says):
    nan_at(monkeypatch, at)
    result = run(load_spec(spec(tmp_path, ckpt=10)), show_progress=False)
    assert result.status == RunStatus.DIVERGED
    err = capsys.readouterr().err
    assert (says % RunFolder(result.run_dir).ckpt("last") if "%s" in says else says) in err
    assert RunFolder(result.run_dir).ckpt("last").is_file() == (at > 10)


def test_the_progress_line_shows_the_latest_evaluation_at_its_step(tmp_path, capsys):
    result = run(load_spec(spec(tmp_path, iters=20, eval=10)), show_progress=True)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("step 20/20")]
    (val,) = [r[VAL_LOSS] for r in RunFolder(result.run_dir).metrics() if r["step"] == 20 and VAL_LOSS in r]
    assert lines and f"val {val:.4f} " in lines[-1] and "(step" not in lines[-1]


def test_an_interrupted_run_prints_how_to_resume_it(tmp_path, capsys):
    def sigterm(step, metrics):
        if step == 5:
            os.kill(os.getpid(), signal.SIGTERM)  # the loop saves and stops after this step

    result = run(load_spec(spec(tmp_path, eval=5)), on_eval=sigterm, show_progress=False)
    assert result.status == RunStatus.INTERRUPTED and result.exit_code == 143
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"interrupted by SIGTERM; continue it with: nanolab run --resume {result.run_dir}" in err


def test_ctrl_c_saves_the_run_then_stops_a_caller_that_stops_on_it(tmp_path, monkeypatch):
    """pytest, a notebook, a script: one Ctrl-C stops them after the run has saved (the run's handler would
    otherwise swallow it); a caller with its own handler (the CLI, a worker) gets the interrupted result."""
    def ctrl_c(step, metrics):
        if step == 5:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setenv("NANOLAB_RUNS", str(tmp_path / "runs"))
    # Python's own handler, as in an interactive pytest: one started in the background (nohup, `cmd &` without job
    # control) inherits SIGINT ignored, and Python then installs none
    started_with = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt, match=r"saved; continue it with: nanolab run --resume "):
            run(load_spec(spec(tmp_path, name="stopped", eval=5)), on_eval=ctrl_c, show_progress=False)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, started_with)
    (folder,) = (tmp_path / "runs" / "stopped").iterdir()
    assert RunFolder(folder).read_meta()["status"] == "interrupted" and RunFolder(folder).ckpt("last").is_file()
    previous = signal.signal(signal.SIGINT, lambda *_: None)
    try:
        result = run(load_spec(spec(tmp_path, name="handled", eval=5)), on_eval=ctrl_c, show_progress=False)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert result.status == RunStatus.INTERRUPTED and result.exit_code == 130
