"""Trainer callbacks: a progress bar with loss, tokens/s and ETA; a guard that stops a diverging run; the
time budget's guard; GRPO's bar with the mean reward per step.

The SFT bar and the NaN guard read the per-process ``RunMonitor`` the trainer fills in (``train/trainer.py``).
Only the main process draws; every process takes part in the NaN check, so all of them stop at the same step.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from rich.console import Console
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from tuneloop.progress import progress_bar
from tuneloop.train.trainer import RunMonitor


class RichProgressCallback(TrainerCallback):
    """``training ━━━━━━━  120/300  40%  0.3 step/s  0:06:40 eta 0:10:00`` with loss, val loss, the validation
    field error and tokens/s."""

    def __init__(self, monitor: RunMonitor, console: Console | None = None, world_size: int = 1) -> None:
        self.monitor = monitor
        self.console = console or Console(stderr=True)
        self.world_size = world_size
        self.progress = None
        self.bar = None
        self.loss: float | None = None
        self.eval_loss: float | None = None
        self.field_error: float | None = None
        self._started = 0.0
        self._tokens_at_start = 0

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if not state.is_world_process_zero:
            return
        self.progress = progress_bar(self.console, unit="step")
        self.progress.start()
        self.bar = self.progress.add_task("training", total=state.max_steps, completed=state.global_step)
        self._started = time.perf_counter()
        self._tokens_at_start = self.monitor.tokens

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if self.progress is None:
            return
        elapsed = time.perf_counter() - self._started
        tokens = (self.monitor.tokens - self._tokens_at_start) * self.world_size
        parts = ["training"]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.3f}")
        if self.eval_loss is not None:
            parts.append(f"val {self.eval_loss:.3f}")
        if self.field_error is not None:
            parts.append(f"field err {self.field_error:.1%}")
        if elapsed > 0 and tokens:
            parts.append(f"{tokens / elapsed:,.0f} tok/s")
        self.progress.update(self.bar, completed=state.global_step, description="  ".join(parts))

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs=None, **kwargs):
        logs = logs or {}
        if "loss" in logs:
            self.loss = float(logs["loss"])
        if "eval_loss" in logs:
            self.eval_loss = float(logs["eval_loss"])
        if "eval_field_error" in logs:
            self.field_error = float(logs["eval_field_error"])

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if self.progress is not None:
            self.on_step_end(args, state, control)
        self.close()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class NonFiniteLossGuard(TrainerCallback):
    """Stops training at the first optimizer step whose loss was NaN/inf, before anything is saved.

    The step's update has already been applied (its weights are poisoned), so nothing from it is kept:
    no checkpoint, no evaluation, no log. The last checkpoint saved before it is the last good state.
    """

    def __init__(self, monitor: RunMonitor) -> None:
        self.monitor = monitor
        self.diverged_at: int | None = None

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        bad = self.monitor.nonfinite
        if args.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = torch.tensor([1.0 if bad else 0.0], device=args.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            bad = bool(flag.item())
        if bad:
            self.diverged_at = state.global_step
            control.should_training_stop = True
            control.should_save = False
            control.should_evaluate = False
            control.should_log = False
        self.monitor.nonfinite = False
        return control


def last_finite(values: list[float]) -> float | None:
    for value in reversed(values):
        if math.isfinite(value):
            return value
    return None


class TimeBudgetGuard(TrainerCallback):
    """Ends training when the time budget's training share is spent, whatever the plan estimated.

    The plan (``budget.py``) fits the schedule to the measured warm-up; a machine that slows down later
    (neighbours, thermal limits) would still overrun it. At the first optimizer step past ``deadline``
    (``time.time()``), training stops after one last evaluation, so the adapter kept is still the best by
    validation field error among all those evaluated. Every process stops at the same step.
    """

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.stopped_at: int | None = None

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        late = time.time() >= self.deadline
        if args.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = torch.tensor([1.0 if late else 0.0], device=args.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            late = bool(flag.item())
        if late and state.global_step < state.max_steps:
            self.stopped_at = state.global_step
            control.should_training_stop = True
            control.should_evaluate = args.eval_strategy != "no"  # one last look, for the adapter kept
        return control


class RewardProgressCallback(TrainerCallback):
    """GRPO's bar (``grpo.py``): ``grpo ━━━━  12/40  30%  0.2 step/s  reward 0.41  invalid 12%  fields 58%``:
    the mean reward of the last logged step's completions, the share of them that did not parse, and their
    field agreement (``reward.py``)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress = None
        self.bar = None
        self.logs: dict[str, float] = {}

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if not state.is_world_process_zero:
            return
        self.progress = progress_bar(self.console, unit="step")
        self.progress.start()
        self.bar = self.progress.add_task("grpo", total=state.max_steps, completed=state.global_step)

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs=None, **kwargs):
        for key, value in (logs or {}).items():
            if isinstance(value, int | float) and value == value:  # NaN: nothing scorable was logged
                self.logs[key] = float(value)
        self._draw(state)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        self._draw(state)

    def _draw(self, state: TrainerState) -> None:
        if self.progress is None:
            return
        parts = ["grpo"]
        if (reward := self.logs.get("reward")) is not None:
            parts.append(f"reward {reward:+.2f}")
        if (invalid := self.logs.get("task/invalid_share")) is not None:
            parts.append(f"invalid {invalid:.0%}")
        if (agreement := self.logs.get("task/field_agreement")) is not None:
            parts.append(f"fields {agreement:.0%}")
        self.progress.update(self.bar, completed=state.global_step, description="  ".join(parts))

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        self._draw(state)
        self.close()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
