# sipshadow: set-up, tests, and the main job. Every target installs what it needs first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEB_PACKAGES := sip-tester nftables iproute2 iputils-arping tcpdump kamailio procps python3-venv sipsak baresip-core keepalived systemd postgresql gcc libc6-dev python3-dev
STAMP_DEB := $(VENV)/.deb-installed
STAMP_PY := $(VENV)/.py-installed
STAMP_NATIVE := $(VENV)/.native-built
# the modules tools/compile_core.py compiles with mypyc (sipshadow._native lists them)
NATIVE_SOURCES := $(wildcard $(addprefix src/sipshadow/,$(addsuffix /*.py,sip core replication link)))

.PHONY: setup run loopback test lint bench mutation clean

setup: $(STAMP_DEB) $(STAMP_PY) $(STAMP_NATIVE)

# Debian packages (needs root). Skipped when every package is already installed.
$(STAMP_DEB):
	@mkdir -p $(VENV)
	@if dpkg -s $(DEB_PACKAGES) >/dev/null 2>&1; then echo "debian packages present"; \
	else apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(DEB_PACKAGES); fi
	@# the kamailio package may start a system service on 5060; the benchmark runs its own
	@-pkill -x kamailio 2>/dev/null; true
	@# likewise keepalived: the tests run their own, in namespaces
	@-pkill -x keepalived 2>/dev/null; true
	@touch $@

$(STAMP_PY): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

# The hot path and replication's pure halves compiled (mypyc, ~60 s); if it fails, sipshadow
# runs as pure Python (slower) and
# tests/unit/test_native_build.py says so. Rebuilt whenever one of its sources changes.
$(STAMP_NATIVE): $(STAMP_PY) $(NATIVE_SOURCES) src/sipshadow/_native.py tools/compile_core.py
	$(BIN)/python tools/compile_core.py || echo "sipshadow: the compiled core is not built; running as pure Python"
	@touch $@

# The main job: the paper's failover experiment on network namespaces (root), default settings.
run: setup
	$(BIN)/sipshadow lab experiment --out runs/experiment

# A short real SIPp load through one ALG on loopback (no root needed).
loopback: setup
	$(BIN)/sipshadow lab loopback --calls 400 --rate 40 --out runs/loopback

# pytest's exit 5 ("no tests collected") is not a failure of the code.
test: setup
	$(BIN)/python -m pytest -q; status=$$?; [ $$status -eq 5 ] && exit 0; exit $$status

# Lint reads the sources only: no Debian packages, no compiled core (its ~60 s build is not needed).
lint: $(STAMP_PY)
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/mypy src/sipshadow
	$(BIN)/mypy --strict src/sipshadow/core src/sipshadow/sip src/sipshadow/determinism src/sipshadow/replication src/sipshadow/ha src/sipshadow/runtime src/sipshadow/link src/sipshadow/records

bench: setup
	$(BIN)/python benchmarks/cps.py
	$(BIN)/python benchmarks/replication.py
	$(BIN)/python benchmarks/failover_netns.py
	$(BIN)/python benchmarks/records_cost.py

# Mutation testing (mutmut) of the pure packages with the unit tests alone; not part of `test`.
# A seeded sample: 500 of the ~3000 mutants spread over the packages by size, at least 40 each
# (539 in all, ~9 min on 2 cores; MUTATION_SAMPLE=0 runs them all, 1-2 hours). Prints the score
# per package and overall with 95 % intervals, and fails below MUTATION_MIN percent. Work: .mutation/
MUTATION_PATHS := src/sipshadow/sip src/sipshadow/core src/sipshadow/determinism src/sipshadow/link
MUTATION_SAMPLE ?= 500
MUTATION_SEED ?= 1
MUTATION_MIN ?= 90
mutation: setup
	$(BIN)/python -m tests.mutation.run --paths $(MUTATION_PATHS) --sample $(MUTATION_SAMPLE) \
		--seed $(MUTATION_SEED) --min $(MUTATION_MIN)

clean:
	rm -rf $(VENV) runs .pytest_cache .mutation mutants build
	find src -name "*.so" -delete
