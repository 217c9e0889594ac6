"""The app's handlers, formatting, figures and settings, called directly on the tiny BLIP (no server)."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from app import format as fmt
from app import results
from app.figures import metric_figure
from app.services import Comparison, RunRecord, Services
from app.settings import Settings, parse_auth
from app.tabs import compare, explore, runs, train
from training.catalog import METHOD_NAMES
from training.compare import Column
from training.errors import UserError
from training.jobs.limits import JobLimits
from training.jobs.outcome import KILLED_HINT
from training.jobs.store import Outcome
from training.methods.vlmodel import VLModel
from training.model.base_model import load_base_model
from training.paths import REPO_ROOT
from training.run.config import TOWERS, RunConfig

LIMITS = JobLimits(max_queued=20, max_queued_per_submitter=20, max_runtime_s=0, max_concurrent=1, stop_grace_s=5)


@pytest.fixture
def make_services(tmp_path: Path, tiny_model_dir, tiny_caption_dataset, tiny_vqa_dataset):
    made = []

    def make(**overrides) -> Services:
        options = dict(
            base_model=str(tiny_model_dir),
            home=tmp_path / f"home{len(made)}",
            limits=LIMITS,
            datasets={"caption": str(tiny_caption_dataset), "vqa": str(tiny_vqa_dataset)},
            results_dir=tmp_path / "results",
        )
        made.append(Services(Settings(**{**options, **overrides})))
        return made[-1]

    yield make
    for services in made:
        services.close()


@pytest.fixture
def services(make_services) -> Services:
    return make_services()


def form(**changes) -> dict:
    """The Train form's values by field name (train.FORM); no step floor, so tiny runs stay tiny."""
    values = dict(
        task="caption",
        method="lora",
        budget="2k",
        data_fraction=1.0,
        seed=0,
        epochs=1,
        max_steps=0,
        lr=0.002,
        batch_size=4,
        towers="both",
        base_model="embedded",
        dataset="embedded",
        eval_limit=0,
        min_steps=0,
        patience=3,
    )
    values.update(changes)
    return values


def status(state: str, **fields) -> dict:
    base = dict(
        state=state,
        config={"task": "caption", "method": "lora", "budget": "18k", "data_fraction": 0.1},
        queue_position=None,
        phase=None,
        step=None,
        total_steps=None,
        loss=None,
        eta_s=None,
        elapsed_s=None,
        metrics={},
        reason="",
        hint=None,
        cancel_requested_by=None,
    )
    return {**base, **fields}


def record(run_id: str = "20261129-100000-aaaaaa", **changes) -> RunRecord:
    values = dict(
        id=run_id,
        state="finished",
        reason="finished in 30 s",
        submitter="visitor-1",
        config={"task": "caption", "method": "lora", "budget": "0.5%", "data_fraction": 0.5, "seed": 1},
        info={
            "trainable_params": 21504,
            "trainable_percent": 0.72,
            "total_params": 2_986_000,
            "knob": "rank",
            "knob_value": 4,
            "train_examples": 1000,
            "total_steps": 32,
            "command": "python -m training train",
            "base_model": "tiny",
            "dataset_name": "tiny-caption",
        },
        metrics={"CIDEr-D": 0.5, "BLEU-4": 0.25, "num_examples": 6},
        run_dir=f"/runs/{run_id}",
        created_at=1_764_400_000.0,
        started_at=1_764_400_010.0,
        finished_at=1_764_400_075.0,
        has_weights=True,
    )
    values.update(changes)
    return RunRecord(**values)


# --- formatting --------------------------------------------------------------------------------------------


def test_the_formatting_module_loads_without_torch():
    code = "import sys, app.format; print(sorted(m for m in ('torch', 'transformers', 'gradio') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    assert done.stdout.strip() == "[]"


def test_a_method_without_a_knob_states_its_fixed_count_or_why_a_smaller_budget_fails():
    from app.services import Estimate
    from training.methods.budget import fixed_count_plan

    within = Estimate(fixed_count_plan("lora", 960, 70_149, 1_000, "both"), 70_149, "tiny")  # any non-baseline
    text = fmt.estimate_text(within)
    assert text.startswith("**960 trainable parameters** = 1.37 % of the model (70,149 parameters). ")
    assert text.endswith(
        "lora has no knob: it trains its fixed 960 parameters (1.37% of the model) with "
        "towers=both, within the budget of 1,000."
    )
    below = Estimate(fixed_count_plan("lora", 960, 70_149, 500, "both"), 70_149, "tiny")
    text = fmt.estimate_text(below)
    assert text.startswith("⚠️ **This budget is out of reach.** lora has no knob: it always trains 960 parameters")
    assert "cannot stay within a budget of 500. Give a budget of at least 960" in text


def test_numbers_and_durations_read_like_a_sentence():
    assert (fmt.count(21504), fmt.count(None)) == ("21,504", "-")
    assert (fmt.percent(0.7213), fmt.percent(12.5), fmt.percent(100)) == ("0.721 %", "12.5 %", "100 %")
    assert fmt.fraction(0.1) == "10 %"
    assert [fmt.duration(s) for s in (5, 65, 3720)] == ["5 s", "1 min 05 s", "1 h 02 min"]
    assert (fmt.metric("accuracy", 63.14), fmt.metric("CIDEr-D", 0.45213)) == ("accuracy 63.1 %", "CIDEr-D 0.452")


def test_the_estimate_gives_the_exact_count_and_share_before_launch(services: Services):
    text = fmt.estimate_text(services.estimate("lora", "2k"))
    assert text.startswith("**2,304 trainable parameters** = 3.28 % of the model (70,149 parameters): LoRA with rank 3")
    assert text.endswith("Reachable with this method: 768 to 24,576.")


