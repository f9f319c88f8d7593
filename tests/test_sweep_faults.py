"""Sweeps when things go wrong: dead workers, a killed sweep process, Ctrl-C, a changed sweep file, a second
storage, --set on a swept key, two sweeps started together, a torn journal and a full disk under it; and what
reaches W&B and Optuna about each trial."""

from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path

import pytest
from helpers import LR, alive, start_cli, sweep_file, trial_rows, wait_for

pytestmark = [pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"), pytest.mark.timeout(900)]

from nanolab.analysis import compare_command
from nanolab.cli import main
from nanolab.runfolder import RunStore, runs_root
from nanolab.sweep import SweepStudy, load_sweep

STEPS = 3000  # ~1.5 ms a step idle: long enough to stop a trial midway, short enough to finish it again
LONG = f"overrides: {{train.max_iters: {STEPS}, train.eval_interval: 1000, train.checkpoint_interval: 20}}\n"


def checkpointed(name: str, *run_ids: str) -> bool:
    return all(RunStore().folder(name, r).ckpt("last").is_file() for r in run_ids)


def worker_pid(path: Path, number: int) -> int:
    return int(SweepStudy.load(load_sweep(path)).trials()[number].user_attrs["worker"].rpartition(":")[2])


def test_a_killed_worker_is_replaced_its_trial_failed_and_retried(tmp_path):
    path = sweep_file(tmp_path, "kill9", LONG + LR + "trials: 3\n")
    sweep = start_cli("sweep", path, "--workers", "2")
    wait_for(lambda: checkpointed("kill9", "trial-0", "trial-1"), what="two trials to checkpoint")
    victim = worker_pid(path, 0)
    os.kill(victim, signal.SIGKILL)
    out, err = sweep.communicate(timeout=900)
    assert sweep.returncode == 1, err  # a job failed (and was retried)
    rows = {int(r["number"]): r for r in trial_rows("kill9")}
    reason = f"worker process {victim} died (signal SIGKILL)"
    assert rows[0]["state"] == "FAIL" and rows[0]["user_attrs_fail_reason"] == reason
    (retry,) = [r for r in rows.values() if r["user_attrs_resumes"] and int(float(r["user_attrs_resumes"])) == 0]
    assert retry["state"] == "COMPLETE" and retry["params_train.lr"] == rows[0]["params_train.lr"]
    assert sorted(r["state"] for r in rows.values()) == ["COMPLETE"] * 3 + ["FAIL"]  # 3 trials + the retry
    aside = RunStore().folder("kill9", "trial-0.attempt1").read_meta()
    assert (aside["status"], aside["reason"]) == ("failed", reason)
    workers = {r["user_attrs_worker"].rpartition(":")[2] for r in rows.values()}
    assert len(workers) >= 3  # the survivor, the dead one and its replacement
    assert f"trial 0 [train.lr={float(rows[0]['params_train.lr']):.4g}]: failed, {reason}" in out


def test_killing_the_sweep_stops_its_workers_which_record_their_trials(tmp_path):
    path = sweep_file(tmp_path, "orphans", LONG + LR + "trials: 2\n")
    sweep = start_cli("sweep", path, "--workers", "2")
    wait_for(lambda: checkpointed("orphans", "trial-0", "trial-1"), what="two trials to checkpoint")
    workers = [worker_pid(path, 0), worker_pid(path, 1)]
    sweep.kill()
    sweep.wait()
    wait_for(lambda: not any(alive(p) for p in workers), timeout=30, what="the workers to stop")
    rows = trial_rows("orphans")  # written by the workers: the sweep process was gone
    assert [(r["state"], r["user_attrs_fail_reason"]) for r in rows[:2]] == [("FAIL", "interrupted: SIGTERM")] * 2
    assert [r["state"] for r in rows[2:]] == ["WAITING"] * 2
    for run_id in ("trial-0", "trial-1"):
        assert RunStore().folder("orphans", run_id).read_meta()["status"] == "interrupted"
    assert main(["sweep", str(path), "--trials", "1"]) == 0  # the next call continues both, then one new trial
    rows = trial_rows("orphans")
    assert [r["state"] for r in rows] == ["FAIL", "FAIL", "COMPLETE", "COMPLETE", "COMPLETE"]
    for run_id in ("trial-0", "trial-1"):
        folder = RunStore().folder("orphans", run_id)
        steps = [row["step"] for row in folder.metrics()]
        assert folder.read_meta()["status"] == "finished" and steps == sorted(steps) and steps[-1] == STEPS


def test_ctrl_c_then_the_next_call_resumes_the_trial_with_its_parameters(tmp_path):
    path = sweep_file(tmp_path, "ctrlc", LONG + LR + "trials: 1\n")
    sweep = start_cli("sweep", path)
    wait_for(lambda: checkpointed("ctrlc", "trial-0"), what="the trial to checkpoint")
    sweep.send_signal(signal.SIGINT)
    out, err = sweep.communicate(timeout=60)
    assert sweep.returncode == 130, err
    (row, waiting) = trial_rows("ctrlc")
    assert (row["state"], row["user_attrs_fail_reason"], waiting["state"]) == ("FAIL", "interrupted: SIGINT", "WAITING")
    stopped_at = RunStore().folder("ctrlc", "trial-0").read_meta()["steps"]
    assert 0 < stopped_at < STEPS
    assert main(["sweep", str(path), "--trials", "1"]) == 0
    first, resumed, new = trial_rows("ctrlc")
    assert resumed["state"] == "COMPLETE" and resumed["params_train.lr"] == first["params_train.lr"]
    assert int(float(resumed["user_attrs_resumes"])) == 0 and new["state"] == "COMPLETE"
    folder = RunStore().folder("ctrlc", "trial-0")
    meta = folder.read_meta()
    assert meta["status"] == "finished" and meta["resumed_at"] and meta["steps"] == STEPS
    assert sorted(p.name for p in (runs_root() / "ctrlc").iterdir()) == ["trial-0", "trial-2"]  # nothing set aside


def test_an_edited_sweep_file_does_not_continue_the_study(tmp_path, capsys):
    path = sweep_file(tmp_path, "edited", LR + "trials: 1\n")
    assert main(["sweep", str(path)]) == 0
    path.write_text(path.read_text().replace("1.0e-2", "3.0e-2"))
    capsys.readouterr()
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "space.train.lr.high: 0.01 -> 0.03" in err and "another `name:`" in err
    path.write_text(path.read_text().replace("3.0e-2", "1.0e-2") + "overrides: {train.max_iters: 30}\n")
    assert main(["sweep", str(path)]) == 2
    assert "experiment.train.max_iters: 20 -> 30" in capsys.readouterr().err
    assert main(["sweep", str(path), "--set", "train.max_iters=25"]) == 2  # --set counts too
    assert "experiment.train.max_iters: 20 -> 25" in capsys.readouterr().err
    assert len(trial_rows("edited")) == 1
    # what counts is the resolved experiment: the same values by another route continue the study
    assert main(["sweep", str(path), "--set", "train.max_iters=20", "--trials", "1"]) == 0
    assert len(trial_rows("edited")) == 2


def test_the_sample_length_does_not_make_another_study(tmp_path, capsys):
    """Samples draw from their own generator, and plans stopped sampling by default after studies had begun: a
    study begun with samples continues without them."""
    path = sweep_file(tmp_path, "samples", LR + "trials: 1\noverrides: {train.sample_tokens: 8}\n")
    assert main(["sweep", str(path)]) == 0
    path.write_text(path.read_text().replace("overrides: {train.sample_tokens: 8}\n", ""))
    assert main(["sweep", str(path), "--trials", "1"]) == 0
    assert len(trial_rows("samples")) == 2
    assert RunStore().folder("samples", "trial-1").read_config()["train"]["sample_tokens"] == 0  # plans' default


def test_set_on_a_swept_key_is_an_error(tmp_path, capsys):
    path = sweep_file(tmp_path, "conflict", LR)
    assert main(["sweep", str(path), "--set", "train.lr=0.1"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"nanolab: error: --set train.lr=0.1: train.lr is swept by `space:` in {path}; set it in one place "
        "(remove it from --set, or from space)")


def test_every_trial_failing_means_no_best_trial_and_exit_1(tmp_path, capsys):
    path = sweep_file(tmp_path, "allfail", "overrides: [train.grad_clip=0]\nspace: {train.lr: {choice: [1.0e+6]}}\n"
                                           "trials: 2\n")
    assert main(["sweep", str(path)]) == 1
    assert "no best trial" in capsys.readouterr().out
    assert not (runs_root() / "sweeps" / "allfail" / "best.yaml").exists()
    assert {r["state"] for r in trial_rows("allfail")} == {"FAIL"}


def test_a_second_storage_sets_the_first_studys_runs_aside_and_compare_counts_one_study(tmp_path):
    path = sweep_file(tmp_path, "twostores", LR + "trials: 2\n")
    assert main(["sweep", str(path)]) == 0
    assert main(["sweep", str(path), "--storage", str(tmp_path / "other.log")]) == 0
    names = sorted(p.name for p in (runs_root() / "twostores").iterdir())
    assert names == ["trial-0", "trial-0.attempt1", "trial-1", "trial-1.attempt1"]
    text = compare_command([runs_root() / "twostores"], group="twostores", by=["train.lr"])
    assert "2 runs, 2 finished" in text


def test_trials_have_the_sweeps_tags_and_optuna_knows_the_wandb_run(tmp_path):
    path = sweep_file(tmp_path, "wb", LR + "overrides: {tracking.wandb.mode: offline, tracking.tags: [baseline]}\n"
                                          "trials: 1\n")
    assert main(["sweep", str(path)]) == 0
    folder = RunStore().folder("wb", "trial-0")
    meta = folder.read_meta()
    assert meta["tags"] == ["baseline", "wb"] and meta["swept_keys"] == ["train.lr"] and meta["trial"] == 0
    (row,) = trial_rows("wb")
    assert row["user_attrs_wandb_id"] == meta["wandb_id"]


def test_two_sweeps_started_together_propose_different_parameters_and_reruns_repeat_them(tmp_path):
    path = sweep_file(tmp_path, "together", LR + "trials: 3\n")
    journal = tmp_path / "shared.log"
    machines = [start_cli("sweep", path, "--storage", str(journal), env={"NANOLAB_RUNS": str(tmp_path / f"m{i}")})
                for i in range(2)]
    for machine in machines:
        assert machine.wait(timeout=900) == 0, machine.stderr.read()
    trials = SweepStudy.load(load_sweep(path, storage=str(journal))).trials()
    params = [t.params["train.lr"] for t in trials]
    assert len(params) == 6 and len(set(params)) == 6
    assert main(["sweep", str(path), "--storage", str(tmp_path / "rerun.log"), "--trials", "6"]) == 0
    rerun = SweepStudy.load(load_sweep(path, storage=str(tmp_path / "rerun.log"))).trials()
    assert [t.params["train.lr"] for t in rerun] == params  # random: trial N's parameters follow from seed + N


# --------------------------------------------------------------------------- the journal file


def journal(name: str) -> Path:
    return runs_root() / "sweeps" / name / "journal.log"


def records(path: Path) -> list[dict]:
    """Every line of a journal as JSON: raises on a torn or damaged one."""
    data = path.read_bytes()
    assert data.endswith(b"\n"), data[-80:]
    return [json.loads(line) for line in data.splitlines()]


def test_a_torn_last_journal_record_is_set_aside_and_the_study_goes_on(tmp_path, capsys):
    """A write cut short (a full disk, a killed process) leaves the last record without its newline: the next call
    moves those bytes to a file beside the journal, says so in one line, and continues from the last whole record."""
    path = sweep_file(tmp_path, "torn", LR + "trials: 2\n")
    assert main(["sweep", str(path)]) == 0
    before = trial_rows("torn")
    whole = journal("torn").read_bytes()
    kept = whole[:whole.rindex(b"\n", 0, len(whole) - 1) + 1]  # up to the last record: trial 1's result
    torn = whole[len(kept):-40]
    journal("torn").write_bytes(kept + torn)
    capsys.readouterr()
    assert main(["sweep", str(path), "--trials", "1"]) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "journal.log" in line]
    aside = journal("torn").with_name("journal.log.torn-1")
    assert len(said) == 1 and str(journal("torn")) in said[0] and str(aside) in said[0], said
    assert aside.read_bytes() == torn
    assert journal("torn").read_bytes().startswith(kept) and len(records(journal("torn"))) > kept.count(b"\n")
    rows = trial_rows("torn")
    assert rows[0] == before[0]
    assert [r["state"] for r in rows] == ["COMPLETE", "RUNNING", "COMPLETE"]  # trial 1's end was the torn record
    assert main(["sweep", str(path), "--status"]) == 0
    assert "top 2 trials" in capsys.readouterr().out


def test_a_journal_damaged_before_its_last_record_is_refused_in_one_line(tmp_path, capsys):
    """A torn record with whole records after it (what appending after a torn record made) is not a write cut
    short: nanolab cannot tell what was lost, so it changes nothing and says where the damage is."""
    path = sweep_file(tmp_path, "damaged", LR + "trials: 1\n")
    assert main(["sweep", str(path)]) == 0
    lines = journal("damaged").read_bytes().splitlines(keepends=True)
    damaged = b"".join([*lines[:3], lines[3][:25], *lines[4:]])  # line 4: a torn record, then line 5's
    journal("damaged").write_bytes(damaged)
    capsys.readouterr()
    for args in ([], ["--status"]):
        assert main(["sweep", str(path), *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert err.startswith(f"nanolab: error: {journal('damaged')}: line 4 of {len(lines) - 1} is not a whole")
    assert journal("damaged").read_bytes() == damaged
    assert sorted(p.name for p in journal("damaged").parent.iterdir() if "journal" in p.name) == ["journal.log"]


def fill(path: Path) -> None:
    """Write zeros to `path` until its filesystem has no space left."""
    with open(path, "wb", buffering=0) as f:
        for chunk in (bytes(1 << 16), bytes(1)):
            try:
                while True:
                    f.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc


def test_a_full_disk_under_the_journal_ends_the_sweep_in_one_line_and_tears_no_record(tmp_path, small_tmpfs):
    """The journal on a disk that fills up: whichever write finds it full (the study's, a trial's) is cut back to
    the last whole record and the sweep ends with one line; with space again, the next call goes on."""
    path = sweep_file(tmp_path, "fulldisk", LR + "trials: 1\n")
    store = small_tmpfs / "journal.log"
    assert main(["sweep", str(path), "--storage", str(store)]) == 0
    before = store.read_bytes()
    fill(small_tmpfs / "filler")
    sweep = start_cli("sweep", path, "--storage", store, "--trials", "6")  # more than the journal's last block holds
    out, err = sweep.communicate(timeout=900)
    assert sweep.returncode == 2 and "Traceback" not in err, err
    assert err.splitlines()[-1] == f"nanolab: error: no space left on device while writing {store}"
    assert store.read_bytes().startswith(before) and records(store)
    (small_tmpfs / "filler").unlink()
    assert main(["sweep", str(path), "--storage", str(store), "--trials", "1"]) == 0
    assert main(["sweep", str(path), "--storage", str(store), "--status"]) == 0
    assert records(store)
