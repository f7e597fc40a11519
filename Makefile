# labkit: `make run` (install if needed, run every notebook headless), `make test`, `make lab`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.labkit-installed
BACKEND ?= local
PYTEST_ARGS ?=
export PYTHONUNBUFFERED := 1

.PHONY: FORCE run test lint format lab install lock check cluster-test clean-runs strip notebooks e2e

# What the environment was asked to be (torch pin and index, a reused torch, the interpreter): a change reruns the
# set-up, which then says what differs instead of keeping the old environment without a word. A variable left unset
# keeps its earlier answer (`PYTHON=python3.10 make install`, then a plain `make run`: no new set-up). Only an answer
# the set-up took is kept, written after it succeeded: one it refused is asked about again, and a plain make after a
# refusal has nothing to do (make -n writes nothing either).
ASKED := $(TORCH_SPEC)|$(TORCH_INDEX_URL)|$(LABKIT_SYSTEM_TORCH)|$(PYTHON)
CONFIG := $(VENV)/.labkit-asked
TAKEN := $(shell cat $(CONFIG) 2>/dev/null)
WANTED := $(shell printf '%s\n%s\n' '$(TAKEN)' '$(ASKED)' | awk -F'|' -v OFS='|' \
  'NR == 1 { split($$0, old, "|"); next } { for (i = 1; i <= 4; i++) if ($$i == "") $$i = old[i]; print }')
ifneq "$(WANTED)" "$(TAKEN)"
$(STAMP): FORCE
endif

$(STAMP): pyproject.toml requirements/lock.txt scripts/bootstrap.sh scripts/pip-locked.sh scripts/torch-index.sh
	VENV=$(VENV) bash scripts/bootstrap.sh
	@printf '%s\n' '$(WANTED)' > $(CONFIG)
	@touch $(STAMP)

FORCE:

install: $(STAMP)

# Rebuild requirements/lock.txt (every package but torch, pinned and hashed) after changing pyproject.toml's
# dependencies; then `make install` installs exactly it. Needs PyPI; uv comes with the dev extra.
lock:
	UV=$(VENV)/bin/uv bash scripts/lock.sh

run: $(STAMP)
	$(VENV)/bin/labkit run --backend $(BACKEND)

test: lint $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# ruff lint + format check (line length 120, pyproject.toml) on everything that is Python and ours.
LINTED := labkit tests bench scripts
lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)

format: $(STAMP)
	$(VENV)/bin/ruff check --fix $(LINTED)
	$(VENV)/bin/ruff format $(LINTED)

lab: $(STAMP)
	VENV=$(VENV) bash scripts/lab.sh

# Every notebook in JupyterLab, in Debian's Chromium driven by Playwright: widgets, figures, errors, the closing
# section; screenshots in runs/e2e/. `make test` runs a CPU-cheap subset (tests/test_e2e.py).
e2e: $(STAMP)
	$(PY) -m labkit.e2e --out runs/e2e

check: $(STAMP)
	$(VENV)/bin/labkit check

# Same job scenario as the local-backend tests, against the cluster in your kubeconfig (kind/minikube + MPI Operator).
cluster-test: $(STAMP)
	$(PY) -m pytest tests/cluster -v -rs

# The notebooks' sources are the Jupytext percent scripts notebooks/NN_name.py (paired in JupyterLab): rebuild every
# .ipynb from its script, without outputs and with stable cell ids. `strip` is the same rebuild.
notebooks strip: $(STAMP)
	$(PY) -m labkit.notebooks build

clean-runs:
	rm -rf runs
