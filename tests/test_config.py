"""The run config is one list of fields: its command-line options and the command that reproduces a run are made
from them, so they cannot drift apart."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from training.errors import UserError
from training.run.config import RunConfig, add_run_options, cli_fields, config_from_args, flag_of


def parser() -> argparse.ArgumentParser:
    made = argparse.ArgumentParser()
    add_run_options(made)
    return made


def changed(item: dataclasses.Field):
    """A valid value of the field other than its default."""
    special = {
        "task": "vqa",
        "method": "prefix",
        "budget": "20k",
        "data_fraction": 0.25,
        "towers": "text",
        "device": "cpu",
        "report_to": "tensorboard",
        "method_options": {"reparam": True},
        "base_model": "some/model",
        "dataset": "some/data",
        "lr": 0.003,
        "cap_limit": 1.5,
    }
    if item.name in special:
        return special[item.name]
    if item.type == "bool":
        return not item.default
    return 7 if "int" in item.type else 2.5


def test_every_option_field_round_trips_through_the_command_line():
    config = RunConfig(**{item.name: changed(item) for item in cli_fields()})
    args = parser().parse_args(config.to_cli_args())
    assert config_from_args(args) == config


def test_a_config_at_its_defaults_writes_only_the_options_always_written():
    args = RunConfig().to_cli_args()
    written = [a for a in args if a.startswith("--")]
    assert written == ["--task", "--method", "--budget", "--data-fraction", "--seed", "--towers", "--batch-size"]
    assert config_from_args(parser().parse_args(args)) == RunConfig()


def test_every_option_field_is_an_option_of_the_parser_and_nothing_else_is():
    options = {action.option_strings[0] for action in parser()._actions if action.option_strings}
    assert options - {"-h"} == {flag_of(item) for item in cli_fields()}
    assert {item.name for item in dataclasses.fields(RunConfig)} - {item.name for item in cli_fields()} == {
        "warmup_ratio",
        "weight_decay",
        "extra",
    }


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--data-fraction", "lots"], "is not a number"), (["--method-option", "reparam"], "KEY=VALUE")],
)
def test_bad_options_are_refused_once_with_a_sentence(argv, message):
    with pytest.raises(UserError, match=message):
        config_from_args(parser().parse_args(argv))
