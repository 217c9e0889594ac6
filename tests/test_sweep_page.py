"""Sweeps queued from the page (app/sweeps.py, the Sweep tab): the grid, its expected time, the queue's cap, the
sweep file beside its runs, and Explore's curves of its runs. Handlers called directly on the tiny BLIP."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from app import results, sweeps
from app.figures import metric_figure
from app.services import Services
from app.settings import Settings
from app.tabs import explore
from app.tabs import sweep as sweep_tab
from training.errors import UserError
from training.jobs.limits import JobLimits
from training.jobs.store import Outcome
from training.sweeps.grid import load_spec

LIMITS = JobLimits(max_queued=20, max_queued_per_submitter=20, max_runtime_s=0, max_concurrent=1, stop_grace_s=5)


@pytest.fixture
def make_services(tmp_path: Path, tiny_model_dir, tiny_caption_dataset, tiny_vqa_dataset):
    made = []

    def make(limits: JobLimits = LIMITS, home: Path | None = None, **overrides) -> Services:
        settings = Settings(
            base_model=str(tiny_model_dir),
            home=home or tmp_path / f"home{len(made)}",
            limits=limits,
            **overrides,
            datasets={"caption": str(tiny_caption_dataset), "vqa": str(tiny_vqa_dataset)},
            results_dir=tmp_path / "results",
        )
        made.append(Services(settings))
        return made[-1]

    yield make
    for services in made:
        services.close()


def form(**changes) -> dict:
    """The Sweep form's values by field name (sweep_tab.FORM)."""
    values = dict(
        name="tiny",
        task="caption",
        methods=["lora", "serial-adapter"],
        budgets="2k",
        fractions="0.5, 1",
        seeds="0",
        max_steps=2,
        batch_size=4,
        eval_limit=6,
        towers="both",
    )
    values.update(changes)
    return values


def test_the_page_counts_the_runs_of_the_grid_and_says_how_long_they_take(make_services):
    services = make_services()
    plan = sweeps.draft(services, sweep_tab.sweep_form(services, **form(seeds="0 1")))
    assert len(plan.configs) == 8  # 2 methods x 1 budget x 2 shares x 2 seeds
    assert {(c.method, c.data_fraction, c.seed) for c in plan.configs} == {
        (m, f, s) for m in ("lora", "serial-adapter") for f in (0.5, 1.0) for s in (0, 1)
    }
    assert all(c.max_steps == 2 and c.batch_size == 4 and c.eval_limit == 6 for c in plan.configs)
    text = sweep_tab.summary_text(services, plan)
    assert text.startswith("**8 runs** (2 methods × 1 budget × 2 shares × 2 seeds")
    # Nothing has finished on this tiny model and there is no benchmark for it: no number is made up.
    assert plan.expected_s is None and "No time estimate for 8 of them" in text


def test_the_expected_time_is_the_train_tabs_estimate_summed_over_the_runs(make_services, monkeypatch):
    services = make_services()
    monkeypatch.setattr(services, "expected_time", lambda config, steps: (10.0 * steps, "a pace"))
    plan = sweeps.draft(services, sweep_tab.sweep_form(services, **form()))
    assert plan.expected_s == pytest.approx(10.0 * 2 * 4)  # 4 runs of 2 steps at 10 s a step
    assert "**Expected time:** about 1 min 20 s" in sweep_tab.summary_text(services, plan)


def test_budgets_a_method_cannot_reach_are_skipped_and_said(make_services):
    services = make_services()
    plan = sweeps.draft(services, sweep_tab.sweep_form(services, **form(methods=["prompt"], budgets="2k 100%")))
    assert len(plan.configs) == 2 and len(plan.skipped) == 2
    assert "2 skipped: prompt trains" in sweep_tab.summary_text(services, plan)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("methods", [], "Tick at least one method"),
        ("budgets", " ", "Give at least one budget"),
        ("fractions", "0.5 lots", "'lots' is not a number"),
        ("fractions", "1.5", "outside (0, 1]"),
        ("seeds", "-1", "0 or more"),
    ],
)
def test_a_bad_field_is_named_in_a_sentence(make_services, field, value, message):
    services = make_services()
    assert message in sweep_tab.summary(services, form(**{field: value}))


def test_a_queued_sweep_is_one_job_per_run_with_a_sweep_file_the_cli_reruns(make_services):
    services = make_services()
    plan = sweeps.draft(services, sweep_tab.sweep_form(services, **form()))
    queued = sweeps.queue(services, plan, "someone")
    jobs = services.store.list_jobs()
    assert [job.id for job in jobs] == list(queued.jobs.values())
    assert all(job.submitter == "someone" and job.state == "queued" for job in jobs)
    assert [job.run_config for job in jobs] == plan.configs
    spec = load_spec(queued.sweep_file)  # the same format as `python -m training sweep --config`
    assert spec.out == queued.folder and [p.name for p in spec.points()] == list(queued.jobs)
    assert [spec.run_config(p) for p in spec.points()] == plan.configs
    assert sweeps.queued_sweeps(services)[0].jobs == queued.jobs
    assert sweeps.counts(services, queued) == {"queued": 4}
    assert sweeps.sweep_of_job(services) == {job.id: "tiny" for job in jobs}
    # The page names its runs in words, not by grid point (caption__lora__b2k__f0.5__s0) or job id.
    shown = sweep_tab.show_sweep(services, queued.id)
    table = shown["table"]
    assert shown["status"].endswith(
        "*Test score: CIDEr-D: how closely a caption matches the human ones, rare shared "
        "word groups counting most: 0 (nothing in common) to 10 (word for word as every "
        "human caption); higher is better.*"
    )
    assert list(table.columns) == ["run", "state", "test score"] and list(table["state"]) == ["queued"] * 4
    assert "LoRA 2000, 50 % of the data, seed 0 (captions)" in list(table["run"])
    assert not any("__" in name or name in queued.jobs.values() for name in table["run"])


