"""Where PostgreSQL's CPU goes, by phase of statement processing: `perf` samples of the
call stacks of one backend (the profile's) or of every process of the database (make
bench's extra pairs maximum) while they serve the run path, each sample counted for the
first phase (in PHASES' order) whose PostgreSQL function is on its stack.

auto_explain (bench/profiler.py) times what the plans do: reads, writes, nested
statements. It cannot see what happens around them: setting each plan up and tearing it
down, CHECK constraints, the deferred ledger-balance triggers and the WAL flush at
commit, the protocol. The samples see everything the backend runs on a CPU.

Needs `perf` (Debian: linux-perf) and the right to sample another process (root, or
kernel.perf_event_paranoid <= 1 for the same user); without them the profile and the
report say why and go on without this table."""

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

# (phase, PostgreSQL functions that mark it), first match wins: a phase nested inside
# another (an index insert inside a statement's execution) comes before it.
PHASES = (
    ("commit: deferred ledger-balance triggers", ("AfterTriggerFireDeferred",)),
    ("commit: WAL flush (fdatasync)", ("XLogFlush",)),
    ("commit: the rest", ("CommitTransactionCommand",)),
    ("foreign-key checks", ("RI_FKey_check_ins", "RI_FKey_check_upd", "RI_FKey_check")),
    ("CHECK constraints (parsed and prepared per statement)", ("ExecConstraints",)),
    ("index inserts", ("ExecInsertIndexTuples",)),
    ("plan set-up (executor start)", ("standard_ExecutorStart",)),
    ("plan tear-down (executor end)", ("standard_ExecutorEnd",)),
    ("statement finish (CTE writes completed, triggers queued)", ("standard_ExecutorFinish",)),
    ("planning", ("GetCachedPlan", "BuildCachedPlan", "pg_plan_queries")),
    ("execution (scans, writes, expressions)", ("standard_ExecutorRun",)),
    ("protocol (parse, bind, client I/O)", ("exec_parse_message", "exec_bind_message",
                                            "ReadCommand", "pq_getbyte", "pq_flush",
                                            "secure_read", "secure_write")),
)
OTHER = "other (memory, the kernel, unresolved)"
SAMPLE_HZ = 2000

_OFFSET = re.compile(r"\+0x[0-9a-f]+$")


def stacks_parse(script: str) -> list[list[str]]:
    """`perf script` output: one call stack per sample, innermost function first."""
    stacks = []
    for block in script.split("\n\n"):
        lines = block.strip().splitlines()
        frames = []
        for line in lines[1:]:  # the first line is the sample's header
            parts = line.split(None, 1)
            if len(parts) == 2:
                frames.append(_OFFSET.sub("", parts[1].split(" (", 1)[0].strip()))
        if frames:
            stacks.append(frames)
    return stacks


def phase_of(frames: list[str]) -> str:
    on_stack = set(frames)
    for phase, functions in PHASES:
        if on_stack.intersection(functions):
            return phase
    return OTHER


def phase_shares(stacks: list[list[str]]) -> dict[str, float]:
    """Each phase's share of the samples, largest first."""
    counts = Counter(phase_of(frames) for frames in stacks)
    total = sum(counts.values())
    return {phase: count / total for phase, count in counts.most_common()} if total else {}


def unavailable() -> str | None:
    """Why PostgreSQL's processes cannot be sampled here, or None."""
    if shutil.which("perf") is None:
        return "perf not found (Debian package linux-perf)"
    paranoid = Path("/proc/sys/kernel/perf_event_paranoid")
    if os.geteuid() != 0 and paranoid.exists() and int(paranoid.read_text()) > 1:
        return "sampling another process needs root or kernel.perf_event_paranoid <= 1"
    return None


def phase_table(shares: dict[str, float], *, us_total: float | None = None) -> list[str]:
    """The phases as a Markdown table: each one's share and, given the CPU they share
    out (us_total), its microseconds."""
    if us_total is None:
        rows = [f"| {phase} | {100 * share:.1f}% |" for phase, share in shares.items()]
        return ["| database, by phase | share |", "|---|---:|", *rows]
    rows = [f"| {phase} | {100 * share:.1f}% | {share * us_total:.0f} |"
            for phase, share in shares.items()]
    return ["| database backend, one pair | share | us |", "|---|---:|---:|", *rows]


class BackendSampler:
    """`with BackendSampler(pids) as sampler: ...` samples those processes (one pid or
    several) meanwhile; then `sampler.shares` (phase: share of samples) and
    `sampler.samples`, or `sampler.error`."""

    def __init__(self, pids: int | Sequence[int]) -> None:
        self.pids = [pids] if isinstance(pids, int) else list(pids)
        self.shares: dict[str, float] = {}
        self.samples = 0
        self.error: str | None = unavailable() or (None if self.pids else "no process")

    def __enter__(self) -> "BackendSampler":
        if self.error:
            return self
        self._dir = tempfile.TemporaryDirectory(prefix="bench-perf-")
        self._data = Path(self._dir.name) / "perf.data"
        self._record = subprocess.Popen(
            ["perf", "record", "-F", str(SAMPLE_HZ), "-g", "-p",
             ",".join(str(pid) for pid in self.pids),
             "-o", str(self._data)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)  # perf attaches before the first statement is sampled
        if self._record.poll() is not None:
            self.error = f"perf record failed: {self._record.stderr.read().strip()[-300:]}"
            self._dir.cleanup()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.error:
            return
        try:
            self._record.send_signal(signal.SIGINT)
            _, stderr = self._record.communicate(timeout=60)
            if self._record.returncode not in (0, -signal.SIGINT):
                self.error = f"perf record failed: {stderr.strip()[-300:]}"
                return
            script = subprocess.run(["perf", "script", "-i", str(self._data)],
                                    capture_output=True, text=True, check=False)
            if script.returncode != 0:
                self.error = f"perf script failed: {script.stderr.strip()[-300:]}"
                return
            stacks = stacks_parse(script.stdout)
            self.samples = len(stacks)
            self.shares = phase_shares(stacks)
            if not stacks:
                self.error = "perf recorded no samples"
        finally:
            self._dir.cleanup()

    def as_result(self) -> dict:
        return {"shares": self.shares, "samples": self.samples, "processes": len(self.pids),
                "error": self.error}
