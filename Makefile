# The two set-up commands of the README: `make app` and `make test` (each installs what it needs first).
PORT ?= 7860

.PHONY: app test lint setup setup-dev

setup:
	bash scripts/setup.sh

setup-dev:
	bash scripts/setup.sh --dev

app: setup
	PORT=$(PORT) .venv/bin/python -m app

test: setup-dev
	.venv/bin/python -m ruff check app training tests
	HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q

lint: setup-dev
	.venv/bin/python -m ruff check app training tests
