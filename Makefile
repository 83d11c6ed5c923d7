# secateur: `make demo` and `make test` each work on a fresh machine by themselves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Torch builds are pinned here so pip never resolves another (multi-GB) build from the registry.
# Override on other platforms, e.g. `make test TORCH_SPEC="torch==2.9.1 torchvision==0.24.1"`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.secateur-installed

.PHONY: demo test lint install clean bench

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# Static checks (config in pyproject.toml); .ci/run runs this and `make test`.
# mypy runs even when ruff finds something, so one call reports both.
lint: $(STAMP)
	@status=0; \
	$(PY) -m ruff check src tests bench || status=1; \
	$(PY) -m mypy || status=1; \
	exit $$status

demo: $(STAMP)
	$(PY) -m secateur.app.demo

bench: $(STAMP)
	$(PY) bench/han_table.py
	$(PY) bench/channel_table.py --models lenet5 --baselines runs/bench

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
