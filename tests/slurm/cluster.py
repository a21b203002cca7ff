"""A throwaway SLURM cluster on this machine, for tests/test_slurm.py.

`SlurmCluster(workdir).start()` starts munged, slurmctld and one slurmd per node (as children
of this process, in the foreground, so they are stopped by pid), waits until `sinfo` shows every
node idle, and `stop()` cancels what is left of the jobs and stops every daemon it started.

Nodes:
  - `<hostname -s>`, with the CPUs and memory `slurmd -C` reports: partition `debug` (default);
  - `localhost`: a second slurmd on the same machine (a node name that resolves here, like a
    real node's), only in partition `multi` (`<host>,localhost`), so that a job can ask for
    `--nodes 2` and its `srun` steps, torchrun agents and c10d rendezvous span two SLURM nodes.

State, spool, logs and the munge key live under `workdir`. The configuration itself must be at
the default path, /etc/slurm/slurm.conf (see slurm.conf.in): it is written there with a marker
line, never over a file without that marker, and removed by `stop()`. A file lock serializes
clusters of concurrent test sessions on one machine.

Run by hand (e.g. to try the profile):  python tests/slurm/cluster.py /tmp/slurm-cluster
"""
from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "slurm.conf.in"
CONF = Path("/etc/slurm/slurm.conf")
MARKER = "written by mobileclip-repro tests/slurm/cluster.py"
LOCK = Path("/run/lock/mobileclip-repro-slurm-test.lock")
SBIN = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "squeue", "scontrol", "sinfo", "scancel")
EXTRA_NODE = "localhost"


class ClusterUnavailable(Exception):
    """This machine cannot run the cluster (a reason to skip, not a failure)."""


def which(name: str) -> str | None:
    path = os.environ.get("PATH", "") + os.pathsep + os.pathsep.join(SBIN)
    return shutil.which(name, path=path)


def missing_commands() -> list[str]:
    return [name for name in DAEMONS + CLIENTS if which(name) is None]


def client_env(base: dict | None = None) -> dict:
    """An environment for SLURM clients and Snakemake: no inherited SLURM_* (a test run inside a
    SLURM job must not talk to that job's cluster), sbin on PATH."""
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SQUEUE_"))}
    env["PATH"] = env.get("PATH", "") + os.pathsep + os.pathsep.join(SBIN)
    return env


def free_ports(count: int) -> list[int]:
    ports, sockets = [], []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("", 0))
            sockets.append(sock)
            ports.append(sock.getsockname()[1])
    finally:
        for sock in sockets:
            sock.close()
    return ports


