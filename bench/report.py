"""Ratios to the baseline, the targets (met or not), and the printed report."""

from bench import pg_phases


def _get(tree: dict, *path):
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _ratio(numerator, denominator) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 2)


def ratios(results: dict, rates: list[int]) -> list[dict]:
    """The service against the baseline on the same machine, same server, same run.
    Above 1 for latency: slower than the empty view; below 1 for throughput: fewer."""
    empty = _get(results, "baseline", "empty_view") or {}
    service = _get(results, "service") or {}
    rows: list[dict] = []

    def add(name: str, numerator, denominator):
        rows.append({"name": name, "numerator": numerator, "denominator": denominator,
                     "ratio": _ratio(numerator, denominator)})

    for rate in rates:
        key, double = str(rate), str(2 * rate)
        for kind in ("authorize", "settle"):
            for p in ("p50", "p99"):
                add(f"{kind} alone {p} / empty view {p}, both at {rate}/s",
                    _get(service, kind, key, kind, "latency", f"{p}_ms"),
                    _get(empty, key, "requests", "latency", f"{p}_ms"))
        for kind in ("authorize", "settle"):
            add(f"{kind} p50 in pairs at {rate} pairs/s / empty view p50 at {2 * rate}/s"
                " (same request rate)",
                _get(service, "pairs", key, kind, "latency", "p50_ms"),
                _get(empty, double, "requests", "latency", "p50_ms"))
    empty_max = _get(empty, "max", "requests", "achieved_rate")
    add("authorize max throughput / empty view max throughput",
        _get(service, "authorize", "max", "authorize", "achieved_rate"), empty_max)
    add("settle max throughput / empty view max throughput",
        _get(service, "settle", "max", "settle", "achieved_rate"), empty_max)
    pairs_max = _get(service, "pairs", "max", "pairs", "achieved_rate")
    add("pairs max throughput x2 (requests) / empty view max throughput",
        None if pairs_max is None else 2 * pairs_max, empty_max)
    if rates:
        add(f"authorize alone p50 at {rates[0]}/s / psycopg UPDATE round trip p50",
            _get(service, "authorize", str(rates[0]), "authorize", "latency", "p50_ms"),
            _get(results, "baseline", "psycopg", "client_side_binding", "latency", "p50_ms"))
        # What a key's spend limit costs: the same pairs, the key with a limit or without.
        add(f"authorize p50 in pairs at {rates[0]} pairs/s, key with a spend limit / "
            "without",
            _get(service, "pairs_key_limit", str(rates[0]), "authorize", "latency", "p50_ms"),
            _get(service, "pairs", str(rates[0]), "authorize", "latency", "p50_ms"))
    limited_max = _get(service, "pairs_key_limit", "max", "pairs", "achieved_rate")
    add("pairs max throughput, key with a spend limit / without", limited_max, pairs_max)
    return rows


def _sustained(step: dict | None, offered: float) -> bool | None:
    """Every pair answered 200 and the achieved rate kept up with the offered one."""
    if not step or "pairs" not in step:
        return None
    pairs = step["pairs"]
    return (not pairs["errors"] and pairs["achieved_rate"] is not None
            and pairs["achieved_rate"] >= 0.99 * offered)


def _throughput_target(name: str, numerator, denominator, what: str) -> tuple:
    ratio = _ratio(numerator, denominator)
    measured = None if ratio is None else (
        f"{ratio:.2f} x ({what} {numerator:.0f}/s / empty view {denominator:.0f}/s)")
    return name, measured, ratio is not None and ratio >= 0.5


def _sustained_target(step: dict | None, offered: int, *, hot_account: bool,
                      stretch: bool = False) -> tuple:
    name = (f">= {offered:,} pairs/s sustained on one hot account (no errors, >= 99% of "
            "offered) with authorize and settle p99 <= 20 ms" + (" (stretch)" if stretch
                                                                  else ""))
    if not step or "pairs" not in step or not hot_account:
        return name, None, None
    p99 = max(step["authorize"]["latency"]["p99_ms"] or float("inf"),
              step["settle"]["latency"]["p99_ms"] or float("inf"))
    achieved = step["pairs"]["achieved_rate"]
    measured = (f"{(achieved or 0) / offered:.2f} x ({achieved or 0:.0f} of {offered} pairs/s"
                f"; errors: {step['pairs']['errors'] or 'none'}; worst p99 {p99:.1f} ms)")
    return name, measured, bool(_sustained(step, offered)) and p99 <= 20


