# hashdb: two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8000
DATA   ?= ./hashdb-data

.PHONY: run test lint bench-hash bench-scale clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/hashdb serve --data-dir $(DATA) --host $(HOST) --port $(PORT)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check hashdb ingest api tests benchmarks
	$(BIN)/mypy hashdb ingest api

bench-hash: $(STAMP)
	$(BIN)/python benchmarks/hash_speed.py

bench-scale: $(STAMP)
	$(BIN)/pip install --quiet threatexchange
	$(BIN)/python benchmarks/match_scale.py

clean:
	rm -rf $(VENV) build *.egg-info
