# Two entry points (see README.md): `make run` and `make test`; and `make bench`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

# Tests run against the local PostgreSQL and Redis.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/billing
TEST_REDIS_URL ?= redis://127.0.0.1:6379/0
DEV_TOKEN ?= dev-internal-token
# The benchmark's own database (created if missing) and Redis index.
BENCH_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/billing_bench
BENCH_REDIS_URL ?= redis://127.0.0.1:6379/3
BENCH_ARGS ?=
# The scale step's prefilled database (kept between runs; empty: BENCH_DATABASE_URL's name
# + _scale, or _scale_quick with BENCH_ARGS=--quick).
BENCH_SCALE_DATABASE_URL ?=

.PHONY: setup run test prove lint bench bench-scale bench-profile worker beat lock

setup: $(VENV)/.installed

# Installs exactly what requirements/dev.lock pins, hash-checked; then the project itself.
$(VENV)/.installed: pyproject.toml requirements/dev.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes --no-deps -r requirements/dev.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# Re-pin requirements/*.lock from pyproject.toml's ranges (after adding or changing a
# dependency there, or to take upgrades): `make lock`, then `make setup`.
lock:
	[ -x $(BIN)/pip-compile ] || { $(PYTHON) -m venv $(VENV) && \
		$(BIN)/pip install --quiet 'pip-tools>=7.4,<8'; }
	mkdir -p requirements
	$(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
		--no-emit-index-url --no-emit-find-links --extra dev \
		--output-file requirements/dev.lock pyproject.toml
	$(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
		--no-emit-index-url --no-emit-find-links \
		--output-file requirements/prod.lock pyproject.toml

# The service on the embedded default: SQLite, in-process cache, eager tasks, demo data.
# Without STRIPE_SECRET_KEY, payments go to a local Stripe stand-in (billing/devstripe.py).
PORT ?= 8000
run: setup
	mkdir -p var
	env -u DATABASE_URL -u REDIS_URL DJANGO_DEBUG=1 BILLING_INTERNAL_TOKENS=$(DEV_TOKEN) \
		$(BIN)/python -m billing.devstripe --service-port $(PORT) -- \
		sh -c '$(BIN)/python manage.py migrate --noinput -v0 && \
		$(BIN)/python manage.py demo_seed && \
		echo "Service: http://127.0.0.1:$(PORT)/  (staff console: /admin/, internal API: /internal/v1/, its docs: /internal/v1/docs)" && \
		exec $(BIN)/python manage.py runserver 127.0.0.1:$(PORT)'

# The whole test suite against the local PostgreSQL and Redis, after the linters (ruff,
# and import-linter: the apps depend one way, see README "Layout"). Every process of the
# run logs to TEST_LOG; the audit then fails the run if a secret is in it.
TEST_LOG ?= var/log/test-run.jsonl
test: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	mkdir -p $(dir $(TEST_LOG)) && rm -f $(TEST_LOG)
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) \
		LOG_FILE=$(abspath $(TEST_LOG)) $(BIN)/pytest
	$(BIN)/python -m tests.ops.log_audit $(TEST_LOG)

# The reliability and security figures (tests/prove/figures.py): only the figures' tests,
# at full scale, then their table. `make prove PROVE_SCALE=ci` runs the counts CI runs
# (`make test` runs those too, and prints the same table at its end).
PROVE_SCALE ?= full
prove: setup
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) PROVE_SCALE=$(PROVE_SCALE) \
		$(BIN)/pytest -m prove -p no:cacheprovider

# The run-path benchmark against its baseline, under gunicorn (bench/README.md); about
# 4 minutes; results in bench/results/. E.g. `make bench BENCH_ARGS=--quick`.
bench: setup
	DATABASE_URL=$(BENCH_DATABASE_URL) REDIS_URL=$(BENCH_REDIS_URL) bench/run.sh $(BENCH_ARGS)

# The scale step (bench/README.md, "Scale"): the same service steps on the empty database
# and on one prefilled with 100,000 accounts and 10 million usage records (filled once,
# 15-40 minutes, then kept), the dashboard and ledger_check on it. BENCH_ARGS=--quick: 1,000
# accounts and 100,000 usage records.
bench-scale: setup
	DATABASE_URL=$(BENCH_DATABASE_URL) REDIS_URL=$(BENCH_REDIS_URL) bench/run.sh --scale \
		$(if $(BENCH_SCALE_DATABASE_URL),--scale-database-url $(BENCH_SCALE_DATABASE_URL)) \
		$(BENCH_ARGS)

# Where the time of one authorize + settle pair goes (bench/profiler.py).
bench-profile: setup
	DATABASE_URL=$(BENCH_DATABASE_URL) REDIS_URL=$(BENCH_REDIS_URL) bench/run.sh --profile $(BENCH_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

worker: setup
	$(BIN)/celery -A config worker -l info

beat: setup
	$(BIN)/celery -A config beat -l info
