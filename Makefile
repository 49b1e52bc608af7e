# zetl — `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip -q --disable-pip-version-check
# Postgres: any installed major version will do (the tests take the newest); 15 when apt has it
APT_PACKAGES := mariadb-server mariadb-client
PYTEST_ARGS ?=

help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n\nTargets:\n"} /^[a-zA-Z_-]+:.*?##/ { printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

$(PY):
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { rm -rf $(VENV); SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		echo "installing: python3-venv"; $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends python3-venv >/dev/null; \
		$(PYTHON) -m venv $(VENV); }
	$(PIP) install --upgrade pip setuptools wheel

install: $(PY) ## Create .venv and install zetl with every plugin and the test tools
	$(PIP) install -e '.[all,test]'

system-packages: ## Install the database servers the tests start (Debian packages; needs root)
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgres"; \
	if [ -n "$$missing" ]; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq; \
		case "$$missing" in *postgres*) \
			if apt-cache show postgresql-15 >/dev/null 2>&1; then pg="postgresql-15 postgresql-client-15"; else pg="postgresql postgresql-client"; fi; \
			missing="$${missing/ postgres/ $$pg}";; \
		esac; \
		echo "installing:$$missing"; \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

test: system-packages install ## Install everything needed and run the whole test suite
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: install ## Run the tests that need no server
	$(PY) -m pytest tests/unit tests/conformance/test_builtin_sinks.py $(PYTEST_ARGS)

demo: install ## Replicate a demo Postgres shop into Iceberg while it changes, then show the tables (stops all it starts)
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); $$SUDO apt-get update -qq; \
		if apt-cache show postgresql-15 >/dev/null 2>&1; then pg=postgresql-15; else pg=postgresql; fi; echo "installing: $$pg"; \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$pg >/dev/null; }
	$(PY) -m zetl.demo

bench: system-packages install ## Benchmarks against raw ceilings, every workload (~6 min; BENCH_WORKLOADS=postgres,mariadb,iceberg picks): tests/bench/results/, BENCHMARKS.md
	$(PY) tests/bench/run.py $(BENCH_ARGS)

validate-configs: install ## Validate every integration in configs/
	$(VENV)/bin/zetl validate configs/

clean: ## Remove the virtualenv and build artefacts
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .zetl .zetl-test

.PHONY: help install system-packages test test-unit demo bench validate-configs clean
