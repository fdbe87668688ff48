.PHONY: setup system-deps demo test bench
VENV ?= .venv
BIN := $(VENV)/bin

setup:
	@bash scripts/setup.sh

system-deps:
	@LATENTDEFENCE_SYSTEM_DEPS=1 bash scripts/setup.sh

demo: setup
	$(BIN)/latentdefence demo

test: setup
	$(BIN)/python -m mypy src/latentdefence
	$(BIN)/python -m pytest -q --durations=15

bench: setup
	$(BIN)/python benchmarks/run_all.py
