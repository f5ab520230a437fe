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

# The end-to-end job on embedded defaults (a local folder as object storage, local Ray, the
# SQLite catalog under demo-output/); it grows with the pipeline.
DEMO := demo-output
demo: $(STAMP)
	$(BIN)/fiqa synth --identities 40 --per-identity 12 --format wds --shard-size 120 \
		--split train --out $(DEMO)/train
	$(BIN)/fiqa synth --identities 12 --per-identity 8 --format wds --split eval \
		--out $(DEMO)/eval
	$(BIN)/fiqa inspect --data $(DEMO)/train --format wds
	$(BIN)/fiqa train --data $(DEMO)/train --format wds --eval-data $(DEMO)/eval \
		--preset vit-fiqa-cpu --epochs 2 --batch-size 64 --warmup-epochs 0.5 \
		--storage-path $(DEMO)/runs --run-name demo --out $(DEMO)/model
	FIQA_HOME=$(DEMO)/fiqa-home $(BIN)/fiqa score --model $(DEMO)/model \
		--data $(DEMO)/eval --format wds --table demo.manifest
	$(BIN)/fiqa export-onnx --model $(DEMO)/model --out $(DEMO)/model.onnx

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/fiqa bench model

clean:
	rm -rf $(VENV) .pytest_cache demo-output
