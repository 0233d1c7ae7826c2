"""A real two-node Slurm cluster and a real PostgreSQL server on this machine, for the cluster tests.

Both come from Debian's packages (`slurm-wlm`, `munge`, `postgresql`: Slurm 22.05, PostgreSQL 15), installed on
first use when we are root and apt-get works; otherwise the tests skip with the reason. Everything a daemon
writes (configuration, state, spool, logs, sockets) lives in one folder, so nothing in /etc changes except one
line in /etc/hosts: the node names n1 and n2 must resolve (to 127.0.0.1) for Lightning's SLURMEnvironment to
find the main node, as on a real cluster.

    python -m tests.cluster up [FOLDER]     # the cluster of `make cluster`, to try the launcher by hand
    python -m tests.cluster down [FOLDER]
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.mlflow_server import free_port

SLURM_PACKAGES = ("slurm-wlm", "munge")
POSTGRES_PACKAGES = ("postgresql",)
POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")
NODES = ("n1", "n2")
HOSTS_LINE = "127.0.0.1 n1 n2  # cnnpipe's local Slurm cluster (tests/cluster.py)"
DEFAULT_ROOT = Path("/tmp/cnnpipe-cluster")
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL"}


def why_not_installed(packages: tuple[str, ...], probe: str) -> str | None:
    """Installs `packages` with apt-get unless `probe` exists already; why the daemons cannot run here, or None."""
    if os.geteuid() != 0:
        return f"needs root: starts {', '.join(packages)} daemons as root (and apt-get installs them if missing)"
    if Path(probe).exists():
        return None
    if shutil.which("apt-get") is None:
        return f"{probe} missing and no apt-get to install it (apt-get install {' '.join(packages)})"
    install = ["apt-get", "install", "-y", "-qq", *packages]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    result = subprocess.run(install, capture_output=True, text=True, env=env)
    if result.returncode != 0:  # an empty or stale package list: update it once, then try again
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env)
        result = subprocess.run(install, capture_output=True, text=True, env=env)
    if result.returncode != 0 or not Path(probe).exists():
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return f"apt-get install {' '.join(packages)} failed: {last}"
    return None


def ensure_hosts_line() -> None:
    """n1 and n2 resolve to 127.0.0.1: added once, kept (harmless, and another session may be using it)."""
    hosts = Path("/etc/hosts")
    if not all(_resolves(name) for name in NODES):
        hosts.write_text(hosts.read_text().rstrip("\n") + f"\n{HOSTS_LINE}\n")


def _resolves(name: str) -> bool:
    try:
        return socket.gethostbyname(name) == "127.0.0.1"
    except OSError:
        return False


def _alive(pid_file: Path) -> bool:
    """The daemon runs: its process exists and is no zombie (one we started and have not reaped yet)."""
    try:
        pid = int(pid_file.read_text().split()[0])
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, ValueError, IndexError):
        return False


def _stop_pid(pid_file: Path, timeout: float = 15) -> None:
    """Stops the daemon whose pid the file holds: SIGTERM, then SIGKILL when it lingers."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except OSError:
            break  # gone
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid_file):
            time.sleep(0.2)
    pid_file.unlink(missing_ok=True)


