# Cohort: the two commands are `make up` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Keystone (for the Keystone/RBAC tests) and tempest (for the upstream API suite) have
# dependencies of their own that clash with Cohort's: each lives in a virtualenv of its own.
KEYSTONE_VENV := .venv-keystone
KEYSTONE_STAMP := $(KEYSTONE_VENV)/.installed
# BPF programs the agents load into their namespaces, built for this machine's kernel headers.
BPF_OBJECTS := cohort/agents/amphora/second_chance.bpf.o

.PHONY: install system-deps up down test test-unit test-tempest lint bench clean

install: system-deps $(STAMP) $(KEYSTONE_STAMP) $(BPF_OBJECTS)

system-deps:
	@scripts/install-system-deps.sh

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install -q --upgrade pip >/dev/null
	@$(BIN)/pip install -q -e '.[test]'
	@touch $(STAMP)

$(KEYSTONE_STAMP):
	@test -x $(KEYSTONE_VENV)/bin/python || $(PYTHON) -m venv $(KEYSTONE_VENV)
	@$(KEYSTONE_VENV)/bin/pip install -q --upgrade pip >/dev/null
	@$(KEYSTONE_VENV)/bin/pip install -q 'keystone>=26' 'gunicorn>=22'
	@touch $(KEYSTONE_STAMP)

%.bpf.o: %.bpf.c | system-deps
	@clang -O2 -g -Wall -Werror -target bpf -I/usr/include/$$(clang -print-multiarch) -c $< -o $@

up: install
	@$(BIN)/cohort up --drivers local --demo --detach

down:
	@$(BIN)/cohort down

test: install
	@$(BIN)/pytest -q -p no:cacheprovider --durations=25 tests

TEMPEST_VENV := .venv-tempest
TEMPEST_STAMP := $(TEMPEST_VENV)/.installed

$(TEMPEST_STAMP):
	@test -x $(TEMPEST_VENV)/bin/python || $(PYTHON) -m venv $(TEMPEST_VENV)
	@$(TEMPEST_VENV)/bin/pip install -q --upgrade pip >/dev/null
	@$(TEMPEST_VENV)/bin/pip install -q 'tempest>=40' 'octavia-tempest-plugin>=2.8'
	@touch $(TEMPEST_STAMP)

# Octavia's upstream API suite (octavia-tempest-plugin tests.api.v2) through a local Keystone.
test-tempest: install $(TEMPEST_STAMP)
	@$(BIN)/python -m tests.tempest.run

test-unit: install
	@$(BIN)/pytest -q tests/unit

lint: install
	@$(BIN)/ruff check cohort tests bench
	@$(BIN)/mypy cohort bench
	@$(BIN)/lint-imports --no-cache

bench: install
	@$(BIN)/python -m bench.api
	@$(BIN)/python -m bench.amphora
	@$(BIN)/python -m bench.active_active

clean:
	rm -f $(BPF_OBJECTS)
	rm -rf $(VENV) $(KEYSTONE_VENV) .venv-tempest .mypy_cache .ruff_cache