@pytest.mark.parametrize("towers", TOWERS)
def test_the_estimate_counts_from_the_config_alone_what_the_loaded_model_trains(
    towers, make_services, tiny_model_dir, tmp_path, monkeypatch
):
    shape_only = tmp_path / "config-only"
    shutil.copytree(tiny_model_dir, shape_only, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))

    def no_weights(*args, **kwargs):
        raise AssertionError("the estimate read a weight file")

    services = make_services(base_model=str(shape_only))
    with monkeypatch.context() as patched:
        for target in (
            "safetensors.safe_open",
            "safetensors.torch.load_file",
            "transformers.modeling_utils.safe_open",
            "torch.load",
        ):
            patched.setattr(target, no_weights)
        estimates = {method: services.estimate(method, "2k", towers) for method in METHOD_NAMES}
    for method, estimate in estimates.items():
        vl = VLModel(load_base_model(str(tiny_model_dir)))
        assert estimate.total_params == sum(p.numel() for p in vl.model.parameters())
        attached = vl.attach(method, "real", towers, estimate.plan.value)
        assert (method, estimate.plan.trainable_params) == (method, attached.num_trainable())


def test_a_budget_the_method_cannot_reach_is_explained_with_its_range(services: Services):
    text = train.estimate(services, "lora", "90%", "both", "embedded")
    assert text.startswith("⚠️ **This budget is out of reach.**")
    assert "trains between 768 (rank 1) and 24,576 (rank 32) parameters" in text
    assert "Choose a budget in that range" in text


def test_baselines_say_the_budget_does_not_apply(services: Services):
    assert "ignores the budget: it trains every weight" in train.estimate(services, "full", "1k", "both", "")
    assert train.estimate(services, "zero-shot", "1k", "both", "").startswith("**0 trainable parameters**")


def test_an_unknown_model_id_or_budget_text_is_a_sentence_not_a_traceback(services, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    assert train.estimate(services, "lora", "1k", "both", "nobody/no-such-blip").startswith(
        "⚠️ Base model 'nobody/no-such-blip' is not on this machine and the Hugging Face Hub cannot be reached"
    )
    assert "is not understood" in train.estimate(services, "lora", "a lot", "both", "")


@pytest.mark.parametrize(
    ("job", "expected"),
    [
        (
            status("queued", queue_position=1),
            "**Queued #1** (LoRA 18k on 10 % of scene-caption): it starts next, as soon as a running job ends.",
        ),
        (
            status("queued", queue_position=1, wait_s=93),
            "**Queued #1** (LoRA 18k on 10 % of scene-caption): it starts next, in about 1 min 30 s, when a",
        ),
        (status("queued", queue_position=3), "**Queued #3** (LoRA 18k on 10 % of scene-caption): 2 jobs ahead of it."),
        (
            status("queued", queue_position=3, wait_s=398),
            "**Queued #3** (LoRA 18k on 10 % of scene-caption): 2 jobs ahead of it; it starts in about 6 min 40 s.",
        ),
        (
            status("queued", queue_position=1, wait_s=2),
            "**Queued #1** (LoRA 18k on 10 % of scene-caption): it starts next, in a moment, when a running job ends.",
        ),
        (
            status("running", phase="starting"),
            "**Starting** (LoRA 18k on 10 % of scene-caption): loading the model and the data.",
        ),
        (
            status("running", phase="training", step=40, total_steps=312, loss=2.31, eta_s=80),
            "**Training** (LoRA 18k on 10 % of scene-caption): step 40 of 312, loss 2.310, about 1 min 20 s left.",
        ),
        (status("running", phase="evaluating"), "**Scoring on the test set**"),
        (
            status("running", phase="evaluating", eval_done=12, eval_total=40),
            "**Scoring on the test set** (LoRA 18k on 10 % of scene-caption): 12 of 40 test examples answered.",
        ),
        (status("running", phase="done"), "**Finishing** (LoRA 18k on 10 % of scene-caption): test scores written"),
        (
            status("running", phase="stopped"),
            "**Stopping** (LoRA 18k on 10 % of scene-caption): the weights trained so far are saved.",
        ),
        (
            status("running", phase="training", step=4, total_steps=9, cancel_requested_by="ann"),
            "**Stopping** (LoRA 18k on 10 % of scene-caption): cancel requested by ann.",
        ),
        (
            status("finished", elapsed_s=65, metrics={"CIDEr-D": 0.4521}),
            "**Finished** in 1 min 05 s (LoRA 18k on 10 % of scene-caption). Test score: CIDEr-D 0.452 (how closely a "
            "caption matches the human ones",
        ),
        (
            status("failed", reason="killed by SIGKILL", hint="try a smaller batch size"),
            "**Failed** (LoRA 18k on 10 % of scene-caption): killed by SIGKILL. **What to do:** try a smaller batch",
        ),
        (
            status("cancelled", reason="cancelled by ann; the weights trained so far are kept"),
            "**Cancelled** (LoRA 18k on 10 % of scene-caption): cancelled by ann; the weights trained so far are kept.",
        ),
    ],
)
def test_the_job_headline_says_where_the_job_is(job: dict, expected: str):
    assert expected in fmt.job_headline(job)


def test_the_progress_bar_says_what_is_happening_and_keeps_what_a_stopped_job_reached():
    scoring = fmt.progress_html(
        status("running", phase="evaluating", step=20, total_steps=20, eta_s=0.0, eval_done=30, eval_total=40)
    )
    assert "99 % · scoring 30 of 40" in scoring and "left" not in scoring
    cancelled = fmt.progress_html(status("cancelled", phase="stopped", step=20, total_steps=150))
    assert 'style="width:12.7%"' in cancelled and "13 % · stopped at step 20 of 150" in cancelled
    assert 'style="width:100.0%"' in fmt.progress_html(status("running", phase="done", step=5, total_steps=5))


def test_a_run_stopped_early_says_how_many_of_its_steps_it_trained():
    stopped = runs.details(record(state="interrupted", progress={"step": 5, "phase": "training"}))
    assert "1,000 training examples, 5 of 32 planned steps." in stopped
    assert "1,000 training examples, 32 steps." in runs.details(record(progress={"step": 32}))


def test_a_runs_details_give_its_learning_rate_and_where_it_came_from():
    def trained(**info) -> str:
        return runs.details(record(progress={"step": 32}, info={**record().info, **info}))

    assert "32 steps, learning rate 0.0019 (tuned: results/lr.csv)." in trained(lr=0.0019, lr_source="results/lr.csv")
    assert "32 steps, learning rate 0.02 (given)." in trained(lr=0.02, lr_source="given")
    assert "learning rate 0.006 (the method's default)." in trained(lr=0.006, lr_source="method default")
    assert "32 steps, learning rate 0.006." in trained(lr=0.006)  # a run from before sources were recorded


def simulated_run(run_dir: Path, target: int, cap: int = 0):
    """A run's files as the trainer writes them, one logged row at a time: a 30 s warm-up step, then 1 s a step,
    a row every 5 steps, a 15 s validation every 20 steps (and at step 0); yields (step, seconds truly left)."""
    (run_dir / "config.json").write_text(json.dumps({"val_every": 20}))
    validation = run_dir / "validation.jsonl"
    validation.write_text(json.dumps({"step": 0, "seconds": 15.0}) + "\n")
    clock, total = 15.0 + 30.0, cap or target
    for step in range(1, target + 1):
        clock += 1.0 if step > 1 else 0.0
        if step == cap:
            total = target  # still improving at its cap: the run goes on to its hard limit
        if step % 5 == 0 or step == 1:
            with (run_dir / "metrics.jsonl").open("a") as rows:
                rows.write(json.dumps({"step": step, "total_steps": total, "elapsed_s": clock}) + "\n")
            due = sum(1 for s in range(step, total + 1) if s % 20 == 0 or s == total) - (step % 20 == 0)
            yield step, total, (total - step) + 15.0 * due
        if step % 20 == 0 or step == total:
            clock += 15.0
            with validation.open("a") as rows:
                rows.write(json.dumps({"step": step, "seconds": 15.0}) + "\n")


def test_the_time_left_is_steady_through_validation_pauses_and_only_grows_when_the_run_goes_on(tmp_path: Path):
    from training.jobs.status import steady_eta

    seen = []
    for step, total, truth in simulated_run(tmp_path, target=160, cap=100):
        eta = steady_eta(tmp_path, {"step": step, "total_steps": total, "eta_s": 999.0})
        seen.append((step, total, eta))
        if step >= 10:  # two rows past the warm-up step: the run's own pace, validations counted apart
            assert eta == pytest.approx(truth, abs=0.5), (step, eta, truth)
    assert seen[0][2] == 999.0  # too early to know the pace: the trainer's figure
    # From one row to the next (5 s apart) the figure falls, whatever validation happened in between...
    for (_, total, before), (step, after_total, after) in zip(seen[2:], seen[3:], strict=False):
        if after_total == total:
            assert after <= before, (step, before, after)
    # ...and rises only when the run goes on past its cap, by the steps and validations it adds.
    grew = [(b, a) for (_, t1, b), (_, t2, a) in zip(seen, seen[1:], strict=False) if t2 > t1]
    assert len(grew) == 1 and grew[0][1] - grew[0][0] == pytest.approx((60 + 3 * 15) - (5 + 15), abs=0.5)


def test_the_time_left_reads_about_and_rounded():
    assert [fmt.time_left(s) for s in (7.4, 58, 94.9, 151, 605)] == [
        "about 5 s left",
        "about 1 min 00 s left",
        "about 1 min 30 s left",
        "about 2 min 30 s left",
        "about 10 min 00 s left",
    ]


def test_the_progress_bar_follows_the_steps():
    assert fmt.progress_share(status("queued")) == 0
    assert fmt.progress_share(status("running", phase="training", step=40, total_steps=80)) == pytest.approx(0.475)
    assert 'style="width:100.0%"' in fmt.progress_html(status("finished"))
    assert "about 20 s left" in fmt.progress_html(status("running", phase="training", step=1, total_steps=2, eta_s=20))


# --- train -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"data_fraction": 0}, r"outside \(0, 1\]"),
        ({"data_fraction": 1.5}, r"outside \(0, 1\]"),
        ({"data_fraction": None}, "Give the share of the training data"),
        ({"epochs": 0}, "Epochs must be above 0"),
        ({"batch_size": 0}, "batch size must be at least 1"),
        ({"lr": 3}, "learning rate of 3 is out of range"),
        ({"max_steps": 2.5}, "Steps must be a whole number"),
        ({"max_steps": -1}, "cannot be negative"),
        ({"seed": -1}, "The seed must be 0 or more, not -1"),
        ({"budget": "lots"}, "is not understood"),
    ],
)
def test_a_bad_form_value_gets_one_sentence(services: Services, changes: dict, message: str):
    with pytest.raises(UserError, match=message):
        services.run_config(**form(**changes))