def test_a_queued_sweep_comes_back_from_the_durable_location_after_a_restart_on_an_empty_disk(
    make_services, tmp_path: Path
):
    from tests.test_durable import WriteOnceWatch

    bucket, home = tmp_path / "bucket", tmp_path / "space-home"
    watch = WriteOnceWatch(bucket)
    services = make_services(home=home, durable=bucket)
    queued = sweeps.queue(services, sweeps.draft(services, sweep_tab.sweep_form(services, **form())), "someone")
    assert watch.check() == 2  # its sweep file and its list of jobs
    services.close()
    shutil.rmtree(home)
    again = make_services(home=home, durable=bucket)
    [back] = sweeps.queued_sweeps(again)
    assert (back.name, back.jobs, back.submitter) == ("tiny", queued.jobs, "someone")
    assert load_spec(back.sweep_file).out == queued.folder  # the command line reruns it where it was
    # Its jobs were still queued on the lost disk: they are gone, and the page says so instead of failing.
    assert sweeps.counts(again, back) == {"deleted": 4}
    table = sweep_tab.show_sweep(again, back.id)["table"]  # still named in words, from the sweep file
    assert list(table["state"]) == ["deleted"] * 4 and "LoRA 2000, 50 % of the data, seed 0 (captions)" in list(
        table["run"]
    )
    assert not any("__" in name for name in table["run"])
    [(label, value)] = sweep_tab.sweep_choices(again, "someone", back.id)["choices"]
    assert value == back.id and label.startswith("tiny · 4 runs · queued ") and back.id not in label
    watch.check()


def test_each_run_counts_against_the_personal_cap_and_a_sweep_that_does_not_fit_is_refused_whole(make_services):
    services = make_services(JobLimits(max_queued=20, max_queued_per_submitter=4, max_runtime_s=0))
    plan = sweeps.draft(services, sweep_tab.sweep_form(services, **form()))
    one = sweeps.draft(services, sweep_tab.sweep_form(services, **form(methods=["lora"], fractions="1")))
    sweeps.queue(services, one, "me")
    with pytest.raises(
        UserError,
        match="You already have 1 job queued or running and may have 4 at most.*these 4 runs do not fit, 3 would",
    ):
        sweeps.queue(services, plan, "me")
    assert len(services.store.list_jobs()) == 1  # nothing of the refused sweep was queued
    assert "this sweep is too big to queue" not in sweep_tab.summary_text(services, plan)
    big = sweeps.draft(services, sweep_tab.sweep_form(services, **form(seeds="0 1")))
    assert "Each run counts as one of your 4 jobs" in sweep_tab.summary_text(services, big)


def test_explore_draws_a_page_sweeps_runs_as_dotted_lines_beside_the_precomputed_ones():
    def row(source: str, method: str, params: int, score: float) -> dict:
        return {
            "task": "caption",
            "method": method,
            "budget": "2k",
            "trainable_params": params,
            "data_fraction": 1.0,
            "seed": 0,
            "CIDEr-D": score,
            "source": source,
            "run_id": "",
        }

    frame = pd.DataFrame(
        [
            row(results.SWEEP, "lora", 1000, 0.5),
            row(results.SWEEP, "lora", 2000, 0.6),
            row(results.SWEPT, "lora", 1500, 0.4),
            row(results.SWEPT, "lora", 3000, 0.45),
            row(results.MINE, "lora", 1200, 0.3),
        ]
    )
    figure = metric_figure(frame, "trainable_params", "CIDEr-D", ("data_fraction", "1.0"))
    traces = {trace.name: trace for trace in figure.data}
    assert set(traces) == {"LoRA", "your sweep: LoRA", "your LoRA"}
    assert list(traces["your sweep: LoRA"].x) == [1500, 3000] and traces["your sweep: LoRA"].line.dash == "dot"
    assert traces["LoRA"].line.dash is None and traces["your LoRA"].mode == "markers"


def test_explore_counts_a_page_sweeps_finished_runs_apart_from_the_train_tabs(make_services, tmp_path: Path):
    services = make_services()
    (tmp_path / "results").mkdir()
    pd.DataFrame(
        [
            {
                "task": "caption",
                "method": "lora",
                "budget": "2k",
                "data_fraction": 1.0,
                "trainable_params": 2000,
                "seed": 0,
                "CIDEr-D": 0.5,
            }
        ]
    ).to_csv(tmp_path / "results" / "runs.csv", index=False)
    queued = sweeps.queue(services, sweeps.draft(services, sweep_tab.sweep_form(services, **form(fractions="1"))), "me")
    for job_id in queued.jobs.values():
        services.store.claim_next("worker-1", max_concurrent=1)
        run_dir = Path(services.store.get(job_id).run_dir)
        run_dir.mkdir(parents=True)
        (run_dir / "config.json").write_text(json.dumps({"trainable_params": 2000, "trainable_percent": 1.0}))
        (run_dir / "eval.json").write_text(json.dumps({"metrics": {"CIDEr-D": 0.4}}))
        assert services.store.finish(job_id, "worker-1", Outcome("finished", "finished in 1 s", 0))
    note = explore.explore(services, "caption", None, None, None, True)["note"]
    assert note.endswith(
        "Runs you finish in the Train tab appear here as stars. Dotted curves: 2 finished runs of "
        "the sweeps you queued in the Sweep tab."
    )