def targets(results: dict, *, hot_account: bool) -> list[dict]:
    """The issue's targets, from one run. A latency target's measured value is in ms;
    a throughput target's is its ratio (and the figures it is made of)."""
    service = _get(results, "service") or {}
    at500 = _get(service, "pairs", "500")
    rows: list[dict] = []

    def add(name: str, measured, met: bool | None):
        rows.append({"target": name, "measured": measured,
                     "met": None if measured is None else met})

    empty_max = _get(results, "baseline", "empty_view", "max", "requests", "achieved_rate")
    add(*_throughput_target(
        "authorize max throughput >= 0.5 x the empty view's (same run)",
        _get(service, "authorize", "max", "authorize", "achieved_rate"), empty_max,
        "authorize"))
    add(*_throughput_target(
        "settle max throughput >= 0.5 x the empty view's (same run)",
        _get(service, "settle", "max", "settle", "achieved_rate"), empty_max, "settle"))
    pairs_max = _get(service, "pairs", "max", "pairs", "achieved_rate")
    add(*_throughput_target(
        "pairs max throughput x2 >= 0.5 x the empty view's (same run)",
        None if pairs_max is None else 2 * pairs_max, empty_max, "pairs x2"))
    add(*_sustained_target(_get(service, "pairs", "1000"), 1000, hot_account=hot_account))
    add(*_sustained_target(_get(service, "pairs", "1500"), 1500, hot_account=hot_account,
                           stretch=True))

    def latency_target(name: str, value, limit: float):
        add(name, None if value is None else f"{value:.3f} ms ({value / limit:.2f} x the "
            "limit)", value is not None and value <= limit)

    latency_target("authorize p50 <= 1.0 ms at 500 pairs/s offered",
                   _get(at500, "authorize", "latency", "p50_ms"), 1.0)
    latency_target("authorize p99 <= 5 ms at 500 pairs/s offered",
                   _get(at500, "authorize", "latency", "p99_ms"), 5.0)
    latency_target("settle p50 <= 1.5 ms at 500 pairs/s offered",
                   _get(at500, "settle", "latency", "p50_ms"), 1.5)
    pairs_max_step = _get(service, "pairs", "max", "pairs")
    if hot_account and pairs_max_step is not None:
        add("one hot account >= 500 pairs/s (max-throughput step, no errors)",
            pairs_max_step["achieved_rate"],
            not pairs_max_step["errors"] and (pairs_max_step["achieved_rate"] or 0) >= 500)
    else:
        add("one hot account >= 500 pairs/s", None, None)
    return rows


# --- printing ---------------------------------------------------------------------------------


