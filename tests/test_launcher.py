"""The launcher: worker processes, threads and GPUs per worker, crashes, dead workers, orphans, progress lines."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import alive, wait_for

from nanolab.launch import Board, Launched, Outcome, Task
from nanolab.launch.local import LocalLauncher, cpu_count
from nanolab.runfolder import RunFolder
from nanolab.vocab import RunStatus


def report_worker(tag: str, *, progress: bool) -> Outcome:
    """A task that says where it ran: pid, GPU, torch threads."""
    import torch

    return Outcome(RunStatus.FINISHED, f"{tag} pid={os.getpid()} gpu={os.environ.get('CUDA_VISIBLE_DEVICES')} "
                                        f"threads={torch.get_num_threads()} progress={progress}")


def crash(tag: str, *, progress: bool) -> Outcome:
    raise RuntimeError(f"{tag} blew up")


def die(tag: str, *, progress: bool) -> Outcome:
    os.kill(os.getpid(), signal.SIGKILL)


def sleep_forever(tag: str, *, progress: bool) -> Outcome:
    time.sleep(600)


def running_folder(path: Path) -> Path:
    RunFolder(path).write_meta({"run_id": path.name, "status": "running"})
    return path


def launch(tasks: list[Task], workers: int) -> tuple[Launched, list[tuple[Task, Outcome]], Board]:
    pending, ended = iter(tasks), []
    board = Board(len(tasks), "x")
    done = LocalLauncher(workers).run(lambda: next(pending, None), lambda t, o: ended.append((t, o)), board)
    return done, ended, board


def test_one_worker_runs_tasks_here_with_progress(tmp_path):
    done, ended, _ = launch([Task("a", tmp_path / "a", report_worker, ("a",))], workers=1)
    assert done is Launched.DONE and ended[0][1].text.startswith(f"a pid={os.getpid()} ") and ended[0][1].text.endswith("progress=True")


def test_workers_get_one_gpu_each_and_cores_over_n_threads(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    tasks = [Task(f"t{i}", tmp_path / f"t{i}", report_worker, (f"t{i}",)) for i in range(4)]
    done, ended, _ = launch(tasks, workers=2)
    assert done is Launched.DONE and len(ended) == 4
    fields = [dict(kv.split("=") for kv in o.text.split()[1:]) for _, o in ended]
    assert {f["gpu"] for f in fields} == {"3", "5"}
    assert {f["pid"] for f in fields} != {str(os.getpid())} and len({f["pid"] for f in fields}) == 2
    for f in fields:  # a worker keeps its GPU from task to task
        assert [g["gpu"] for g in fields if g["pid"] == f["pid"]] == [f["gpu"]] * sum(g["pid"] == f["pid"]
                                                                                        for g in fields)
    assert {f["threads"] for f in fields} == {str(max(1, cpu_count() // 2))} and {f["progress"] for f in fields} == {
        "False"}


@pytest.mark.parametrize("workers", [1, 2])
def test_a_crashed_task_is_recorded_and_the_others_go_on(tmp_path, workers, capsys):
    folder = running_folder(tmp_path / "bad")
    tasks = [Task("bad", folder, crash, ("bad",)), *(Task(f"ok{i}", tmp_path / f"ok{i}", report_worker, (f"ok{i}",))
                                                     for i in range(2))]
    done, ended, board = launch(tasks, workers)
    outcomes = {t.label: o for t, o in ended}
    assert done is Launched.DONE and outcomes["bad"].status is RunStatus.FAILED and outcomes["bad"].text == "RuntimeError: bad blew up"
    assert outcomes["ok0"].status is outcomes["ok1"].status is RunStatus.FINISHED
    meta = RunFolder(folder).read_meta()
    assert (meta["status"], meta["reason"]) == ("failed", "RuntimeError: bad blew up")
    out = capsys.readouterr().out
    assert "bad: started" in out and "bad: failed, RuntimeError: bad blew up" in out
    assert "done 3/3, running 0, failed 1" in out


def report_and_mark(tag: str, marker: str, *, progress: bool) -> Outcome:
    outcome = report_worker(tag, progress=progress)
    Path(marker).touch()
    return outcome


def held(tag: str, marker: str, *, progress: bool) -> Outcome:
    """Holds its worker until `marker` exists (written by the last task, on the dead worker's replacement), however
    long the replacement takes to start on a loaded machine."""
    deadline = time.monotonic() + 240
    while not Path(marker).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return report_worker(tag, progress=progress)


def test_a_dead_worker_is_replaced_and_its_run_marked_failed(tmp_path):
    folder, marker = running_folder(tmp_path / "victim"), str(tmp_path / "ok1-ran")
    tasks = [Task("victim", folder, die, ("victim",)), Task("slow", tmp_path / "slow", held, ("slow", marker)),
             Task("ok0", tmp_path / "ok0", report_worker, ("ok0",)),
             Task("ok1", tmp_path / "ok1", report_and_mark, ("ok1", marker))]
    done, ended, _ = launch(tasks, workers=2)
    outcomes = {t.label: o for t, o in ended}
    assert done is Launched.DONE and [t.label for t, _ in ended][:3] == ["victim", "ok0", "ok1"]
    victim = outcomes["victim"]
    assert victim.status is RunStatus.FAILED and victim.text.startswith("worker process ")
    assert victim.text.endswith(" died (signal SIGKILL)")
    meta = RunFolder(folder).read_meta()
    assert (meta["status"], meta["reason"]) == ("failed", victim.text)
    pid = {label: o.text.split()[1].removeprefix("pid=") for label, o in outcomes.items() if label != "victim"}
    dead = victim.text.split()[2]
    assert pid["ok0"] == pid["ok1"] and len({pid["ok0"], pid["slow"], dead}) == 3  # a new worker took its place
    assert outcomes["ok0"].text.endswith(f"threads={max(1, cpu_count() // 2)} progress=False")


def test_workers_die_with_their_parent(tmp_path):
    """kill -9 of the launching process: its workers stop within a few seconds instead of running on as orphans."""
    pids = tmp_path / "pids"
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_launcher import launch, sleep_record
        from nanolab.launch import Task
        launch([Task(f"s{{i}}", {str(tmp_path)!r} + f"/s{{i}}", sleep_record, ({str(pids)!r},)) for i in range(2)], 2)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        wait_for(lambda: len(_lines(pids)) >= 2, timeout=60, what="both workers to start")
        workers = [int(p) for p in _lines(pids)]
        assert len(workers) == 2
        parent.kill()
        parent.wait()
        wait_for(lambda: not any(alive(p) for p in workers), timeout=15, what="the orphaned workers to stop")
    finally:
        parent.kill()


def sleep_record(path: str, *, progress: bool) -> Outcome:
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    return sleep_forever("", progress=progress)


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.is_file() else []
