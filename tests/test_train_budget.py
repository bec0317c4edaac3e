"""Training that knows its cost: the duration syntax, the plan's arithmetic, and a tiny run fitted to a budget."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from test_train_support import TASK, rows, write_config, write_jsonl
from tuneloop.errors import TuneloopError
from tuneloop.train.budget import (
    FINISH_SECONDS,
    MIN_EXAMPLES,
    WarmUp,
    Workload,
    apply_plan,
    describe,
    estimate,
    parse_duration,
    plan,
)


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("20m", 1200), ("1h", 3600), ("1h30m", 5400), ("2m30s", 150), (45, 45)]
)
def test_durations_parse(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "20", "20 minutes", "1.5h", "m", "0m", "-5m", "30m1h", 0, -3])
def test_a_bad_duration_is_an_error_naming_the_option_and_the_syntax(text: str | int) -> None:
    with pytest.raises(TuneloopError) as caught:
        parse_duration(text)
    assert caught.value.where == "--time-budget"
    assert str(text) in caught.value.message or "20m" in (caught.value.hint or "")


# 500 examples of 400 tokens, 4 per step: 125 steps an epoch, 3 epochs; 100 tokens/s training.
WORK = Workload(
    train_examples=500,
    train_tokens=200_000,
    validation_tokens=8_000,
    examples_per_step=4,
    epochs=3,
    max_steps=-1,
    evaluations=4,
    field_error_rows=16,
)
WARM = WarmUp(
    load_seconds=10, tokens_per_second=100, steps=3, seconds_per_generated_row=4, generated_rows=4, seconds=30
)


def test_the_estimate_adds_up_training_evaluations_and_the_rest() -> None:
    full = estimate(WORK, WARM, spent=40)
    assert full.steps == 375 and full.tokens == 600_000 and full.epochs == 3
    assert full.train_seconds == pytest.approx(6000)
    each = 8_000 / 300 + 16 * 4  # the validation loss (a forward pass, a third of a step's work) + 16 answers
    assert full.eval_seconds == pytest.approx(4 * each)
    assert full.total_seconds == pytest.approx(40 + 10 + 6000 + 4 * each + FINISH_SECONDS)
    assert any("--time-budget" in line for line in describe(full, WARM, "cpu"))  # over 30 min on a CPU
    assert not any("--time-budget" in line for line in describe(full, WARM, "cuda"))


def test_a_budget_the_run_fits_changes_nothing() -> None:
    fitted = plan(WORK, WARM, spent=40, budget_seconds=3 * 3600, budget="3h")
    assert fitted.steps == 375 and fitted.evaluations == 4 and fitted.field_error_rows == 16 and not fitted.changed
    assert fitted.budget_seconds == 3 * 3600 and fitted.budget == "3h"


def test_a_short_budget_cuts_evaluations_then_steps_and_ends_within_it() -> None:
    budget = 20 * 60
    fitted = plan(WORK, WARM, spent=40, budget_seconds=budget, budget="20m")
    assert fitted.total_seconds <= budget
    left = budget - 40 - 10 - FINISH_SECONDS
    assert fitted.eval_seconds <= 0.25 * left  # evaluations take at most a quarter
    assert 1 <= fitted.evaluations < 4 and 4 <= fitted.field_error_rows <= 16  # fewer evaluations first
    step = 200_000 / 125 / 100  # 16 s
    assert fitted.steps == int((left - fitted.eval_seconds) // step) and fitted.steps < 125  # part of an epoch
    assert fitted.epochs == pytest.approx(fitted.steps / 125, abs=1e-3) and fitted.changed
    sft = apply_plan({"num_train_epochs": 3, "eval_strategy": "steps", "eval_steps": 94}, fitted, WORK)
    assert sft["max_steps"] == fitted.steps
    assert sft["eval_steps"] == sft["save_steps"] == -(-fitted.steps // fitted.evaluations)
    assert any("to fit --time-budget 20m" in line for line in describe(fitted, WARM, "cpu"))


def test_a_budget_too_short_for_the_minimum_says_what_would_do() -> None:
    with pytest.raises(TuneloopError) as caught:
        plan(WORK, WARM, spent=40, budget_seconds=90, budget="90s")
    error = caught.value
    assert error.where == "--time-budget" and f"{MIN_EXAMPLES // 4} step(s)" in error.message
    minimum = 40 + 10 + FINISH_SECONDS + 8 * 16 + (8_000 / 300 + 4 * 4)  # 8 steps of 4 examples, one small eval
    assert f"at least {math.ceil(minimum / 60)}m" in (error.hint or "")
    fitted = plan(WORK, WARM, spent=40, budget_seconds=math.ceil(minimum / 60) * 60, budget="5m")  # and it does
    assert fitted.steps >= MIN_EXAMPLES // 4 and fitted.total_seconds <= 300


def test_a_budget_forces_max_steps_on_a_real_run(tiny_base: Path, tmp_path: Path) -> None:
    """A tiny run whose configured schedule can't fit: the plan caps the steps, and the run keeps to it."""
    from tuneloop.train import train

    data = write_jsonl(tmp_path / "train.jsonl", rows(16, split="train"))  # too few to hold any back
    # 1000 epochs of 1 example a step (16,000 steps): more than fits in 40 s of even a tiny model's steps.
    config = write_config(
        tmp_path / "train.yaml",
        {"num_train_epochs": 1000, "per_device_train_batch_size": 1, "gradient_accumulation_steps": 1, "bf16": False},
    )
    result = train(TASK, data, str(tiny_base), config, time_budget="40s")
    chosen = result.plan
    assert chosen is not None and chosen["budget"] == "40s" and chosen["budget_seconds"] == 40
    assert 16 <= chosen["steps"] < 1000 * 16 and chosen["changed"]
    assert chosen["warm_up"]["tokens_per_second"] > 0 and chosen["warm_up"]["steps"] == 3
    # The trainer kept to the plan, or (on a machine slower than its warm-up said) stopped at the deadline.
    assert result.metrics["steps"] == result.metrics.get("budget_stopped_at_step", chosen["steps"])
    config_recorded = result.version.config
    assert config_recorded["plan"]["budget"] == "40s"
    assert config_recorded["train"]["sft"]["max_steps"] == chosen["steps"]


