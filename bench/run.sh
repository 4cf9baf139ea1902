#!/usr/bin/env bash
# The run-path benchmark in one command (bench/README.md). Arguments go to `python -m bench`;
# DATABASE_URL and REDIS_URL name the benchmark's own database and Redis index.
set -euo pipefail
cd "$(dirname "$0")/.."

# The load generator is C, compiled at each run.
if ! command -v cc >/dev/null 2>&1 && ! command -v gcc >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing gcc (Debian package) for the load generator"
    apt-get update -qq && apt-get install -y -qq gcc >/dev/null
  else
    echo "The load generator needs a C compiler: apt-get install gcc" >&2
    exit 1
  fi
fi

# The profile samples the database backend with perf (bench/pg_phases.py); without it the
# profile says so and leaves that table out.
if [[ " $* " == *" --profile "* ]] && ! command -v perf >/dev/null 2>&1 \
    && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing perf (Debian package linux-perf) for the profile's database table"
  apt-get update -qq && apt-get install -y -qq linux-perf >/dev/null || true
fi

if command -v pg_isready >/dev/null 2>&1 && ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  echo "PostgreSQL is not reachable on 127.0.0.1:5432 (see .ci/run for how CI starts it)" >&2
  exit 1
fi
if command -v redis-cli >/dev/null 2>&1 && ! redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then
  echo "Redis is not reachable on 127.0.0.1:6379 (see .ci/run for how CI starts it)" >&2
  exit 1
fi

[ -f .venv/.installed ] || make setup
exec .venv/bin/python -m bench "$@"
