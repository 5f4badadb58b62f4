PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch/torchvision pinned to the releases that pip finds on local disk (no multi-GB download).
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint bench clean

$(BIN)/layertune: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: $(BIN)/layertune
	$(BIN)/layertune sweep trials/mnist1d_cnn.yaml --space search_spaces/cnn1d.yaml --samples 16

test: $(BIN)/layertune
	$(BIN)/ruff check layertune tests benchmarks examples
	$(BIN)/python -m pytest -q

bench: $(BIN)/layertune
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/reference.py

clean:
	rm -rf $(VENV) runs
