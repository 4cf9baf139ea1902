"""gunicorn in production: `gunicorn -c deploy/gunicorn.conf.py` (README: "Running in
production"). Every value can be overridden from the environment.

Sized for the run path: gthread workers (one process more than cores, a few threads
each: the gateway's calls spend most of their time waiting for PostgreSQL, and the extra
process keeps the cores busy while another one's threads wait on it or on the GIL;
bench/README.md, "Which gunicorn workers"), short timeouts (a call
is milliseconds; a worker stuck for 30 s is killed and replaced), keep-alive for the
gateway's pooled connections, and one JSON line per request in the access log.

It lives outside the Python packages: loading it sets PROMETHEUS_MULTIPROC_DIR, which
only a gunicorn master should do."""

import os
import shutil
import sys
import tempfile
from pathlib import Path

_cores = os.cpu_count() or 1

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
wsgi_app = "config.wsgi:application"
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", _cores + 1))
threads = int(os.environ.get("GUNICORN_THREADS", 4))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", 30))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", 30))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", 75))  # above a typical LB idle timeout
# Recycle workers now and then (jittered, so they do not all restart together).
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", 100_000))
max_requests_jitter = max_requests // 10
# Headers the load balancer sets are trusted from these addresses only.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
limit_request_line = 8190
proc_name = "billing"

# Metrics: each worker writes its numbers to files here, /metrics adds them all up
# (config/metrics.py). Set before any worker imports prometheus_client.
_metrics_dir_owned = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
if _metrics_dir_owned:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="billing-metrics-")


# Logs: the same JSON lines as the service's (config/logs.py), scrubbed the same way; the
# access line carries the request id the service answered with.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from prometheus_client import multiprocess  # noqa: E402 - after PROMETHEUS_MULTIPROC_DIR

from config.logs import logging_config  # noqa: E402 - needs the path above

logconfig_dict = logging_config(level=os.environ.get("LOG_LEVEL", "INFO"),
                                fmt=os.environ.get("LOG_FORMAT", "json"),
                                file=os.environ.get("LOG_FILE", ""))
accesslog = None  # gunicorn's own access handler; the line goes through logconfig_dict
access_log_format = '%(h)s "%(r)s" %(s)s %(B)s %(M)sms'
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


def on_starting(server):
    # Numbers a previous server left behind would be added to this one's.
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):
        if name.endswith(".db"):
            os.unlink(os.path.join(directory, name))
    server.log.info("workers=%s threads=%s metrics=%s", workers, threads, directory)


def child_exit(server, worker):
    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _metrics_dir_owned:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
