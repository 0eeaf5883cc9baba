# covidxray: `make run` serves the Keras model on http://127.0.0.1:8080, `make test` runs the suite.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= serve,train,automl,gcp,dev
HOST ?= 127.0.0.1
PORT ?= 8080
# The data folder (uploads, request log, development secrets) of the repository, whichever folder the
# service runs in, so that `covidxray token` run here signs with the key the service checks.
COVIDXRAY_DATA_DIR ?= $(CURDIR)/var
export HOST PORT COVIDXRAY_DATA_DIR

.PHONY: install beam-install serve run run-automl test test-deps lint bench load images soak

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is needed, found " + sys.version' 
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c requirements.txt -e ".[$(EXTRAS)]"
	touch $@

# The archive pipeline's own environment (Beam's pins conflict with the service's): `covidxray score-archive`.
BEAM_VENV ?= .venv-beam
beam-install: $(BEAM_VENV)/.installed

$(BEAM_VENV)/.installed: requirements-beam.txt pyproject.toml
	test -x $(BEAM_VENV)/bin/python || $(PYTHON) -m venv $(BEAM_VENV)
	$(BEAM_VENV)/bin/pip install -q --upgrade pip
	$(BEAM_VENV)/bin/pip install -q -c requirements-beam.txt -e ".[archive]"
	touch $@

serve:
	cd app-keras && exec ../$(BIN)/gunicorn -c python:covidxray.gunicorn_conf wsgi:app

run: install
	$(MAKE) serve

AUTOML_PORT ?= 8081
STANDIN ?= 127.0.0.1:8091

# The AutoML service on http://127.0.0.1:$(AUTOML_PORT), against the local stand-in (our own model behind
# the Vertex AI Predict protocol): for development only.
run-automl: install
	@$(BIN)/covidxray automl-emulator --host $(word 1,$(subst :, ,$(STANDIN))) --port $(word 2,$(subst :, ,$(STANDIN))) & \
	standin=$$!; trap 'kill $$standin 2>/dev/null' EXIT; \
	until $(BIN)/python -c 'import sys; from covidxray.automl_standin.emulator import control; control(sys.argv[1], timeout=0.5)' $(STANDIN) 2>/dev/null; do \
	  kill -0 $$standin 2>/dev/null || { echo "the AutoML stand-in did not start" >&2; exit 1; }; sleep 0.2; \
	done; \
	cd app-automl && HOST=127.0.0.1 PORT=$(AUTOML_PORT) COVIDXRAY_AUTOML_API_ENDPOINT=$(STANDIN) \
	  COVIDXRAY_AUTOML_ENDPOINT=$${COVIDXRAY_AUTOML_ENDPOINT:-projects/local/locations/us-central1/endpoints/standin} \
	  ../$(BIN)/gunicorn -c python:covidxray.gunicorn_conf wsgi:app

test-deps: install
	@if ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	  else echo "Debian's chromium is missing: the browser tests will be skipped (run as root to install it)"; fi; \
	fi
	@missing=""; for pair in Orthanc:orthanc dciodvfy:dicom3tools tesseract:tesseract-ocr; do \
	  command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair#*:}"; done; \
	test -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so || missing="$$missing orthanc-dicomweb"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	  else echo "Debian's$$missing missing: the PACS, DICOM validation and burnt-in text tests will be skipped"; fi; \
	fi

test: test-deps beam-install
	$(BIN)/pytest -q -n 2

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

LOAD_USERS ?= 5
LOAD_TIME ?= 30s
LOAD_PORT ?= 8090

# locust (locustfile.py), headless, against a fresh local gunicorn with rate limits off; prints the stats.
load: install
	@set -euo pipefail; data="$$(mktemp -d)"; \
	export COVIDXRAY_ENV=development COVIDXRAY_RATE_LIMIT= COVIDXRAY_DATA_DIR="$$data" HOST=127.0.0.1 PORT=$(LOAD_PORT); \
	(cd app-keras && exec ../$(BIN)/gunicorn -c python:covidxray.gunicorn_conf wsgi:app) >"$$data/gunicorn.log" 2>&1 & server=$$!; \
	trap 'kill $$server 2>/dev/null; wait $$server 2>/dev/null; rm -rf "$$data"' EXIT; \
	until $(BIN)/python -c 'import urllib.request as r; r.urlopen("http://127.0.0.1:$(LOAD_PORT)/readyz", timeout=5)' 2>/dev/null; do \
	  kill -0 $$server 2>/dev/null || { cat "$$data/gunicorn.log"; exit 1; }; sleep 0.5; \
	done; \
	$(BIN)/locust -f locustfile.py --headless --users $(LOAD_USERS) --spawn-rate $(LOAD_USERS) \
	  --run-time $(LOAD_TIME) --host http://127.0.0.1:$(LOAD_PORT) --only-summary

# Both container images (needs a Docker engine).
images:
	docker build --build-arg SERVICE=keras -t covidxray-keras .
	docker build --build-arg SERVICE=automl -t covidxray-automl .

# Soak (not part of `make test`): gunicorn under 20 locust users for 60 s, valid and hostile uploads
# mixed, rate limits off; prints unexpected statuses (must be 0) and worker RSS; exits 1 otherwise.
soak: install
	$(BIN)/python soak/run.py --users 20 --duration 60

# The benchmark (not part of `make test`): the service as production runs it, side by side with the
# original design; writes bench/results.json and bench/RESULTS.md.
# BASELINE: a git ref whose code and model are timed beside today's in the same run (empty: none);
# 1aeae4e is the last commit before the fast decoders and int8 serving.
BASELINE ?= 1aeae4e
bench: install
	@if ! command -v wrk >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk; \
	  else echo "wrk is missing: run as root to install it (apt-get install wrk), or run python -m bench --quick"; exit 1; fi; \
	fi
	$(BIN)/python -m bench $(if $(BASELINE),--baseline $(BASELINE))