def _ms(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _errors(errors: dict) -> str:
    return ", ".join(f"{k}:{v}" for k, v in errors.items()) or "none"


def step_line(label: str, kind: dict, *, unit: str = "/s") -> str:
    lat = kind["latency"]
    return (f"  {label:<34} p50 {_ms(lat['p50_ms']):>8}  p99 {_ms(lat['p99_ms']):>8}  "
            f"max {_ms(lat['max_ms']):>8} ms   achieved {kind['achieved_rate'] or 0:>8.1f}{unit}"
            f"   errors: {_errors(kind['errors'])}")


def cost_line(step: dict) -> str:
    cpu, gen = step["cpu"], step["generator"]
    busy = step.get("server_busy_after_s") or step.get("server_busy_after")
    after = f"   server still busy {busy} s after it" if busy else ""
    batches = step.get("batches") or {}
    group_commit = "".join(f"\n      {call}: {b['items_per_statement']:.2f} items per statement "
                           f"({b['items']} in {b['statements']})"
                           + (f", {b['statement_ms']:.2f} ms each" if "statement_ms" in b
                              else "")
                           for call, b in sorted(batches.items()))
    return (f"      cpu (cores): server {cpu['server_cores']:.2f}  postgres "
            f"{cpu['database_cores']:.2f}  redis {cpu['redis_cores']:.2f}  generator "
            f"{cpu['generator_cores']:.3f}  other {cpu['other_cores']:.2f}   "
            f"generator late p99 {_ms(gen['late_p99_ms'])} ms{after}{group_commit}")


def print_report(results: dict) -> None:
    out = print
    out("")
    out("=" * 100)
    server = results["config"]["server"]
    out(f"Billing run-path benchmark   {results['started_at']}   server: {server}")
    out("=" * 100)
    pg = _get(results, "baseline", "psycopg")
    if pg:
        out("Baseline (a): one psycopg conditional UPDATE ... RETURNING, autocommit, one "
            "connection")
        for variant in ("prepared", "client_side_binding"):
            row = pg[variant]
            lat = row["latency"]
            out(f"  {variant:<34} p50 {_ms(lat['p50_ms']):>8}  p99 {_ms(lat['p99_ms']):>8}  "
                f"max {_ms(lat['max_ms']):>8} ms   throughput {row['throughput_per_s']:>8.1f}/s")
        if "cpu" in pg:
            cpu = pg["cpu"]
            out(f"      cpu (cores): postgres {cpu['database_cores']:.2f}  client "
                f"{cpu['generator_cores']:.2f}  other {cpu['other_cores']:.2f}")
    empty = _get(results, "baseline", "empty_view") or {}
    if empty:
        out("Baseline (b): empty view GET /healthz, same server")
        for key, step in empty.items():
            label = "max (closed loop)" if key == "max" else f"offered {key}/s"
            if "error" in step:
                out(f"  {label:<34} failed: {step['error']}")
                continue
            out(step_line(label, step["requests"]))
            out(cost_line(step))
    service = results.get("service") or {}
    if "skipped" in service:
        out(f"Service: skipped: {service['skipped']}")
    for kind, title in (("pairs", "authorize + settle pairs"), ("authorize", "authorize alone"),
                        ("settle", "settle alone"),
                        ("pairs_key_limit", "authorize + settle pairs, key with a spend limit")):
        steps = service.get(kind)
        if not steps:
            continue
        unit = " pairs/s" if kind.startswith("pairs") else "/s"
        out(f"Service: {title}  (one account: {results['config']['accounts'] == 1})")
        for key, step in steps.items():
            label = "max (closed loop)" if key == "max" else f"offered {key}{unit}"
            if "error" in step:
                out(f"  {label:<34} failed: {step['error']}")
                continue
            if kind.startswith("pairs"):
                out(step_line(label + " pair", step["pairs"], unit=unit))
                out(step_line("    authorize", step["authorize"]))
                out(step_line("    settle", step["settle"]))
            else:
                out(step_line(label, step[kind]))
            out(cost_line(step))
    phases = _get(results, "database_phases_at_max", "database_phases")
    if phases is not None:
        if phases["shares"]:
            out(f"Database CPU by phase at the pairs maximum ({phases['samples']} perf "
                f"samples of {phases['processes']} PostgreSQL processes; a step of its own):")
            for line in pg_phases.phase_table(phases["shares"]):
                out(f"  {line}")
        else:
            out(f"Database CPU by phase at the pairs maximum: not measured ({phases['error']})")
    generator = results.get("generator_cost")
    if generator:
        out(f"Load generator: {generator['us_per_request']} us of CPU per request; "
            f"{generator['core_share_at_highest_rate']:.1%} of one core at "
            f"{generator['highest_rate']} requests/s offered")
    out("Ratios to the baseline")
    measured = [row for row in results.get("ratios", []) if row["ratio"] is not None]
    for row in measured:
        out(f"  {row['ratio']:>8.2f}  {row['name']}  ({row['numerator']} / "
            f"{row['denominator']})")
    if not measured:
        out("  none: the service was not measured")
    out("Targets")
    for row in results.get("targets", []):
        mark = {True: "MET    ", False: "NOT MET", None: "not measured"}[row["met"]]
        out(f"  [{mark}] {row['target']}: {row['measured']}")
    ledger = _get(results, "checks", "ledger_check")
    if ledger:
        out("Books after the run (manage.py ledger_check): "
            + ("balanced" if ledger["exit_code"] == 0 else "DIFFERENCES, see the results file"))
    for note in results.get("notes", []):
        out(f"Note: {note}")
    out(f"Results: {results.get('output_path')}")
