# Two commands set everything up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
JEMALLOC := /usr/lib/x86_64-linux-gnu/libjemalloc.so.2
# jemalloc makes CPU training about 1.4x faster; used when the library is installed.
TRAIN_ENV := $(if $(wildcard $(JEMALLOC)),LD_PRELOAD=$(JEMALLOC),)
PG_URL ?= postgres://postgres@127.0.0.1:5432/test
REDIS_URL ?= redis://127.0.0.1:6379/15

.PHONY: install demo demo-quick serve worker test test-fast test-sqlite test-pg lint format bench migrate

install: $(VENV)/.installed

# torch goes in its own step first so the resolver takes the pinned CPU/CUDA pair and nothing else.
$(VENV)/.installed: requirements.txt requirements-test.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -r requirements-test.txt
	touch $@

migrate: install
	$(PY) manage.py migrate --noinput

# `exec` hands the shell's process to the demo, so a SIGTERM or SIGHUP that make passes on reaches the demo itself,
# which then stops its web server and worker.
demo: install
	exec env $(TRAIN_ENV) $(PY) manage.py demo $(if $(filter quick,$(DEMO)),--quick,) --host $(HOST) --port $(PORT)

demo-quick: install
	exec env $(TRAIN_ENV) $(PY) manage.py demo --quick --host $(HOST) --port $(PORT)

serve: migrate
	$(PY) manage.py runserver $(HOST):$(PORT)

worker: migrate
	$(TRAIN_ENV) $(VENV)/bin/celery -A studyplatform worker --loglevel=INFO --concurrency=$${WORKER_CONCURRENCY:-1}

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: install lint test-sqlite test-pg

test-sqlite: install
	$(TRAIN_ENV) $(PY) -m pytest

# Quick local iteration on SQLite: everything but the tests marked slow (faults, fuzzing, load, the demo chain).
# `make test` and CI still run them all.
test-fast: install
	$(TRAIN_ENV) $(PY) -m pytest -m "not slow"

# The deployment path: PostgreSQL and a real Celery worker on Redis. Neural-network and browser tests do not touch
# the database layer and ran in the SQLite pass. Set REQUIRE_PG=1 (CI does) to fail when the servers are missing.
test-pg: install
	@if $(PY) scripts/services_up.py "$(PG_URL)" "$(REDIS_URL)"; then \
		DATABASE_URL="$(PG_URL)" CELERY_BROKER_URL="$(REDIS_URL)" $(PY) -m pytest -m "not ml and not browser"; \
	elif [ -n "$$REQUIRE_PG" ]; then echo "PostgreSQL/Redis not reachable and REQUIRE_PG is set"; exit 1; \
	else echo "SKIPPED the PostgreSQL/Redis pass: servers not reachable at $(PG_URL) / $(REDIS_URL)"; fi

bench: install
	$(TRAIN_ENV) $(PY) benchmarks/run_all.py
