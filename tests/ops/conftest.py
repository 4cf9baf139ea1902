"""Set-up for the operations tests: private PostgreSQL and Redis servers that a test may
stop and start (never the machine's shared ones), and the service as production runs it
(deploy/serve.py: granian and the service's own settings for it)."""

import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
from django.conf import settings

from tests.runpath import catalog, eager_tasks, fresh_caches

__all__ = ["catalog", "eager_tasks", "fresh_caches"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, *, timeout: float = 30.0, message: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {message or predicate}")


def _postgres_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise AssertionError(f"PostgreSQL's {name} is not installed (apt-get install postgresql)")
    return found[-1]


class PrivatePostgres:
    """A throwaway cluster in a temp directory on a free port, run as the unprivileged
    `postgres` user when the tests run as root (initdb refuses root)."""

    def __init__(self):
        self.port = free_port()
        self.directory = tempfile.mkdtemp(prefix="ops-pg-")
        self.data = os.path.join(self.directory, "data")
        self.log = os.path.join(self.directory, "server.log")
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user:
            shutil.chown(self.directory, self.user)
        self._run(_postgres_bin("initdb"), "-D", self.data, "-U", "postgres",
                  "--auth=trust", "-E", "UTF8", "--no-sync")

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", self.user, "--"] if self.user else []
        subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._run(_postgres_bin("pg_ctl"), "-D", self.data, "-l", self.log, "-w",
                  "-o", f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
                  "-c fsync=off", "start")

    def stop(self) -> None:
        self._run(_postgres_bin("pg_ctl"), "-D", self.data, "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


class PrivateRedis:
    def __init__(self):
        self.port = free_port()
        self.process = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        redis_server = shutil.which("redis-server")
        assert redis_server, "redis-server is not installed (apt-get install redis-server)"
        self.process = subprocess.Popen(
            [redis_server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        client = redis.Redis(port=self.port, socket_timeout=0.5)
        wait_for(lambda: _pings(client), timeout=15, message="the private Redis")

    def start_on_same_port(self) -> None:
        self.start()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=15)
            self.process = None


def _pings(client) -> bool:
    try:
        return client.ping()
    except Exception:
        return False


@pytest.fixture
def private_postgres():
    server = PrivatePostgres()
    server.start()
    yield server
    server.remove()


@pytest.fixture
def private_redis():
    server = PrivateRedis()
    server.start()
    yield server
    server.stop()


class ProductionServer:
    """`python deploy/serve.py` on a free port, its output (JSON lines) in log_path."""

    def __init__(self, *, env: dict, log_path: Path, workers: int = 2):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        # The test process's own metrics directory is not the server's (a test may
        # give it one).
        inherited = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        self.env = {**inherited, **env, "SERVER_BIND": f"127.0.0.1:{self.port}",
                    "WEB_CONCURRENCY": str(workers), "SERVER_THREADS": "2"}
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "deploy/serve.py"], cwd=settings.BASE_DIR,
                env=self.env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(self._up, timeout=60, message="the production server to answer")
            wait_for(lambda: len(self.worker_pids()) == workers, timeout=30,
                     message=f"{workers} workers")
        except BaseException:
            self.kill()  # a server that failed to start is not left running
            raise

    def _up(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError("the server exited:\n" + self.log_path.read_text())
        try:
            return requests.get(f"{self.url}/healthz", timeout=5).ok
        except requests.RequestException:
            return False

    def worker_pids(self) -> list[int]:
        """The workers: the main process's children started by multiprocessing's spawn
        (its resource tracker, also a child, is not one)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        workers = []
        with contextlib.suppress(OSError):
            for pid in children.read_text().split():
                with contextlib.suppress(OSError):
                    if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                        workers.append(int(pid))
        return workers

    def log_lines(self) -> list[dict]:
        lines = []
        for text in self.log_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(text))
        return lines

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        for pid in [*self.worker_pids(), self.process.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=10)


@pytest.fixture
def production_server(tmp_path):
    servers = []

    def start(**env) -> ProductionServer:
        server = ProductionServer(env=env, log_path=tmp_path / f"server-{len(servers)}.log")
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
