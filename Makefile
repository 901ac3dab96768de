# The two commands a newcomer needs:  make run   and   make test
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 1113

.PHONY: run dist test lint typecheck unit man schema docs deb test-pythons bench bench-daemon bench-claims bench-forward bench-stats bench-hostile deps venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# The benchmarks' venv: the test extra plus the bench one (Twisted, a peer measured in make bench)
$(VENV)/.bench-installed: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	touch $@

deps:
	bash scripts/install-system-deps.sh

## Run an ident server on 127.0.0.1:$(PORT): kernel lookups, built-in policy (not /etc/aioidentd.toml),
## one answer per connection and then close, as an identd serves IRC servers
# Run as root on a machine where the 'aioidentd' system user has not been created yet
# (scripts/install-system-deps.sh or the README's install section create it), the daemon
# would refuse to start; make run then drops privileges to nobody instead.
RUN_USER := $(if $(shell id -u aioidentd 2>/dev/null),,--user nobody)

run: venv
	$(BIN)/aioidentd serve --no-config --host 127.0.0.1 --port $(PORT) $(RUN_USER)

## The wheel and the source archive in dist/, to install where there is no checkout
dist: venv
	rm -rf dist
	$(BIN)/python -m build --outdir dist .

lint: venv
	$(BIN)/ruff check src tests benchmarks examples scripts
	$(BIN)/ruff format --check src tests benchmarks examples scripts

typecheck: venv
	$(BIN)/mypy --strict src examples tests scripts

unit: venv
	$(BIN)/python -m pytest -q

## The whole suite: system peers, lint, types, tests; then the tests but the interop ones
## (tests/interop) on the other Pythons the package claims, each in its own venv
test: deps lint typecheck unit test-pythons

OTHER_PYTHONS ?= 3.12 3.13
test-pythons:
	@for v in $(OTHER_PYTHONS); do \
	  py=$$(bash scripts/find-python.sh $$v) || { \
	    case "$${CI:-}" in ""|0|false|no) echo "test-pythons: no Python $$v, skipped"; continue;; esac; \
	    exit 1; }; \
	  if [ ! .venv-$$v/.installed -nt pyproject.toml ]; then \
	    $$py -m venv .venv-$$v && .venv-$$v/bin/python -m pip install -q --upgrade pip && \
	    .venv-$$v/bin/python -m pip install -q -e '.[test]' && touch .venv-$$v/.installed || exit 1; \
	  fi; \
	  echo "test-pythons: Python $$v ($$py)"; \
	  .venv-$$v/bin/python -m pytest -q -p no:cacheprovider --ignore=tests/interop || exit 1; \
	done

## Our server (static answer, asyncio and uvloop) against Twisted's, oidentd -R and a C epoll
## server (the limit), issue 11's five cases in one run, with ratios. BENCH_ARGS: --quick (under
## a minute), --cases 1,4, --rounds N, --seconds S, --idle 100000 (raises the file limit)
bench: $(VENV)/.bench-installed deps
	$(BIN)/python benchmarks/bench_server.py $(BENCH_ARGS)

## The daemon with real kernel lookups against oidentd's, hits and misses, few and 10,000 extra
## sockets on the host (needs root)
bench-daemon: venv deps
	$(BIN)/python benchmarks/bench_daemon.py $(BENCH_ARGS)

## What IdentServer.stats costs per query: the server's CPU per query under load against the
## counter updates of one query, as a ratio, in one run
bench-stats: venv
	$(BIN)/python benchmarks/bench_stats.py $(BENCH_ARGS)

## Queries about claimed connections with 11,000 live claims vs 1,000 vs none, in one run
bench-claims: venv
	$(BIN)/python benchmarks/bench_claims.py $(BENCH_ARGS)

## The forwarded path (plain and PROXY v2) against a direct answer, and forward failures
## against oidentd 2.5's forward, in one run (needs root)
bench-forward: venv deps
	$(BIN)/python benchmarks/bench_forward.py $(BENCH_ARGS)

## Hostile clients with figures: against the ident port (bench_hostile.py), and local users
## and scrapers against the claims socket and the metrics endpoint, each under attack against
## the same daemon unattacked (bench_hostile_local.py; needs root)
bench-hostile: venv deps
	$(BIN)/python benchmarks/bench_hostile.py
	$(BIN)/python benchmarks/bench_hostile_local.py

## The man pages, from the argument parser and docs/config.md (tests/test_manpages.py checks them)
man: venv
	$(BIN)/python scripts/make_manpages.py

## The documentation site in build/site (mkdocs, warnings as errors)
docs: venv
	$(BIN)/python -m mkdocs build --strict

## The Debian package in dist/ (debian/: Debian 12 or newer), built from the tracked files
## with debhelper and pybuild, then checked by lintian (warnings fail). Needs no venv.
## Build-Depends: build-essential debhelper dh-python pybuild-plugin-pyproject python3-all
deb:
	rm -f dist/aioidentd_*.deb
	@deb=$$(bash scripts/build-deb.sh dist) && echo "built $$deb" && \
	  if command -v lintian >/dev/null; then \
	    echo "lintian $$deb" && lintian --fail-on error,warning "$$deb"; \
	  else echo "lintian is not installed: $$deb not checked"; fi

## The configuration's JSON Schema, from the validator's definitions (tests/test_schema.py checks it)
schema: venv
	$(BIN)/python scripts/make_schema.py

clean:
	rm -rf $(VENV) .venv-3.* dist .pytest_cache .mypy_cache .ruff_cache
