"""A real single-node Slurm cluster for tests, started in a temporary folder and stopped after.

Every daemon is private to the folder (own munge key and socket, own ports), so a Slurm or munge already on the
machine is neither used nor disturbed, and /etc/slurm/slurm.conf is never read. There is no accounting database
(slurmdbd): nanolab reads the queue with squeue and how a job ended from its files, never with sacct. The node is
named after this machine, whose name resolves: a DDP job's ranks meet at the first node's name. Use the session
fixture `slurm` (conftest.py registers it: a test asks for it by name); it sets SLURM_CONF in os.environ for the
session because submitit runs sbatch with the caller's environment.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

NEEDED = ("slurmctld", "slurmd", "sbatch", "squeue", "scancel", "munged")
SLURM_CONF = """\
ClusterName=nanolab
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
# cred_expire is also how long a requeued job must wait before it starts again (default 120s).
AuthInfo=socket={root}/munge.sock,cred_expire=5
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
# Keep the SPANK plugins of /etc/slurm/plugstack.conf.d out.
PlugStackConfig={root}/plugstack.conf
MailProg=/bin/true
# No cgroup tree to set up, or to share with another test cluster on the machine.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
AccountingStorageType=accounting_storage/none
# SIGKILL 1s after a cancel's SIGTERM, not 30s; a scheduling pass every second, not 60s, so a
# requeued job starts as soon as it may.
KillWait=1
SchedulerParameters=sched_interval=1,bf_interval=1
# Trust the CPUs configured here instead of draining the node over what the sandbox reports.
SlurmdParameters=config_overrides
ReturnToService=2
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName={partition} Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class SlurmCluster:
    partition: str
    conf: Path  # slurm.conf
    env: dict[str, str]  # os.environ plus SLURM_CONF, for subprocesses
    root: Path  # logs are in root/log


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, ready, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
            raise RuntimeError(f"Slurm test cluster: {what} not ready after {timeout}s; {log}:\n{tail}")
        time.sleep(0.2)


def _ok(cmd: list[str], env: dict[str, str], expect: str = "") -> bool:
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=20)
    return r.returncode == 0 and expect in r.stdout


def _which(name: str) -> str | None:
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")  # daemons live in sbin


def _die_with_parent() -> None:
    # A daemon gets SIGTERM when pytest dies without running the fixture's teardown (SIGKILL).
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


@contextlib.contextmanager
def slurm_cluster(root: Path, partition: str = "debug"):
    """Start munged, slurmctld and slurmd under `root`; yield a SlurmCluster."""
    root, procs = Path(root), []
    for sub in ("state", "spool", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    conf, log, env = root / "slurm.conf", root / "log", {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}
    host = socket.gethostname().split(".")[0]  # slurmctld only starts on the host SlurmctldHost names
    conf.write_text(SLURM_CONF.format(root=root, host=host, partition=partition, cpus=os.cpu_count() or 2,
                                      ctld_port=_free_port(), slurmd_port=_free_port()))
    (root / "plugstack.conf").write_text("")
    (root / "munge.key").write_bytes(os.urandom(1024))
    (root / "munge.key").chmod(0o600)  # munged refuses a key others can read

    def start(cmd: list[str]) -> None:
        # A session of its own: a ^C at the terminal reaches pytest, whose teardown cancels jobs first.
        with open(log / f"{cmd[0]}.out", "ab") as out:
            procs.append(subprocess.Popen([_which(cmd[0]) or cmd[0], *cmd[1:]], env=env,
                                          stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                          preexec_fn=_die_with_parent))

    try:
        # --force: a group-writable temp folder is an error to munged otherwise.
        start(["munged", "-F", "--force", f"--socket={root}/munge.sock", f"--key-file={root}/munge.key",
               f"--pid-file={root}/munged.pid", f"--log-file={log}/munged.log", f"--seed-file={root}/munged.seed"])
        _wait("munged", (root / "munge.sock").exists, log / "munged.out")
        start(["slurmctld", "-D", "-i"])
        _wait("slurmctld", lambda: _ok(["scontrol", "ping"], env, "UP"), log / "slurmctld.log")
        start(["slurmd", "-D", "-N", host])
        _wait("the node idle", lambda: _ok(["sinfo", "-h", "-o", "%t"], env, "idle"), log / "slurmd.log")
        yield SlurmCluster(partition=partition, conf=conf, env=env, root=root)
    finally:
        _stop(procs, env, partition)


def _stop(procs: list[subprocess.Popen], env: dict[str, str], partition: str) -> None:
    # Jobs run under slurmstepd, which slurmd detaches: cancel them while slurmctld and slurmd still run.
    if len(procs) == 3 and all(p.poll() is None for p in procs):
        subprocess.run(["scancel", f"--partition={partition}"], env=env, capture_output=True, timeout=20)
        with contextlib.suppress(RuntimeError):
            _wait("no jobs", lambda: not _ok(["squeue", "-h"], env, " "), Path("/nonexistent"), timeout=15)
    for p in reversed(procs):
        p.terminate()
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    # Whatever still has this cluster's SLURM_CONF in its environment (a stuck job or slurmstepd) is ours.
    marker = f"\0SLURM_CONF={env['SLURM_CONF']}\0".encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if int(pid) != os.getpid() and marker in b"\0" + Path(f"/proc/{pid}/environ").read_bytes():
                os.kill(int(pid), signal.SIGKILL)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A running single-node Slurm cluster for the session (skipped where Slurm is not installed, outside CI);
    conftest.py registers it, so every module shares the one cluster."""
    missing = [name for name in NEEDED if not _which(name)]
    reason = f"Slurm test cluster: {', '.join(missing)} not installed (see the apt-get line in .ci/run)"
    if not missing and os.geteuid() != 0:
        reason = "Slurm test cluster: needs root (slurmd runs jobs as their user; the cluster runs as root)"
    if missing or os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    with slurm_cluster(tmp_path_factory.mktemp("slurm")) as cluster, pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", str(cluster.conf))
        yield cluster
