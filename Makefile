# Every target creates .venv itself: a fresh clone needs only python3 with venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Two stamps: what running ingestd needs (the demo), and that plus the test and lint
# tools (the dev extras) for everything else.
RUNTIME := $(VENV)/.runtime
STAMP := $(VENV)/.installed

.PHONY: demo test lint chaos clean docker-steps

$(RUNTIME): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $(RUNTIME)

$(STAMP): $(RUNTIME)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Debian packages the tests need, installed (one apt-get run) only when missing:
# fuse3 for the power-cut file system (powercut/, fusermount3), chromium for the status
# page's browser test (driven over the DevTools protocol; nothing is downloaded at run time),
# prometheus for promtool, which checks monitoring/'s alert rules.
.PHONY: debian-packages fuse3 chromium prometheus
debian-packages:
	@missing="$$(command -v fusermount3 >/dev/null || echo fuse3) $$(command -v chromium >/dev/null || echo chromium) $$(command -v promtool >/dev/null || echo prometheus)"; \
	if [ -n "$$(echo $$missing)" ]; then apt-get update -qq && apt-get install -y -qq $$missing; fi
fuse3 chromium prometheus: debian-packages

demo: $(RUNTIME)
	$(BIN)/ingestd demo

test: $(STAMP) debian-packages
	$(BIN)/pytest

# The long crash and fault campaigns (their short forms run inside `make test`): one
# daemon (chaos/campaign.py), then three on one shared PostgreSQL ledger (chaos/shared.py,
# alone: `make chaos-shared`); the second runs even if the first fails. SEED=N replays a
# run; the tables are also written to build/chaos.json and build/chaos-shared.json.
.PHONY: chaos-shared
CHAOS_SEED = $(if $(SEED),--seed $(SEED))
chaos: $(STAMP)
	mkdir -p build
	status=0; \
	$(BIN)/python -m chaos.campaign $(CHAOS_SEED) --json build/chaos.json || status=1; \
	$(BIN)/python -m chaos.shared $(CHAOS_SEED) --json build/chaos-shared.json || status=1; \
	exit $$status

chaos-shared: $(STAMP)
	mkdir -p build
	$(BIN)/python -m chaos.shared $(CHAOS_SEED) --json build/chaos-shared.json

# The power-cut campaign (powercut/campaign.py): three daemons on a FUSE file system that
# forgets what was not fsynced, hundreds of power cuts; the short form runs inside `make test`.
# SEED=N replays a run, MODE=ordered models ext4's journal; the table goes to build/power.json.
.PHONY: power
power: $(STAMP) fuse3
	mkdir -p build
	$(BIN)/python -m powercut.campaign $(if $(SEED),--seed $(SEED)) $(if $(MODE),--mode $(MODE)) --json build/power.json

# ingestd against curl and its own targets on loopback (bench/run.py); prints one table
# and writes bench/results.json. Needs curl and ~13 GiB under $$INGESTD_BENCH_DIR (default
# /var/tmp/ingestd-bench, a real disk), written once and reused; under 10 min on 2 cores,
# about 5 more for case 8 (shared: a PostgreSQL on tmpfs, from the dev extras).
.PHONY: bench
bench: $(STAMP)
	$(BIN)/python -m bench.run

# Memory against the number of files that pass through intake and the ledger (200,000 by
# default, a few minutes): RSS after the last batch within 10 % of RSS after the first;
# then a daemon restarted on ledgers of 100,000 and 1,000,000 done files (bench/million.py).
.PHONY: bench-scale
bench-scale: $(STAMP)
	$(BIN)/python -m bench.scale $(if $(FILES),--files $(FILES)) --json build/scale.json

lint: $(STAMP)
	$(BIN)/ruff check ingestd tests powercut chaos
	$(BIN)/ruff format --check ingestd tests powercut chaos
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile
	systemd-analyze verify systemd/ingestd.service 2>&1 | grep -v 'is not executable' | (! grep .)
	@systemd-analyze security --offline=true --threshold=20 systemd/ingestd.service | tail -1

# The Dockerfile's steps, outside Docker (no engine here): a fresh venv, install, run.
docker-steps:
	rm -rf build/docker-steps
	$(PYTHON) -m venv build/docker-steps/opt-ingestd
	build/docker-steps/opt-ingestd/bin/pip install --quiet --no-cache-dir .
	build/docker-steps/opt-ingestd/bin/ingestd --version
	build/docker-steps/opt-ingestd/bin/ingestd run --help > /dev/null

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
