# The README's two commands: `make demo` (the kit's main job on the micro world) and `make test`
# (every check CI runs). Both create and reuse .venv in the repository root.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# reinstall when the packaging settings change
HASH   := $(shell cat settings.ini setup.py | cksum | cut -d' ' -f1)

.PHONY: demo test export clean-nbs readme help
help:
	@echo "make demo   set up .venv and run the micro-world demo (offline, CPU)"
	@echo "make test   set up .venv with the dev tools and run every test (what CI runs)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel

$(VENV)/.runtime-$(HASH): | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev-$(HASH): | $(BIN)/python
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

demo: $(VENV)/.runtime-$(HASH)
	$(BIN)/vlprompt demo

test: $(VENV)/.dev-$(HASH)
	$(BIN)/python scripts/check_sync.py
	OMP_NUM_THREADS=1 $(BIN)/nbdev_test  # parallel notebooks: one thread each, or OpenMP oversubscribes 2 cores
	$(BIN)/python -m pytest tests/ -q

# developer helpers
export: $(VENV)/.dev-$(HASH)
	$(BIN)/nbdev_clean && $(BIN)/nbdev_export && $(BIN)/python scripts/render_readme.py
