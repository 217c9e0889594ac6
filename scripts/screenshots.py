"""`make screenshots`: the README's and docs' screenshots, taken by the browser tests from a running app on the
embedded default, and `docs/screenshots/SOURCE.json`, which names the commit and a digest of what the pictures
show (the app's code and the results it reads). tests/test_screenshots.py fails once that digest no longer
matches the tree, so a screenshot cannot silently go stale: run `make screenshots` again."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "docs" / "screenshots"
SOURCE = SCREENSHOTS / "SOURCE.json"
BROWSER_TESTS = ["tests/test_app_browser.py", "tests/test_app_answers_browser.py"]
# What a screenshot shows: the app's code, and the results and report that Explore and Which method read.
SHOWN = ["app", "results/runs.csv", "results/report.md"]


def shown_digest(root: Path = ROOT) -> str:
    """A digest of every file the screenshots depend on (paths and contents), in a fixed order."""
    files: list[Path] = []
    for name in SHOWN:
        path = root / name
        files += sorted(p for p in path.rglob("*.py")) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def main() -> int:
    env = {**os.environ, "VLPEFT_UPDATE_SCREENSHOTS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", *BROWSER_TESTS], cwd=ROOT, env=env)
    if result.returncode != 0:
        print("screenshots: the browser tests failed; SOURCE.json left as it was", file=sys.stderr)
        return result.returncode
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    record = {
        "command": "make screenshots",
        "taken_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": commit,
        "shown_digest": shown_digest(),
        "screenshots": sorted(p.name for p in SCREENSHOTS.glob("*.png")),
    }
    SOURCE.write_text(json.dumps(record, indent=2) + "\n")
    print(f"screenshots: {len(record['screenshots'])} pictures, {SOURCE.relative_to(ROOT)} written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
