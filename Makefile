# The two commands of the README: `make demo` (the whole job on this machine) and `make test` (the tree's
# format and lint, then the test suite).
# Both create ./.venv on first use: torch 2.13.0 unless the venv has a torch already (a GPU user installs
# their own build into it beforehand; pyproject only asks for a range), then this package with its test extra.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test slurm-packages

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/python -c 'import torch' 2>/dev/null || $(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: setup
	$(BIN)/plsweep demo

test: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# Debian packages of the one-node Slurm cluster the Slurm tests start (root only; without them those tests skip).
slurm-packages:
	scripts/install-slurm-packages.sh
