# Everything runs from .venv, (re)built with pip whenever pyproject.toml is newer than it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser test demo lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The report tests drive a real headless Chromium: Debian's package, installed once.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null || \
		($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium >/dev/null)

test: $(STAMP) browser
	$(BIN)/pytest

# The end-to-end job on embedded defaults (a local folder as object storage, local Ray, the
# SQLite catalog under demo-output/); it grows with the pipeline.
DEMO := demo-output
demo: export FIQA_HOME := $(DEMO)/fiqa-home
demo: $(STAMP)
	$(BIN)/fiqa synth --identities 40 --per-identity 12 --format wds --shard-size 120 \
		--split train --out $(DEMO)/train
	$(BIN)/fiqa synth --identities 12 --per-identity 8 --format wds --split eval \
		--out $(DEMO)/eval
	$(BIN)/fiqa inspect --data $(DEMO)/train --format wds
	$(BIN)/fiqa train --data $(DEMO)/train --format wds --eval-data $(DEMO)/eval \
		--preset vit-fiqa-cpu --epochs 2 --batch-size 64 --warmup-epochs 0.5 \
		--storage-path $(DEMO)/runs --run-name demo --out $(DEMO)/model
	$(BIN)/fiqa score --model $(DEMO)/model --data $(DEMO)/eval --format wds \
		--table demo.manifest
	$(BIN)/fiqa filter --table demo.manifest --drop-bottom-percent-per-identity 25 \
		--min-images-per-identity 4 --out clean
	rm -rf $(DEMO)/clean-wds
	$(BIN)/fiqa export --table demo.manifest --selection clean --to wds --shard-size 32 \
		--out $(DEMO)/clean-wds
	$(BIN)/fiqa query --table demo.manifest "SELECT dataset, model_id, count(*) AS images, \
		quantile_cont(quality, [0.1, 0.5, 0.9]) AS q10_50_90 FROM manifest GROUP BY ALL"
	$(BIN)/fiqa query --table demo.manifest \
		"SELECT reason, count(*) AS images FROM clean GROUP BY reason ORDER BY images DESC"
	$(BIN)/fiqa report --table demo.manifest --selection clean --out $(DEMO)/report
	$(BIN)/fiqa eval --model $(DEMO)/model --data $(DEMO)/eval --format wds \
		--out $(DEMO)/eval-result
	$(BIN)/fiqa export-onnx --model $(DEMO)/model --out $(DEMO)/model.onnx

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/fiqa bench model

clean:
	rm -rf $(VENV) .pytest_cache demo-output