def test_zero_steps_and_zero_test_examples_mean_no_limit(services: Services, tiny_model_dir: Path):
    config = services.run_config(**form(max_steps=0, eval_limit=0))
    assert (config.max_steps, config.eval_limit, config.base_model) == (None, None, str(tiny_model_dir))


def size_form(task: str, **fields) -> dict:
    """A Train form as the size note reads it: LoRA on all the embedded data, the rest the study's or given."""
    return {"task": task, "method": "lora", "data_fraction": 1, "seed": 0, "dataset": "embedded", **fields}


def test_the_size_note_counts_examples_pairs_and_steps(services: Services):
    caption = train.describe_size(
        services, size_form("caption", data_fraction=0.5, epochs=1, batch_size=4, min_steps=0)
    )
    assert caption.startswith(
        "This run trains on 12 of 24 images (36 caption pairs): up to 9 steps of 4 examples; early stopping on the "
        "validation score usually ends it sooner. No time"
    )
    vqa = train.describe_size(services, size_form("vqa", epochs=3, patience=0, min_steps=0))
    assert vqa.startswith("This run trains on 32 of 32 questions: 3 steps of 32 examples.")
    # The study's floor (min_steps 300) by default: a tiny share still trains 300 steps at most
    floored = train.describe_size(services, size_form("vqa", epochs=3))
    assert floored.startswith("This run trains on 32 of 32 questions: up to 300 steps of 32 examples; early")
    assert "only scores the base model" in train.describe_size(
        services, size_form("caption", method="zero-shot", epochs=1, batch_size=4, dataset="")
    )