def _wait_for(check, what: str, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            tail = log.read_text()[-2000:] if log.exists() else f"(no {log})"
            raise TimeoutError(f"{what} did not come up within {timeout:.0f} s: {tail}")
        time.sleep(0.3)


@dataclass
class SlurmCluster:
    """slurmctld, `slurmd -N n1` and `slurmd -N n2` on 127.0.0.1, and a munged of their own."""

    root: Path
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """sbatch, srun, squeue and scontrol talk to this cluster; train.sbatch uses the venv running us."""
        return {**os.environ, "SLURM_CONF": str(self.conf), "VENV": str(Path(sys.executable).parents[1])}

    def up(self) -> SlurmCluster:
        """Starts what is not running yet (idempotent) and waits until both nodes are idle."""
        for folder in ("munge", "state", "spool", "log", "run"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        ensure_hosts_line()
        self._start_munge()
        if not self.conf.exists():
            self._write_conf()
        log = self.root / "log"
        if not _alive(self.root / "run/slurmctld.pid"):
            self._spawn(["slurmctld", "-f", str(self.conf)], log / "slurmctld.out")
            _wait_for(
                lambda: self.run("scontrol", "ping", check=False).returncode == 0, "slurmctld", log / "slurmctld.log"
            )
        for node in NODES:
            if not _alive(self.root / f"run/slurmd-{node}.pid"):
                self._spawn(["slurmd", "-f", str(self.conf), "-N", node], log / f"slurmd-{node}.out")
        _wait_for(self._nodes_idle, "slurmd n1 and n2", log / "slurmd-n1.log")
        return self

    def down(self) -> None:
        """Cancels every job, then stops the daemons (the jobs' processes first, so none is left behind)."""
        if _alive(self.root / "run/slurmctld.pid"):
            self.run("scancel", "--full", "--user", "root", check=False)
            deadline = time.monotonic() + 30
            while self.run("squeue", "-h", check=False).stdout.strip() and time.monotonic() < deadline:
                time.sleep(0.5)
        for name in (*(f"slurmd-{node}" for node in NODES), "slurmctld", "munged"):
            _stop_pid(self.root / f"run/{name}.pid")

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(command, capture_output=True, text=True, env=self.env)
        assert not check or result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"
        return result

    def sbatch(self, *options: str, cwd: Path) -> str:
        """Submits pipelines/slurm/train.sbatch from `cwd` (the repository); the job id."""
        result = subprocess.run(
            ["sbatch", "--parsable", *options, "pipelines/slurm/train.sbatch"],
            cwd=cwd,
            capture_output=True,
            text=True,
            env=self.env,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict: JobState, ExitCode, Restarts, Reason, ..."""
        shown = self.run("scontrol", "show", "job", "--oneliner", job_id).stdout
        return dict(re.findall(r"(\w+)=(\S*)", shown))

    def wait(self, job_id: str, timeout: float) -> dict[str, str]:
        """The job once it has ended (any final state), within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while (job := self.job(job_id))["JobState"] not in FINISHED:
            assert time.monotonic() < deadline, f"job {job_id} still {job['JobState']} after {timeout:.0f} s"
            time.sleep(1)
        return job

    def _start_munge(self) -> None:
        munge = self.root / "munge"
        key = munge / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
            key.chmod(0o600)
        munge.chmod(0o700)
        if _alive(self.root / "run/munged.pid"):
            return
        subprocess.run(
            ["munged", "--force", f"--key-file={key}", f"--socket={munge / 'munge.socket'}",
             f"--pid-file={self.root / 'run/munged.pid'}", f"--log-file={self.root / 'log/munged.log'}",
             f"--seed-file={munge / 'munge.seed'}"],
            check=True, capture_output=True,
        )  # fmt: skip

    def _spawn(self, command: list[str], output: Path) -> None:
        with output.open("a") as log:
            subprocess.Popen([*command, "-D"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                             env=self.env)  # fmt: skip

    def _nodes_idle(self) -> bool:
        states = self.run("sinfo", "-h", "-N", "-o", "%N %t", check=False).stdout.split()
        return states[1::2] == ["idle", "idle"]

    def _write_conf(self) -> None:
        root = self.root
        ports = self.ports or {name: free_port() for name in ("slurmctld", *NODES)}
        nodes = "\n".join(f"NodeName={node} NodeAddr=127.0.0.1 Port={ports[node]} CPUs=2" for node in NODES)
        self.conf.write_text(f"""\
# A two-node cluster on one machine, written by tests/cluster.py.
ClusterName=cnnpipe
SlurmctldHost={socket.gethostname()}(127.0.0.1)
SlurmctldPort={ports["slurmctld"]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: also how long a requeued job waits before it starts again (120 s by default)
AuthInfo=socket={root}/munge/munge.socket,cred_expire=15
StateSaveLocation={root}/state
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdSpoolDir={root}/spool/%n
SlurmdPidFile={root}/run/slurmd-%n.pid
SlurmdLogFile={root}/log/slurmd-%n.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
KillWait=5
# sched_interval: a requeued job starts once its wait is over, not at the next minute's scheduling pass
SchedulerParameters=sched_interval=2
{nodes}
PartitionName=local Nodes={",".join(NODES)} Default=YES MaxTime=INFINITE State=UP
""")


@dataclass
class PostgresServer:
    """PostgreSQL 15 on 127.0.0.1 with one database, `mlflow`, as the README's team server uses.

    PostgreSQL refuses to run as root: it runs as the package's `postgres` user, in a folder of its own under
    /tmp (pytest's folders are closed to other users), removed by `down`.
    """

    port: int = field(default_factory=free_port)
    root: Path | None = None

    @property
    def uri(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/mlflow"

    def up(self) -> PostgresServer:
        self.root = Path(tempfile.mkdtemp(prefix="cnnpipe-postgres-"))
        shutil.chown(self.root, "postgres", "postgres")
        self._as_postgres("initdb", "-D", str(self.root / "data"), "--auth=trust", "-U", "postgres")
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        self._as_postgres("pg_ctl", "-D", str(self.root / "data"), "-l", str(self.root / "log"), "-o", options, "-w",
                          "start")  # fmt: skip
        self._as_postgres("createdb", "-h", "127.0.0.1", "-p", str(self.port), "mlflow")
        return self

    def down(self) -> None:
        if self.root is None:
            return
        if (self.root / "data/postmaster.pid").exists():
            self._as_postgres("pg_ctl", "-D", str(self.root / "data"), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.root)
        self.root = None

    def _as_postgres(self, program: str, *args: str) -> None:
        command = ["runuser", "-u", "postgres", "--", str(POSTGRES_BIN / program), *args]
        result = subprocess.run(command, capture_output=True, text=True, cwd=self.root)
        assert result.returncode == 0, f"{program}: {result.stdout[-1500:]}{result.stderr[-1500:]}"


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("up", "down") or len(argv) > 2:
        print("usage: python -m tests.cluster up|down [FOLDER]", file=sys.stderr)
        return 2
    root = Path(argv[1]) if len(argv) > 1 else DEFAULT_ROOT
    cluster = SlurmCluster(root.resolve())
    if argv[0] == "down":
        cluster.down()
        return 0
    if reason := why_not_installed(SLURM_PACKAGES, "/usr/sbin/slurmctld"):
        print(f"tests.cluster: {reason}", file=sys.stderr)
        return 1
    cluster.up()
    print(f"two nodes up: export SLURM_CONF={cluster.conf}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
