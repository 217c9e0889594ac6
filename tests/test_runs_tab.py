# ruff: noqa: F811 (the fixtures imported from tests.test_app are arguments of the tests)
"""The Runs tab's management: ended runs deleted in bulk after one confirmation that says how many, a run filled
back into the Train form to run again with changes, and the log of a run that ended badly. Handlers called
directly on the tiny BLIP (no server)."""

from __future__ import annotations

import pytest

from app import format as fmt
from app.services import Services
from app.tabs import runs, train
from tests.test_app import form, make_services, services  # noqa: F401 (fixtures)
from training.errors import UserError
from training.jobs.store import Outcome


def ended(services: Services, state: str, submitter: str = "visitor-v1", **changes) -> str:
    """A run that ended in `state`, through the store (no training)."""
    job_id = services.submit(services.run_config(**form(**changes)), submitter)
    if state == "cancelled":
        services.cancel(job_id, submitter)
        return job_id
    services.store.claim_next("worker-1", max_concurrent=1)
    outcome = Outcome(
        state,
        f"{state} for the test",
        1 if state == "failed" else 0,
        error="out of memory" if state == "failed" else None,
        log_tail="\n".join(f"step {i}/30 loss {3 - i / 10:.1f}" for i in range(1, 31)),
    )
    assert services.store.finish(job_id, "worker-1", outcome)
    return job_id


def test_bulk_delete_names_how_many_ended_runs_it_deletes_and_leaves_live_ones(services: Services):
    done, failed, stopped = (
        ended(services, state, seed=seed) for seed, state in enumerate(("finished", "failed", "cancelled"))
    )
    live = services.submit(services.run_config(**form(seed=9)), "visitor-v1")
    asked = runs.ask_bulk_delete(services, "all", "visitor-v1")
    row, question, pending = asked["ask"], asked["question"], asked["pending"]
    assert row["visible"] and question.startswith("**Delete 3 runs** (1 cancelled, 1 failed, 1 finished) **for good?**")
    assert sorted(pending.split()) == sorted([done, failed, stopped])
    assert runs.refresh(services, None, "visitor-v1")["bulk"]["value"] == "Delete the 3 ended runs shown"
    # The filter narrows what the button deletes.
    assert runs.ask_bulk_delete(services, "failed", "visitor-v1")["question"].startswith("**Delete 1 run** (1 failed)")
    runs.delete_pending(services, None, "v1", pending)
    assert [job.id for job in services.store.list_jobs()] == [live]
    with pytest.raises(UserError, match="No ended run is shown"):
        runs.ask_bulk_delete(services, "all", "visitor-v1")
    assert not runs.refresh(services, None, "visitor-v1")["bulk"]["interactive"]


def test_in_a_public_demo_bulk_delete_takes_only_the_visitors_own_runs(make_services):
    services = make_services(demo=True)
    mine, theirs = ended(services, "cancelled", "visitor-v1"), ended(services, "cancelled", "visitor-v2")
    assert runs.ask_bulk_delete(services, "all", "visitor-v1")["pending"] == mine
    runs.delete_pending(services, None, "v1", mine)
    assert [job.id for job in services.store.list_jobs()] == [theirs]


def test_run_again_fills_the_train_form_with_the_runs_exact_settings(services: Services):
    values = form(
        method="serial-adapter",
        budget="3k",
        data_fraction=0.5,
        seed=4,
        epochs=2,
        max_steps=7,
        lr=0.004,
        batch_size=2,
        towers="text",
        eval_limit=5,
    )
    config = services.run_config(**values)
    job_id = services.submit(config, "visitor-v1")
    filled = train.fill_train_form(services, services.run(job_id).config)
    assert filled.pop("method_note") == fmt.method_explainer("serial-adapter")
    fields = {name: value["value"] if isinstance(value, dict) else value for name, value in filled.items()}
    assert fields == values  # the app's own model and dataset come back as the embedded choice
    assert list(fields) == list(train.FORM)  # every field of the form, none else
    assert services.run_config(**fields) == config


def test_a_failed_runs_log_is_shown_with_its_last_lines_and_the_error(services: Services):
    failed = ended(services, "failed")
    shown = runs.show(services, failed, "visitor-v1")
    details, delete_button, again_button, log = (shown[name] for name in ("details", "delete", "again", "log"))
    assert log["visible"] and log["value"].endswith("step 30/30 loss 0.0\nerror: out of memory")
    assert len(log["value"].splitlines()) == runs.LOG_LINES + 1 and "step 10/30" not in log["value"]
    assert ": failed\n" in details and f"run id `{failed}`" in details  # named in words, the id in the details
    assert delete_button["interactive"] and again_button["interactive"]
    assert not runs.show(services, ended(services, "finished", seed=1), "visitor-v1")["log"]["visible"]
