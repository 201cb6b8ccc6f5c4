# Two commands for a fresh machine: `make app` (set up, then run the app on the embedded default)
# and `make test` (set up, then run the tests offline).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

.PHONY: setup app test lint
setup: $(VENV)/.installed

app: setup
	HF_HUB_OFFLINE=1 $(BIN)/streamlit run app.py

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest tests

lint: setup
	$(BIN)/ruff check .
