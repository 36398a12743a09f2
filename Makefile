# Two commands do everything on a fresh machine:
#   make run    set up (venv, deps, stubs) and run the main job (HAR, default data) on our server,
#               flwr's start_server and flower-superlink, side by side
#   make test   set up, lint and type-check (make lint), run the whole test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install c-port-packages proto lint test run bench fuzz compat clean

install: $(STAMP) c-port-packages

# The C Fleet node (ports/c) builds from Debian packages: installed here when make runs as root on
# Debian/Ubuntu and they are missing; otherwise this prints the one line to run (the port's tests
# then fail with the same line: never a silent skip).
C_PORT_PACKAGES := nanopb libnanopb-dev libmbedtls-dev libcurl4-openssl-dev clang
c-port-packages:
	@missing=$$(for package in $(C_PORT_PACKAGES); do dpkg -s $$package >/dev/null 2>&1 || echo $$package; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing || \
	  { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; }; \
	else echo "ports/c needs Debian packages; run: sudo apt-get install -y" $$missing; fi

# Reinstall whenever the dependency pins or the project metadata change.
$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[test,har,dev,fleet,lint]'
	touch $(STAMP)

# Regenerate fedproto/*_pb2.py(i) from proto/flwr/proto/*.proto (committed; tests check they are current).
proto: $(STAMP)
	$(PY) proto/compile.py fedproto
	$(PY) proto/compile_compat.py fedproto

# ruff on the repository; mypy on the package as it installs (fedproto.client is client/, ...),
# laid out as links in build/typecheck because mypy cannot follow the editable install's import
# hook. Strict on the sans-IO core fedproto/, basic on the tools (pyproject.toml).
TYPECHECK := build/typecheck
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/fedproto
	ln -s $(CURDIR)/fedproto/*.py $(CURDIR)/fedproto/*.pyi $(TYPECHECK)/fedproto/
	for package in client server kit bench; do ln -s $(CURDIR)/$$package $(TYPECHECK)/fedproto/$$package; done
	cd $(TYPECHECK) && $(CURDIR)/$(VENV)/bin/mypy --config-file $(CURDIR)/pyproject.toml \
		--cache-dir $(CURDIR)/build/mypy-cache -p fedproto

# tests/test_ports_c.py builds ports/c (make -C ports/c) and runs it against flwr's SuperLink.
test: proto lint c-port-packages
	$(PY) -m pytest

run: proto
	$(PY) -m fedproto.har --server fedproto,flwr,superlink

bench: proto
	$(PY) -m fedproto.bench.run

# A longer, time-boxed fuzzing campaign of every decoder of peer bytes (atheris/libFuzzer);
# crashes are written to results/fuzz-crashes/. FUZZ_SECONDS=3600 make fuzz for an hour.
FUZZ_SECONDS ?= 300
fuzz: proto
	$(PY) -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[fuzz]'
	$(PY) tests/fuzz_campaign.py --seconds $(FUZZ_SECONDS)

# The compatibility matrix (docs/compat.md): every release in FLWR_VERSIONS (default: a spread from
# 1.0 to the newest), each in a venv of its own cached in ~/.cache/fedproto-compat. Downloads
# releases: not part of make test. FLWR_VERSIONS=1.22.0,1.42.0 make compat to choose.
compat: proto
	$(PY) -m fedproto.bench.compat $(if $(FLWR_VERSIONS),--versions $(FLWR_VERSIONS))

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
	$(MAKE) -C ports/c clean