def test_the_expected_time_comes_from_finished_runs_here_else_the_bench_and_warns_past_the_limit(make_services):
    services = make_services(limits=dataclasses.replace(LIMITS, max_runtime_s=120))
    job_id = services.submit(services.run_config(**form(batch_size=8)), "visitor-v1")
    services.store.claim_next("worker-1", max_concurrent=1)
    run_dir = Path(services.store.get(job_id).run_dir)
    run_dir.mkdir(parents=True)
    for step, elapsed in ((1, 10.0), (5, 18.0), (11, 30.0)):  # 10 s to start, then 2 s a step
        (run_dir / "metrics.jsonl").open("a").write(json.dumps({"step": step, "elapsed_s": elapsed}) + "\n")
    (run_dir / "eval.json").write_text(json.dumps({"metrics": {"CIDEr-D": 0.1, "eval_s": 5.0}}))
    assert services.store.finish(job_id, "worker-1", Outcome("finished", "finished in 35 s", 0))
    text = train.describe_size(
        services, size_form("caption", epochs=1, max_steps=100, batch_size=4, towers="both")
    )  # 1 s a step
    assert "**Expected time:** at most about 1 min 55 s if it runs to its cap (from 1 finished run like it on" in text
    assert "⚠️ **That is past this app's run limit of 2 min 00 s** (VLPEFT_MAX_RUNTIME_S)" not in text
    text = train.describe_size(services, size_form("caption", epochs=1, max_steps=200, batch_size=4, towers="both"))
    assert "about 3 min 35 s" in text and "past this app's run limit of 2 min 00 s" in text
    assert "No time estimate yet" in train.describe_size(
        services, size_form("caption", method="prefix", epochs=1, max_steps=200, batch_size=4, towers="both")
    )

    bench = {"train": [{"method": "prefix", "towers": "both", "batch_size": 32, "step_s": 0.2}], "eval": {"eval_s": 3}}
    services.settings.results_dir.mkdir(parents=True, exist_ok=True)
    (services.settings.results_dir / "bench.json").write_text(json.dumps(bench))
    seconds, source = services.expected_time(RunConfig(method="prefix", batch_size=16), 100)
    assert seconds == pytest.approx(13.0) and source.startswith("from the benchmark")


def test_a_queued_job_says_how_long_until_it_starts_from_the_estimates_of_the_jobs_ahead(make_services, monkeypatch):
    services = make_services()
    paces = {"lora": 100.0, "prefix": 40.0}  # seconds a job of each method takes here, start to scores

    def pace(config: RunConfig, steps: int) -> tuple[float, str] | None:
        return (paces[config.method], "a pace") if config.method in paces else None

    monkeypatch.setattr(services, "expected_time", pace)
    running = services.submit(services.run_config(**form()), "v1")
    services.store.claim_next("worker-1", max_concurrent=1)  # started, no countdown yet: its estimate less its time
    second = services.submit(services.run_config(**form(method="prefix", budget="1k")), "v1")
    third = services.submit(services.run_config(**form(seed=1)), "v1")
    ran = time.time() - services.store.get(running).started_at
    assert services.wait_s(second) == pytest.approx(100.0 - ran, abs=2)
    assert services.wait_s(third) == pytest.approx(100.0 + 40.0 - ran, abs=2)  # after the running job and the second
    headline = fmt.job_headline(services.status(third))
    assert headline.startswith("**Queued #2** (LoRA 2k on 100 % of tiny-caption): 1 job ahead of it; it starts in ")
    two_slots = make_services(limits=dataclasses.replace(LIMITS, max_concurrent=2))
    monkeypatch.setattr(two_slots, "expected_time", pace)
    two_slots.submit(two_slots.run_config(**form()), "v1")
    two_slots.store.claim_next("worker-1", max_concurrent=2)
    waiting = [two_slots.submit(two_slots.run_config(**form(method=m, budget="1k")), "v1") for m in ("prefix", "lora")]
    assert two_slots.wait_s(waiting[0]) == 0.0  # a slot is free
    assert two_slots.wait_s(waiting[1]) == pytest.approx(40.0, abs=2)  # the prefix job ends before the running one
    unknown = two_slots.submit(two_slots.run_config(**form(method="serial-adapter", budget="1k")), "v1")
    after = two_slots.submit(two_slots.run_config(**form(seed=2)), "v1")
    assert two_slots.wait_s(unknown) is not None and two_slots.wait_s(after) is None  # no figure made up
    assert services.status(running)["state"] == "running" and "wait_s" not in services.status(running)


def test_start_refuses_bad_input_without_queueing_anything(services: Services):
    with pytest.warns(UserWarning, match="outside"):
        result = train.start(services, None, "v1", form(data_fraction=0))
    assert result["start_note"].startswith("⚠️ **Not started.** Data fraction 0 is outside (0, 1]")
    assert list(result) == ["start_note"]  # the job, its view and the picker: untouched
    assert services.store.list_jobs() == []


def test_start_queues_jobs_shows_their_place_and_a_reload_reattaches(services: Services):
    first = train.start(services, None, "v1", form())
    second = train.start(services, None, "v1", form(method="prefix", budget="1k"))
    assert "**Queued #1**" in first["status"]
    assert "**Queued #2** (Prefix tuning 1k on 100 % of tiny-caption)" in second["status"]
    assert "python -m training train --task caption --method prefix --budget 1k" in second["command"]["value"]
    assert services.store.get(first["job"]).submitter == "visitor-v1"
    assert [value for _, value in second["jobs"]["choices"]] == [second["job"], first["job"]]
    assert second["start_note"] == ""

    assert train.reattach(services, None, "v1", "") == second["job"]  # the newest live job of this browser
    assert train.reattach(services, None, "v2", "") is None
    train.cancel(services, None, "v1", second["job"])
    assert "**Cancelled**" in train.show_job(services, second["job"], -1)["status"]


def test_a_failed_job_shows_its_reason_hint_and_log_tail(services: Services):
    job_id = services.submit(services.run_config(**form()), "visitor-v1")
    services.store.claim_next("worker-1", max_concurrent=1)
    ended = Outcome(
        "failed",
        "killed by SIGKILL",
        -9,
        error="killed by SIGKILL",
        hint=KILLED_HINT,
        log_tail="step 1/5 loss 3.1\nstep 2/5 loss 3.0",
    )
    assert services.store.finish(job_id, "worker-1", ended)
    view = train.show_job(services, job_id, -1)
    headline, progress, cancel_button, log, log_box, timer = (
        view[name] for name in ("status", "progress", "cancel", "log", "log_box", "timer")
    )
    assert headline.startswith(
        "**Failed** (LoRA 2k on 100 % of tiny-caption): killed by SIGKILL. **What to do:** The process was"
    )
    assert log == "step 1/5 loss 3.1\nstep 2/5 loss 3.0\n\nerror: killed by SIGKILL"
    assert log_box["open"] and not cancel_button["visible"] and not timer.active and "0 %" in progress


