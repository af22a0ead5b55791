# Two commands do everything on a fresh machine: `make demo` (install, then the CPU demo) and `make test`.
VENV := .venv/bin

.PHONY: install demo test lint
install:
	bash scripts/install.sh

demo: install
	$(VENV)/deepscaler train

lint: install
	$(VENV)/ruff check deepscaler tests benchmarks

test: install lint
	$(VENV)/python -m pytest -q
