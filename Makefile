PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR := build/demo

.PHONY: demo test lint typecheck lowest clean venv

$(BIN)/python:
	$(PY) -m venv $(VENV)

# pip >= 25.1 reads [dependency-groups] (`--group dev`); a venv made by an older Python's pip gets it here.
venv: $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade 'pip>=25.1'

demo: venv
	$(BIN)/python -m pip install -qq -e '.[cpu]'
	$(BIN)/python -m models build $(DEMO_DIR) --only resnet18
	$(BIN)/bnfold optimize $(DEMO_DIR)/resnet18.onnx -o $(DEMO_DIR)/resnet18.folded.onnx

test: venv
	$(BIN)/python -m pip install -qq -e '.[cpu]' --group dev
	$(BIN)/ruff check bnfold models tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/python -m pip install -qq --group lint
	$(BIN)/ruff check bnfold models tests benchmarks

typecheck: venv
	$(BIN)/python -m pip install -qq -e '.[cpu]' --group typecheck
	$(BIN)/mypy

# The suite on the lowest declared versions of Python and every dependency, then the wheel, built and
# installed into a fresh venv (CI's second job; see .ci/lowest).
lowest:
	bash .ci/lowest

clean:
	rm -rf build dist .pytest_cache .mypy_cache