def test_the_cli_refuses_a_malformed_budget_before_any_work(
    tiny_base: Path, tmp_path: Path, tuneloop_home: Path
) -> None:
    from tuneloop.cli.main import app

    data = write_jsonl(tmp_path / "train.jsonl", rows(8, split="train"))
    args = ["train", "--task", TASK, "--data", str(data), "--base", str(tiny_base), "--time-budget", "20 min"]
    outcome = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert outcome.exit_code != 0 and isinstance(outcome.exception, TuneloopError)  # main() prints it plainly
    assert "'20 min' is not a duration" in str(outcome.exception) and "1h30m" in str(outcome.exception)
    assert not (tuneloop_home / "runs").exists()  # refused before any run folder was made


def test_quiet_libraries_silences_their_bars_and_logs_inside_and_restores_them_after() -> None:
    import datasets.utils.logging as datasets_logging
    import transformers.utils.logging as transformers_logging

    from tuneloop.train.quiet import quiet_libraries

    libraries = (datasets_logging, transformers_logging)
    before = [(library.get_verbosity(), library.is_progress_bar_enabled()) for library in libraries]
    assert all(enabled for _, enabled in before)  # the libraries' defaults: bars on
    with quiet_libraries():
        assert not any(library.is_progress_bar_enabled() for library in libraries)
        assert all(library.get_verbosity() == transformers_logging.ERROR for library in libraries)
    assert [(library.get_verbosity(), library.is_progress_bar_enabled()) for library in libraries] == before


def test_the_budget_guard_stops_training_past_its_deadline_after_one_last_evaluation(tmp_path: Path) -> None:
    import time

    from transformers import TrainerControl, TrainerState, TrainingArguments

    from tuneloop.train.callbacks import TimeBudgetGuard

    args = TrainingArguments(output_dir=str(tmp_path), eval_strategy="steps", eval_steps=10, use_cpu=True)
    state = TrainerState(global_step=4, max_steps=100)
    on_time = TimeBudgetGuard(deadline=time.time() + 3600)
    control = on_time.on_step_end(args, state, TrainerControl())
    assert not control.should_training_stop and on_time.stopped_at is None
    late = TimeBudgetGuard(deadline=time.time() - 1)
    control = late.on_step_end(args, state, TrainerControl())
    assert control.should_training_stop and control.should_evaluate and late.stopped_at == 4
    no_eval = TrainingArguments(output_dir=str(tmp_path), eval_strategy="no", use_cpu=True)
    control = TimeBudgetGuard(deadline=time.time() - 1).on_step_end(no_eval, state, TrainerControl())
    assert control.should_training_stop and not control.should_evaluate
