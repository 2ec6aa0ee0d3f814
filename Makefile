# The two set-up commands (README): `make run` and `make test`. Both need only python3.
# `make test` runs the same lint as the pre-commit hooks (.pre-commit-config.yaml), then pytest.
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.8
VENV := .venv
TOOLS := .tools
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export UV_PROJECT_ENVIRONMENT := $(CURDIR)/$(VENV)
# Keys outside the repository: the same key gives the same pseudonyms across clones.
SECRET_FILE ?= $(HOME)/.config/phm/pseudonym.key

.PHONY: run test install lint bench clean-store plots-page

install: $(VENV)/.installed

# The venv is built from the lock file only (uv sync --frozen); uv itself is bootstrapped from PyPI.
$(VENV)/.installed: pyproject.toml uv.lock
	@test -x $(TOOLS)/bin/uv || ($(PYTHON) -m venv $(TOOLS) && $(TOOLS)/bin/pip install --quiet uv==$(UV_VERSION))
	$(TOOLS)/bin/uv sync --frozen --all-groups --compile-bytecode
	@touch $@

$(SECRET_FILE):
	@mkdir -p $(dir $@) && chmod 700 $(dir $@)
	@$(PYTHON) -c "import secrets; print(secrets.token_hex(32))" > $@ && chmod 600 $@
	@echo "created a local pseudonymisation key at $@ (keep it outside git; set PHM_PSEUDONYM_KEY to use another)"

# keyfp first: DVC cannot see the key, only its fingerprint (a dependency of outreach). DVC's
# closing "Use `dvc push`" hint is dropped (this project has no remote); then the summary.
run: install $(SECRET_FILE)
	python -m pipeline keyfp
	set -o pipefail; PYTHONUNBUFFERED=1 dvc repro | sed -u '/Use `dvc push`/d'
	python -m pipeline summary

test: install
	ruff check .
	ruff format --check .
	mypy
	pytest

bench: install
	@for script in benchmarks/bench_*.py; do echo "== $$script"; python $$script || exit 1; done

# The offline page template of `dvc plots show` (.dvc/config plots.html_template): Vega, Vega-Lite
# and Vega-Embed inline, from the npm registry (needs npm and the network; only to upgrade them).
plots-page: install
	python .dvc/plots/build_page.py
