"""Explore's "Which method for me?": the grid's methods ranked at the person's task, data size and budget.

The answer is `training.study.choice`'s (through `Services.which_method`, as the `/which_method` endpoint);
this module lays it out and sends the pick to the Train form.
"""

from __future__ import annotations

import gradio as gr
import pandas as pd

from app import format as fmt
from app.boundary import shows_user_errors
from app.services import Services
from app.tabs.manager import Manager
from app.tabs.train import send_to_train_form, train_form_targets
from training.catalog import TASKS
from training.study.choice import Choice, Estimate

COLUMNS = [
    "rank",
    "method",
    "expected score",
    "95 % interval (seeds)",
    "tied with the best?",
    "how",
    "trained parameters",
    "training time",
    "peak memory",
    "runs it rests on",
]
INTRO = (
    "Say how much data you have and how many trainable parameters you can afford: the methods are ranked by the "
    "score the study's grid measured there. Between grid points the score is interpolated; outside the grid the "
    "answer says so. **Train this** puts the pick in the Train form."
)
ASK_FIRST = "Give the data size and the parameters, then press **Which method?**"


def ranking_table(choice: Choice) -> pd.DataFrame:
    rows = [_row(rank, estimate, choice.metric) for rank, estimate in enumerate(choice.ranking, start=1)]
    return pd.DataFrame(rows, columns=COLUMNS)


def _row(rank: int, estimate: Estimate, metric: str) -> list:
    interval = (
        f"{fmt.score_value(metric, estimate.low)} to {fmt.score_value(metric, estimate.high)}"
        if estimate.seeds > 1
        else "one seed"
    )
    tied = "best" if estimate.best else ("tied" if estimate.tied else "no")
    counts = sorted(set(estimate.trainable_params))
    return [
        rank,
        estimate.label,
        fmt.score_value(metric, estimate.mean),
        interval,
        tied,
        estimate.how,
        " to ".join(fmt.count(c) for c in counts),
        fmt.duration(estimate.train_s),
        f"{estimate.peak_mem_mb:,.0f} MB",
        rests_on(estimate),
    ]


def rests_on(estimate: Estimate) -> str:
    """The grid runs an estimate rests on, in words: '3 runs: LoRA 18k on 25 % of scene-caption, seeds 0, 1, 2'
    (their ids are in the notes)."""
    seeds: dict[str, list[str]] = {}
    for run in estimate.settings:
        seeds.setdefault(fmt.run_words(run, run.get("dataset")), []).append(str(run.get("seed")))
    runs = "run" if len(estimate.settings) == 1 else "runs"
    return f"{len(estimate.settings)} {runs}: " + "; ".join(
        f"{words}, seed{'s' if len(s) > 1 else ''} {', '.join(s)}" for words, s in seeds.items()
    )


def notes(choice: Choice) -> str:
    """What was left out and why, what the grid supports, the runs by id and the rules the answer follows."""
    lines = []
    if choice.not_ranked:
        lines.append("**Not ranked here:**")
        lines += [f"- {left['label']}: {left['reason']}." for left in choice.not_ranked]
        lines.append("")
    lines.append(f"**What the grid supports.** {choice.support}")
    lines.append("")
    lines.append("**The runs by id** (the run column of results/runs.csv):")
    lines += [f"- {estimate.label}: {', '.join(estimate.runs)}" for estimate in choice.ranking]
    lines.append("")
    lines.append(
        "**Rules.** "
        + " ".join(choice.rules[k] for k in ("interpolation", "tolerance", "tie"))
        + " Intervals are 95 % t-intervals over the grid's seeds. Times and memory are the runs' (CPU, one thread)."
    )
    return "\n".join(lines)


def answer(services: Services, task: str, data: str, params: str) -> dict:
    """By name: the sentence, the ranking, the notes, the config 'Train this' sends (pick), and its button."""
    choice = services.which_method(task, data, params)
    pick = choice.train
    button = gr.update(
        value=f"Train this: {fmt.METHOD_LABELS.get(pick['method'], pick['method'])}" if pick else "Train this",
        interactive=pick is not None,
    )
    status = {"outside the grid": "⚠️ Outside the grid", "interpolated": "Interpolated", "on the grid": "On the grid"}
    return {
        "sentence": f"**{status[choice.status]}.** {choice.sentence}\n\n*{fmt.score_scale(choice.task)}.*",
        "ranking": ranking_table(choice),
        "details": notes(choice),
        "pick": pick,
        "train": button,
    }


def build(services: Services, ui: Manager) -> None:
    """'Train this' fills the Train tab's form (`send_to_train_form`)."""
    with gr.Accordion("Which method for me?", open=True, elem_id="choose"):
        gr.Markdown(INTRO)
        with gr.Row():
            task = gr.Radio([(fmt.TASK_LABELS[t], t) for t in TASKS], value="vqa", label="Task", elem_id="choose-task")
            data = gr.Textbox(
                "300",
                label="Training data you have",
                max_lines=1,
                elem_id="choose-data",
                info="A number of examples (300: images to caption, or questions) or a share of the set (7%).",
            )
            params = gr.Textbox(
                "18k",
                label="Trainable parameters you can afford",
                max_lines=1,
                elem_id="choose-params",
                info="A count (18k, 20000) or a share of the model (0.6%).",
            )
        with gr.Row():
            ask = gr.Button("Which method?", variant="primary", elem_id="choose-ask")
            train = gr.Button("Train this", interactive=False, elem_id="choose-train")
        sentence = gr.Markdown(ASK_FIRST, elem_id="choose-answer")
        ranking = gr.Dataframe(
            pd.DataFrame(columns=COLUMNS), interactive=False, wrap=True, label="Ranking", elem_id="choose-ranking"
        )
        with gr.Accordion("Left out, what the grid supports, the rules and the runs by id", open=False):
            details = gr.Markdown(elem_id="choose-notes")
    pick = gr.State(None)
    ui.add("choose", task=task, data=data, params=params, sentence=sentence, ranking=ranking, details=details)
    ui.add("choose", pick=pick, train=train)

    def on_ask(values: dict) -> dict:
        asked = ui.values("choose", values)
        return ui.updates("choose", answer(services, asked["task"], asked["data"], asked["params"]))

    gr.on(
        [ask.click, data.submit, params.submit],
        shows_user_errors(on_ask),
        {task, data, params},
        [sentence, ranking, details, pick, train],
        api_name="ui_which_method",
        api_visibility="private",
    )
    train.click(
        shows_user_errors(
            lambda values: send_to_train_form(
                services, ui, values[pick], "Ask 'Which method?' first: there is no pick to train yet."
            )
        ),
        {pick},
        train_form_targets(ui),
        api_name="ui_which_train",
        api_visibility="private",
    )
