"""What the fault figures (4 and 11) share: the service under its production server
(deploy/serve.py, started by bench/server.py),
gateway callers that keep authorizing and settling through it and remember every call
that got no final answer, private PostgreSQL and Redis servers the test may stop, and
the books read back from a database."""

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import requests

from bench.server import Server, ServerConfig, free_port

ROOT = Path(__file__).resolve().parents[2]
FINAL = {200, 402, 403, 429}  # answers after which the gateway does not retry


def pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                   key=lambda path: int(path.split("/")[4]))
    assert found, f"{name} not found under /usr/lib/postgresql/*/bin"
    return found[-1]


def production_server(*, database_url: str, redis_url: str, token: str, log_path: Path,
                      config: str = "granian:2x4", **env) -> Server:
    server = Server(ServerConfig.parse(config), database_url=database_url,
                    redis_url=redis_url, token=token, log_path=log_path)
    server.env.update({name: str(value) for name, value in env.items()})
    return server


def server_kill(server: Server) -> None:
    """SIGKILL to the master and every worker at once: nothing gets to clean up."""
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait(timeout=10)


@dataclass
class Caller:
    key: str
    model: str
    usage: dict  # the settle body (the same on every retry)
    pace_seconds: float = 0.0  # between runs: keeps a free plan under its request rate


@dataclass
class Run:
    request_id: str
    caller: int
    hold_id: str | None = None
    authorize_answer: int | None = None
    settle_answer: int | None = None
    charged_usd: str | None = None

    @property
    def finished(self) -> bool:
        if self.authorize_answer in FINAL - {200}:
            return True
        return self.authorize_answer == 200 and self.settle_answer == 200


@dataclass
class Observation:
    at: float
    caller: int
    call: str
    seconds: float
    status: int | None  # None: no answer at all (connection refused or reset)
    json: bool
    code: str | None


