"""The figures of the reliability and security suite (`make prove`): what each proves,
how a test records its part, and the table printed at the end of a run.

A test joins a figure with `@pytest.mark.figure(N, tried=..., counts=...)` (the marker
also selects it for `make prove`, `-m prove`); it may add what it measured at run time
through the `figure` fixture. Each part's PASS or FAIL is the test's own outcome."""

import json
import os
import textwrap
from dataclasses import asdict, dataclass, field
from pathlib import Path

TITLES = {
    1: "Overdraft race",
    2: "Concurrency cap under mixed operations",
    3: "A gateway that vanishes mid-run",
    4: "SIGKILL under load, restart, retries",
    5: "Duplicate settles",
    6: "Stripe webhooks",
    7: "Auto-reload",
    8: "Credit expiry",
    9: "Conservation (seeded state machine)",
    10: "Fuzzing against the served schema",
    11: "Faults: PostgreSQL and Redis",
    12: "Security",
}

# "ci" (the default, what `make test` runs) or "full" (`make prove`).
SCALE = os.environ.get("PROVE_SCALE", "ci")
if SCALE not in ("ci", "full"):
    raise ValueError(f"PROVE_SCALE={SCALE!r}: expected ci or full")


def scaled(ci: int, full: int) -> int:
    """A count: the small one in CI, the full one on demand."""
    return full if SCALE == "full" else ci


def report_path(rootdir: Path) -> Path:
    return Path(os.environ.get("PROVE_REPORT", rootdir / "var" / "prove-figures.json"))


@dataclass
class Part:
    figure: int
    test: str
    tried: str
    counts: str = ""
    measured: str = ""
    outcome: str = "NOT RUN"  # PASS, FAIL, PENDING
    pending: str = ""
    case: str = ""  # a parametrized test's case; its cases share one line of the table

    def add(self, *, counts: str | None = None, measured: str | None = None) -> None:
        if counts is not None:
            self.counts = counts
        if measured is not None:
            self.measured = measured

    def mark_pending(self, reason: str) -> None:
        """This part cannot be shown yet (its feature is not on this branch): the table
        says so, loudly, instead of passing."""
        self.pending = reason


@dataclass
class Run:
    scale: str = SCALE
    parts: list[Part] = field(default_factory=list)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"scale": self.scale,
                                    "parts": [asdict(p) for p in self.parts]}, indent=1))

    @classmethod
    def load(cls, path: Path) -> "Run":
        data = json.loads(path.read_text())
        return cls(scale=data["scale"], parts=[Part(**p) for p in data["parts"]])


def figure_outcome(parts: list[Part]) -> str:
    outcomes = {p.outcome for p in parts}
    if not parts:
        return "NOT RUN"
    for worst in ("FAIL", "NOT RUN", "PENDING"):
        if worst in outcomes:
            return worst
    return "PASS"


def merged(parts: list[Part]) -> list[Part]:
    """A parametrized test's cases as one part: every case named, the worst outcome."""
    groups: dict[tuple, list[Part]] = {}
    for part in parts:
        groups.setdefault((part.test.split("[")[0], part.tried), []).append(part)
    result = []
    for group in groups.values():
        first = group[0]
        if len(group) == 1 and not first.case:
            result.append(first)
            continue
        cases = ", ".join(p.case for p in group)
        outcome = next((o for o in ("FAIL", "NOT RUN", "PENDING", "PASS")
                        if o in {p.outcome for p in group}), "PASS")
        result.append(Part(figure=first.figure, test=first.test.split("[")[0],
                           tried=f"{first.tried} [{len(group)} cases: {cases}]",
                           counts=first.counts, measured=first.measured, outcome=outcome,
                           pending=first.pending))
    return result


def table(run: Run, width: int = 118) -> str:
    """One row per figure; its parts below it, each with what was tried, the counts, what
    was measured and its outcome."""
    lines = [f"Reliability and security figures (PROVE_SCALE={run.scale})", "=" * width]
    text_width = width - 14
    for number, title in TITLES.items():
        parts = merged([p for p in run.parts if p.figure == number])
        outcome = figure_outcome(parts)
        lines.append(f"{number:>2}  {title:<{width - 14}}  {outcome:>8}")
        for part in parts:
            label = part.outcome if not part.pending else "PENDING"
            body = part.tried
            if part.counts:
                body += f" | {part.counts}"
            if part.measured:
                body += f" | measured: {part.measured}"
            if part.pending:
                body += f" | pending: {part.pending}"
            wrapped = textwrap.wrap(body, text_width) or [""]
            lines.append(f"    - {wrapped[0]:<{text_width}}  {label:>6}")
            lines.extend(f"      {line}" for line in wrapped[1:])
        lines.append("-" * width)
    totals = [figure_outcome([p for p in run.parts if p.figure == n]) for n in TITLES]
    lines.append("  ".join(f"{name}: {totals.count(name)}"
                           for name in ("PASS", "FAIL", "PENDING", "NOT RUN")))
    return "\n".join(lines)


if __name__ == "__main__":  # python -m tests.prove.figures [report.json]
    import sys

    path = Path(sys.argv[1]) if len(sys.argv) > 1 else report_path(Path.cwd())
    print(table(Run.load(path)))
