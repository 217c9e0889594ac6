"""Sweep: a grid of runs (methods x budgets x shares of data x seeds) on one task, queued as one sweep and
watched to the end; Explore draws its runs as curves."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any

import gradio as gr
import pandas as pd

from app import format as fmt
from app import sweeps
from app.boundary import optional_int, run_limits, shows_user_errors, submitter
from app.services import Services
from app.tabs.common import Loader
from app.tabs.manager import Manager
from app.tabs.runs import run_name
from app.tabs.train import METHOD_ORDER
from training.errors import UserError
from training.jobs.store import ACTIVE_STATES
from training.run.config import TASKS
from training.sweeps.protocol import departures, study_settings

POLL_S = 2.0
IDLE = "No sweep yet: choose the grid and press **Queue the sweep**."
COLUMNS = ["run", "state", "test score"]  # runs named in words; their ids are in the sweep file and in Runs
# The form's fields (`sweep_form`'s keywords) and the sweep view: the tab's components by name.
FORM = ("name", "task", "methods", "budgets", "fractions", "seeds", "max_steps", "batch_size", "eval_limit", "towers")
VIEW = ("status", "progress", "table", "file", "timer")


def parse_list(text: str | None, what: str, example: str) -> list[str]:
    """'2k, 0.5%' or '2k 0.5%' -> ['2k', '0.5%']; UserError when empty."""
    items = [item for item in re.split(r"[,;\s]+", str(text or "").strip()) if item]
    if not items:
        raise UserError(f"Give at least one {what} (e.g. {example}).")
    return list(dict.fromkeys(items))


def sweep_form(
    services: Services,
    *,
    name: str,
    task: str,
    methods: list[str],
    budgets: str,
    fractions: str,
    seeds: str,
    max_steps,
    batch_size,
    eval_limit,
    towers: str,
) -> dict:
    """The sweep file a form describes; UserError with one sentence on a bad field."""
    if not methods:
        raise UserError("Tick at least one method.")
    seed_values = []
    for item in parse_list(seeds, "seed", "0 1 2"):
        seed = optional_int(item, "A seed")
        if seed is None or seed < 0:
            raise UserError(f"A seed must be a whole number of 0 or more, not {item!r}.")
        seed_values.append(seed)
    fraction_values = []
    for item in parse_list(fractions, "share of data", "0.25, 1"):
        try:
            fraction_values.append(float(item))
        except ValueError:
            raise UserError(
                f"The share of data {item!r} is not a number: give values in (0, 1], e.g. 0.25 1."
            ) from None
    batch, steps, limit = run_limits(batch_size, max_steps, eval_limit)
    # Every run follows the study's schedule (epoch cap, step floor, patience) so it lands on the grid's curves.
    settings = {
        **study_settings(task),
        "batch_size": batch,
        "towers": towers,
        "max_steps": steps,
        "eval_limit": limit,
    }
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", (name or "").strip()).strip("-") or f"{task}-sweep"
    return sweeps.sweep_data(
        name,
        task,
        methods,
        parse_list(budgets, "budget", "2k, 0.5%"),
        fraction_values,
        seed_values,
        settings,
        services.settings.base_model,
        services.settings.datasets.get(task),
    )


def summary(services: Services, form: Mapping[str, Any]) -> str:
    """'**4 runs** (...). Expected time: about 3 min (...)', or what is wrong with the grid; `form` by FORM name."""
    try:
        plan = sweeps.draft(services, sweep_form(services, **form))
    except UserError as exc:
        return f"⚠️ {exc}"
    return summary_text(services, plan)


def summary_text(services: Services, plan: sweeps.SweepDraft) -> str:
    spec = plan.spec
    shape = " × ".join(
        f"{len(values)} {word}{'' if len(values) == 1 else 's'}"
        for values, word in (
            (spec.methods, "method"),
            (next(iter(spec.budgets.values())), "budget"),
            (spec.fractions, "share"),
            (spec.seeds, "seed"),
        )
    )
    runs_word = "run" if len(plan.configs) == 1 else "runs"
    text = f"**{len(plan.configs)} {runs_word}** ({shape}; baselines ignore budgets)"
    if plan.skipped:
        text += f", {len(plan.skipped)} skipped: " + "; ".join(s.reason for s in plan.skipped[:3])
        text += " …" if len(plan.skipped) > 3 else ""
    text += "."
    left = list(dict.fromkeys(d for config in plan.configs for d in departures(config)))
    if plan.configs and not left:
        text += " Every run follows the study's protocol: Explore sets them beside the reference curves."
    elif left:
        text += f" ⚠️ **They leave the study's protocol:** {'; '.join(left)}: Explore shows them as not comparable."
    if plan.expected_s is not None:
        text += f" **Expected time:** about {fmt.duration(plan.expected_s)}, one run after another"
        text += " (from the reference grid's runs like them, else finished runs here or the benchmark)."
    elif plan.configs:
        text += (
            f" No time estimate for {plan.unknown} of them yet: finish one run of each method here and the "
            "next sweeps get one."
        )
    cap = services.store.limits.max_queued_per_submitter
    if cap and len(plan.configs) > cap:
        text += (
            f" ⚠️ Each run counts as one of your {cap} jobs queued or running "
            "(VLPEFT_MAX_QUEUED_PER_USER): this sweep is too big to queue."
        )
    return text


def start(services: Services, request: gr.Request | None, visitor: str, form: Mapping[str, Any]) -> dict:
    """Queue the sweep (`form` by FORM name); returns, by name, the sweep picker, the VIEW and the note under the
    button. A refused sweep changes only the note."""
    who = submitter(request, visitor)
    try:
        plan = sweeps.draft(services, sweep_form(services, **form))
        queued = sweeps.queue(services, plan, who)
    except UserError as exc:
        return {"start_note": f"⚠️ **Not queued.** {exc}"}
    return {
        "picker": sweep_choices(services, who, queued.id),
        **show_sweep(services, queued.id),
        "start_note": f"Queued {len(queued.jobs)} runs as sweep **{queued.name}**. The same sweep from the command "
        f"line: `{queued.command}`",
    }


def sweep_choices(services: Services, who: str, selected: str | None) -> dict:
    mine = [s for s in sweeps.queued_sweeps(services) if s.submitter == who]
    choices = [(f"{s.name} · {len(s.jobs)} runs · queued {_when(s.created_at)}", s.id) for s in mine]
    return gr.update(choices=choices, value=selected if selected in {s.id for s in mine} else None)


def _when(timestamp: float) -> str:
    return time.strftime("%d %b %H:%M", time.localtime(timestamp))


def show_sweep(services: Services, sweep_id: str | None) -> dict:
    """The VIEW by name: status line, progress bar, its runs, the sweep file with the command that reruns it,
    timer."""
    sweep = next((s for s in sweeps.queued_sweeps(services) if s.id == sweep_id), None) if sweep_id else None
    if sweep is None:
        return {
            "status": IDLE,
            "progress": "",
            "table": pd.DataFrame(columns=COLUMNS),
            "file": gr.update(value="", visible=False),
            "timer": gr.Timer(active=False),
        }
    tally = sweeps.counts(services, sweep)
    total, ended = len(sweep.jobs), sum(n for state, n in tally.items() if state not in ACTIVE_STATES)
    parts = ", ".join(f"{n} {state}" for state, n in sorted(tally.items()))
    done = sweeps.is_done(tally)
    status = f"**Sweep {sweep.name}: {'done' if done else 'running'}**, {ended} of {total} runs ended ({parts}). " + (
        "Explore draws its runs as dotted curves." if done else "Its runs wait in the job queue in order."
    )
    scale = fmt.score_scale(next(iter(sweep.data.get("tasks") or {}), None))  # a page sweep has one task
    status += f" *Test score: {scale}.*" if scale else ""
    share = ended / total if total else 0.0
    state = "finished" if done and tally.get("finished") == total else ("failed" if done else "running")
    records = {r.id: r for r in services.runs()}
    configs = sweep.point_configs()  # names a run whose job is gone, from the sweep file
    rows = [
        [
            run_name(records[job_id].config),
            records[job_id].state,
            fmt.main_score(records[job_id].task, records[job_id].metrics),
        ]
        if job_id in records
        else [run_name(configs[point]), "deleted", "-"]
        for point, job_id in sweep.jobs.items()
    ]
    file_text = sweep.sweep_file.read_text()
    return {
        "status": status,
        "progress": fmt.progress_bar(share, state, f"{ended} of {total} runs"),
        "table": pd.DataFrame(rows, columns=COLUMNS),
        "file": gr.update(value=file_text, visible=True),
        "timer": gr.Timer(active=not done),
    }


def build(services: Services, ui: Manager) -> Loader:
    gr.Markdown(
        "Queue a grid of runs on one task: every method you tick at every budget, share of data and seed. "
        "Each run is a job in the same queue as the Train tab's (and counts as one of yours); Explore "
        "draws the finished ones as curves beside the precomputed sweep. The sweep file shown on the right "
        "reruns it from the command line."
    )
    with gr.Row(equal_height=False):
        with gr.Column(scale=5):
            task = gr.Radio([(fmt.TASK_LABELS[t], t) for t in TASKS], value="caption", label="Task")
            methods = gr.CheckboxGroup(
                [(fmt.METHOD_LABELS[m], m) for m in METHOD_ORDER],
                value=["lora"],
                label="Methods",
                elem_id="sweep-methods",
            )
            budgets = gr.Textbox(
                "0.5%",
                label="Parameter budgets",
                max_lines=1,
                elem_id="sweep-budgets",
                info="Separated by spaces or commas: shares of the model (0.5%) or counts (20k).",
            )
            fractions = gr.Textbox(
                "0.25, 1",
                label="Shares of the training data",
                max_lines=1,
                elem_id="sweep-fractions",
                info="Values in (0, 1], e.g. 0.1 0.5 1.",
            )
            seeds = gr.Textbox(
                "0",
                label="Seeds",
                max_lines=1,
                elem_id="sweep-seeds",
                info="One run per seed at every point: 0 1 2 gives error bars.",
            )
            with gr.Accordion("Settings for every run", open=False):
                with gr.Row():
                    max_steps = gr.Number(
                        0,
                        label="Steps",
                        precision=0,
                        elem_id="sweep-max-steps",
                        info="0: as the study runs: early stopping within the task's epoch cap.",
                    )
                    batch_size = gr.Number(32, label="Batch size", precision=0, elem_id="sweep-batch-size")
                    eval_limit = gr.Number(
                        0,
                        label="Test examples to score",
                        precision=0,
                        elem_id="sweep-eval-limit",
                        info="0: the whole test split.",
                    )
                towers = gr.Radio(
                    ["both", "vision", "text"],
                    value=study_settings("caption")["towers"],
                    label="Towers",
                    info="Which half of the model gets the new parameters (study: the text decoder).",
                )
            name = gr.Textbox("", label="Sweep name", max_lines=1, placeholder="caption-sweep", elem_id="sweep-name")
            size_note = gr.Markdown(elem_id="sweep-summary", elem_classes="vl-note")
            start_button = gr.Button("Queue the sweep", variant="primary", elem_id="sweep-start")
            start_note = gr.Markdown(elem_id="sweep-note")
        with gr.Column(scale=6):
            picker = gr.Dropdown(
                [], value=None, label="Sweep shown", info="Your sweeps, newest first.", elem_id="sweep-picker"
            )
            status = gr.Markdown(IDLE, elem_id="sweep-status")
            progress = gr.HTML("", elem_id="sweep-progress")
            table = gr.Dataframe(
                pd.DataFrame(columns=COLUMNS),
                interactive=False,
                label="Its runs",
                wrap=True,
                column_widths=["62%", "16%", "22%"],
                elem_id="sweep-runs",
            )
            sweep_file = gr.Code(
                "",
                language="yaml",
                label="Sweep file (its header says how to rerun it)",
                interactive=False,
                wrap_lines=True,
                visible=False,
                elem_id="sweep-file",
            )
    timer = gr.Timer(POLL_S, active=False)
    ui.add(
        "sweep",
        name=name,
        task=task,
        methods=methods,
        budgets=budgets,
        fractions=fractions,
        seeds=seeds,
        max_steps=max_steps,
        batch_size=batch_size,
        eval_limit=eval_limit,
        towers=towers,
        size_note=size_note,
        start_note=start_note,
        picker=picker,
        status=status,
        progress=progress,
        table=table,
        file=sweep_file,
        timer=timer,
    )
    visitor = ui["app.visitor"]
    form = set(ui.of("sweep", FORM))
    view = ui.of("sweep", VIEW)
    private = dict(api_visibility="private")

    def named(values: dict) -> dict[str, Any]:
        return ui.values("sweep", values)

    gr.on(
        [field.change for field in ui.of("sweep", FORM)],
        lambda values: {size_note: summary(services, named(values))},
        form,
        size_note,
        api_name="ui_sweep_size",
        show_progress="hidden",
        concurrency_limit=None,
        **private,
    )

    def on_start(values: dict, request: gr.Request) -> dict:
        return ui.updates("sweep", start(services, request, values[visitor], named(values)))

    start_button.click(on_start, {visitor, *form}, [picker, *view, start_note], api_name="ui_sweep_start", **private)

    def on_show(values: dict) -> dict:
        return ui.updates("sweep", show_sweep(services, values[picker]))

    picker.input(shows_user_errors(on_show), {picker}, view, api_name="ui_sweep_pick", **private)
    timer.tick(
        on_show,
        {picker},
        view,
        api_name="ui_sweep_poll",
        show_progress="hidden",
        concurrency_limit=None,
        **private,
    )

    def on_load(values: dict, request: gr.Request) -> dict:
        who = submitter(request, values[visitor])
        mine = [s for s in sweeps.queued_sweeps(services) if s.submitter == who]
        shown = mine[0].id if mine else None
        return ui.updates(
            "sweep",
            {
                "picker": sweep_choices(services, who, shown),
                **show_sweep(services, shown),
                "size_note": summary(services, named(values)),
            },
        )

    return Loader("ui_sweep_load", on_load, {visitor, *form}, [picker, *view, size_note])
