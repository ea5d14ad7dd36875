# visionserve: `make run` sets everything up and serves on CPU; `make test` runs the tests
# (mk/test.mk).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# Re-install when pyproject.toml or constraints.txt changes.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
MODELS ?=
# Folders searched for real weights (os.pathsep list); ../shared/weights is where the
# team's test weights live beside the project. Missing folders are ignored.
WEIGHTS_DIR ?= weights:../shared/weights
export VISIONSERVE_WEIGHTS_DIR := $(WEIGHTS_DIR)
export YOLO_OFFLINE := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help setup lock export-onnx verify lint clean

help:  ## list targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | sort

setup: $(STAMP)  ## create .venv and install the project with all extras

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip >/dev/null
	$(PIP) install -c constraints.txt -e '.[all]'
	@rm -f $(VENV)/.installed-* && touch $@

lock: setup  ## pin the current environment's versions into constraints.txt
	{ sed -n '1,2p' constraints.txt; $(PIP) freeze --exclude-editable | grep -v '^visionserve'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

export-onnx: setup  ## export models to model_repository/<m>/1/model.onnx (MODELS=a,b to pick)
	$(PY) -m export --models '$(MODELS)'

verify: export-onnx  ## verify exported models (checker, parity, batch invariance, config match)
	$(PY) -m export.verify --models '$(MODELS)'

lint: setup  ## ruff (pyproject's [tool.ruff]) over the whole tree
	$(VENV)/bin/ruff check .

clean:  ## remove build artifacts (keeps .venv)
	rm -rf build model_repository/*/1/*.onnx model_repository/*/1/export.json

-include mk/*.mk