def test_demo_mode_caps_steps_and_allows_one_job_per_visitor(make_services):
    services = make_services(demo=True, demo_max_steps=2)
    config, _, size, notes = services.prepare(services.run_config(**form()))
    assert (config.max_steps, size.steps) == (2, 2) and notes == [
        "The public demo caps runs at 2 steps (this one would take 18)."
    ]
    job_id = services.submit(config, "visitor-a")
    with pytest.raises(UserError, match="You already have 1 job queued or running"):
        services.submit(config, "visitor-a")
    services.submit(config, "visitor-b")
    with pytest.raises(UserError, match="started by another visitor"):
        services.cancel(job_id, "visitor-b")
    with pytest.raises(UserError, match="trains the embedded model only"):
        services.run_config(**form(base_model="Salesforce/blip-image-captioning-base"))
    assert services.settings.job_limits().max_runtime_s == 600


# --- compare -----------------------------------------------------------------------------------------------


def test_each_card_shows_what_its_model_said_plainly_with_a_tag_where_it_differs_from_zero_shot():
    columns = [
        Column("zero-shot (base)", "zero-shot", "a large red circle in the middle"),
        Column("lora", "lora", "a blue circle", "/runs/r1", "0.5%", 21504, 0.5, {"CIDEr-D": 0.8}),
        Column("prefix", "prefix", "a large red circle in the middle", "/runs/r2", "1k", 1000, 1.0),
    ]
    page = compare.comparison_html(Comparison(columns, "caption", image_id="test-0", references=["a red circle"]))
    assert "1 of 2 adapters give a different output from the zero-shot base" in page
    cards = page.split("data-method=")[1:]
    # What the adapter said, whole and unmarked; the difference is a small tag with the base's words on hover.
    assert '<div class="vl-output">a blue circle</div>' in cards[1]
    assert (
        '<span class="vl-tag" title="the zero-shot base said: a large red circle in the middle">differs from '
        in (cards[1])
    )
    assert "same as zero-shot" in cards[2] and "differs from" not in cards[2]
    assert "<del" not in page and "<mark" not in page
    assert "21,504 trained parameters · data 50 %" in cards[1] and "test set: CIDEr-D 0.8" in cards[1]
    assert "<li>a red circle</li>" in page and "CIDEr-D: how closely a caption matches the human ones" in page
    assert page.count('class="vl-card vl-differs"') == 1


def test_a_short_answer_is_shown_as_decoded_with_the_bases_answer_on_hover():
    columns = [  # decoding ended the zero-shot answer at its first comma (training/run/tasks.py)
        Column("zero-shot (base)", "zero-shot", "circle"),
        Column("lora", "lora", "red", "/runs/r1", "0.5%", 21504, 0.5),
    ]
    page = compare.comparison_html(Comparison(columns, "vqa", question="what colour is the circle ?"))
    cards = page.split("data-method=")[1:]
    assert '<div class="vl-output">circle</div>' in cards[0] and "vl-cut" not in page
    assert '<div class="vl-output">red</div>' in cards[1] and 'title="the zero-shot base said: circle"' in cards[1]
    assert "accuracy: the share of questions answered as the human annotators did, 0 to 100 %" in page


def test_an_output_cut_at_the_token_limit_ends_with_an_ellipsis():
    columns = [
        Column("zero-shot (base)", "zero-shot", "a red circle", truncated=True),
        Column("lora", "lora", "a red circle in the", "/runs/r1", "0.5%", 21504, 0.5, truncated=True),
        Column("prefix", "prefix", "a red circle", "/runs/r2", "1k", 1000, 1.0),
    ]
    cards = compare.comparison_html(Comparison(columns, "caption")).split("data-method=")[1:]
    assert [card.count("…</span>") for card in cards] == [1, 1, 0]
    assert '<div class="vl-output">a red circle<span class="vl-cut"' in cards[0]
    assert '<div class="vl-output">a red circle in the<span class="vl-cut"' in cards[1]


def test_compare_cards_name_their_run_and_mark_a_partly_trained_adapter(make_services, tmp_path: Path):
    done = record("20261129-100000-aaaaaa")
    stopped = record("20261129-110000-bbbbbb", state="cancelled", progress={"step": 20})
    columns = [
        Column("zero-shot (base)", "zero-shot", "a red circle", test_score={"CIDEr-D": 5.6}),
        Column("lora", "lora", "a red circle", done.run_dir, "0.5%", 21504, 0.5),
        Column("lora", "lora", "a blue circle", stopped.run_dir, "0.5%", 21504, 0.5),
    ]
    page = compare.comparison_html(
        Comparison(
            columns,
            "caption",
            records={r.run_dir: r for r in (done, stopped)},
            base_score_source=" (the sweep's zero-shot run)",
        )
    )
    cards = page.split("data-method=")[1:]
    assert "LoRA rank 4 · budget 0.5%" in cards[1] and "50 % of tiny-caption · seed 1 ·" in cards[1]
    assert "partly trained" not in cards[1] and "aaaaaa" not in cards[1]  # runs in words, ids in Runs' details
    assert "⚠️ partly trained: cancelled at step 20 of 32" in cards[2]
    assert "test set (the sweep&#x27;s zero-shot run): CIDEr-D 5.6" in cards[0]

    write_sweep(tmp_path / "sweep")
    embedded = make_services(base_model=None, datasets={"caption": None, "vqa": None}, results_dir=tmp_path / "sweep")
    assert compare.sweep_zero_shot(embedded, "caption") == {"CIDEr-D": pytest.approx(0.2)}
    assert compare.sweep_zero_shot(make_services(results_dir=tmp_path / "sweep"), "caption") == {}  # other model


