# innereye-batch developer commands. Every target installs what it needs into .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# CPU wheel of torch pinned for CI and developer machines; pyproject keeps an honest range (torch>=2.2).
TORCH_PIN ?= torch==2.13.0

.PHONY: install test lint format demo bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check innereye_batch tests bench tools sample_data
	$(BIN)/ruff format --check innereye_batch tests bench tools sample_data
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix innereye_batch tests bench tools sample_data
	$(BIN)/ruff format innereye_batch tests bench tools sample_data

demo: $(STAMP)
	$(BIN)/innereye-batch run --model sample_data/final_model --input sample_data/scans --output demo_output/segmentation
	$(BIN)/innereye-batch run --model sample_data/cxr_model --input sample_data/cxr_scans --output demo_output/classification --explain gradcam
	@echo "Outputs are in demo_output/segmentation (CT phantoms) and demo_output/classification (chest X-rays)."

bench: $(STAMP)
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) demo_output bench/out
