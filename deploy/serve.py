"""The service in production: `python deploy/serve.py` (README: "Running in production").
Every value can be overridden from the environment.

granian serves the WSGI application: its HTTP is Rust, so a request costs the worker a
quarter of what gunicorn's gthread worker cost it, and the run path serves 1.3x the
authorize+settle pairs with a fifth of the queueing at 500 pairs/s offered
(bench/README.md, "The production server"). Sized for the run path: one process per
core, 8 Python threads each (the gateway's calls spend much of their time waiting for
PostgreSQL, and group commit batches the calls in flight among one process's threads).

What the server does besides serving:
- the access log: one JSON line per request with the request id the service answered
  with, written by the service itself (config/logs.py, ACCESS_LOG), since granian's
  own access line knows neither the response's headers nor its size;
- workers recycled after SERVER_WORKER_LIFETIME_SECONDS (staggered: granian starts the
  new worker before stopping the old one) or when one grows past
  SERVER_WORKER_MAX_RSS_MB, and a worker that dies is replaced (granian stops the whole
  server instead when a worker dies within 5.5 s of its start: a crash loop);
- idle keep-alive connections kept SERVER_KEEPALIVE_SECONDS (75), above a load
  balancer's idle timeout;
- a request's time is bounded by the service's own timeouts on everything it waits on
  (PostgreSQL statement and lock timeouts, Redis, Stripe, mail); at shutdown workers
  get SERVER_GRACEFUL_TIMEOUT seconds to finish what they serve, then are killed;
- metrics: each worker writes its numbers to files in PROMETHEUS_MULTIPROC_DIR and
  /metrics adds them up (config/metrics.py); the directory is emptied at start and
  removed at exit when this script made it.

Run it under a supervisor that stops the whole process group (systemd's default
KillMode, a container): workers whose main process is killed outright keep serving.

It lives outside the Python packages: it sets PROMETHEUS_MULTIPROC_DIR, which only the
server's main process should do, before any worker imports prometheus_client."""

import multiprocessing
import os
import shutil
import sys
import tempfile
from pathlib import Path

from granian import Granian
from granian.constants import Interfaces
from granian.http import HTTP1Settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value.strip() else default
    except ValueError:
        sys.exit(f"{name} must be a whole number, not {value!r}")


def bind_address(text: str) -> tuple[str, int]:
    host, separator, port = text.rpartition(":")
    if not separator or not port.isdigit():
        sys.exit(f"SERVER_BIND must be host:port, not {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def main() -> None:
    os.chdir(ROOT)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("ACCESS_LOG", "1")
    metrics_dir_owned = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    if metrics_dir_owned:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="billing-metrics-")
    metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    # Only now: the config package loads prometheus_client, which reads the directory once.
    from config.logs import logging_config  # noqa: PLC0415

    host, port = bind_address(os.environ.get("SERVER_BIND", "0.0.0.0:8000"))
    workers = env_int("WEB_CONCURRENCY", os.cpu_count() or 1)
    threads = env_int("SERVER_THREADS", 8)
    lifetime = env_int("SERVER_WORKER_LIFETIME_SECONDS", 6 * 3600)
    max_rss = env_int("SERVER_WORKER_MAX_RSS_MB", 1024)
    log_level = os.environ.get("LOG_LEVEL", "INFO")
    # Workers start fresh rather than forked from this process: a forked worker inherits
    # this process's SIGTERM handler, and a stop that reaches it while it is still
    # loading the service is lost (it would start serving, then be killed mid-request).
    multiprocessing.set_start_method("spawn", force=True)
    server = Granian(
        "config.wsgi:application", interface=Interfaces.WSGI, address=host, port=port,
        workers=workers, blocking_threads=threads, runtime_threads=1,
        # Each thread keeps its database connection (and its prepared statements): an
        # idle thread is retired only after 10 minutes, the longest granian allows.
        blocking_threads_idle_timeout=600,
        # An idle keep-alive connection stays open longer than a load balancer's (60 s
        # on many), so the balancer never reuses one the server has just closed.
        http1_settings=HTTP1Settings(
            header_read_timeout=env_int("SERVER_KEEPALIVE_SECONDS", 75) * 1000),
        respawn_failed_workers=True, workers_lifetime=max(lifetime, 60) if lifetime else None,
        workers_max_rss=max_rss or None,
        workers_kill_timeout=env_int("SERVER_GRACEFUL_TIMEOUT", 30),
        log_level=log_level.lower(), log_access=False,
        log_dictconfig=logging_config(level=log_level,
                                      fmt=os.environ.get("LOG_FORMAT", "json"),
                                      file=os.environ.get("LOG_FILE", "")),
    )

    @server.on_startup
    def metrics_dir_empty() -> None:
        # Numbers a previous server left behind would be added to this one's.
        os.makedirs(metrics_dir, exist_ok=True)
        for name in os.listdir(metrics_dir):
            if name.endswith(".db"):
                os.unlink(os.path.join(metrics_dir, name))

    @server.on_shutdown
    def metrics_dir_remove() -> None:
        if metrics_dir_owned:
            shutil.rmtree(metrics_dir, ignore_errors=True)

    server.serve()


if __name__ == "__main__":
    main()
