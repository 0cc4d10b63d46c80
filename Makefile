PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR := build/demo

.PHONY: demo test lint clean venv

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

venv: $(BIN)/python

demo: venv
	$(BIN)/python -m pip install -qq -e .
	$(BIN)/python -m models build $(DEMO_DIR) --only resnet18
	$(BIN)/bnfold optimize $(DEMO_DIR)/resnet18.onnx -o $(DEMO_DIR)/resnet18.folded.onnx

test: venv
	$(BIN)/python -m pip install -qq -e '.[dev]'
	$(BIN)/ruff check bnfold models tests benchmarks
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check bnfold models tests benchmarks

clean:
	rm -rf build .pytest_cache
