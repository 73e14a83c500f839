# The two commands of the quickstart: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test install install-dev bench clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "SmartCare needs Python >= 3.11; set PYTHON=python3.11 (or newer)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

## run: install, start (embedded) PostgreSQL, migrate, seed the demo region, serve http://127.0.0.1:8000
run: $(VENV)/.installed
	$(BIN)/smartcare up

## test: install dev dependencies and run the whole suite
test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## bench: every benchmark in its quick mode (figures beside their baselines; full runs: drop --quick)
bench: $(VENV)/.installed-dev
	for script in bench/synth.py bench/hl7parse.py bench/exchange.py bench/empi.py bench/healthcard.py bench/payment.py bench/payment_faults.py bench/booking.py bench/quality.py bench/phr.py bench/warehouse.py; do $(BIN)/python $$script --quick || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache
