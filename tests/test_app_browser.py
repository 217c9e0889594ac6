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
from app.main import _number_word
from app.settings import Settings
from tests.conftest import write_tiny_dataset
from tests.test_app_server import LIMITS, launch, shut_down, tiny_settings
from tests.test_upload import zip_folder
from training.catalog import PEFT_METHODS
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


# Browser code: the words of an element's text that the layout split over two lines (a break after a hyphen or a
# slash is a break between words).
SPLIT_WORDS = """root => {
    const split = [], walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
        for (const match of node.textContent.matchAll(/[^\\s\\/\\u2010-\\u2014-]+/g)) {
            const range = document.createRange();
            range.setStart(node, match.index);
            range.setEnd(node, match.index + match[0].length);
            const lines = new Set([...range.getClientRects()].filter(r => r.width > 0).map(r => Math.round(r.top)));
            if (lines.size > 1) split.push(match[0]);
        }
    }
    return split;
}"""


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


@pytest.fixture(scope="module")
def chromium():
    """One headless Chromium for a test file (starting one takes seconds); each test gets a fresh context."""
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium):
    """A page in a new browser context: no cookies, storage or cache left by another test."""
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()


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
    # The header counts the catalog's methods, in words.
    counted = f"{_number_word(len(PEFT_METHODS))} parameter-efficient methods (and two baselines)"
    assert counted in page.locator("body").inner_text()
    protocol = page.locator("#protocol-note")
    if EMBEDDED:  # the form's defaults are the study's protocol
        protocol.get_by_text("The study's settings").wait_for()
    else:  # the tiny test model is not the grid's
        protocol.get_by_text("Leaves the study's protocol").wait_for()
        assert "another base model" in protocol.inner_text()
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
    protocol.get_by_text(f"stopped at {steps} steps (study: early stopping decides)").wait_for()
    assert "not comparable" in protocol.inner_text()

    page.locator("#start-training").click()
    status.get_by_text(re.compile("Queued #|Starting|Training")).wait_for()
    status.get_by_text("Finished").wait_for(timeout=180_000)
    job_id = app.services.store.list_jobs()[-1].id
    assert re.search(r"Test score: CIDEr-D \d+\.\d+ \(how closely a caption matches", status.inner_text())
    dataset = "scene-caption" if EMBEDDED else "tiny-caption"
    assert f"(LoRA {budget} on 100 % of {dataset})" in status.inner_text()  # the run in words, with its data
    curve = page.locator("#loss-curve").text_content()
    assert "training loss (lower is better)" in curve and "validation CIDEr-D (higher is better)" in curve
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
    choice = page.locator("#compare-runs label", has_text=f"LoRA {budget} · 100 % of {dataset} · seed 0")
    choice.click()  # the list names runs in words, with their data
    page.locator("#compare-button").click()
    cards = page.locator("#compare-result .vl-card")
    cards.nth(1).wait_for(timeout=180_000)  # the first Compare loads the model: minutes on a busy 2-core machine
    assert cards.count() == 2
    assert cards.nth(0).inner_text().startswith("Zero-shot base")
    card = cards.nth(1).inner_text()
    assert f"100 % of {dataset} · seed 0" in card and card.startswith("LoRA rank") and "this image: BLEU-4" in card
    assert "Human captions of this test image" in page.locator("#compare-result").inner_text()
    # What each model said is plain text; a difference from zero-shot is a small tag, not a strike-through.
    assert page.locator("#compare-result del, #compare-result mark").count() == 0
    tag = cards.nth(1).locator(".vl-tag")
    assert tag.inner_text() in ("differs from zero-shot", "same as zero-shot")
    if tag.inner_text() == "differs from zero-shot":
        assert tag.get_attribute("title").startswith("the zero-shot base said: ")
    assert "CIDEr-D: how closely a caption matches" in page.locator("#compare-result").inner_text()
    snap(page, "compare", tmp_path)

    page.get_by_role("tab", name="Explore").click()
    note = page.locator("#explore-note")
    if not EMBEDDED:  # a run on another dataset is drawn only beside the runs on it, never on the grid's axes
        note.get_by_text(re.compile(r"Runs on other data \(.*tiny-caption.*\) are drawn apart")).wait_for()
        page.locator("#explore-dataset input").click()
        page.get_by_role("option", name="tiny-caption").click()
        note.get_by_text("Runs on tiny-caption, set only beside each other").wait_for()
        assert "LoRA" not in page.locator("#plot-params .legend").text_content().replace("your LoRA", "")
    note.get_by_text("Stars: 1 finished image captioning run").wait_for()
    page.locator("#plot-params .scatterlayer .trace").first.wait_for()
    # A run with a step limit leaves the study's protocol: drawn hollow, named not comparable, and why.
    assert "your LoRA (not comparable)" in page.locator("#plot-params").inner_text()
    assert f"stopped at {steps} steps" in note.inner_text() and "not comparable" in note.inner_text()
    snap(page, "explore", tmp_path)

    page.get_by_role("tab", name="Runs").click()
    table = page.locator("#runs-table")
    table.get_by_text(f"LoRA {budget}, 100 % of the data, seed 0 (captions)").filter(visible=True).first.click()
    details = page.locator("#run-details")
    details.get_by_text(f"LoRA {budget} · 100 % of {dataset} · seed 0").first.wait_for()
    assert ": finished" in details.inner_text() and job_id in details.inner_text()  # the id only in the details
    assert dataset in table.inner_text() and job_id not in table.inner_text()
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

    table.get_by_text("seed 1 (captions)").filter(visible=True).first.click()
    page.locator("#run-details").get_by_text(first, exact=True).wait_for()
    page.locator("#run-delete").click()
    ask.get_by_text(f"Delete the run {app.services.run(first).label}").wait_for()  # named in words, not by id
    table.get_by_text("seed 2 (captions)").filter(visible=True).first.click()  # the person changes their mind
    page.locator("#run-details").get_by_text(second, exact=True).wait_for()
    ask.wait_for(state="hidden")

    page.locator("#run-delete").click()
    ask.get_by_text(f"Delete the run {app.services.run(second).label}").wait_for()
    page.locator("#run-delete-keep").click()
    ask.wait_for(state="hidden")
    page.locator("#run-delete").click()
    page.locator("#run-delete-confirm").click()
    ask.wait_for(state="hidden")
    table.get_by_text("seed 2 (captions)").wait_for(state="detached")
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
    assert "✅ Vocabulary: the model can say every word of its captions." in note.inner_text()
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
    page.locator("#compare-runs label", has_text="of own-shapes").click()  # the list names each run's data
    page.locator("#compare-button").click()
    cards = page.locator("#compare-result .vl-card")
    cards.nth(1).wait_for(timeout=180_000)
    references = json.loads((folder / "test" / "metadata.jsonl").read_text().splitlines()[0])["captions"]
    result = page.locator("#compare-result").inner_text()
    assert "Human captions of this test image" in result and all(caption in result for caption in references)
    snap(page, "compare-own-dataset", tmp_path)

    # The run carries its dataset's name in Runs.
    page.get_by_role("tab", name="Runs").click()
    page.locator("#runs-table").get_by_text("own-shapes").filter(visible=True).first.wait_for()

    # Removed from the Train tab's upload box, after saying it is sure; the run it trained keeps its results. The
    # list is read when the box opens: after a reload it still offers the dataset.
    page.goto(url)
    page.get_by_text("Your own dataset (upload a zip)").click()
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
    if not EMBEDDED:  # runs on the tiny test data are drawn apart from the reference grid's
        page.locator("#explore-note").get_by_text(re.compile(r"Runs on other data \(.*tiny-caption")).wait_for()
        page.locator("#explore-dataset input").click()
        page.get_by_role("option", name="tiny-caption").click()
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
    table.get_by_text("seed 3 (captions)").filter(visible=True).first.click()
    page.locator("#run-details").get_by_text(first, exact=True).wait_for()

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
    table.get_by_text("seed 3 (captions)").wait_for(state="detached")
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
    # The verdict (its statistics fold open too) wraps between words, never inside one.
    page.get_by_text("Do the paper's findings reproduce?").click()
    verdict = page.locator("#explore-verdict")
    verdict.locator("details").first.wait_for(state="attached")
    verdict.evaluate("root => root.querySelectorAll('details').forEach(d => { d.open = true; })")
    page.wait_for_timeout(300)
    assert verdict.evaluate(SPLIT_WORDS) == [], width
    page.screenshot(path=str(tmp_path / f"explore-{width}.png"), full_page=True)
    # What screen readers hear when an event ends: Gradio's English strings lack it (app.main gives it).
    spoken = page.evaluate("() => [...document.querySelectorAll('[aria-live]')].map(e => e.textContent).join(' ')")
    assert "common." not in spoken
