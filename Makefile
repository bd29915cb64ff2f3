# The two commands a newcomer types: `make demo` and `make test`. Each sets itself up (idempotent).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# DeepSpeed compiles its CPU communication op on first use; a cache per checkout keeps two
# checkouts (or venvs) from rebuilding it over each other in the shared ~/.cache.
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/$(VENV)/torch_extensions

.PHONY: setup slurm-deps demo demo-video test test-fast clean

setup: $(STAMP)

# Reinstall only when the package metadata changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# The SLURM tests run a real one-node cluster (tests/slurm_cluster.py) on Debian's daemons; as root,
# install them when missing (about 10 s with a warm apt cache). Not root: the tests skip themselves.
slurm-deps:
	@if ! command -v slurmctld >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurmctld slurmd slurm-client munge; \
	fi

test: setup slurm-deps
	$(BIN)/python -m pytest -q tests

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" tests

demo: setup
	$(BIN)/jepa demo

demo-video: setup
	$(BIN)/jepa demo --video

clean:
	rm -rf $(VENV) runs .pytest_cache
