"""The kept adapter: the one with the lowest field error on validation rows, not the last or lowest-loss one.

At each evaluation the trainer (``trainer.py``) asks ``FieldErrorProbe`` for the current model's field error:
it generates greedily, in batches with left padding, for the first ``field_error_rows`` validation rows
(their prompts tokenized before launch, ``data.validation_prompts``), up to the task's
``decoding.max_tokens``, without a grammar (the answer is scored, not served), parses each answer
(``tuneloop.answers``) and compares every field with the row's own answer through the task's comparators.
A field counts as an error when it is wrong, missed, hallucinated, or the answer is not valid JSON for the
schema, as the evals count it. That figure is logged as ``eval_field_error``.

``KeepBestAdapter`` saves the adapter of each evaluation that beats the best so far into
``RUN_DIR/best_adapter/`` (with ``kept.json``: step, field error, validation loss), and the recipe
registers that one. Best is the lowest field error; ties go to the lower validation loss, then to the later
step. The final step is always evaluated, so the last weights are a candidate too. A resumed run keeps the
record unless it comes from after the checkpoint it resumes from (a step the run now trains again).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import IntervalStrategy

from tuneloop.answers import parse_answer
from tuneloop.comparators import compare_field
from tuneloop.task import Task

BEST_DIR = "best_adapter"
KEPT_FILE = "kept.json"
GENERATION_BATCH = 16  # rows generated together


@dataclass(frozen=True)
class ValidationRow:
    prompt_ids: list[int]
    answer: str  # the row's own answer (the assistant's message)


def load_validation_rows(path: Path, limit: int) -> list[ValidationRow]:
    """The first ``limit`` rows of ``validation_prompts.jsonl`` (the split is already a seeded sample)."""
    rows: list[ValidationRow] = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if len(rows) >= limit:
                break
            item = json.loads(line)
            rows.append(ValidationRow(item["prompt_ids"], item["answer"]))
    return rows


def generate_answers(model: Any, tokenizer: Any, prompts: list[list[int]], max_new_tokens: int) -> list[str]:
    """Greedy answers to token-id prompts, in batches with left padding; the model's mode is restored."""
    from transformers import GenerationConfig

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad,
        use_cache=True,  # the training config may have turned the cache off (gradient checkpointing)
    )
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    answers: list[str] = []
    try:
        for first in range(0, len(prompts), GENERATION_BATCH):
            batch = prompts[first : first + GENERATION_BATCH]
            width = max(len(prompt) for prompt in batch)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device=device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=device)
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
            answers += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    finally:
        model.train(was_training)
    return answers


def field_error(task: Task, outputs: list[str], answers: list[str]) -> float:
    """Share of fields wrong over the rows whose own answer is a JSON object (NaN when none is)."""
    errors = fields = 0
    for output, answer in zip(outputs, answers, strict=True):
        gold = _gold(task, answer)
        if gold is None:
            continue
        predicted, _ = parse_answer(task, output)
        for name in task.field_names:
            fields += 1
            if predicted is None or compare_field(task.field_spec(name), predicted.get(name), gold.get(name)).is_error:
                errors += 1
    return errors / fields if fields else math.nan


def _gold(task: Task, answer: str) -> dict[str, Any] | None:
    parsed, _ = parse_answer(task, answer)
    if parsed is not None:
        return parsed
    try:  # a gold answer outside the schema still has its fields to compare with
        loaded = json.loads(answer)
    except ValueError:
        return None
    return loaded if isinstance(loaded, dict) else None


@dataclass
class FieldErrorProbe:
    """``probe(model)``: the model's field error on the rows."""

    task: Task
    tokenizer: Any
    rows: list[ValidationRow]

    def __call__(self, model: Any) -> float:
        prompts = [row.prompt_ids for row in self.rows]
        outputs = generate_answers(model, self.tokenizer, prompts, self.task.decoding.max_tokens)
        return field_error(self.task, outputs, [row.answer for row in self.rows])


@dataclass(frozen=True)
class Kept:
    step: int
    field_error: float
    eval_loss: float | None

    def rank(self) -> tuple[float, float, int]:
        """Lower is better: field error, then validation loss, then the later step."""
        loss = self.eval_loss if self.eval_loss is not None and math.isfinite(self.eval_loss) else math.inf
        return (self.field_error, loss, -self.step)


class KeepBestAdapter(TrainerCallback):
    """Keeps the adapter of the evaluation with the lowest field error in ``run_dir/best_adapter``."""

    def __init__(self, run_dir: Path, save: Callable[[Any, Path], None] | None = None) -> None:
        self.folder = run_dir / BEST_DIR
        self.save = save or (lambda model, folder: model.save_pretrained(str(folder)))
        self.best = self._read()
        self._checked_resume = False

    def _read(self) -> Kept | None:
        path = self.folder / KEPT_FILE
        return Kept(**json.loads(path.read_text())) if path.is_file() else None

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        # The first step after a resume: a record from beyond the checkpoint belongs to steps trained again.
        if not self._checked_resume:
            self._checked_resume = True
            if self.best is not None and self.best.step > state.global_step:
                self.best = None
                shutil.rmtree(self.folder, ignore_errors=True)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        # The last weights are a candidate too: evaluate at the final step when no eval step falls on it.
        final = state.global_step >= state.max_steps
        if final and args.eval_strategy == IntervalStrategy.STEPS and state.global_step % state.eval_steps:
            control.should_evaluate = True
        return control

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):  # type: ignore[override]
        metrics = metrics or {}
        error = metrics.get("eval_field_error")
        if error is None or not math.isfinite(error) or not state.is_world_process_zero:
            return
        candidate = Kept(state.global_step, float(error), metrics.get("eval_loss"))
        if self.best is not None and self.best.rank() <= candidate.rank():
            return
        staging = self.folder.with_name(BEST_DIR + ".saving")
        shutil.rmtree(staging, ignore_errors=True)
        self.save(model, staging)
        (staging / KEPT_FILE).write_text(json.dumps(asdict(candidate), indent=1))
        shutil.rmtree(self.folder, ignore_errors=True)
        staging.rename(self.folder)
        self.best = candidate
