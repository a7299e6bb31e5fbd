# `make demo` and `make test` each set up the virtual environment first when it is missing or stale:
# the demo installs only what it needs (.[offline]); the tests add the test, load, ray and onnx extras.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO_STAMP := $(VENV)/.installed-demo
TEST_STAMP := $(VENV)/.installed-test
PIP := $(BIN)/python -m pip install --disable-pip-version-check -q

.PHONY: setup demo test report clean

# A venv left half-made by an interrupted set-up (python but no working pip) is made again.
$(VENV)/.venv-ok:
	$(BIN)/python -m pip --version >/dev/null 2>&1 || (rm -rf $(VENV) && $(PYTHON) -m venv $(VENV))
	touch $@

$(DEMO_STAMP): pyproject.toml $(VENV)/.venv-ok
	$(PIP) -e ".[offline]"
	touch $@

$(TEST_STAMP): pyproject.toml $(VENV)/.venv-ok
	$(PIP) -e ".[offline,test,load,ray,onnx]"
	touch $@ $(DEMO_STAMP)

setup: $(TEST_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/mmtags demo --config configs/demo.yaml --out runs/demo

test: $(TEST_STAMP)
	$(BIN)/lint-imports --no-cache  # the layers contract in pyproject.toml
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

# rewrite the generated results tables of README.md and docs/ from docs/results/*.json
report: $(DEMO_STAMP)
	$(BIN)/python -m experiments.report

clean:
	rm -rf runs .pytest_cache
