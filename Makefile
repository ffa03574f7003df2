# hashdb: two commands set everything up on a fresh machine: `make run` and `make test`.
# Python >= 3.12 (the SSCD model package needs it): the first suitable of python3.12,
# python3.13, python3 and pyenv's installed versions, unless PYTHON is given.
PYTHON ?= $(shell for p in python3.12 python3.13 python3 $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3) $(wildcard $(HOME)/.pyenv/versions/3.1[3-9]*/bin/python3); do \
            $$p -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null && { echo $$p; break; }; done)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8000
DATA   ?= ./hashdb-data

.PHONY: run test lint bench-hash bench-scale bench-robustness clean openapi

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "hashdb needs Python >= 3.12: install it, or run make PYTHON=/path/to/python3.12"; exit 1; }
	@# A venv left by an older Python is replaced, not patched.
	@test ! -x $(BIN)/python || $(BIN)/python -c 'import sys; sys.exit(sys.version_info < (3, 12))' || rm -rf $(VENV)
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/hashdb serve --data-dir $(DATA) --host $(HOST) --port $(PORT)

test: $(STAMP)
	@# The browser tests drive Debian's chromium through chromium-driver. Install them once
	@# when we can (root with apt-get); if that fails, those tests skip and say why.
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	    { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; } || \
	    echo "chromium/chromedriver missing: the browser tests will skip"
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check hashdb ingest api tests benchmarks
	$(BIN)/mypy hashdb ingest api

bench-hash: $(STAMP)
	$(BIN)/python benchmarks/hash_speed.py

bench-scale: $(STAMP)
	$(BIN)/pip install --quiet threatexchange
	$(BIN)/python benchmarks/match_scale.py

bench-robustness: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/robustness.py

# The committed OpenAPI document (tests/test_openapi_snapshot.py compares the served one).
openapi: $(STAMP)
	$(BIN)/python -m api.openapi_json docs/openapi.json

clean:
	rm -rf $(VENV) build *.egg-info
