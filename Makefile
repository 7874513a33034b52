# The one place the PyTorch pin lives: README, .ci/run and the notebooks all go through these targets.
# torch must be installed before the project: a bare `torch` requirement resolves to a newer
# release with several GB of CUDA packages.
TORCH_PIN := torch==2.13.0
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_PIN)"
	$(BIN)/python -m pip install --quiet -e ".[dev,rllib,rl]" "$(TORCH_PIN)"
	touch $(STAMP)

demo: setup
	$(BIN)/mec-gym bench --scenario default --quick

test: setup
	$(BIN)/ruff check mec_gym agents tests
	MEC_GYM_QUICK=1 MPLBACKEND=Agg $(BIN)/python -m pytest -q -n 2 -p no:cacheprovider tests
	MEC_GYM_QUICK=1 MPLBACKEND=Agg $(BIN)/python -m pytest -q -p no:cacheprovider --nbmake notebooks

bench: setup
	$(BIN)/mec-gym bench speed --scenario all

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
