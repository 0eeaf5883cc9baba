# covidxray: `make run` serves the Keras model on http://127.0.0.1:8080, `make test` runs the suite.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= serve,train,automl,gcp,dev
HOST ?= 127.0.0.1
PORT ?= 8080
export HOST PORT

.PHONY: install serve run run-automl test test-deps lint bench

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is needed, found " + sys.version' 
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c requirements.txt -e ".[$(EXTRAS)]"
	touch $@

serve:
	cd app-keras && exec ../$(BIN)/gunicorn -c python:covidxray.gunicorn_conf wsgi:app

run: install
	$(MAKE) serve

test-deps: install
	@if ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	  else echo "Debian's chromium is missing: the browser tests will be skipped (run as root to install it)"; fi; \
	fi

test: test-deps
	$(BIN)/pytest -q -n 2

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