def hardware_line() -> str:
    """`slurmd -C`'s description of this machine: CPUs, sockets/cores/threads and RealMemory."""
    out = subprocess.run([which("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("NodeName="))
    return line.split(None, 1)[1]  # drop NodeName=<host>


def parse_record(line: str) -> dict:
    """One `Key=Value Key=Value` line (job completion log, scontrol -o)."""
    return dict(re.findall(r"(\w+)=(\S*)", line))


class SlurmCluster:
    def __init__(self, workdir: Path, timeout: float = 60.0):
        self.dir = Path(workdir)
        self.timeout = timeout
        self.host = socket.gethostname().split(".")[0]
        self.nodes = [self.host, EXTRA_NODE]
        self.processes: dict[str, subprocess.Popen] = {}
        self.env = client_env()
        self._lock = None
        self._wrote_conf = False

    # ----------------------------------------------------------------- start / stop
    def start(self) -> "SlurmCluster":
        if os.geteuid() != 0:
            raise ClusterUnavailable("the test SLURM cluster runs its daemons as root (SlurmUser=root)")
        if missing := missing_commands():
            raise ClusterUnavailable(f"SLURM/munge not installed (missing {', '.join(missing)}); "
                                     "run `bash tests/slurm/install.sh` as root")
        if self.host == EXTRA_NODE:
            raise ClusterUnavailable(f"this machine's hostname is {EXTRA_NODE!r}, the name of the emulated second node")
        self._acquire_lock()
        try:
            self._write_files()
            self._start_munged()
            self._start("slurmctld", [which("slurmctld"), "-D", "-f", str(CONF)])
            self._wait(lambda: "UP" in self.command("scontrol", "ping").stdout, "slurmctld to answer scontrol ping")
            for node in self.nodes:
                self._start(f"slurmd.{node}", [which("slurmd"), "-D", "-f", str(CONF), "-N", node])
            self._wait(self._all_idle, f"sinfo to show nodes {', '.join(self.nodes)} idle")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        try:
            if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
                self._cancel_all_jobs()
            # slurmds first (they stop their job steps' daemons), then the controller, then munge
            for name in [n for n in self.processes if n.startswith("slurmd.")] + ["slurmctld", "munged"]:
                process = self.processes.pop(name, None)
                if process is not None and process.poll() is None:
                    process.send_signal(signal.SIGTERM)
                    try:
                        process.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait(timeout=5)
        finally:
            if self._wrote_conf and CONF.exists() and MARKER in CONF.read_text().splitlines()[0]:
                CONF.unlink()
            self._wrote_conf = False
            if self._lock is not None:
                self._lock.close()
                self._lock = None

    def _acquire_lock(self, wait: float = 1800.0) -> None:
        LOCK.parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(LOCK, "w")
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another test session holds {LOCK} (its SLURM cluster) for {wait:.0f} s")
                time.sleep(2)

    def _write_files(self) -> None:
        if CONF.exists() and MARKER not in (CONF.read_text().splitlines() or [""])[0]:
            raise ClusterUnavailable(f"{CONF} exists and is not this test's: not overwriting a real SLURM "
                                     "configuration")
        for sub in ("state", "log", "munge", *(f"spool/{node}" for node in self.nodes)):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir / "munge", 0o700)
        key = self.dir / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o600)
        ctld_port, *node_ports = free_ports(1 + len(self.nodes))
        hardware = hardware_line()
        nodes = "\n".join(f"NodeName={node} NodeAddr=127.0.0.1 Port={port} {hardware} State=UNKNOWN"
                          for node, port in zip(self.nodes, node_ports))
        partitions = (f"PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP\n"
                      f"PartitionName=multi Nodes={','.join(self.nodes)} MaxTime=INFINITE State=UP")
        text = TEMPLATE.read_text()
        for field, value in {"MARKER": MARKER, "DIR": str(self.dir), "CONTROL_HOST": f"{self.host}(127.0.0.1)",
                             "CTLD_PORT": str(ctld_port), "NODES": nodes, "PARTITIONS": partitions}.items():
            text = text.replace(f"@{field}@", value)
        assert not re.search(r"@[A-Z_]+@", text), "unfilled template field"
        CONF.parent.mkdir(parents=True, exist_ok=True)
        CONF.write_text(text)
        self._wrote_conf = True

    def _start_munged(self) -> None:
        munge = self.dir / "munge"
        self._start("munged", [which("munged"), "--foreground", "--force", f"--key-file={munge / 'munge.key'}",
                               f"--socket={munge / 'munge.socket'}", f"--pid-file={munge / 'munged.pid'}",
                               f"--log-file={self.dir / 'log' / 'munged.log'}", f"--seed-file={munge / 'munged.seed'}"])
        self._wait(lambda: (munge / "munge.socket").exists(), "munged's socket")

    def _start(self, name: str, argv: list[str]) -> None:
        log = open(self.dir / "log" / f"{name}.out", "w")
        self.processes[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                env=self.env, start_new_session=True)
        log.close()

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode} while waiting for {what}\n"
                                       + self.logs())
            if ready():
                return
            time.sleep(0.2)
        raise TimeoutError(f"timed out after {self.timeout:.0f} s waiting for {what}\n" + self.logs())

    def _all_idle(self) -> bool:
        out = self.command("sinfo", "--noheader", "--Node", "--format=%N %t").stdout.split()
        states = dict(zip(out[::2], out[1::2]))
        return all(states.get(node) == "idle" for node in self.nodes)

    def _cancel_all_jobs(self) -> None:
        jobs = self.command("squeue", "--noheader", "--format=%i", "--states=PENDING,RUNNING,SUSPENDED,REQUEUED,"
                         "COMPLETING,CONFIGURING").stdout.split()
        if jobs:
            self.command("scancel", *jobs)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.command("squeue", "--noheader", "--format=%i").stdout.strip():
                time.sleep(0.5)

    # ----------------------------------------------------------------- queries
    def command(self, name: str, *args: str, check: bool = False) -> subprocess.CompletedProcess:
        """Run a SLURM client (squeue, scontrol, ...) against this cluster."""
        return subprocess.run([which(name), *args], capture_output=True, text=True, env=self.env, check=check,
                              timeout=30)

    def jobs(self) -> dict[str, dict]:
        """Every job slurmctld still knows (finished ones for MinJobAge), by id: state, comment, nodes, ..."""
        out = self.command("scontrol", "--oneliner", "show", "job", check=True).stdout
        records = [parse_record(line) for line in out.splitlines() if line.startswith("JobId=")]
        return {record["JobId"]: record for record in records}

    def completion_log(self) -> list[dict]:
        """The job completion log (jobcomp/filetxt): one record per job end, requeues included."""
        path = self.dir / "jobcomp.log"
        return [parse_record(line) for line in path.read_text().splitlines()] if path.exists() else []

    def logs(self, tail: int = 40) -> str:
        parts = []
        for path in sorted((self.dir / "log").glob("*")):
            lines = path.read_text(errors="replace").splitlines()[-tail:]
            parts.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(parts)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill PID` stops the cluster too
    cluster = SlurmCluster(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/mobileclip-slurm")).start()
    print(f"SLURM cluster up (state in {cluster.dir}, config {CONF}); Ctrl-C or kill {os.getpid()} stops it")
    print(cluster.command("sinfo").stdout, flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
