# Two entry points (see README.md): `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

# Tests run against the local PostgreSQL and Redis.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/billing
TEST_REDIS_URL ?= redis://127.0.0.1:6379/0
DEV_TOKEN ?= dev-internal-token

.PHONY: setup run test lint bench worker beat

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# The service on the embedded default: SQLite, in-process cache, eager tasks, demo data.
run: setup
	mkdir -p var
	env -u DATABASE_URL -u REDIS_URL DJANGO_DEBUG=1 BILLING_INTERNAL_TOKENS=$(DEV_TOKEN) \
		sh -c '$(BIN)/python manage.py migrate --noinput -v0 && \
		$(BIN)/python manage.py demo_seed && \
		echo "Service: http://127.0.0.1:8000/  (internal API: /internal/v1/, schema: /internal/v1/docs, staff: /admin/)" && \
		exec $(BIN)/python manage.py runserver 127.0.0.1:8000'

# The whole test suite against the local PostgreSQL and Redis.
test: setup
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) $(BIN)/pytest

lint: setup
	$(BIN)/ruff check .

worker: setup
	$(BIN)/celery -A config worker -l info

beat: setup
	$(BIN)/celery -A config beat -l info
