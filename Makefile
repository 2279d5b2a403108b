# mirrorfs developer tasks.  `make test` is what CI runs (.ci/run).
#
# The venv is made by Debian's /usr/bin/python3 with --system-site-packages,
# because the NBD client (python3-libnbd) exists only as a Debian package.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

SYSTEM_PYTHON := /usr/bin/python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

# Debian packages the build, the tests and the benchmarks need.
SYSTEM_PKGS := fuse3 libfuse3-dev pkg-config nbdkit python3-venv python3-dev \
	python3-libnbd libnbd-bin rsync btrfs-progs e2fsprogs sqlite3 git tar
# Installed along with the others when the archive has them; never required.
OPTIONAL_PKGS :=

# Benchmarks: every bench/*.py except helpers named _*.py.
BENCHES := $(filter-out bench/_%,$(wildcard bench/*.py))

# A venv made by another interpreter (e.g. pyenv's) or without system site
# packages cannot import Debian's `nbd` module: such a venv is rebuilt.
VENV_OK := $(shell grep -qxF 'home = /usr/bin' $(VENV)/pyvenv.cfg 2>/dev/null \
	&& grep -qxF 'include-system-site-packages = true' $(VENV)/pyvenv.cfg \
	&& echo yes)

.PHONY: all deps-system install lint test demo bench clean FORCE
.DEFAULT_GOAL := test

all: test

deps-system:
	@missing=""; \
	for p in $(SYSTEM_PKGS); do \
		dpkg -s "$$p" >/dev/null 2>&1 || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" -ne 0 ]; then \
		echo "make deps-system: missing Debian packages:$$missing" >&2; \
		echo "  install them as root: apt-get install -y$$missing" >&2; \
		echo "  (continuing; steps that need them may fail)" >&2; \
		exit 0; \
	fi; \
	echo "make deps-system: installing$$missing"; \
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get update -q; \
	optional=""; \
	for p in $(OPTIONAL_PKGS); do \
		dpkg -s "$$p" >/dev/null 2>&1 && continue; \
		apt-cache show "$$p" >/dev/null 2>&1 && optional="$$optional $$p"; \
	done; \
	apt-get install -y -q --no-install-recommends $$missing $$optional

install: $(STAMP)

$(STAMP): pyproject.toml $(if $(VENV_OK),,FORCE) | deps-system
	@if [ -e $(VENV) ] && ! { grep -qxF 'home = /usr/bin' $(VENV)/pyvenv.cfg 2>/dev/null \
		&& grep -qxF 'include-system-site-packages = true' $(VENV)/pyvenv.cfg; }; then \
		echo "$(VENV) is not a --system-site-packages venv of $(SYSTEM_PYTHON): recreating it"; \
		rm -rf $(VENV); \
	fi
	@[ -x $(PY) ] || $(SYSTEM_PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[fuse,dev]'
	@touch $@

FORCE:

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

test: install
	@$(MAKE) --no-print-directory lint
	$(VENV)/bin/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/mirrorfs demo

bench: install
	@if [ -z "$(BENCHES)" ]; then echo "make bench: no bench/*.py yet"; fi
	@for b in $(BENCHES); do echo "== $$b"; $(PY) "$$b"; done

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
	find src tests bench -name __pycache__ -type d -prune -exec rm -rf {} + 2>/dev/null || true
