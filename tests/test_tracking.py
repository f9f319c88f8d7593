"""Trackers: the run folder files, W&B offline runs read back with W&B's own reader, resume, failure isolation.

W&B runs offline only (no account here); `wandb leet inspect` reads the .wandb files back.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import MappingProxyType

import pytest
from helpers import inspect, offline_runs

from nanolab.errors import NanolabError
from nanolab.runfolder import RunFolder
from nanolab.spec import spec_from_dict
from nanolab.tracking import (LocalTracker, WandbTracker, find_offline_runs, open_trackers, resolve_mode,
                              sync_runs)
from nanolab.tracking.sync import offline_run_dirs
from nanolab.tracking.wandb_resume import offline_held

TRAIN = [(10, {"train/loss": 3.5, "train/lr": 1e-3}), (20, {"train/loss": 3.0, "train/lr": 9e-4})]
VAL = [(10, {"val/loss": 3.25, "val/ppl": 25.79, "val/bpc": 4.69, "train/eval_loss": 3.2}),
       (20, {"val/loss": 2.75, "val/ppl": 15.64, "val/bpc": 3.97, "train/eval_loss": 2.7})]


def config(mode: str = "offline", **tracking):
    return spec_from_dict({"name": "tiny", "model": {"activation": "relu", "n_layer": 1},
                           "tracking": {"wandb": {"mode": mode, "log_checkpoints": True}, "tags": ["t"],
                                        **tracking}})


@pytest.fixture
def wb(tmp_path, monkeypatch):
    """A clean W&B process state: no key, no network, every W&B file under tmp_path, settings re-read."""
    import wandb

    for name in ("WANDB_API_KEY", "WANDB_DIR", "WANDB_MODE", "WANDB_BASE_URL", "WANDB_PROJECT", "WANDB_ENTITY",
                 "WANDB_INIT_TIMEOUT", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NETRC", str(home / ".netrc"))  # does not exist
    for name, sub in (("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data")):
        monkeypatch.setenv(name, str(home / sub))
    monkeypatch.setenv("WANDB_SILENT", "true")
    wandb.teardown()  # wandb caches the environment of its first use in the process
    yield
    wandb.teardown()


def open_all(cfg, run_dir: Path, meta: dict, resume_step: int | None = None):
    """open_trackers as the runner calls it: meta read-only to the trackers, their fields merged into it after."""
    trackers, fields = open_trackers(cfg, RunFolder(run_dir), MappingProxyType(dict(meta)), resume_step)
    meta.update(fields)
    return trackers


def log_all(trackers, step_rows=TRAIN + VAL):
    for step, metrics in sorted(step_rows, key=lambda r: r[0]):
        for t in trackers:
            t.log(metrics, step)


def history(path: Path) -> dict[int, dict]:
    """W&B history rows by step."""
    return {r["history"]["step"]["num"]: r["history"]["item"] for r in inspect(path, summary=False)
            if r["type"] == "history"}


def nanolab_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("nanolab:")]


# ----------------------------------------------------------------------------- the run folder


def test_local_files_exact_and_disabled_writes_no_wandb_files(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wbdir"))
    run_dir = tmp_path / "run"
    trackers, fields = open_trackers(config("disabled"), RunFolder(run_dir), {"run_id": "r"}, None)
    assert [type(t) for t in trackers] == [LocalTracker] and fields == {}
    log_all(trackers)
    for t in trackers:
        t.log_samples(10, "ROMEO:\nhello")
        t.log_samples(20, "JULIET: bye\n")
        t.summary({"best/val_loss": 2.75, "best/val_ppl": 15.64, "best/step": 20, "tokens_seen": 640})
        t.close("finished")
    assert (run_dir / "metrics.jsonl").read_text() == (
        '{"step": 10, "train/loss": 3.5, "train/lr": 0.001}\n'
        '{"step": 10, "val/loss": 3.25, "val/ppl": 25.79, "val/bpc": 4.69, "train/eval_loss": 3.2}\n'
        '{"step": 20, "train/loss": 3.0, "train/lr": 0.0009}\n'
        '{"step": 20, "val/loss": 2.75, "val/ppl": 15.64, "val/bpc": 3.97, "train/eval_loss": 2.7}\n')
    assert (run_dir / "samples.txt").read_text() == "--- step 10 ---\nROMEO:\nhello\n--- step 20 ---\nJULIET: bye\n"
    assert json.loads((run_dir / "summary.json").read_text()) == {
        "best/val_loss": 2.75, "best/val_ppl": 15.64, "best/step": 20, "tokens_seen": 640}
    assert not list(tmp_path.rglob("wandb")) and not (tmp_path / "wbdir").exists()
    assert capsys.readouterr().err == ""


def test_disabled_does_not_import_wandb(tmp_path):
    code = ("import sys; from pathlib import Path; from nanolab.config import Config, TrackingConfig, WandbConfig;"
            "from nanolab.tracking import open_trackers;"
            "cfg = Config(tracking=TrackingConfig(wandb=WandbConfig(mode='disabled')));"
            f"ts, _ = open_trackers(cfg, Path({str(tmp_path)!r}), {{}}, None); ts[0].log({{'train/loss': 1.0}}, 1);"
            "ts[0].close('finished'); assert 'wandb' not in sys.modules, 'wandb imported'")
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


def test_wandb_mode_env_wins_over_spec(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode(config("offline")) == ("disabled", False)
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert resolve_mode(config("online")) == ("offline", False)
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(NanolabError, match="WANDB_MODE"):
        resolve_mode(config())


def test_auto_mode_is_online_only_with_an_api_key(wb, monkeypatch):
    assert resolve_mode(config("auto")) == ("offline", True)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode(config("auto")) == ("online", False)


def test_resume_drops_rows_past_the_checkpoint(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run_dir = tmp_path / "run"
    first = LocalTracker(RunFolder(run_dir))
    for step in range(10, 60, 10):
        first.log({"train/loss": 1.0 / step}, step)
        first.log_samples(step, f"sample {step}")
    first.close("interrupted")
    before = (run_dir / "metrics.jsonl").read_bytes()
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 60, "train/lo')  # a hard kill mid-write
    kept = b"".join(before.splitlines(keepends=True)[:3])  # steps 10, 20, 30

    (second,), fields = open_trackers(config("disabled"), RunFolder(run_dir), {"run_id": "r"}, 30)
    assert fields == {} and (run_dir / "metrics.jsonl").read_bytes() == kept
    assert RunFolder(run_dir).samples() == [(10, "sample 10"), (20, "sample 20"), (30, "sample 30")]
    second.log({"train/loss": 0.5}, 40)
    second.log_samples(40, "sample 40")
    second.close("finished")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30, 40]
    assert (run_dir / "metrics.jsonl").read_bytes().startswith(kept)
    assert (run_dir / "samples.txt").read_text() == "".join(f"--- step {s} ---\nsample {s}\n" for s in (10, 20, 30, 40))
    assert not list(run_dir.glob(".*.tmp"))


# ----------------------------------------------------------------------------- W&B, offline


def test_wandb_offline_run_reads_back(wb, tmp_path, capsys):
    run_dir = tmp_path / "run"
    meta = {"run_id": "20240101-000000-abcd", "name": "tiny", "params": 1234, "flops_per_token": 5678}
    trackers = open_all(config("offline", group="activation", job_type="ablate"), run_dir, meta)
    assert [type(t) for t in trackers] == [LocalTracker, WandbTracker]
    log_all(trackers)
    ckpt = run_dir / "ckpt" / "best.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"weights")
    for t in trackers:
        t.log_samples(10, "ROMEO: hi")
        t.log_checkpoint(ckpt, "best", 10)
        t.log_samples(20, "JULIET: bye")
        t.summary({"best/val_loss": 2.75, "best/val_ppl": 15.64, "best/step": 20, "wall_time": 1.5})
        t.close("finished")
    assert capsys.readouterr().err == ""  # mode offline was asked for: nothing to say

    (wandb_run,) = offline_runs(run_dir)
    assert wandb_run.name.endswith("-" + meta["wandb_id"]) and meta["wandb_mode"] == "offline"
    s = inspect(wandb_run)
    assert s["run_id"] == meta["wandb_id"] and s["state"] == "finished"
    assert s["name"] == "tiny/20240101-000000-abcd" and s["config"]["run_id"] == "20240101-000000-abcd"
    assert s["config"]["model"]["activation"] == "relu" and s["config"]["model"]["n_layer"] == 1
    assert s["config"]["params"] == 1234 and s["config"]["flops_per_token"] == 5678
    assert s["config"]["run_dir"] == str(run_dir) and s["tags"] == ["t"]
    assert s["summary"]["best/val_loss"] == 2.75 and s["summary"]["best/step"] == 20
    assert s["summary"]["val/loss"] == {"min": 2.75, "last": 2.75} and s["summary"]["status"] == "finished"
    rows = history(wandb_run)
    assert sorted(rows) == [10, 20]
    for step, metrics in TRAIN + VAL:
        for name, value in metrics.items():
            assert rows[step][name] == pytest.approx(value), (step, name)
    assert rows[20]["samples._type"] == "table-file" and rows[20]["samples.nrows"] == 1
    records = inspect(wandb_run, summary=False)
    (run_record,) = [r["run"] for r in records if r["type"] == "run"]
    assert run_record["run_group"] == "activation" and run_record["job_type"] == "ablate"
    artifacts = [r["artifact"] for r in records if r["type"] == "artifact" and r["artifact"]["type"] == "model"]
    assert len(artifacts) == 1 and "best" in artifacts[0]["aliases"]


def test_each_evaluation_sample_is_logged_once(wb, tmp_path):
    """k evaluations upload k sample rows, not 1 + 2 + ... + k (a table of every sample so far at each)."""
    run_dir = tmp_path / "run"
    trackers = open_all(config(), run_dir, {"run_id": "r"})
    steps = [10, 20, 30, 40]
    for step in steps:
        for t in trackers:
            t.log({"val/loss": 1.0 / step}, step)
            t.log_samples(step, f"sample {step}")
    for t in trackers:
        t.close("finished")
    (wandb_run,) = offline_runs(run_dir)
    rows = history(wandb_run)
    assert sum(row.get("samples.nrows", 0) for row in rows.values()) == len(steps)
    tables = {step: json.loads((wandb_run / "files" / rows[step]["samples.path"]).read_text()) for step in steps}
    assert {step: table["data"] for step, table in tables.items()} == {s: [[s, f"sample {s}"]] for s in steps}


@pytest.mark.parametrize("extra, expected", [
    ({"sweep": "lr", "trial": 3, "trial_params": {"train.lr": 1e-3, "model.activation": "gelu"}},
     {"sweep": "lr", "trial": 3, "swept_keys": ["train.lr", "model.activation"]}),
    ({"ablation": "activation", "variant": {"model.activation": "relu", "model.norm": "rmsnorm"}},
     {"ablation": "activation", "variant": {"model.activation": "relu", "model.norm": "rmsnorm"}}),
])
def test_wandb_run_names_its_study_trial_or_ablation_variant(wb, tmp_path, extra, expected):
    run_dir = tmp_path / "lr" / "trial-3"
    for t in open_all(config(), run_dir, {"run_id": "trial-3", "name": "lr", **extra}):
        t.close("finished")
    s = inspect(offline_runs(run_dir)[0])
    assert s["name"] == "lr/trial-3" and s["config"]["run_id"] == "trial-3"  # run ids repeat across sweeps
    assert {key: s["config"].get(key) for key in ("sweep", "trial", "swept_keys", "ablation", "variant")} == {
        **dict.fromkeys(("sweep", "trial", "swept_keys", "ablation", "variant")), **expected}


def test_resumed_run_keeps_wandb_id_and_skips_steps_wandb_holds(wb, tmp_path, capsys):
    run_dir = tmp_path / "run"
    meta = {"run_id": "r"}
    first = open_all(config(), run_dir, meta)
    log_all(first, [(s, {"train/loss": 1.0 / s}) for s in range(10, 60, 10)])  # killed at 50, checkpoint at 30
    for t in first:
        t.close("interrupted")
    wandb_id = meta["wandb_id"]

    second = open_all(config(), run_dir, meta, resume_step=30)
    assert meta["wandb_id"] == wandb_id
    log_all(second, [(s, {"train/loss": 0.5 / s}) for s in range(40, 80, 10)])
    for t in second:
        t.close("finished")

    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == \
        [10, 20, 30, 40, 50, 60, 70]
    runs = offline_runs(run_dir)
    assert runs == offline_run_dirs(run_dir, wandb_id) and len(runs) == 2
    assert (runs[1] / f"run-{wandb_id}.wandb").is_file()
    assert inspect(runs[1])["run_id"] == wandb_id
    assert sorted(history(runs[1])) == [60, 70]  # 40 and 50 are already in the first session's history
    (line,) = nanolab_lines(capsys.readouterr().err)
    assert "up to 50" in line and "metrics.jsonl" in line


def test_resume_assumes_wandb_holds_what_it_cannot_read_back(wb, tmp_path):
    """Earlier sessions online, or offline files W&B's reader refuses: W&B holds all that they logged."""
    assert offline_held(tmp_path, {"wandb_id": "abc", "wandb_mode": "online"}, 50) == 50
    assert offline_held(tmp_path, {"wandb_id": "abc", "wandb_mode": "offline"}, 50) is None  # no offline run: none
    broken = tmp_path / "wandb" / "offline-run-20240101_000000-abc"
    broken.mkdir(parents=True)
    (broken / "run-abc.wandb").write_bytes(b"garbage")
    assert offline_held(tmp_path, {"wandb_id": "abc", "wandb_mode": "offline"}, 50) == 50


