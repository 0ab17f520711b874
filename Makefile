# civic-iot: the same targets locally and in CI (.ci/run).
PY := .venv/bin/python
STACK := bash deploy/stack.sh

.PHONY: demo test check unit install stack-up stack-down stack-status lint typecheck format

## README command 1: stack up, ingest + workers + alerts, simulated sensors, alerts out.
demo: stack-up
	.venv/bin/civic-iot demo

## README command 2: every test (unit, integration, e2e) against the real local stack.
# The unit tests need no services and run on every core; the integration and e2e tests
# share one stack (device ids, the broker) and run one at a time.
test: stack-up
	$(PY) -m pytest -n auto tests/unit
	$(PY) -m pytest tests --ignore=tests/unit

## Unit tests only: no services needed.
unit: install
	$(PY) -m pytest tests/unit

check: lint typecheck

lint: install
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

typecheck: install
	.venv/bin/mypy

format: install
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

install:
	$(STACK) install-python

stack-up:
	$(STACK) up

stack-down:
	$(STACK) down

stack-status:
	$(STACK) status
