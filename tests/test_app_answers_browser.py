# ruff: noqa: F811 (the fixtures imported from tests.test_app_browser are arguments of the tests)
"""Answers in a real headless Chromium: "Which method for me?" in Explore between grid points and outside the grid
(checked against the grid table computed here), and three runs ticked in Runs for their curves and differences."""

from __future__ import annotations

import pytest

from tests.test_app import form
from tests.test_app_browser import chromium, page, server, snap  # noqa: F401 (fixtures: Chromium, the app on the tiny BLIP)
from tests.test_choice import expected_between
from tests.test_runs_compared import logged
from training.catalog import CATALOG
from training.jobs.store import Outcome

pytestmark = [pytest.mark.browser, pytest.mark.slow]
# Gradio's dataframe draws its rows as grid cells, data-testid cell-<row>-<column>: the method and tie columns.
RANKING_CELLS = """() => {
  const cell = (r, c) => document.querySelector(`#choose-ranking .virtual-body [data-testid="cell-${r}-${c}"]`);
  const rows = [];
  for (let r = 0; cell(r, 1); r++) rows.push([cell(r, 1).innerText.trim(), cell(r, 4).innerText.trim()]);
  return rows;
}"""

# Every text node of the page, hidden ones (screen-reader text) included, scripts and styles left out.
PAGE_TEXT = """() => {
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const texts = [];
  while (walker.nextNode()) {
    if (!walker.currentNode.parentElement.closest('script, style')) texts.push(walker.currentNode.textContent);
  }
  return texts.join(' ');
}"""


def ask(page, data: str, params: str, answer_starts: str) -> str:
    """Ask 'Which method?' and wait for the answer that starts so (the box says 'processing' meanwhile)."""
    page.locator("#choose-data input, #choose-data textarea").first.fill(data)
    page.locator("#choose-params input, #choose-params textarea").first.fill(params)
    page.locator("#choose-ask").click()
    page.wait_for_function(
        "start => { const text = document.querySelector('#choose-answer').innerText.trim();"
        " return text.startsWith(start) && !text.includes('processing'); }",
        arg=answer_starts,
        timeout=30_000,
    )
    return page.locator("#choose-answer").inner_text().strip()


def test_which_method_between_grid_points_and_outside_the_grid_then_train_this(server, page, tmp_path):
    _, url = server
    page.goto(url)
    page.get_by_role("tab", name="Explore").click()
    page.locator("#choose-task").get_by_text("Visual question answering").click()

    said = ask(
        page, "300", "18k", "Interpolated."
    )  # between the grid's 209- and 418-question runs, on its 18k data line
    expected = expected_between("vqa", 300, 18000, 0.05, 0.10)
    order = sorted(expected, key=lambda m: -expected[m][0])
    labels = [CATALOG[m].label.split(" (")[0] for m in order]
    assert said.startswith("Interpolated.") and f"take {labels[0]}" in said
    assert "interpolated between 209 examples (5 %) and 418 examples (10 %)" in said
    cells = page.evaluate(RANKING_CELLS)  # [method, tied with the best?] per row, in the table's order
    assert [method for method, _ in cells if method != "Zero-shot"] == labels
    best = expected[order[0]][0]
    tied = {CATALOG[m].label for m in order[1:] if expected[m][2] >= best}
    assert {method for method, mark in cells if mark == "tied"} == tied and cells[0] == [labels[0], "best"]
    assert f"{labels[0]}" in page.locator("#choose-train").inner_text()
    rests_on = page.evaluate(
        "() => document.querySelector('#choose-ranking .virtual-body [data-testid=\"cell-0-9\"]').innerText.trim()"
    )
    assert rests_on.startswith(f"6 runs: {labels[0]} 18k on 5 % of scene-vqa, seeds 0, 1, 2") and "__" not in rests_on
    assert "common.complete" not in page.evaluate(PAGE_TEXT)  # the status tracker's screen-reader text, once done
    snap(page, "which-method", tmp_path)

    said = ask(page, "10000", "18k", "⚠️ Outside the grid.")  # more questions than the grid's whole training set
    assert said.startswith("⚠️ Outside the grid.") and "at most the whole training set, 4,176 examples" in said
    assert not page.locator("#choose-train").is_enabled()

    ask(page, "300", "18k", "Interpolated.")
    page.locator("#choose-train").click()
    page.locator("#start-training").wait_for(state="visible")  # the Train tab, filled with the pick
    assert page.locator("#budget input, #budget textarea").first.input_value() == "18k"
    assert float(page.locator("#data-fraction input").first.input_value()) == pytest.approx(300 / 4176, abs=1e-4)


def test_three_runs_ticked_in_runs_show_three_curves_and_the_marked_differences(server, page, tmp_path):
    app, url = server
    services = app.services
    ids = []
    for method, seed in (("lora", 0), ("lora", 1), ("serial-adapter", 0)):
        job_id = services.submit(services.run_config(**form(method=method, seed=seed)), "visitor-v1")
        services.store.claim_next("worker-test", max_concurrent=1)
        assert services.store.finish(job_id, "worker-test", Outcome("finished", "finished for the test", 0))
        logged(services, job_id, [3.0, 2.0 - seed / 10, 1.5], [10.0 + seed, 20.0], accuracy=40.0 + seed)
        ids.append(job_id)

    page.goto(url)
    page.get_by_role("tab", name="Runs").click()
    picks = page.locator("#runs-compared-picks")
    labels = [services.run(job_id).label for job_id in ids]  # runs are named in words, not by their ids
    for label in labels:
        picks.locator("label").filter(has_text=label).click()
    page.locator("#runs-compared-note").get_by_text("3 runs compared.").wait_for()
    page.wait_for_function(
        "() => { const p = document.querySelector('#runs-compared-curves .js-plotly-plot');"
        " return p && p.data && p.data.length === 6; }",
        timeout=30_000,
    )
    curves = page.evaluate(
        "() => document.querySelector('#runs-compared-curves .js-plotly-plot').data.map(t => [t.meta, t.name])"
    )
    assert sorted(name for meta, name in curves if meta == "loss") == sorted(labels)
    assert labels[0].startswith("LoRA 2k · ") and "seed 1" in labels[1] and labels[2].startswith("Serial adapter")
    assert sum(meta == "validation" for meta, _ in curves) == 3
    marked = page.locator("#runs-compared-settings tr.vl-differs-row th")
    assert sorted(marked.all_inner_texts()) == ["≠ method", "≠ seed"]
    assert "2 of 20 settings differ" in page.locator("#runs-compared-settings").inner_text()
    assert page.locator("#runs-compared-scores b").all_inner_texts() == ["41.0 %"]
    snap(page, "runs-compared", tmp_path)
