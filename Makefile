# The two set-up commands of the README: `make app` and `make test` (each installs what it needs first).
PORT ?= 7860

.PHONY: app test lint setup setup-dev docker-test screenshots

setup:
	bash scripts/setup.sh

setup-dev:
	bash scripts/setup.sh --dev

app: setup
	PORT=$(PORT) .venv/bin/python -m app

test: setup-dev
	.venv/bin/python -m ruff check app training tests scripts
	.venv/bin/python -m ruff format --check app training tests scripts
	.venv/bin/lint-imports
	HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q

lint: setup-dev
	.venv/bin/python -m ruff check app training tests scripts
	.venv/bin/python -m ruff format --check app training tests scripts
	.venv/bin/lint-imports

# Build the Dockerfile with podman and check the image serves the app as uid 1000 on port 7860 with /data on a
# mounted folder (slow; needs root and podman, and debootstrap where no registry is reachable: see the script).
docker-test:
	bash scripts/docker-test.sh

# The README's and docs' screenshots, from the browser tests on the embedded default, and docs/screenshots/SOURCE.json
# (tests/test_screenshots.py fails when app/ or results/ changed since they were taken).
screenshots: setup-dev
	.venv/bin/python scripts/screenshots.py