def test_a_bad_upload_is_refused_with_a_sentence_and_a_good_one_previewed(services: Services, tmp_path: Path):
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    with pytest.raises(UserError, match="^The file 'notes.png' is not a readable image"):
        compare.take_upload(services, str(text))
    huge = tmp_path / "huge.png"
    Image.new("L", (10_000, 10_000)).save(huge)
    with pytest.raises(UserError, match="too large"):
        compare.take_upload(services, str(huge))
    photo = tmp_path / "sub" / "photo.jpg"
    photo.parent.mkdir()
    Image.new("RGB", (1200, 600), (10, 200, 10)).save(photo)
    taken = compare.take_upload(services, str(photo))
    assert Image.open(taken["picked"]).size == (384, 192) and taken["index"] is None
    assert taken["upload_path"] == str(photo)


def test_a_test_image_compares_the_base_against_its_human_captions(services: Services):
    page = compare.compare(services, "caption", [], None, 0, None)
    assert "Only the zero-shot base is shown" in page and "this image: BLEU-4" in page
    assert "Human captions of this test image</b> (test-0)" in page


@pytest.mark.parametrize(("question", "message"), [("", "Type a question"), ("why " * 500, "keep it under 300")])
def test_a_vqa_question_must_be_there_and_short(services: Services, question: str, message: str):
    with pytest.raises(UserError, match=message):
        compare.compare(services, "vqa", [], question, 0, None)


def test_picking_a_vqa_test_image_offers_its_questions(services: Services):
    picked = compare.pick_test_image(services, "vqa", 1)
    question = picked["question"]
    assert picked["index"] == 1 and Image.open(picked["picked"]).size == (192, 192)
    assert question["choices"] == [q for q in question["choices"] if q.startswith("what ")] and question["value"]
    with pytest.raises(UserError, match="Pick a test image"):
        compare.compare(services, "caption", [], None, None, None)


# --- explore -----------------------------------------------------------------------------------------------


def write_sweep(folder: Path) -> None:
    rows = [
        dict(
            task="caption",
            method=method,
            budget="0.5%",
            trainable_params=params,
            trainable_percent=0.7,
            data_fraction=fraction,
            seed=seed,
            **{"CIDEr-D": score + seed / 10},
        )
        for method, params, score in (("lora", 21504, 0.5), ("prefix", 20000, 0.3))
        for fraction in (0.1, 1.0)
        for seed in (0, 1)
    ]
    rows.append(
        dict(
            task="caption",
            method="zero-shot",
            budget="0",
            trainable_params=0,
            trainable_percent=0,
            data_fraction=1.0,
            seed=0,
            **{"CIDEr-D": 0.2},
        )
    )
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(folder / "runs.csv", index=False)


def test_explore_without_results_says_so_and_still_works(services: Services):
    shown = explore.explore(services, "caption", None, None, None, True)
    note, metric, budgets, by_fraction, table, csv_path, verdict = (
        shown[name] for name in ("note", "metric", "held_budget", "by_fraction", "table", "download", "verdict")
    )
    assert verdict.startswith("No verdict yet") and "python -m training report" in verdict
    assert note.startswith("No sweep results yet: `runs.csv` appears in")
    assert metric["value"] == "CIDEr-D" and budgets["visible"] is False
    assert by_fraction.layout.annotations[0].text.startswith("Nothing to draw yet")
    assert Path(csv_path).is_file() and list(table.columns) == [""]


def test_sweep_results_draw_a_line_per_method_with_error_bars_and_your_runs_as_stars(tmp_path: Path):
    write_sweep(tmp_path)
    sweep, note = results.load_sweep(tmp_path)
    assert note.startswith("9 sweep runs")
    study = {**record().config, "towers": "text", "epochs": 3.0, "min_steps": 300, "patience": 3, "batch_size": 32}
    off = {**study, "towers": "both", "epochs": 1.0}
    runs_here = [record(config=study), record("r-off", config=off, metrics={"CIDEr-D": 0.4})]
    mine = results.user_frame([*runs_here, record("r-failed", state="failed", metrics={})])
    assert list(mine["not_comparable"]) == ["", "towers both (study: text); an epoch cap of 1 (study: 3)"]
    frame = results.combined(sweep, mine, "caption")
    figure = metric_figure(frame, "data_fraction", "CIDEr-D", ("budget", "0.5%"))
    names = [trace.name for trace in figure.data]
    assert names == ["LoRA", "Prefix tuning", "your LoRA", "your LoRA (not comparable)"]
    lora = figure.data[0]
    assert list(lora.x) == [0.1, 1.0] and list(lora.y) == pytest.approx([0.55, 0.55])
    assert list(lora.error_y.array) == pytest.approx([0.0707, 0.0707], abs=1e-4)  # std of 0.5 and 0.6
    assert figure.data[2].marker.symbol == "star" and list(figure.data[2].y) == [0.5]
    assert figure.data[3].marker.symbol == "star-open" and list(figure.data[3].y) == [0.4]
    assert "not comparable: %{customdata[1]}" in figure.data[3].hovertemplate
    assert figure.data[3].customdata[0][1] == "towers both (study: text); an epoch cap of 1 (study: 3)"
    assert explore.not_comparable_note(mine).startswith(" Hollow stars: 1 run is **not comparable**")
    assert figure.layout.shapes[0].y0 == pytest.approx(0.2)  # zero-shot, a dashed line
    assert results.held_values(sweep, "budget") == (["all (averaged)", "0.5%"], "0.5%")  # baselines have none


def test_explore_reads_like_a_report_and_your_runs_obey_the_held_value(tmp_path: Path):
    budgets = pd.DataFrame({"method": ["lora"] * 6, "budget": ["18k", "1.8k", "0.5%", "570", "180k", "1.5M"]})
    assert results.held_values(budgets, "budget")[0] == ["all (averaged)", "570", "1.8k", "18k", "180k", "1.5M", "0.5%"]
    assert results.metric_label("accuracy_attribute_at_position") == "Accuracy: attribute at position"
    assert (results.metric_label("CIDEr-D"), results.metric_label("accuracy")) == ("CIDEr-D", "Accuracy")
    write_sweep(tmp_path)
    sweep, _ = results.load_sweep(tmp_path)
    mine = results.user_frame([record(), record("r-1k", config={**record().config, "budget": "1k"})])
    frame = results.combined(sweep, mine, "caption")
    held = metric_figure(frame, "data_fraction", "CIDEr-D", ("budget", "0.5%"))
    assert [trace.name for trace in held.data] == ["LoRA", "Prefix tuning", "your LoRA (not comparable)"]
    assert len(held.data[2].x) == 1 and held.layout.xaxis.type == "log"  # the 1k star is not at budget 0.5%
    table = results.table_view(frame, ["CIDEr-D"])
    assert {"trained parameters", "share of data", "run"} <= set(table.columns) and "LoRA" in set(table["method"])


