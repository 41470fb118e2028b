# mail-runbook: `make demo` and `make test` are all a newcomer needs (as root, on Debian).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian packages the tests need: mmdebstrap builds the lab base image, systemd-nspawn boots
# lab hosts, chromium runs the browser test (never a downloaded browser).
LAB_PACKAGES := mmdebstrap systemd-container iproute2 openssh-client chromium
PYTEST_ARGS ?=

.PHONY: help venv system-deps test lint unit browser demo lab notebooks bench bench-fleet clean
PARAMS ?=

help:
	@echo "make demo   boot a lab host and run the runbook against it (root)"
	@echo "make test   lint and the whole test suite (root: the lab tests boot real hosts)"
	@echo "make lab    JupyterLab on loopback with the project's kernel"

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

system-deps:
	@missing=""; for p in $(LAB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "the lab needs root to install:$$missing (sudo make ...)"; exit 1; fi; \
	  echo "installing:$$missing"; apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

lint: venv
	$(BIN)/ruff check .

test: venv system-deps lint
	$(BIN)/pytest $(PYTEST_ARGS)

unit: venv
	$(BIN)/pytest -m "not lab and not browser" $(PYTEST_ARGS)

browser: venv system-deps
	$(BIN)/pytest -m browser $(PYTEST_ARGS)

# JupyterLab on 127.0.0.1 over a fresh session folder in runs/ (PARAMS=params/x.yaml to
# prepare the stage notebooks for that host)
lab: venv
	$(BIN)/python -m runbook.interactive.session $(if $(PARAMS),--params $(PARAMS))

demo: venv system-deps
	$(BIN)/runbook lab up --hosts 1
	$(BIN)/python -m runbook.demo

notebooks: venv
	$(BIN)/jupytext --update --set-kernel python3 --to ipynb notebooks/*.md

bench: venv system-deps
	$(BIN)/python bench/run.py $(if $(HOST),--host $(HOST))

# fleet re-runs of 1 … 19 lab hosts; ANSIBLE=path/to/ansible-playbook compares with Ansible
bench-fleet: venv system-deps
	$(BIN)/python bench/fleet.py $(if $(ANSIBLE),--ansible $(ANSIBLE))

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