KILLED_SESSION = """
import json, os, signal, sys
from pathlib import Path
from nanolab.spec import spec_from_dict
from nanolab.runfolder import RunFolder
from nanolab.tracking import open_trackers
folder = RunFolder(sys.argv[1])
meta = {"run_id": "r"}
trackers, fields = open_trackers(spec_from_dict({"tracking": {"wandb": {"mode": "offline"}}}), folder, meta, None)
folder.write_meta({**meta, **fields})
for step in range(10, 60, 10):
    for t in trackers:
        t.log({"train/loss": 1.0 / step}, step)
        t.log_samples(step, f"sample {step}")
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_resume_after_hard_kill_gives_wandb_the_history_it_lost(wb, tmp_path, capsys):
    run_dir = tmp_path / "run"
    killed = subprocess.run([sys.executable, "-c", KILLED_SESSION, str(run_dir)], timeout=120)
    assert killed.returncode == -9
    meta = json.loads((run_dir / "meta.json").read_text())
    (first,) = offline_runs(run_dir)
    first_rows = history(first)
    saved = sorted(first_rows)  # W&B writes its file in blocks: the killed session saved little, if any

    trackers = open_all(config(), run_dir, meta, resume_step=30)
    for step in range(40, 80, 10):
        for t in trackers:
            t.log({"train/loss": 0.5 / step}, step)
            t.log_samples(step, f"sample {step}")
    for t in trackers:
        t.close("finished")
    second = offline_runs(run_dir)[1]
    assert second.name.endswith("-" + meta["wandb_id"])
    rows = history(second)
    # what `wandb sync` uploads, session after session: every step once, in order
    assert saved + sorted(rows) == [10, 20, 30, 40, 50, 60, 70]
    # up to the checkpoint re-logged from metrics.jsonl (the first session's values), then this session's
    assert {step: row["train/loss"] for step, row in rows.items()} == pytest.approx(
        {step: (1.0 if step <= 30 else 0.5) / step for step in range(10, 80, 10) if step not in saved})
    assert [row.get("samples.nrows") for row in [*first_rows.values(), *rows.values()]] == [1] * 7  # each once
    assert len(nanolab_lines(capsys.readouterr().err)) == 1  # "logged them from metrics.jsonl" or "already holds"


def test_wandb_raising_in_log_warns_once_and_local_goes_on(wb, tmp_path, capsys):
    run_dir = tmp_path / "run"
    local, tracker = open_all(config(), run_dir, {"run_id": "r"})
    finished = []
    real_finish = tracker.run.finish

    def broken_log(*args, **kwargs):
        raise RuntimeError("wandb-core went away")

    def finish(*args, **kwargs):
        finished.append(kwargs)
        return real_finish(*args, **kwargs)

    tracker.run.log = broken_log
    tracker.run.finish = finish
    log_all([local, tracker])
    for t in (local, tracker):
        t.log_samples(20, "text")
        t.summary({"best/val_loss": 2.75})
        t.close("diverged")
    (line,) = nanolab_lines(capsys.readouterr().err)
    assert "wandb-core went away" in line and "run folder" in line
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 4
    assert finished == [{"exit_code": 1}]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_online_without_api_key_fails_fast(wb, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    run_dir = tmp_path / "run"
    start = time.monotonic()
    trackers = open_all(config("auto"), run_dir, meta := {"run_id": "r"})
    log_all(trackers)
    for t in trackers:
        t.summary({"best/val_loss": 2.75})
        t.close("finished")
    assert time.monotonic() - start < 30
    (line,) = nanolab_lines(capsys.readouterr().err)
    assert "API key" in line
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 4
    assert (run_dir / "summary.json").is_file() and "wandb_id" not in meta


def test_a_settings_error_names_its_field(wb, tmp_path, monkeypatch, capsys):
    """WANDB_SILENT set empty: W&B's Settings refuse it, and the note says which field and value, not only
    "1 validation error for Settings"."""
    monkeypatch.setenv("WANDB_SILENT", "")
    trackers = open_all(config("offline"), tmp_path / "run", meta := {"run_id": "r"})
    (line,) = nanolab_lines(capsys.readouterr().err)
    assert line.startswith("nanolab: W&B disabled for this run: wandb.init failed (ValidationError: 1 validation "
                           "error for Settings: silent: Input should be a valid boolean")
    assert "(got '')" in line and "wandb_id" not in meta and len(trackers) == 1


def test_online_unreachable_server_fails_within_init_timeout(wb, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)  # a key, but no server behind the URL
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "3")
    run_dir = tmp_path / "run"
    start = time.monotonic()
    trackers = open_all(config(), run_dir, {"run_id": "r"})
    log_all(trackers)
    for t in trackers:
        t.close("finished")
    assert time.monotonic() - start < 30
    assert [type(t) for t in trackers] == [LocalTracker]
    (line,) = nanolab_lines(capsys.readouterr().err)
    assert "wandb.init failed" in line
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 4


def test_auto_mode_falls_back_to_offline_when_the_server_is_unreachable(wb, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "2")
    run_dir = tmp_path / "run"
    trackers = open_all(config("auto"), run_dir, meta := {"run_id": "r"})
    assert [type(t) for t in trackers] == [LocalTracker, WandbTracker] and meta["wandb_mode"] == "offline"
    log_all(trackers)
    for t in trackers:
        t.close("finished")
    (line,) = nanolab_lines(capsys.readouterr().err)
    assert "W&B runs offline" in line and "nanolab sync" in line
    (wandb_run,) = offline_runs(run_dir)
    assert wandb_run.name.endswith("-" + meta["wandb_id"]) and sorted(history(wandb_run)) == [10, 20]


# ----------------------------------------------------------------------------- nanolab sync


def test_sync_finds_offline_runs_and_refuses_folders_without_one(tmp_path, monkeypatch):
    with pytest.raises(NanolabError, match="no such run folder"):
        sync_runs([tmp_path / "missing"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NanolabError, match="no offline W&B run"):
        sync_runs([empty])

    run_dir, elsewhere = tmp_path / "run", tmp_path / "wbdir"
    for d in ("offline-run-20240102_000000-abc", "offline-run-20240101_000000-abc"):
        (run_dir / "wandb" / d).mkdir(parents=True)
    (elsewhere / "wandb/offline-run-20240103_000000-abc").mkdir(parents=True)
    # wandb's name for a second session started in the same second as the first
    (elsewhere / "wandb/offline-run-20240103_000000-abc-1").mkdir(parents=True)
    (elsewhere / "wandb/offline-run-20240103_000000-other").mkdir(parents=True)  # another run's
    (elsewhere / "wandb/offline-run-20240103_000000-abcd").mkdir(parents=True)  # another run's, same prefix
    RunFolder(run_dir).write_meta({"run_id": "run", "wandb_id": "abc", "wandb_dir": str(elsewhere)})
    found = find_offline_runs(run_dir)
    assert [p.name for p in found] == ["offline-run-20240101_000000-abc", "offline-run-20240102_000000-abc",
                                       "offline-run-20240103_000000-abc", "offline-run-20240103_000000-abc-1"]

    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, returncode=len(calls) - 1)

    monkeypatch.setattr(subprocess, "run", fake_run)
    sync_runs([run_dir])
    assert calls[0][1:4] == ["-m", "wandb", "sync"] and calls[0][4:] == [str(p) for p in found]
    with pytest.raises(NanolabError, match="wandb sync failed"):
        sync_runs([run_dir])


def test_sync_lists_each_offline_run_once_from_a_relative_path(tmp_path, monkeypatch):
    folder = RunFolder(tmp_path / "runs" / "tiny" / "r")
    names = ["offline-run-20240101_000000-abc", "offline-run-20240102_000000-abc"]
    for name in names:
        (folder.path / "wandb" / name).mkdir(parents=True)
    folder.write_meta({"run_id": "r", "wandb_id": "abc", "wandb_dir": str(folder.path)})  # absolute, as recorded
    monkeypatch.chdir(tmp_path)
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    sync_runs([Path("runs/tiny/r"), Path("runs/tiny/r/")])
    (cmd,) = calls
    assert cmd[4:] == [str((folder.path / "wandb" / name).resolve()) for name in names]


def test_sync_gives_up_after_its_timeout_when_the_server_is_unreachable(wb, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    for t in open_all(config(), run_dir, {"run_id": "r"}):
        t.close("finished")
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)  # a key, but no server behind the URL: wandb sync waits forever
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("NANOLAB_SYNC_TIMEOUT", "soon")
    with pytest.raises(NanolabError, match="NANOLAB_SYNC_TIMEOUT='soon'"):
        sync_runs([run_dir])
    monkeypatch.setenv("NANOLAB_SYNC_TIMEOUT", "3")
    began = time.monotonic()
    with pytest.raises(NanolabError, match=r"did not finish within 3 s \(NANOLAB_SYNC_TIMEOUT\)"):
        sync_runs([run_dir])
    assert time.monotonic() - began < 30


# ----------------------------------------------------------------------------- end to end


def test_tiny_run_reads_back_from_wandb(wb, monkeypatch, tmp_path):
    from nanolab.runner import run

    monkeypatch.setenv("NANOLAB_RUNS", str(tmp_path / "runs"))
    cfg = spec_from_dict({
        "name": "e2e", "data": {"block_size": 16},
        "model": {"n_layer": 1, "n_head": 2, "n_embd": 16, "activation": "relu"},
        "train": {"batch_size": 4, "max_iters": 20, "eval_interval": 10, "eval_iters": 2, "log_interval": 5,
                  "warmup_iters": 2, "sample_tokens": 20, "device": "cpu"},
        "tracking": {"wandb": {"mode": "offline"}}})
    result = run(cfg, show_progress=False)
    assert result.status == "finished"
    (wandb_run,) = offline_runs(result.run_dir)
    s = inspect(wandb_run)
    assert s["config"]["model"]["activation"] == "relu" and s["config"]["train"]["max_iters"] == 20
    assert s["summary"]["best/val_loss"] == pytest.approx(result.summary["best/val_loss"])
    rows = history(wandb_run)
    local = {}
    for line in (result.run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        local.setdefault(row.pop("step"), {}).update(row)
    assert sorted(rows) == sorted(local) == [5, 10, 15, 20]
    for step in (10, 20):
        for name in ("train/loss", "val/loss", "val/ppl", "val/bpc"):
            assert rows[step][name] == pytest.approx(local[step][name])
