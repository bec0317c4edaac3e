"""What a run costs here, and a schedule that fits a time budget (``tuneloop train --time-budget 20m``).

Before training, ``train()`` runs a short warm-up (``recipe.warm_up``): a few real optimizer steps on the
run's own data and model, timed, and one field-error generation over a few validation rows, timed. From
those, ``estimate`` says how many tokens the run will process and about how long it takes on this machine:
loading, training, the periodic evaluations (validation loss and the field error, ~1 min each on a CPU),
saving and registering. ``plan`` fits the schedule into a budget: fewer evaluations and validation rows
first (at most a quarter of the time goes to them), then fewer epochs or a fraction of one (``max_steps``);
the adapter kept is still the one with the lowest validation field error (``selection.py``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from tuneloop.durations import parse_duration as parse_span
from tuneloop.errors import TuneloopError

WARM_UP_STEPS = 3  # timed optimizer steps after a first, untimed one (allocations, lazy init)
WARM_UP_ROWS = 4  # validation rows generated to time the field error
MIN_EXAMPLES = 32  # the least data a budgeted run trains on: fewer examples teach a base nothing usable
EVAL_SHARE = 0.25  # at most this share of a budget goes to evaluations
FINISH_SECONDS = 20.0  # saving, the loss curve, registering (and the GGUF export for llama.cpp bases)
LONG_RUN_SECONDS = 30 * 60  # a CPU run estimated above this: suggest --time-budget
MIN_FIELD_ERROR_ROWS = 4


def parse_duration(text: str | float | int, where: str = "--time-budget") -> float:
    """A time budget in seconds (tuneloop.durations: ``90s``, ``20m``, ``1h30m``)."""
    return parse_span(text, where)


def format_duration(seconds: float) -> str:
    """``45 s``, ``3.5 min``, ``2 h 05 min``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    hours, rest = divmod(round(seconds / 60), 60)
    return f"{hours} h {rest:02d} min"


@dataclass(frozen=True)
class WarmUp:
    """What the warm-up measured on this machine."""

    load_seconds: float  # the base and the trainer, built
    tokens_per_second: float  # training, at the run's batch
    steps: int  # timed optimizer steps
    seconds_per_generated_row: float  # the field error: greedy answers, per validation row
    generated_rows: int
    seconds: float  # the whole warm-up


@dataclass(frozen=True)
class Workload:
    """The run's size, from the resolved config and the tokenized data."""

    train_examples: int
    train_tokens: int  # one epoch
    validation_tokens: int  # one validation-loss pass
    examples_per_step: int
    epochs: float
    max_steps: int  # > 0: the config's own cap on steps
    evaluations: int  # validation passes planned (eval_steps), the final step included
    field_error_rows: int

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.train_examples / self.examples_per_step))

    @property
    def steps(self) -> int:
        if self.max_steps > 0:
            return self.max_steps
        return self.steps_per_epoch * max(1, math.ceil(self.epochs))

    @property
    def tokens_per_step(self) -> float:
        return self.train_tokens / self.steps_per_epoch


@dataclass(frozen=True)
class Plan:
    """The schedule a run follows and what it should cost; recorded in run.json and the version's config."""

    steps: int
    epochs: float  # passes over the training examples (a fraction when the budget cuts one short)
    tokens: int
    evaluations: int
    field_error_rows: int
    train_seconds: float
    eval_seconds: float
    total_seconds: float  # warm-up and loading included
    budget_seconds: float | None = None
    budget: str | None = None  # as the user wrote it
    changed: tuple[str, ...] = ()  # what the budget changed, in words

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["changed"] = list(self.changed)
        return out


def eval_seconds(workload: Workload, warm: WarmUp, rows: int) -> float:
    """One evaluation: the validation loss (a forward pass, ~1/3 of a training step's work) and ``rows``
    greedy answers."""
    loss = workload.validation_tokens / (3 * warm.tokens_per_second) if workload.validation_tokens else 0.0
    return loss + rows * warm.seconds_per_generated_row


