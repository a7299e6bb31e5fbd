# `make demo` and `make test` each set up the virtual environment first when it is missing or stale.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test clean

# A venv left half-made by an interrupted set-up (python but no working pip) is made again.
$(STAMP): pyproject.toml
	$(BIN)/python -m pip --version >/dev/null 2>&1 || (rm -rf $(VENV) && $(PYTHON) -m venv $(VENV))
	$(BIN)/python -m pip install --disable-pip-version-check -q -e ".[offline,test,load,ray,onnx]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/mmtags demo --out runs/demo

test: $(STAMP)
	$(BIN)/lint-imports --no-cache  # the layers contract in pyproject.toml
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

clean:
	rm -rf runs .pytest_cache
