"""The Docker image built and run: opt-in (VLPEFT_DOCKER_TEST=1, or `make docker-test`), as it is slow and
needs root and podman (see scripts/docker-test.sh)."""

from __future__ import annotations

import os
import subprocess

import pytest

from training.paths import REPO_ROOT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("VLPEFT_DOCKER_TEST") != "1", reason="opt-in: set VLPEFT_DOCKER_TEST=1"),
]


def test_the_image_serves_the_app_as_uid_1000_on_port_7860_and_publishes_runs_to_the_mounted_data():
    done = subprocess.run(
        ["bash", "scripts/docker-test.sh"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=3 * 3600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "serves its first page on port 7860" in done.stdout
    assert "the app process runs as uid 1000" in done.stdout
    assert "finished; published to /data/vlpeft/runs/" in done.stdout