def test_the_verdict_opens_with_a_plain_sentence_per_finding_and_folds_the_statistics(tmp_path: Path):
    from training.study.report import build_report

    write_sweep(tmp_path)
    build_report(tmp_path / "runs.csv", figures=False)
    verdict = results.load_verdict(tmp_path)
    plain, statistics = verdict.split("<details>", 1)
    assert plain.startswith("## In plain words") and [
        line[:3] for line in plain.splitlines() if line[:1].isdigit()
    ] == [
        "1. ",
        "2. ",
        "3. ",
    ]
    assert "| finding | answer |" in statistics and "Decision rules" in statistics and "![" not in verdict
    assert statistics.rstrip().endswith("</details>")


# --- runs and settings -------------------------------------------------------------------------------------


def test_the_runs_table_and_details_read_like_a_report():
    table = runs.runs_table([record()])
    row = dict(zip(table.columns, table.iloc[0], strict=True))
    assert (row["run"], row["dataset"], row["test score"], row["time"]) == (
        "LoRA 0.5%, 50 % of the data, seed 1 (captions)",
        "tiny-caption",
        "CIDEr-D 0.5",
        "1 min 05 s",
    )
    assert list(table.columns) == ["run", "dataset", "state", "test score", "time", "by", "submitted"]
    text = runs.details(record())
    assert "**Test scores:** CIDEr-D 0.5 · BLEU-4 0.25 (on 6 test examples). *CIDEr-D: how closely a caption" in text
    assert "0 (nothing in common) to 10 (word for word as every human caption); higher is better.*" in text
    assert "21,504 of 2,986,000 parameters (0.72 %), rank 4, 1,000 training examples, 32 steps" in text


def test_a_zero_shot_run_is_named_without_a_budget_or_a_share_of_data():
    zero = record(config={"task": "vqa", "method": "zero-shot", "budget": "0.5%", "data_fraction": 0.005, "seed": 0})
    assert runs.run_name(zero.config) == "Zero-shot (baseline: no training) (questions)"
    assert fmt.run_words(zero.config, "scene-vqa") == "Zero-shot (baseline: no training) on scene-vqa"
    assert zero.label.startswith("Zero-shot (baseline: no training) · tiny-caption · ") and "0.5" not in zero.label


def test_the_runs_list_filters_by_state_and_names_people_without_their_ids(services: Services):
    live = services.submit(services.run_config(**form()), "visitor-v1")
    ended = services.submit(services.run_config(**form(seed=1)), "visitor-v2")
    services.cancel(ended, "visitor-v2")
    listed = runs.refresh(services, ended, "visitor-v1", "cancelled")
    table, picker, panel = listed["table"], listed["picker"], listed["details"]
    assert list(table["run"]) == ["LoRA 2k, 100 % of the data, seed 1 (captions)"]
    assert [value for _, value in picker["choices"]] == [ended] and ended not in picker["choices"][0][0]
    assert list(table["by"]) == ["another visitor"] and "*cancelled by another visitor while queued*" in panel
    assert list(runs.refresh(services, None, "visitor-v1", "live")["table"]["by"]) == ["you"]
    assert len(runs.refresh(services, None, "visitor-v1")["table"]) == 2 and live


def test_a_run_downloads_as_a_zip_and_can_be_deleted(services: Services):
    job_id = services.submit(services.run_config(**form()), "visitor-v1")
    named = r"^The run LoRA 2k · 100 % of tiny-caption · seed 0 · .* has no trained weights yet"  # words, not its id
    with pytest.raises(UserError, match=named):
        services.zip_run(job_id)
    run_dir = Path(services.store.get(job_id).run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "weights.safetensors").write_bytes(b"weights")
    (run_dir / "config.json").write_text(json.dumps({"trainable_params": 7}))
    with zipfile.ZipFile(services.zip_run(job_id)) as archive:
        assert sorted(archive.namelist()) == [
            f"{job_id}/README.md",
            f"{job_id}/config.json",
            f"{job_id}/weights.safetensors",
        ]
        assert "**Test scores:** none" in archive.read(f"{job_id}/README.md").decode()
    with pytest.raises(UserError, match="cancel it before deleting it"):
        services.delete(job_id, "visitor-v1")
    services.cancel(job_id, "visitor-v1")
    services.delete(job_id, "visitor-v1")
    assert services.runs() == [] and not run_dir.exists()


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("PORT", "8080")
    monkeypatch.setenv("VLPEFT_DEMO", "1")
    monkeypatch.setenv("VLPEFT_AUTH", "ann:secret,bob:pw")
    monkeypatch.setenv("VLPEFT_VQA_DATASET", "/data/vqa")
    settings = Settings.from_env()
    assert (settings.port, settings.demo, settings.auth) == (8080, True, (("ann", "secret"), ("bob", "pw")))
    assert settings.datasets == {"caption": None, "vqa": "/data/vqa"}
    with pytest.raises(UserError, match="user:password"):
        parse_auth("ann")


# --- a whole job, watched as the page watches it ----------------------------------------------------------

PHASE_ORDER = ["Queued", "Starting", "Training", "Scoring", "Finishing", "Stopping", "Finished", "Cancelled"]


