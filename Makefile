# Everything runs from .venv, (re)built with pip whenever pyproject.toml is newer than it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/pytest

# The end-to-end job grows with the pipeline; today it covers the model stage.
demo: $(STAMP)
	$(BIN)/fiqa init-model --preset vit-fiqa-cpu --out demo-output/model
	$(BIN)/fiqa export-onnx --model demo-output/model --out demo-output/model.onnx
	$(BIN)/fiqa bench model --preset vit-fiqa-cpu --seconds 1

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/fiqa bench model

clean:
	rm -rf $(VENV) .pytest_cache demo-output
