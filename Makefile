# The README's two commands: `make demo` (install, build a sample library, index it, serve it)
# and `make test` (the whole test suite). Everything installs into .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo
export TF_CPP_MIN_LOG_LEVEL ?= 2
# Bytecode caches (with pytest's rewritten test modules) are what make a second run start quickly: an
# environment that turns them off would have every test process compile every module again.
unexport PYTHONDONTWRITEBYTECODE

# The web page tests drive Debian's chromium through its matching chromium-driver; a test checks the
# shipped class hierarchy against WordNet 3.0 from wordnet-base.
SYSTEM_PACKAGES := chromium chromium-driver fonts-liberation wordnet-base
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600

.PHONY: install system-packages demo test check fuzz lint bench clean

$(BIN)/lookalike: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip "setuptools<81" wheel
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

install: $(BIN)/lookalike

system-packages:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ] || [ ! -f /usr/share/wordnet/data.noun ]; then \
		echo "Installing $(SYSTEM_PACKAGES) for the tests"; \
		$(APT) update -qq && $(APT) install -y -qq --no-install-recommends $(SYSTEM_PACKAGES); \
	fi

# The port and address come from the settings (api.port, LOOKALIKE_API__PORT), or `make demo PORT=8001`.
demo: install
	$(BIN)/lookalike demo --dir $(DEMO_DIR) $(if $(PORT),--port $(PORT))

LINTED := indexer search_api storage lookalike tests bench tools fuzz
# Tests that start processes, servers, browsers, Ray or fuzzers, or take seconds in-process (waiting on
# file events, running races, training): `make check` leaves them to `make test`.
SLOW_MARKERS := subprocess or gunicorn or browser or ray or fuzz or slow

test: install system-packages
	$(BIN)/ruff check $(LINTED)
	$(BIN)/mypy
	$(BIN)/python -m pytest --cov --cov-report=term:skip-covered --durations=15

# The fast inner loop while changing the code: lint, type check (the packages in pyproject's [tool.mypy]),
# then every in-process test, on every core (pytest-xdist).
check: install
	$(BIN)/ruff check $(LINTED)
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -n auto -m "not ($(SLOW_MARKERS))"

# Open-ended fuzzing of image decoding, until Ctrl-C (or FUZZ_SECONDS). It starts from the fixed corpus the
# tests replay and keeps what it finds in build/fuzz/corpus; a failing input is written to build/fuzz/.
FUZZ_SECONDS ?= 0
fuzz: install
	mkdir -p build/fuzz/corpus
	$(BIN)/python fuzz/fuzz_decode_image.py -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -timeout=10 \
		-artifact_prefix=build/fuzz/ build/fuzz/corpus fuzz/corpus

bench: install
	$(BIN)/python bench/index_throughput.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) build .pytest_cache .mypy_cache .coverage
