# medmesh — two commands do all set-up on a fresh machine:
#   make up     run the local network (chain, storage nodes, gateway under $(HOME_DIR)) until Ctrl-C
#   make test   run the test suite
# Both create .venv from pyproject.toml + requirements.lock on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOME_DIR ?= $(or $(MEDMESH_HOME),$(HOME)/.medmesh)
NODES  ?= 5

.PHONY: up down status test lint typecheck bench venv clean

ANVIL  := node_modules/.bin/anvil
# Debian's chromium for the portal's browser tests (Playwright drives it; it never downloads one)
CHROMIUM := /usr/bin/chromium
SUDO   := $(if $(filter 0,$(shell id -u)),,sudo)

$(ANVIL): package.json package-lock.json
	npm ci --ignore-scripts --no-audit --no-fund
	touch $(ANVIL)

$(CHROMIUM):
	$(SUDO) sh -c 'apt-get install -y -q chromium || (apt-get update -q && apt-get install -y -q chromium)'

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# in the foreground until Ctrl-C, which stops what it started (`medmesh up --help`)
up: $(STAMP) $(ANVIL)
	$(BIN)/medmesh --home $(HOME_DIR) up --nodes $(NODES)

down: $(STAMP)
	-$(BIN)/medmesh --home $(HOME_DIR) gateway down
	$(BIN)/medmesh --home $(HOME_DIR) devnet down
	$(BIN)/medmesh --home $(HOME_DIR) chain down

status: $(STAMP)
	-$(BIN)/medmesh --home $(HOME_DIR) chain status
	-$(BIN)/medmesh --home $(HOME_DIR) gateway status
	$(BIN)/medmesh --home $(HOME_DIR) devnet status

test: $(STAMP) $(ANVIL) $(CHROMIUM)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/python -m pytest

bench: $(STAMP) $(ANVIL)
	$(BIN)/python bench/storage.py
	$(BIN)/python bench/blockstore.py
	$(BIN)/python bench/ledger.py
	$(BIN)/python bench/fhir.py

clean:
	rm -rf $(VENV) node_modules build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
