# The README's two commands: `make demo` (install, build a sample library, index it, serve it)
# and `make test` (the whole test suite). Everything installs into .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo
export TF_CPP_MIN_LOG_LEVEL ?= 2

# The web page tests drive Debian's chromium through its matching chromium-driver.
BROWSER_PACKAGES := chromium chromium-driver
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600

.PHONY: install browser demo test lint bench clean

$(BIN)/lookalike: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip "setuptools<81" wheel
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

install: $(BIN)/lookalike

browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		echo "Installing $(BROWSER_PACKAGES) for the web page tests"; \
		$(APT) update -qq && $(APT) install -y -qq $(BROWSER_PACKAGES); \
	fi

demo: install
	$(BIN)/lookalike demo --dir $(DEMO_DIR) --host 127.0.0.1 --port 8000

test: install browser
	$(BIN)/ruff check indexer search_api storage lookalike tests bench tools
	$(BIN)/python -m pytest --cov --cov-report=term:skip-covered

bench: install
	$(BIN)/python bench/index_throughput.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) build .pytest_cache .coverage
