"""A person's path through the app in a real headless Chromium: Train -> start -> finished -> Compare -> Explore
-> Runs, and a sweep queued from the Sweep tab, with a screenshot of each tab.

Screenshots always go to the test's tmp directory; with VLPEFT_UPDATE_SCREENSHOTS=1 they also replace
docs/screenshots/*.png, and the app runs on the embedded default model (when it is there) so they show it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from app import sweeps
from app.settings import Settings
from tests.conftest import write_tiny_dataset
from tests.test_app_server import LIMITS, launch, shut_down, tiny_settings
from tests.test_upload import zip_folder
from training.paths import DEFAULT_MODEL_DIR, REPO_ROOT
from training.run.config import RunConfig
from training.sweeps.grid import load_spec

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = REPO_ROOT / "docs" / "screenshots"
UPDATE = os.environ.get("VLPEFT_UPDATE_SCREENSHOTS") == "1"
EMBEDDED = UPDATE and (DEFAULT_MODEL_DIR / "config.json").is_file()
# (budget, steps, batch size, test examples): small enough for a CPU, big enough for a curve.
RUN = ("0.5%", 40, 16, 40) if EMBEDDED else ("2k", 5, 4, 6)


@pytest.fixture(scope="module")
def server(tmp_path_factory, request):
    home = tmp_path_factory.mktemp("browser-home")
    if EMBEDDED:
        settings = Settings(home=home, limits=LIMITS)
    else:
        tiny = [
            request.getfixturevalue(name) for name in ("tiny_model_dir", "tiny_caption_dataset", "tiny_vqa_dataset")
        ]
        settings = tiny_settings(home, *tiny)
    app, url = launch(settings)
    yield app, url
    shut_down(app)


@pytest.fixture
def page():
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(30_000)
        yield page
        browser.close()


def snap(page, name: str, folder: Path) -> None:
    page.wait_for_timeout(800)  # let plots and transitions settle
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if UPDATE:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, SCREENSHOTS / path.name)


def fill(page, elem_id: str, value: str) -> None:
    field = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
    field.fill(value)
    field.press("Tab")


def test_train_compare_explore_runs_in_a_browser(server, page, tmp_path: Path):
    app, url = server
    budget, steps, batch_size, eval_limit = RUN
    status = page.locator("#job-status")

    page.goto(url)
    estimate = page.locator("#estimate")
    estimate.get_by_text("trainable parameters").wait_for()
    fill(page, "budget", "100%")
    estimate.get_by_text("out of reach").wait_for()
    assert "Choose a budget in that range" in estimate.inner_text()
    fill(page, "budget", budget)
    estimate.get_by_text(re.compile(r"[\d,]+ trainable parameters\s*= [\d.]+ % of the model")).wait_for()

    fill(page, "data-fraction", "0")
    page.locator("#start-training").click()
    page.locator("#start-note").get_by_text("Not started").wait_for()  # beside the button, out of the polls' way
    assert "outside (0, 1]" in page.locator("#start-note").inner_text()
    fill(page, "data-fraction", "1")

    page.get_by_text("Advanced settings").click()
    fill(page, "max-steps", str(steps))
    fill(page, "batch-size", str(batch_size))
    fill(page, "eval-limit", str(eval_limit))
    page.locator("#run-size").get_by_text(f"{steps} steps of {batch_size} examples").wait_for()

    page.locator("#start-training").click()
    status.get_by_text(re.compile("Queued #|Starting|Training")).wait_for()
    status.get_by_text("Finished").wait_for(timeout=180_000)
    job_id = app.services.store.list_jobs()[-1].id
    assert re.search(r"Test score: CIDEr-D [\d.]+", status.inner_text())
    assert "100 %" in page.locator("#job-progress").inner_text()
    assert "python -m training train --task caption --method lora" in page.locator("#job-command").inner_text()
    # The training loss, the validation score and the kept checkpoint.
    assert page.locator("#loss-curve .scatterlayer .trace").count() == 3
    assert not page.locator("#cancel-job").is_visible()
    snap(page, "train", tmp_path)

    page.reload()  # the page re-attaches to the job it showed
    status.get_by_text("Finished").wait_for()

    page.get_by_role("tab", name="Compare").click()
    page.locator("#test-gallery img").first.click()
    page.locator("#picked-image img").wait_for()
    page.locator("#compare-runs label", has_text=job_id).click()
    page.locator("#compare-button").click()
    cards = page.locator("#compare-result .vl-card")
    cards.nth(1).wait_for(timeout=180_000)  # the first Compare loads the model: minutes on a busy 2-core machine
    assert cards.count() == 2
    assert cards.nth(0).inner_text().startswith("Zero-shot base")
    card = cards.nth(1).inner_text()
    assert f"run {job_id.rsplit('-', 1)[-1]}" in card and card.startswith("LoRA rank") and "this image: BLEU-4" in card
    assert "Human captions of this test image" in page.locator("#compare-result").inner_text()
    differing = page.locator("#compare-result .vl-card.vl-differs")
    for index in range(differing.count()):  # a "differs" badge always comes with the words that differ shown
        assert differing.nth(index).locator(".vl-output mark, .vl-output del").count() > 0
    if differing.count():
        assert page.locator("#compare-result .vl-legend").is_visible()
    snap(page, "compare", tmp_path)

    page.get_by_role("tab", name="Explore").click()
    page.locator("#explore-note").get_by_text("Stars: 1 finished image captioning run").wait_for()
    page.locator("#plot-params .scatterlayer .trace").first.wait_for()
    assert "your LoRA" in page.locator("#plot-params").inner_text()
    snap(page, "explore", tmp_path)

    page.get_by_role("tab", name="Runs").click()
    table = page.locator("#runs-table")
    table.get_by_text(job_id).filter(visible=True).first.click()
    page.locator("#run-details").get_by_text(f"{job_id}: finished").wait_for()
    assert page.locator("#run-download").is_enabled()
    snap(page, "runs", tmp_path)


def final_run(app, **changes) -> str:
    """A cancelled run of the app (deletable), made through the store rather than the slow Train form."""
    store = app.services.store
    config = RunConfig(task="caption", method="lora", budget="2k", max_steps=100_000, batch_size=4, **changes)
    config.base_model, config.dataset = app.services.settings.base_model, app.services.settings.datasets["caption"]
    job_id = store.submit(config, "someone")
    store.cancel(job_id, by="someone")
    for _ in range(600):
        if store.get(job_id).is_final:
            return job_id
        time.sleep(0.1)
    raise AssertionError(f"run {job_id} did not end")


def test_delete_asks_about_the_run_it_deletes_and_a_new_pick_withdraws_the_question(server, page):
    app, url = server
    first, second = final_run(app, seed=1), final_run(app, seed=2)
    page.goto(url)
    page.get_by_role("tab", name="Runs").click()
    table, ask = page.locator("#runs-table"), page.locator("#run-delete-ask").first  # Gradio repeats a group's id

    table.get_by_text(first).filter(visible=True).first.click()
    page.locator("#run-details").get_by_text(f"{first}: cancelled").wait_for()
    page.locator("#run-delete").click()
    ask.get_by_text(f"Delete run {first}").wait_for()
    table.get_by_text(second).filter(visible=True).first.click()  # the person changes their mind about which run
    page.locator("#run-details").get_by_text(f"{second}: cancelled").wait_for()
    ask.wait_for(state="hidden")

    page.locator("#run-delete").click()
    ask.get_by_text(f"Delete run {second}").wait_for()
    page.locator("#run-delete-keep").click()
    ask.wait_for(state="hidden")
    page.locator("#run-delete").click()
    page.locator("#run-delete-confirm").click()
    ask.wait_for(state="hidden")
    table.get_by_text(second).wait_for(state="detached")
    ids = [job.id for job in app.services.store.list_jobs()]
    assert second not in ids and first in ids


def test_an_uploaded_dataset_is_previewed_trained_on_and_compared_on(server, page, tmp_path: Path):
    app, url = server
    folder = write_tiny_dataset(tmp_path / "own", "caption", {"train": 8, "validation": 2, "test": 3}, seed=11)
    broken = zip_folder(folder, tmp_path / "no-test.zip", skip=("test/",))
    good = zip_folder(folder, tmp_path / "own.zip", prefix="own/")
    note = page.locator("#dataset-note")

    page.goto(url)
    page.get_by_text("Your own dataset (upload a zip)").click()
    fill(page, "dataset-name", "own-shapes")
    page.locator("#dataset-zip input[type=file]").set_input_files(str(broken))
    page.locator("#dataset-add").click()
    note.get_by_text("Not added").wait_for()
    assert "The test split is missing: the zip has no test/ folder" in note.inner_text()

    page.goto(url)
    page.get_by_text("Your own dataset (upload a zip)").click()
    fill(page, "dataset-name", "own-shapes")
    page.locator("#dataset-zip input[type=file]").set_input_files(str(good))
    page.locator("#dataset-add").click()
    note.get_by_text("is added").wait_for(timeout=60_000)
    assert "train 8 · validation 2 · test 3" in note.inner_text()
    assert page.locator("#dataset-preview img").count() == 8
    first = json.loads((folder / "train" / "metadata.jsonl").read_text().splitlines()[0])["captions"][0]
    assert page.locator("#dataset-preview").get_by_text(first).first.is_visible()
    snap(page, "dataset-upload", tmp_path)

    page.get_by_role("button", name=re.compile("^Advanced settings")).click()
    assert page.locator("#dataset input").input_value() == "own-shapes (your upload)"
    fill(page, "budget", RUN[0])
    fill(page, "max-steps", "2")
    fill(page, "batch-size", "4")
    fill(page, "eval-limit", "3")
    page.locator("#run-size").get_by_text("This run trains on 8 of 8 images").wait_for()
    page.locator("#start-training").click()
    status = page.locator("#job-status")
    status.get_by_text(re.compile("Queued #|Starting|Training")).wait_for()
    status.get_by_text("Finished").wait_for(timeout=300_000)
    job = app.services.store.list_jobs()[-1]
    assert job.config["dataset"] == str(app.services.datasets_home.resolve() / "own-shapes")

    page.get_by_role("tab", name="Compare").click()
    page.locator("#compare-source input").click()
    page.get_by_role("option", name="own-shapes (your upload)").click()
    expect = pytest.importorskip("playwright.sync_api").expect
    expect(page.locator("#test-gallery img")).to_have_count(3)  # the app's gallery has 6
    page.locator("#test-gallery img").first.click()
    page.locator("#picked-image img").wait_for()
    page.locator("#compare-runs label", has_text=job.id).click()
    page.locator("#compare-button").click()
    cards = page.locator("#compare-result .vl-card")
    cards.nth(1).wait_for(timeout=180_000)
    references = json.loads((folder / "test" / "metadata.jsonl").read_text().splitlines()[0])["captions"]
    result = page.locator("#compare-result").inner_text()
    assert "Human captions of this test image" in result and all(caption in result for caption in references)
    snap(page, "compare-own-dataset", tmp_path)

    # Removed from the Train tab's upload box, after saying it is sure; the run it trained keeps its results.
    page.get_by_role("tab", name="Train").click()
    page.locator("#dataset-remove-pick input").click()
    page.get_by_role("option", name="own-shapes").click()
    page.locator("#dataset-remove").click()
    note.get_by_text("Not removed").wait_for()
    page.locator("#dataset-remove-sure input").check()
    page.locator("#dataset-remove").click()
    note.get_by_text("own-shapes is removed").wait_for()
    assert app.services.uploaded_datasets() == [] and app.services.store.get(job.id).state == "finished"


def test_a_sweep_of_two_runs_queued_from_the_page_finishes_and_appears_in_explore(server, page, tmp_path: Path):
    app, url = server
    budget, _, batch_size, eval_limit = RUN
    page.goto(url)
    page.get_by_role("tab", name="Sweep").click()
    page.locator("#sweep-methods label", has_text="Serial adapter").click()  # LoRA is ticked already
    fill(page, "sweep-budgets", budget)
    fill(page, "sweep-fractions", "1")
    fill(page, "sweep-seeds", "0")
    page.get_by_text("Settings for every run").click()
    fill(page, "sweep-max-steps", "2")
    fill(page, "sweep-batch-size", str(batch_size))
    fill(page, "sweep-eval-limit", str(min(eval_limit, 10)))
    fill(page, "sweep-name", "browser")
    page.locator("#sweep-summary").get_by_text("2 runs (2 methods × 1 budget × 1 share × 1 seed").wait_for()

    page.locator("#sweep-start").click()
    page.locator("#sweep-note").get_by_text("Queued 2 runs as sweep browser").wait_for()
    status = page.locator("#sweep-status")
    status.get_by_text("Sweep browser: done").wait_for(timeout=1_200_000 if EMBEDDED else 400_000)
    assert "2 of 2 runs ended (2 finished)" in status.inner_text()
    assert "2 of 2 runs" in page.locator("#sweep-progress").inner_text()
    assert "python -m training sweep --config" in page.locator("#sweep-file").inner_text()
    assert "python -m training sweep --config" in page.locator("#sweep-note").inner_text()
    sweep = next(s for s in sweeps.queued_sweeps(app.services) if s.name == "browser")
    assert [job.state for job in app.services.store.list_jobs() if job.id in sweep.jobs.values()] == ["finished"] * 2
    assert load_spec(sweep.sweep_file).points()[0].name in sweep.jobs  # the file the CLI reruns, beside its runs
    snap(page, "sweep", tmp_path)

    page.get_by_role("tab", name="Explore").click()
    page.locator("#explore-note").get_by_text("Dotted curves: 2 finished runs").wait_for()
    plot = page.locator("#plot-params")
    plot.get_by_text("your sweep: LoRA").wait_for()
    assert "your sweep: Serial adapter" in plot.inner_text()


def value_of(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} input, #{elem_id} textarea").first.input_value()


def test_run_again_fills_the_train_form_and_bulk_delete_confirms_how_many_it_deletes(server, page):
    app, url = server
    first, second = final_run(app, seed=3, data_fraction=0.5), final_run(app, seed=4)
    page.goto(url)
    page.get_by_role("tab", name="Runs").click()
    table, ask = page.locator("#runs-table"), page.locator("#run-delete-ask").first  # Gradio repeats a group's id
    page.locator("#runs-filter label", has_text="cancelled").click()
    table.get_by_text(first).filter(visible=True).first.click()
    page.locator("#run-details").get_by_text(f"{first}: cancelled").wait_for()

    page.locator("#run-again").click()
    page.locator("#start-training").wait_for(state="visible")  # the Train tab, filled with the run's settings
    expect = pytest.importorskip("playwright.sync_api").expect
    expect(page.locator("#data-fraction input").first).to_have_value("0.5")
    page.get_by_text("Advanced settings").click()
    expect(page.locator("#max-steps input").first).to_have_value("100000")
    assert (value_of(page, "budget"), value_of(page, "batch-size")) == ("2k", "4")
    page.locator("#run-size").get_by_text("100,000 steps").wait_for()  # the notes follow the filled form

    page.get_by_role("tab", name="Runs").click()
    cancelled = [job.id for job in app.services.store.list_jobs(["cancelled"])]
    assert {first, second} <= set(cancelled)
    page.locator("#runs-bulk-delete").click()
    ask.get_by_text(f"Delete {len(cancelled)} runs ({len(cancelled)} cancelled) for good?").wait_for()
    page.locator("#run-delete-keep").click()
    ask.wait_for(state="hidden")
    assert len(app.services.store.list_jobs(["cancelled"])) == len(cancelled)
    page.locator("#runs-bulk-delete").click()
    page.locator("#run-delete-confirm").click()
    ask.wait_for(state="hidden")
    table.get_by_text(first).wait_for(state="detached")
    assert not app.services.store.list_jobs(["cancelled"])


def test_the_compare_gallery_shows_all_six_columns_whole_at_1400_px(server, page):
    app, url = server
    page.set_viewport_size({"width": 1400, "height": 1000})
    page.goto(url)
    page.get_by_role("tab", name="Compare").click()
    gallery = page.locator("#test-gallery")
    thumbnails = gallery.locator(".thumbnail-item")
    thumbnails.first.wait_for()
    frame = gallery.bounding_box()
    boxes = [thumbnails.nth(i).bounding_box() for i in range(6)]
    wrap = page.evaluate(
        "() => { const g = document.querySelector('#test-gallery .grid-wrap'); return [g.clientWidth, g.scrollWidth]; }"
    )
    assert wrap[1] <= wrap[0]  # nothing to scroll sideways to
    assert len({round(box["y"]) for box in boxes}) == 1  # one row of six
    for box in boxes:
        assert frame["x"] <= box["x"] and box["x"] + box["width"] <= frame["x"] + frame["width"] + 0.5
        assert box["width"] >= 60 and abs(box["width"] - box["height"]) < 1  # square, and big enough to tell apart


@pytest.mark.parametrize("width", [800, 1400])
def test_the_runs_table_and_the_plots_fit_whole_at_800_and_1400_px(server, page, width: int, tmp_path: Path):
    app, url = server
    final_run(app, seed=5)
    page.set_viewport_size({"width": width, "height": 1000})
    page.goto(url)
    page.get_by_role("tab", name="Runs").click()
    table = page.locator("#runs-table")
    table.get_by_text("seed 5").filter(visible=True).first.wait_for()
    page.screenshot(path=str(tmp_path / f"runs-{width}.png"), full_page=True)
    headers = table.locator("thead th")
    frame = table.bounding_box()
    names = [headers.nth(i).inner_text().strip() for i in range(headers.count())]
    assert names == ["run", "dataset", "state", "test score", "time", "by", "submitted"]
    for i in range(headers.count()):  # every column in sight, none behind a sideways scroll
        box = headers.nth(i).bounding_box()
        assert box["width"] > 20 and box["x"] + box["width"] <= frame["x"] + frame["width"] + 1, (names[i], box)
    assert "tiny-caption" in table.inner_text() or "scene-caption" in table.inner_text()

    page.get_by_role("tab", name="Explore").click()
    for plot in ("#plot-fraction", "#plot-params"):
        title = page.locator(f"{plot} .gtitle")
        title.wait_for()
        box, outer = title.bounding_box(), page.locator(plot).bounding_box()
        assert outer["x"] <= box["x"] and box["x"] + box["width"] <= outer["x"] + outer["width"] + 1, (plot, width)
    page.screenshot(path=str(tmp_path / f"explore-{width}.png"), full_page=True)
    # What screen readers hear when an event ends: Gradio's English strings lack it (app.main gives it).
    spoken = page.evaluate("() => [...document.querySelectorAll('[aria-live]')].map(e => e.textContent).join(' ')")
    assert "common." not in spoken
