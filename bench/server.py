"""The service under its production server (deploy/serve.py: granian) or, to compare,
under gunicorn, with production settings, and where the CPU went.

Production settings: DJANGO_DEBUG=0, PostgreSQL and Redis from DATABASE_URL / REDIS_URL,
persistent database connections (DATABASE_CONN_MAX_AGE, 600 s by default), no access log
(gunicorn: worker heartbeat files on tmpfs)."""

import http.client
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ServerConfig:
    """A worker set-up: gunicorn's `sync:4` (4 processes, one request each at a time) or
    `gthread:2x4` (2 processes of 4 threads, keep-alive connections), or production's
    `granian:2x4` (deploy/serve.py: 2 processes whose HTTP is served by Rust, 4 Python
    threads each)."""

    worker_class: str
    workers: int
    threads: int = 1

    @classmethod
    def parse(cls, text: str) -> "ServerConfig":
        match = re.fullmatch(r"(sync):(\d+)|(gthread|granian):(\d+)x(\d+)", text.strip())
        if not match:
            raise ValueError(f"server config {text!r}: expected sync:N, gthread:NxT or "
                             "granian:NxT")
        if match.group(1):
            return cls("sync", int(match.group(2)))
        return cls(match.group(3), int(match.group(4)), int(match.group(5)))

    @property
    def name(self) -> str:
        if self.worker_class == "sync":
            return f"sync:{self.workers}"
        return f"{self.worker_class}:{self.workers}x{self.threads}"

    def command(self, port: int) -> list[str]:
        if self.worker_class == "granian":
            # Production's own launcher, its settings but the access log.
            return [sys.executable, "deploy/serve.py"]
        return [sys.executable, "-m", "gunicorn", "config.wsgi:application",
                "--bind", f"127.0.0.1:{port}", "--worker-tmp-dir", "/dev/shm",
                "--timeout", "30", "--graceful-timeout", "5", *self.gunicorn_args()]

    def env(self, port: int) -> dict[str, str]:
        if self.worker_class == "granian":
            return {"SERVER_BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": str(self.workers),
                    "SERVER_THREADS": str(self.threads), "ACCESS_LOG": "0",
                    "LOG_LEVEL": "WARNING"}
        return {}

    def gunicorn_args(self) -> list[str]:
        args = ["--worker-class", self.worker_class, "--workers", str(self.workers)]
        if self.worker_class == "gthread":
            # Keep-alive longer than a gateway's pool idles, as behind a load balancer.
            args += ["--threads", str(self.threads), "--keep-alive", "75"]
        return args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get_status(port: int, path: str, timeout: float = 2.0) -> int | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


def _is_resource_tracker(pid: int) -> bool:
    try:
        return b"resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


class Server:
    def __init__(self, config: ServerConfig, *, database_url: str, redis_url: str,
                 token: str, log_path: Path):
        self.config = config
        self.port = free_port()
        self.token = token
        self.log_path = log_path
        # Metrics as in production (deploy/gunicorn.conf.py): every worker's numbers in
        # files here, so /metrics answers for the whole server (the steps' batch sizes).
        self.metrics_dir = tempfile.mkdtemp(prefix="bench-metrics-")
        self.env = dict(
            os.environ, DJANGO_DEBUG="0", DATABASE_URL=database_url, REDIS_URL=redis_url,
            BILLING_INTERNAL_TOKENS=token, DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
            DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost", PROMETHEUS_MULTIPROC_DIR=self.metrics_dir,
            **config.env(self.port),
        )
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> None:
        args = self.config.command(self.port)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(args, cwd=ROOT, env=self.env, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited {self.process.returncode}; see "
                                   f"{self.log_path}:\n{self.log_tail()}")
            if (len(self.worker_pids()) >= self.config.workers
                    and http_get_status(self.port, "/healthz") == 200):
                time.sleep(0.5)  # let the last workers finish importing the app
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the server did not come up in {timeout:.0f} s:\n"
                           f"{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def worker_pids(self) -> list[int]:
        if not self.process:
            return []
        pid = self.process.pid
        children = []
        # Every thread's children: a server may start its workers from any thread.
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                children += [int(p) for p in (task / "children").read_text().split()]
            except OSError:
                continue
        # Not multiprocessing's resource tracker, a child of granian's main process too.
        return [child for child in children if not _is_resource_tracker(child)]

    def pids(self) -> list[int]:
        return ([self.process.pid] if self.process else []) + self.worker_pids()

    def stop(self) -> None:
        try:
            self._stop()
        finally:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def _stop(self) -> None:
        if not self.process or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# --- CPU accounting -------------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (all its threads), or None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all cores, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


class CpuMeter:
    """CPU used during a step by each group of processes (the server, the database, Redis)
    and by the whole machine. What no group and not the generator used is `other_cores`:
    the kernel's own work, and anyone else's on a shared machine (a noisy neighbour)."""

    def __init__(self, groups: dict):
        self.groups = groups  # name -> callable giving the group's pids, asked at start and end

    def start(self) -> None:
        self.started = time.monotonic()
        self.machine0 = machine_cpu_ticks()
        self.before = {name: self._sample(pids()) for name, pids in self.groups.items()}

    @staticmethod
    def _sample(pids) -> dict[int, float]:
        return {pid: cpu for pid in pids if (cpu := process_cpu_seconds(pid)) is not None}

    @staticmethod
    def _used(before: dict[int, float], after: dict[int, float]) -> float:
        # A process born during the step (a database backend opened on first use) spent
        # all its CPU in it.
        return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())

    def stop(self, *, generator_cpu_seconds: float, requests: int) -> dict:
        wall = time.monotonic() - self.started
        busy1, total1 = machine_cpu_ticks()
        busy0, total0 = self.machine0
        machine = (busy1 - busy0) / max(total1 - total0, 1) * (os.cpu_count() or 1)
        result: dict = {"wall_seconds": round(wall, 3)}
        accounted = generator_cpu_seconds / wall
        for name, pids in self.groups.items():
            cores = self._used(self.before[name], self._sample(pids())) / wall
            accounted += cores
            result[f"{name}_cores"] = round(cores, 3)
            result[f"{name}_us_per_request"] = (round(cores * wall * 1e6 / requests, 1)
                                                if requests else None)
        result["generator_cores"] = round(generator_cpu_seconds / wall, 3)
        result["machine_busy_cores"] = round(machine, 3)
        result["other_cores"] = round(max(0.0, machine - accounted), 3)
        return result