@dataclass
class Gateway:
    """Threads that run authorize then settle through the service, as the inference
    gateway does, one thread per caller; every call observed."""

    port_of: object  # callable giving the service's current port
    token: str
    callers: list[Caller]
    prefix: str
    timeout: float = 20.0
    runs: dict[str, Run] = field(default_factory=dict)
    observations: list[Observation] = field(default_factory=list)

    def __post_init__(self):
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def call(self, session, caller: int, kind: str, path: str, body: dict):
        started = time.monotonic()
        try:
            response = session.post(f"http://127.0.0.1:{self.port_of()}{path}", json=body,
                                    timeout=self.timeout,
                                    headers={"Authorization": f"Bearer {self.token}"})
        except requests.RequestException:
            observation = Observation(started, caller, kind, time.monotonic() - started,
                                      None, False, None)
            response = None
        else:
            is_json = response.headers.get("Content-Type", "").startswith("application/json")
            code = response.json().get("code") if is_json and response.status_code >= 400 \
                else None
            observation = Observation(started, caller, kind, time.monotonic() - started,
                                      response.status_code, is_json, code)
        with self.lock:
            self.observations.append(observation)
        return response

    def attempt(self, session, run: Run) -> None:
        """One try at what the run still needs (authorize, then settle)."""
        caller = self.callers[run.caller]
        if run.authorize_answer != 200 and run.authorize_answer not in FINAL:
            response = self.call(session, run.caller, "authorize", "/internal/v1/authorize", {
                "api_key": caller.key, "model": caller.model, "request_id": run.request_id,
                "estimate": {"seconds": 60} if "inference_seconds" in caller.usage else {}})
            run.authorize_answer = response.status_code if response is not None else None
            if run.authorize_answer == 200:
                run.hold_id = response.json()["hold_id"]
        if run.authorize_answer == 200 and run.settle_answer != 200:
            response = self.call(session, run.caller, "settle",
                                 f"/internal/v1/holds/{run.hold_id}/settle", caller.usage)
            run.settle_answer = response.status_code if response is not None else None
            if run.settle_answer == 200:
                run.charged_usd = response.json()["charged_usd"]

    def _loop(self, index: int) -> None:
        session = requests.Session()
        n = 0
        while not self.stop_event.is_set():
            run = Run(request_id=f"{self.prefix}-{index}-{n}", caller=index)
            with self.lock:
                self.runs[run.request_id] = run
            self.attempt(session, run)
            n += 1
            if not run.finished:
                time.sleep(0.05)  # the service is down: don't spin
            time.sleep(self.callers[index].pace_seconds)

    def start(self) -> None:
        for index in range(len(self.callers)):
            thread = threading.Thread(target=self._loop, args=(index,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def unfinished(self) -> list[Run]:
        return [run for run in self.runs.values() if not run.finished]

    def retry_unfinished(self, *, deadline_seconds: float = 120) -> int:
        """Every run without a final answer retried (by request_id, then by hold) until
        it has one. Returns how many runs needed it."""
        pending = self.unfinished()
        session = requests.Session()
        deadline = time.monotonic() + deadline_seconds
        while (left := [run for run in pending if not run.finished]):
            assert time.monotonic() < deadline, f"{len(left)} runs never got an answer"
            for run in left:
                self.attempt(session, run)
            time.sleep(0.1)
        return len(pending)


def books(database_url: str, request_prefix: str) -> dict:
    """What the database holds for the runs: holds per request_id, usage records and
    usage ledger transactions per hold."""
    with psycopg.connect(database_url.replace("postgres://", "postgresql://")) as conn:
        rows = conn.execute("""
            SELECT h.request_id, h.id::text, h.status, h.charged_nanos,
                   (SELECT count(*) FROM metering_usagerecord u WHERE u.hold_id = h.id),
                   (SELECT COALESCE(sum(u.charged_nanos), 0) FROM metering_usagerecord u
                     WHERE u.hold_id = h.id)
              FROM metering_hold h WHERE h.request_id LIKE %s""",
                            [f"{request_prefix}-%"]).fetchall()
    return {"holds": rows}


def ledger_check(database_url: str, redis_url: str) -> subprocess.CompletedProcess:
    """`manage.py ledger_check` against that database, as an operator runs it."""
    env = dict(os.environ, DATABASE_URL=database_url, REDIS_URL=redis_url)
    return subprocess.run([str(ROOT / ".venv/bin/python"), "manage.py", "ledger_check"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


# --- Private servers the test may stop (never the machine's shared ones) -----------------


class PrivatePostgres:
    """A throw-away PostgreSQL cluster in a temporary directory on a free port, run as the
    `postgres` user when the test runs as root (initdb refuses root)."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="prove-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")

    def run(self, *args: str, timeout: float = 120, check: bool = True):
        command = list(args)
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              check=check)

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/billing"

    def init(self) -> None:
        self.run(pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                 "--no-sync", "-E", "UTF8")
        self.start()
        self.run(pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U",
                 "postgres", "billing")

    def start(self) -> None:
        self.run(pg_bin("pg_ctl"), "-D", str(self.data), "-w", "-t", "60", "-l",
                 str(self.dir / "server.log"), "-o",
                 f"-p {self.port} -h 127.0.0.1 -k {self.dir} -c fsync=off "
                 "-c max_connections=60", "start")

    def stop(self, mode: str = "fast") -> None:
        self.run(pg_bin("pg_ctl"), "-D", str(self.data), "-w", "-m", mode, "stop",
                 check=False)

    def copy_from(self, source_url: str) -> None:
        """The schema and data of another database (the test database), restored here."""
        dump = subprocess.run([pg_bin("pg_dump"), "--no-owner", "--no-privileges",
                               "-d", source_url.replace("postgres://", "postgresql://")],
                              capture_output=True, check=True, timeout=300).stdout
        subprocess.run([pg_bin("psql"), "-q", "-v", "ON_ERROR_STOP=1", "-d",
                        self.url.replace("postgres://", "postgresql://")],
                       input=dump, capture_output=True, check=True, timeout=300)

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivateRedis:
    def __init__(self):
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                import redis

                if redis.Redis(port=self.port, socket_timeout=0.5).ping():
                    return
            except Exception:  # not up yet
                time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def freeze(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.process.send_signal(signal.SIGCONT)
