"""The numbers of a step, from the load generator's per-request records. Pure Python, no
I/O beyond reading the records file, so that it can be checked on its own.

Latency is counted from the time a request was due (open loop: its slot in the schedule),
not from when it was sent, so queueing in front of a slow server shows up in it. It is
reported for the requests that succeeded (2xx); the others are counted by status."""

import math
import struct
from collections import Counter
from dataclasses import dataclass

RECORD = struct.Struct("<BBHI5q")  # see record_t in loadgen.c

KIND_GET, KIND_AUTHORIZE, KIND_SETTLE = 1, 2, 3
PSEUDO_STATUS = {0: "connection_error", 1: "timeout", 2: "bad_response"}
NS_PER_MS = 1_000_000


@dataclass(frozen=True, slots=True)
class Record:
    kind: int
    measured: bool
    status: int
    unit: int
    sched_ns: int   # due (open loop) or started (closed loop)
    issue_ns: int   # when the generator got round to it
    sent_ns: int    # written to a connection
    done_ns: int    # whole response read
    origin_ns: int  # due time of the unit (a pair's settle: its authorize's)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def latency_ns(self) -> int:
        return self.done_ns - self.sched_ns


def records_parse(data: bytes) -> list[Record]:
    if len(data) % RECORD.size:
        raise ValueError(f"records file of {len(data)} bytes is not a whole number of records")
    return [Record(kind, bool(measured), *rest)
            for kind, measured, *rest in RECORD.iter_unpack(data)]


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least p% of values at or below
    it (p100 is the maximum). Never interpolates, so it is always an observed value."""
    if not sorted_values:
        return None
    if not 0 < p <= 100:
        raise ValueError("p must be in (0, 100]")
    rank = math.ceil(p / 100 * len(sorted_values))
    return sorted_values[max(rank, 1) - 1]


def latency_summary(values_ns: list[int]) -> dict:
    """p50/p90/p99/p99.9/max and mean, in milliseconds."""
    values = sorted(values_ns)
    summary: dict = {"count": len(values)}
    for name, p in (("p50", 50), ("p90", 90), ("p99", 99), ("p999", 99.9), ("max", 100)):
        value = percentile(values, p)
        summary[f"{name}_ms"] = None if value is None else round(value / NS_PER_MS, 4)
    summary["mean_ms"] = round(sum(values) / len(values) / NS_PER_MS, 4) if values else None
    return summary


def status_label(status: int) -> str:
    return PSEUDO_STATUS.get(status, str(status))


def status_counts(records: list[Record]) -> dict[str, int]:
    counts = Counter(status_label(r.status) for r in records)
    return dict(sorted(counts.items()))


def errors_by_status(records: list[Record]) -> dict[str, int]:
    return status_counts([r for r in records if not r.ok])


def windows_seconds(windows: list[list[int]]) -> float:
    return sum(max(0, end - start) for start, end in windows) / 1e9


def rate(count: int, seconds: float) -> float | None:
    return round(count / seconds, 1) if seconds > 0 else None


def generator_lateness(records: list[Record]) -> dict:
    """How late the generator itself was in sending what was due (its own share of the
    latency), and how long requests waited for a free connection after that."""
    late = sorted(r.issue_ns - r.sched_ns for r in records)
    wait = sorted(r.sent_ns - r.issue_ns for r in records if r.sent_ns >= r.issue_ns)
    ms = lambda v: None if v is None else round(v / NS_PER_MS, 4)  # noqa: E731
    return {"late_p99_ms": ms(percentile(late, 99)), "late_max_ms": ms(percentile(late, 100)),
            "connection_wait_p99_ms": ms(percentile(wait, 99))}


def kind_summary(records: list[Record], seconds: float) -> dict:
    """One kind of request: latency of the successes, achieved rate, errors by status."""
    ok = [r for r in records if r.ok]
    return {"requests": len(records), "ok": len(ok), "achieved_rate": rate(len(ok), seconds),
            "latency": latency_summary([r.latency_ns for r in ok]),
            "errors": errors_by_status(records)}


def step_summary(records: list[Record], *, scenario: str, windows: list[list[int]],
                 abandoned: int = 0) -> dict:
    """The measured part of a step. `scenario` is the load generator's: get, pair,
    authorize or settle. A pair's rate and latency are those of whole pairs (authorize due
    to settle answered); its authorize and settle are also summarised on their own.
    `abandoned`: units never sent because the server had fallen too far behind; they
    count as errors."""
    measured = [r for r in records if r.measured]
    seconds = windows_seconds(windows)
    summary: dict = {"measured_seconds": round(seconds, 3)}
    if scenario == "pair":
        authorizes = [r for r in measured if r.kind == KIND_AUTHORIZE]
        settles = [r for r in measured if r.kind == KIND_SETTLE]
        settled_ok = [r for r in settles if r.ok]
        summary["pairs"] = {
            "requests": len(authorizes), "ok": len(settled_ok),
            "achieved_rate": rate(len(settled_ok), seconds),
            "latency": latency_summary([r.done_ns - r.origin_ns for r in settled_ok]),
            "errors": errors_by_status(authorizes + settles),
        }
        summary["authorize"] = kind_summary(authorizes, seconds)
        # A settle is due the moment its authorize was answered.
        summary["settle"] = kind_summary(settles, seconds)
        first_requests = authorizes
        main = summary["pairs"]
    else:
        kind = {"get": KIND_GET, "authorize": KIND_AUTHORIZE, "settle": KIND_SETTLE}[scenario]
        mine = [r for r in measured if r.kind == kind]
        main = summary[scenario if scenario != "get" else "requests"] = kind_summary(mine,
                                                                                      seconds)
        first_requests = mine
    if abandoned:
        main["errors"]["abandoned"] = abandoned
    summary["generator"] = generator_lateness(first_requests)
    summary["statuses_all"] = status_counts(records)  # with warm-up and unmeasured phases
    return summary
