# The two set-up commands of the README: `make app` and `make test` (each installs what it needs first).
PORT ?= 7860
# Two pytest workers, one torch thread each (the CI machine has 2 cores); a test file stays on one worker, so the
# fixtures it shares (a launched app, a Chromium, a BLIP-base-size model) are built once.
PYTEST_PARALLEL ?= -n 2 --dist loadfile

.PHONY: app test test-long lint setup setup-dev docker-test screenshots

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
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -m "not long" $(PYTEST_PARALLEL) --durations=15

# The tests marked long (minutes each: a whole protocol run, the BLIP-base-size methods beyond one per family).
# CI runs them after `make test` (.ci/run).
test-long: setup-dev
	HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q -m long --durations=15

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
