# Everything a fresh machine needs, in one place.  `make demo` and `make test` are the
# two commands of the README; both set up the virtual environment first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is installed first, pinned, so that nothing later pulls a multi-GB CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: setup demo test test-all lint format data clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[all]"
	touch $@

demo: setup
	$(BIN)/caloforge info src/caloforge/assets/ild_reference.h5
	$(BIN)/caloforge observables src/caloforge/assets/ild_reference.h5

test: setup
	$(BIN)/ruff check src tests
	$(BIN)/python -m pytest -q

test-all: setup
	$(BIN)/python -m pytest -q -m "slow or not slow"

lint: setup
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

format: setup
	$(BIN)/ruff format src tests
	$(BIN)/ruff check --fix src tests

# The full ILD photon training and test sets (cached outside the repository; resumable).
DATA ?= $(HOME)/.cache/caloforge/data
data: setup
	mkdir -p $(DATA)
	$(BIN)/caloforge simulate -n 20000 --energy 10:90 --seed 1 --workers 2 --resume --out $(DATA)/ild_gamma_train.h5
	$(BIN)/caloforge simulate -n 10000 --energy 10:90 --seed 2 --workers 2 --resume --out $(DATA)/ild_gamma_test.h5

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