def watch(services: Services, job_id: str, until: set[str], timeout: float = 300) -> list[tuple[str, str, float]]:
    """Poll like the page's timer until the job is in one of `until`: (headline word, bar label, bar share)."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = train.show_job(services, job_id, -1)
        headline, progress = view["status"], view["progress"]
        word = re.match(r"\*\*(\w+)", headline).group(1)
        share = float(re.search(r'aria-valuenow="(\d+)"', progress).group(1))
        seen.append((word, re.search(r"<span>(.*)</span>", progress).group(1), share))
        if services.store.get(job_id).state in until and word in ("Finished", "Cancelled"):
            return seen
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not reach {until}; seen {seen[-3:]}")


def test_every_phase_of_a_job_and_of_a_cancel_is_shown_as_it_is(services: Services):
    services.start_worker()
    job_id = services.submit(services.run_config(**form(max_steps=6, eval_limit=6)), "visitor-v1")
    seen = watch(services, job_id, {"finished"})
    words = [word for word, _, _ in seen]
    assert {"Training", "Finished"} <= set(words), words
    ranks = [PHASE_ORDER.index(word) for word in words]
    assert ranks == sorted(ranks), f"the headline went back: {words}"  # never "Starting" again at the end
    shares = [share for _, _, share in seen]
    assert shares == sorted(shares) and shares[-1] == 100, shares
    assert all("left" not in label for word, label, _ in seen if word == "Scoring"), seen  # no "0 s left"

    long_job = services.submit(services.run_config(**form(max_steps=200)), "visitor-v1")
    while (services.status(long_job, log_lines=0).get("step") or 0) < 5:
        assert services.store.get(long_job).state in ("queued", "running")
        time.sleep(0.1)
    train.cancel(services, None, "v1", long_job)
    seen = watch(services, long_job, {"cancelled"})
    words = [word for word, _, _ in seen]
    assert words[0] == "Stopping" and words[-1] == "Cancelled", words
    step = services.status(long_job, log_lines=0)["step"]
    assert step >= 5 and seen[-1][1].endswith(f"stopped at step {step:,} of 200") and seen[-1][2] > 0


def test_the_loss_figure_draws_the_validation_curve_and_rings_the_kept_checkpoint():
    from app.figures import loss_curve

    rows = [{"step": s, "loss": 1 / s} for s in (1, 5, 10)]
    validation = [
        {"step": 5, "metric": "accuracy", "value": 30.0, "best": 30.0, "best_step": 5},
        {"step": 10, "metric": "accuracy", "value": 20.0, "best": 30.0, "best_step": 5},
    ]
    figure = loss_curve(rows, validation)
    names = [trace.name for trace in figure.data]
    assert names == ["training loss", "validation Accuracy", "kept checkpoint"]
    kept = figure.data[-1]
    assert list(kept.x) == [5] and list(kept.y) == [30.0] and kept.yaxis == "y2"
    assert list(figure.data[1].y) == [30.0, 20.0]
    stopped = loss_curve(rows, validation, kept=False)  # cancelled: its best validation is no checkpoint it kept
    assert stopped.data[-1].name == "best validation so far" and list(stopped.data[-1].x) == [5]


def test_runs_details_say_which_checkpoint_validation_kept_and_why_training_stopped():
    from app.tabs.runs import validation_line

    line = validation_line(
        {
            "metric": "CIDEr-D",
            "best": 5.81,
            "best_step": 200,
            "steps_run": 300,
            "epochs_run": 0.96,
            "stop_reason": "patience",
        },
        939,
    )
    assert "step 200" in line and "CIDEr-D 5.81" in line and "300 of at most 939 steps" in line
    assert "stopped improving" in line
    assert "none" in validation_line({"best": None, "steps_run": 3}, 3)


def test_the_learning_rate_field_is_0_and_its_note_gives_the_tuned_rate(services: Services, tmp_path, monkeypatch):
    from training.run.rates import LR_TABLE_ENV
    from training.study.tuning import LR_COLUMNS, write_rows

    table = tmp_path / "lr.csv"
    monkeypatch.setenv(LR_TABLE_ENV, str(table))
    model = services.settings.base_model  # the app's own model: the rows tuned on it apply
    rows = [
        {"task": "vqa", "method": "prefix", "towers": "text", "options": '{"reparam": false}', "lr": 0.1},
        {"task": "caption", "method": "lora", "towers": "text", "options": "{}", "lr": 0.0019},
    ]
    write_rows(table, [{**row, "base_model": model, "complete": True} for row in rows], LR_COLUMNS)
    field = train.learning_rate(services, "vqa", "prefix", "text", "embedded")
    assert field["value"] == 0
    assert field["info"] == (
        "0: 0.1, tuned on the validation split for this task (lr.csv, reparam=False). Type a value to override it."
    ).replace("lr.csv", str(table))
    both = train.learning_rate(services, "caption", "lora", "both", "")["info"]
    assert "0.0019, tuned on the validation split for this task" in both
    assert "tuned with the method on the text decoder only" in both
    # Not tuned for this task, or another base model: the method's own default, said as such.
    assert train.learning_rate(services, "vqa", "lora", "both", "embedded")["info"].startswith(
        "0: 0.006, the method's default (no rate tuned on validation"
    )
    assert "the method's default" in train.learning_rate(services, "vqa", "prefix", "text", "some/blip")["info"]
    # 0 (what the browser sends for an empty field) leaves the rate to the trainer (which takes the tuned rate and
    # form); a run again of that job shows 0 too, and a typed value is kept.
    for empty in (0, None, ""):
        assert services.run_config(**form(task="vqa", method="prefix", towers="text", lr=empty)).lr is None
    assert train.learning_rate(services, "vqa", "prefix", "text", "embedded", 0.02)["value"] == 0.02


def test_every_tab_fills_itself_by_name_when_a_page_opens(make_services):
    """The page-load handlers take `{component: value}` and return `{component: value}` for their own outputs."""
    from app.main import build_app

    app = build_app(make_services().settings)
    loaders = [fn for fn in app.demo.fns.values() if (fn.api_name or "").endswith("_load")]
    tabs = {"train", "sweep", "compare", "explore", "runs", "runs_compared"}
    assert {fn.api_name for fn in loaders} == {f"ui_{tab}_load" for tab in tabs}
    for loader in loaders:
        values = {block: getattr(block, "value", None) for block in loader.inputs}
        asks = "request" in inspect.signature(loader.fn).parameters
        changes = loader.fn(values, request=None) if asks else loader.fn(values)
        assert changes and set(changes) <= set(loader.outputs), loader.api_name
    app.services.close()
