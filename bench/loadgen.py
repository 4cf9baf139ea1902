"""Builds the C load generator (loadgen.c) with the system C compiler and runs it.

C rather than a Python client: on a 2-core machine every microsecond the client spends is
taken from the server it measures. The generator does four system calls per request and
no parsing beyond the status line, Content-Length and a pair's hold id."""

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.stats import Record, records_parse

SOURCE = Path(__file__).with_name("loadgen.c")


class LoadgenError(RuntimeError):
    pass


def build(workdir: Path) -> Path:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise LoadgenError("no C compiler found: install gcc (apt-get install gcc)")
    binary = workdir / "loadgen"
    subprocess.run([compiler, "-O2", "-Wall", "-o", str(binary), str(SOURCE)], check=True)
    return binary


@dataclass
class Run:
    records: list[Record]
    summary: dict  # the generator's own: wall and CPU time, connections, windows

    @property
    def cpu_seconds(self) -> float:
        return (self.summary["cpu_user_ns"] + self.summary["cpu_sys_ns"]) / 1e9

    def cost(self) -> dict:
        """The generator's CPU: share of one core while it ran, and per request sent."""
        wall = self.summary["wall_ns"] / 1e9
        sent = self.summary["requests_sent"]
        return {
            "cpu_seconds": round(self.cpu_seconds, 3),
            "cpu_user_seconds": round(self.summary["cpu_user_ns"] / 1e9, 3),
            "cpu_sys_seconds": round(self.summary["cpu_sys_ns"] / 1e9, 3),
            "core_share": round(self.cpu_seconds / wall, 4) if wall else None,
            "us_per_request": round(self.cpu_seconds * 1e6 / sent, 1) if sent else None,
            "requests_sent": sent,
            "connections_opened": self.summary["conns_opened"],
            "stale_connection_retries": self.summary["retries"],
            "max_queued_for_connection": self.summary["max_pending"],
            "abandoned": self.summary["abandoned"],
        }


def _higher_priority() -> None:
    """The generator is light but must send on time: let it run first when it wakes up
    (where allowed), so that its own lateness does not count as the server's latency."""
    with contextlib.suppress(OSError):
        os.nice(-5)


def run(binary: Path, *, port: int, scenario: str, rate: float = 0, concurrency: int = 16,
        duration: float, warmup: float, path: str = "/healthz", token: str = "",
        api_keys: tuple[str, ...] = (), model: str = "", request_prefix: str = "bench",
        segment: int = 300, max_conns: int = 256, timeout: float = 10.0,
        give_up_backlog: int = 0) -> Run:
    """One step. rate > 0: open loop at that many units a second; else closed loop with
    `concurrency` units in flight."""
    args = [str(binary), "--scenario", scenario, "--port", str(port),
            "--duration", str(duration), "--warmup", str(warmup), "--path", path,
            "--segment", str(segment), "--max-conns", str(max_conns),
            "--timeout", str(timeout), "--prefix", request_prefix,
            "--give-up-backlog", str(give_up_backlog)]
    args += ["--rate", str(rate)] if rate > 0 else ["--concurrency", str(concurrency)]
    if model:
        args += ["--model", model]
    env = dict(os.environ, LOADGEN_TOKEN=token, LOADGEN_API_KEYS=",".join(api_keys))
    with tempfile.NamedTemporaryFile(suffix=".bin") as out:
        proc = subprocess.run([*args, "--out", out.name], env=env, capture_output=True,
                              text=True, preexec_fn=_higher_priority)
        if proc.returncode != 0:
            raise LoadgenError(f"loadgen exited {proc.returncode}: {proc.stderr.strip()}")
        data = Path(out.name).read_bytes()
    return Run(records=records_parse(data), summary=json.loads(proc.stdout))
