# Everything runs from .venv, (re)built with pip whenever pyproject.toml is newer than it:
# `make demo` installs what the demo runs (the `demo` extra), the other targets everything
# (`dev`, which holds `demo`). Most of an install is pip asking the index about each package,
# so the demo leaves out the test tools (moto's server alone brings some thirty packages).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser test demo lint bench clean

install: $(STAMP)-dev

$(STAMP)-%: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[$*]'
	touch $@

# The report tests drive a real headless Chromium: Debian's package, installed once.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null || \
		($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium >/dev/null)

test: $(STAMP)-dev browser
	$(BIN)/pytest

# The end-to-end job on embedded defaults (a local folder as object storage, local Ray, the
# SQLite catalog under demo-output/): `fiqa demo` runs and prints every step's command.
demo: $(STAMP)-demo
	$(BIN)/fiqa demo --out demo-output

lint: $(STAMP)-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)-dev
	$(BIN)/fiqa bench model

clean:
	rm -rf $(VENV) .pytest_cache demo-output
