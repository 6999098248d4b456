# Set-up and entry points. Every target creates .venv first if it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ARGS ?=
# The JPEG copy of CIFAR-10 that run-offline reads.
CIFAR10_IMAGES ?= $(or $(CIFAR10_IMAGES_ARCHIVE),../shared/datasets/cifar10-images.tar.gz)

.PHONY: venv run run-offline test lint format

venv: $(VENV)/.installed

# Exact pins without dependency resolution: TFX 1.16 declares Python <3.11,
# although every library it needs ships CPython 3.11 wheels.
$(VENV)/.installed: requirements.txt requirements-dev.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet pip==24.2
	$(BIN)/pip install --quiet --ignore-requires-python --no-deps -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/pip check
	touch $@

run: venv
	$(BIN)/python local_runner.py $(ARGS)

# For machines without internet: the JPEG copy of CIFAR-10 and random initialisation.
run-offline: venv
	$(BIN)/python local_runner.py --source $(CIFAR10_IMAGES) --base-weights none $(ARGS)

test: venv lint
	$(BIN)/python -m pytest $(ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
