"""The screenshots in docs/screenshots/ show the app and the study as they are in this tree."""

from __future__ import annotations

import importlib.util
import json

from training.paths import REPO_ROOT

spec = importlib.util.spec_from_file_location("screenshots", REPO_ROOT / "scripts" / "screenshots.py")
screenshots = importlib.util.module_from_spec(spec)
spec.loader.exec_module(screenshots)


def test_the_screenshots_were_taken_of_this_app_and_these_results():
    record = json.loads(screenshots.SOURCE.read_text())
    assert record["shown_digest"] == screenshots.shown_digest(), (
        "app/ or results/ changed since the screenshots were taken: run `make screenshots` and commit them"
    )
    assert all((screenshots.SOURCE.parent / name).is_file() for name in record["screenshots"])


def test_the_digest_follows_what_a_screenshot_shows(tmp_path):
    (tmp_path / "app").mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / "app" / "main.py").write_text("title = 'VL-PEFT Lab'\n")
    (tmp_path / "results" / "runs.csv").write_text("task,method\n")
    (tmp_path / "results" / "report.md").write_text("# report\n")
    before = screenshots.shown_digest(tmp_path)
    (tmp_path / "results" / "report.md").write_text("# report, rebuilt\n")
    assert screenshots.shown_digest(tmp_path) != before