def estimate(workload: Workload, warm: WarmUp, spent: float) -> Plan:
    """The run as configured: ``spent`` is the time already gone (data work, the warm-up)."""
    steps = workload.steps
    train = steps * workload.tokens_per_step / warm.tokens_per_second
    evaluations = workload.evaluations if workload.field_error_rows or workload.validation_tokens else 0
    evals = evaluations * eval_seconds(workload, warm, workload.field_error_rows)
    return Plan(
        steps=steps,
        epochs=round(steps / workload.steps_per_epoch, 3),
        tokens=round(steps * workload.tokens_per_step),
        evaluations=evaluations,
        field_error_rows=workload.field_error_rows,
        train_seconds=train,
        eval_seconds=evals,
        total_seconds=spent + warm.load_seconds + train + evals + FINISH_SECONDS,
    )


def plan(workload: Workload, warm: WarmUp, spent: float, budget_seconds: float, budget: str | None = None) -> Plan:
    """The largest schedule of the configured one that ends within ``budget_seconds`` (``spent`` included).

    Evaluations first: at most ``EVAL_SHARE`` of the time left, as many as fit of the configured number (the
    final step is always one) with as many of the validation rows as fit, down to ``MIN_FIELD_ERROR_ROWS``.
    Then training takes the rest: whole steps, up to the configured schedule. Fewer than ``MIN_EXAMPLES``
    examples (or the whole set, if smaller) is refused, with the budget that would do.
    """
    full = estimate(workload, warm, spent)
    if full.total_seconds <= budget_seconds:
        return _with_budget(full, budget_seconds, budget, ())
    left = budget_seconds - spent - warm.load_seconds - FINISH_SECONDS
    has_validation = bool(workload.validation_tokens or workload.field_error_rows)
    evaluations, rows = (workload.evaluations, workload.field_error_rows) if has_validation else (0, 0)
    changed: list[str] = []
    if has_validation:
        # Evaluations: fewer, then fewer rows, until they take at most EVAL_SHARE of what is left.
        while evaluations > 1 and evaluations * eval_seconds(workload, warm, rows) > EVAL_SHARE * left:
            evaluations -= 1
        while rows > MIN_FIELD_ERROR_ROWS and evaluations * eval_seconds(workload, warm, rows) > EVAL_SHARE * left:
            rows = max(MIN_FIELD_ERROR_ROWS, rows // 2)
        if evaluations != workload.evaluations:
            changed.append(f"{evaluations} evaluation(s) instead of {workload.evaluations}")
        if rows != workload.field_error_rows:
            changed.append(f"field error on {rows} validation rows instead of {workload.field_error_rows}")
    step_seconds = workload.tokens_per_step / warm.tokens_per_second
    min_steps = math.ceil(min(MIN_EXAMPLES, workload.train_examples) / workload.examples_per_step)
    evals = evaluations * eval_seconds(workload, warm, rows) if evaluations else 0.0
    if evaluations and math.floor(max(0.0, left - evals) / step_seconds) < min_steps:
        # The minimum of data comes before the evaluations: only the final one, on the fewest rows.
        evaluations, rows = 1, min(rows, MIN_FIELD_ERROR_ROWS)
        evals = eval_seconds(workload, warm, rows)
        changed[:] = [f"1 evaluation instead of {workload.evaluations}"] + (
            [f"field error on {rows} validation rows instead of {workload.field_error_rows}"]
            if rows != workload.field_error_rows
            else []
        )
    steps = min(workload.steps, math.floor(max(0.0, left - evals) / step_seconds))
    if steps < min_steps:
        floor_evals = eval_seconds(workload, warm, min(rows, MIN_FIELD_ERROR_ROWS)) if has_validation else 0.0
        needed = spent + warm.load_seconds + FINISH_SECONDS + min_steps * step_seconds + floor_evals
        raise TuneloopError(
            f"a budget of {format_duration(budget_seconds)} can't fit even {min_steps} step(s) "
            f"({min(MIN_EXAMPLES, workload.train_examples)} examples) here: the data work and warm-up took "
            f"{format_duration(spent)}, loading takes {format_duration(warm.load_seconds)}, a step "
            f"{format_duration(step_seconds)} (measured {warm.tokens_per_second:,.0f} tokens/s)",
            where="--time-budget",
            hint=f"give it at least {_round_budget(needed)} (the whole run as configured: about "
            f"{_round_budget(full.total_seconds)}), or train on a GPU",
        )
    if steps < workload.steps:
        epochs = steps / workload.steps_per_epoch
        changed.append(
            f"{steps} steps ({epochs:.2f} epochs) instead of {workload.steps} "
            f"({workload.steps / workload.steps_per_epoch:g} epochs)"
        )
    train = steps * step_seconds
    result = Plan(
        steps=steps,
        epochs=round(steps / workload.steps_per_epoch, 3),
        tokens=round(steps * workload.tokens_per_step),
        evaluations=evaluations,
        field_error_rows=rows,
        train_seconds=train,
        eval_seconds=evals,
        total_seconds=spent + warm.load_seconds + train + evals + FINISH_SECONDS,
    )
    return _with_budget(result, budget_seconds, budget, tuple(changed))


def apply_plan(sft: dict[str, Any], chosen_plan: Plan, workload: Workload) -> dict[str, Any]:
    """The SFT keys that make the trainer follow the plan: max_steps, and evaluations/checkpoints spread over it."""
    out = dict(sft)
    if chosen_plan.steps != workload.steps or workload.max_steps > 0:
        out["max_steps"] = chosen_plan.steps
    if chosen_plan.evaluations and out.get("eval_strategy", "no") != "no":
        # The final step is always evaluated (selection.KeepBestAdapter): N evaluations are N-1 intermediate.
        every = max(1, math.ceil(chosen_plan.steps / chosen_plan.evaluations))
        out["eval_steps"] = every
        out["save_steps"] = every
    return out


def describe(chosen_plan: Plan, warm: WarmUp, device: str) -> list[str]:
    """The lines ``train()`` prints before training."""
    each = chosen_plan.eval_seconds / max(1, chosen_plan.evaluations)
    evals = (
        f", {chosen_plan.evaluations} evaluation(s) of ~{format_duration(each)}"
        f" (field error on {chosen_plan.field_error_rows} validation rows)"
        if chosen_plan.evaluations
        else ""
    )
    lines = [
        f"this run: {chosen_plan.tokens:,} tokens ({chosen_plan.steps} steps, {chosen_plan.epochs:g} epochs), about "
        f"{format_duration(chosen_plan.total_seconds)} here: training ~{format_duration(chosen_plan.train_seconds)} "
        f"at {warm.tokens_per_second:,.0f} tokens/s (measured in a {warm.steps}-step warm-up){evals}"
    ]
    if chosen_plan.budget_seconds is not None:
        if chosen_plan.changed:
            lines.append(f"to fit --time-budget {chosen_plan.budget}: " + "; ".join(chosen_plan.changed))
        else:
            lines.append(f"fits --time-budget {chosen_plan.budget} as configured")
    elif device == "cpu" and chosen_plan.total_seconds > LONG_RUN_SECONDS:
        lines.append(
            f"[yellow]that is over {LONG_RUN_SECONDS // 60} min on this CPU[/]: --time-budget 20m (or another "
            "duration) fits the schedule into it, keeping the adapter with the best validation field error"
        )
    return lines


def _with_budget(result: Plan, budget_seconds: float, budget: str | None, changed: tuple[str, ...]) -> Plan:
    return Plan(**{**asdict(result), "budget_seconds": budget_seconds, "budget": budget, "changed": changed})


def _round_budget(seconds: float) -> str:
    minutes = math.ceil(seconds / 60)
    if minutes < 60:
        return f"{minutes}m"
    hours, rest = divmod(minutes, 60)
    return f"{hours}h{rest}m" if rest else f"{hours}h"
