# The README's two commands: `make demo` (the kit's main job on the micro world) and `make test`
# (every check CI runs). Both create and reuse .venv in the repository root.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# reinstall when the packaging settings change
HASH   := $(shell cat settings.ini setup.py | cksum | cut -d' ' -f1)

.PHONY: demo test chromium export clean-nbs readme help
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

# Colab's widgets: a venv that sees .venv's packages (a .pth file) with Colab's ipywidgets 7.7.1 installed over them
COLAB  := .venv-colab
$(COLAB)/.ready-$(HASH): $(VENV)/.dev-$(HASH)
	test -x $(COLAB)/bin/python || $(BIN)/python -m venv --without-pip $(COLAB)  # pip, setuptools: .venv's, through the .pth
	echo "import site; site.addsitedir('$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')')" \
	  > "$$($(COLAB)/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/zz-main-venv.pth"
	$(COLAB)/bin/python -m pip install -q ipywidgets==7.7.1
	$(COLAB)/bin/python -c "import ipywidgets; assert ipywidgets.__version__ == '7.7.1', ipywidgets.__version__"
	touch $@

# the browser test drives JupyterLab in Debian's Chromium (Playwright's own browser download is never used)
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1
chromium:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's chromium for tests/test_widgets_browser.py"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null 2>&1 || \
	  { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null; } || \
	  echo "could not install chromium: the browser test will say why it cannot run"; fi

test: $(VENV)/.dev-$(HASH) $(COLAB)/.ready-$(HASH) chromium
	$(BIN)/python scripts/check_sync.py
	OMP_NUM_THREADS=1 $(BIN)/nbdev_test  # parallel notebooks: one thread each, or OpenMP oversubscribes 2 cores
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest tests/ -q -n 2 --dist loadfile  # two workers, one test file each at a time

# developer helpers
export: $(VENV)/.dev-$(HASH)
	$(BIN)/nbdev_clean && $(BIN)/nbdev_export && $(BIN)/python scripts/render_readme.py
