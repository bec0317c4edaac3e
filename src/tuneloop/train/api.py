"""``train()``: from a dataset to a registered, immutable ``task@N``, in the order a user would check it.

1. Resolve the task, the base and the config; read and check every row, and tokenize them (``data.py``);
   any problem is reported, naming the row and field, before a model is loaded for training.
2. Fill in the config from the data (``config.py``) and write the run folder:
   ``$TUNELOOP_HOME/runs/<task>/<time>-<fingerprint>/`` with ``run.json`` and the tokenized splits.
3. Launch the recipe (``launch.py``): in this process, or under ``accelerate launch``.
4. Plot the loss curve, optionally merge the adapter into full weights, and register the version
   (``tuneloop.registry.versions``): same files as an existing version give that version back. The adapter
   registered is the one the recipe kept: the lowest validation field error (``selection.py``), else the last.

``system_prompt`` (prompt distillation): train with a short system prompt, or none (``""``), in place of the
task's instructions; rows opening with the instructions get it instead (``data.with_system_prompt``), and the
version records it and the instructions it stands for, so serving swaps them for it on every request.

``resume=True`` finds the newest unfinished run of the task with the same data, base and config and continues
it from its last checkpoint (or only registers it, if training had finished).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from tuneloop.bases import DEFAULT_BASE, base_weights_hash, end_of_turn_token, resolve_base, transformers_dir
from tuneloop.config import get_settings
from tuneloop.errors import TuneloopError
from tuneloop.registry.versions import ModelVersionInfo, register_version
from tuneloop.task import Task, load_task
from tuneloop.train.budget import (
    FINISH_SECONDS,
    WARM_UP_ROWS,
    WARM_UP_STEPS,
    WarmUp,
    Workload,
    apply_plan,
    describe,
    estimate,
    parse_duration,
    plan,
)
from tuneloop.train.config import (
    ResolvedConfig,
    TrainConfig,
    check_base_quantizable,
    check_quantization,
    load_config,
    precision,
    resolve_config,
)
from tuneloop.train.data import PreparedData, encode_rows, load_source, prepare
from tuneloop.train.launch import launch
from tuneloop.train.plots import plot_loss_curve
from tuneloop.train.quiet import quiet_libraries
from tuneloop.train.recipe import RESULT_FILE, RUN_FILE

REGISTERED_FILE = "registered.json"
# sft: LoRA on examples' answers, from a base; the others train a registered version (--parent) further.
METHODS = ("sft", "dpo", "grpo")


@dataclass(frozen=True)
class TrainResult:
    version: ModelVersionInfo
    created: bool  # False: identical to an existing version, which is returned
    run_dir: Path
    seconds: float  # the training itself
    tokens_per_second: float
    metrics: dict[str, Any]
    plan: dict[str, Any] | None = None  # budget.Plan: the schedule, its estimate, the time budget if one was set


def train(
    task: str | Task,
    data: str | Path | None = None,
    base: str | None = None,
    config: str | Path | TrainConfig | None = None,
    *,
    method: str = "sft",
    parent: str | None = None,
    launcher: str = "inprocess",
    num_processes: int = 1,
    accelerate_config: Path | None = None,
    accelerate_args: list[str] | None = None,
    resume: bool = False,
    merge: bool = False,
    time_budget: str | float | None = None,
    system_prompt: str | None = None,
    console: Console | None = None,
) -> TrainResult:
    """Fine-tune ``base`` on ``data`` (``FILE.jsonl`` or ``dataset:NAME``) and register ``task@N``.

    Before training, a short warm-up measures this machine and the run's size and cost are printed;
    ``time_budget`` (``"20m"``, ``"1h30m"``, or seconds) fits the schedule into it (``budget.py``).
    ``system_prompt``: the system prompt to train with in place of the task's instructions (``""``: no
    system message); the version is then served with it (None: the task's instructions, as always).

    ``method``: ``sft`` (the default: LoRA on ``data``'s answers, from ``base``, the smollm2-135m-instruct
    base unless named), or ``dpo`` (``dpo_api.py``: the ``parent`` version's LoRA trained further on
    preference pairs; ``data`` None or ``pairs:SOURCES`` takes them from the store, else a TRL preference
    JSONL file; ``config`` a file with a ``dpo:`` section), or ``grpo`` (``grpo.py``: the ``parent`` version's
    LoRA trained further by TRL's GRPOTrainer, rewarded by the task's own score of answers it samples to
    ``data``'s prompts; ``config`` a file with a ``grpo:`` section).
    """
    _check_method(method, parent, data)
    if method == "dpo":
        _refuse_sft_options(method, launcher, num_processes, accelerate_args, resume, time_budget, system_prompt)
        from tuneloop.train.dpo_api import train_dpo

        with quiet_libraries():
            return train_dpo(task, data, parent=parent, base=base, config=config, merge=merge, console=console)
    if method == "grpo":  # grpo.py: the parent's LoRA, rewarded by the task's score; --time-budget holds
        _refuse_sft_options(method, launcher, num_processes, accelerate_args, resume, None, system_prompt)
        from tuneloop.train.grpo import train_grpo

        return train_grpo(
            task, data, parent=parent, base=base, config=config, time_budget=time_budget, merge=merge, console=console
        )
    with quiet_libraries():  # our progress bar and lines only (quiet.py)
        return _train(
            task,
            data,
            base or DEFAULT_BASE,
            config,
            launcher=launcher,
            num_processes=num_processes,
            accelerate_config=accelerate_config,
            accelerate_args=accelerate_args,
            resume=resume,
            merge=merge,
            time_budget=time_budget,
            system_prompt=system_prompt,
            console=console,
        )


def _train(
    task: str | Task,
    data: str | Path,
    base: str,
    config: str | Path | TrainConfig | None,
    *,
    launcher: str,
    num_processes: int,
    accelerate_config: Path | None,
    accelerate_args: list[str] | None,
    resume: bool,
    merge: bool,
    time_budget: str | float | None,
    system_prompt: str | None,
    console: Console | None,
) -> TrainResult:
    began = time.perf_counter()
    budget_seconds = parse_duration(time_budget) if time_budget is not None else None
    budget_text = (
        str(time_budget) if isinstance(time_budget, str) else (f"{budget_seconds:g}s" if budget_seconds else None)
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    console = console or Console(stderr=True)
    say: Callable[[str], None] = lambda message: console.print(message, highlight=False)  # noqa: E731

    # 1. What to train, on what, how: every check before any training.
    if accelerate_args and launcher != "accelerate":
        raise TuneloopError(
            f"{' '.join(accelerate_args)!r} would go to `accelerate launch`, and this run trains in this process",
            where="the arguments after --",
            hint="add --launcher accelerate, or drop them (every option of tuneloop train goes before --)",
        )
    spec = task if isinstance(task, Task) else load_task(task)
    # None: trained (and served) with the task's instructions; the same text given is no distillation either.
    trained_prompt = system_prompt.strip() if system_prompt is not None else None
    if trained_prompt == spec.system_prompt():
        trained_prompt = None
    resolved_base = resolve_base(base)
    user_config = config if isinstance(config, TrainConfig) else load_config(config)
    device = "cuda" if _cuda_available() else "cpu"
    check_quantization(user_config, device)  # no GPU or no bitsandbytes: said before the data is read
    source = load_source(str(data))
    base_dir = transformers_dir(resolved_base, progress=say)
    tokenizer = _tokenizer(base_dir)
    model_info = _model_info(base_dir)
    check_base_quantizable(user_config, model_info["config"], resolved_base.id)
    user_max = user_config.sft.get("max_length")
    _warn_on_prompt_drift(spec, source.rows, say, distilled=trained_prompt is not None)
    rows = source.rows
    if trained_prompt is not None:
        rows = _distill(spec, rows, trained_prompt, tokenizer, say)
    encoded = encode_rows(rows, tokenizer, user_max or model_info["context"])
    longest = max(len(item.input_ids) for item in encoded)
    resolved = resolve_config(
        user_config,
        examples=len(encoded),
        longest=longest,
        parameters=model_info["parameters"],
        world_size=num_processes,
        device=device,
        context_length=model_info["context"],
        text_answers=spec.is_text,  # free text: no field error to keep an adapter by, no JSON values to weight
    )
    weights_sha256 = base_weights_hash(resolved_base)
    fingerprint = _fingerprint(
        spec, resolved_base.id, weights_sha256, source.sha256, resolved, num_processes, budget_seconds, trained_prompt
    )

    # 2. The run folder: a new one, or the unfinished one being resumed.
    if resume:
        run_dir = _find_resumable(spec.name, fingerprint)
        say(f"resuming {run_dir}")
    else:
        run_dir = _new_run_dir(spec.name, fingerprint)
        prepared = prepare(
            encoded,
            run_dir / "data",
            validation_fraction=resolved.validation_fraction,
            seed=resolved.sft["seed"],
            value_weight=resolved.value_weight,
            # Validation answers are asked with the prompt the version will be served with.
            prompts_from=(rows, tokenizer) if resolved.field_error_rows else None,
        )
        run_spec = {
            "task": spec.name,
            "task_spec": spec.model_dump(mode="json"),  # the recipe scores validation answers with it
            "validation_prompts": str(prepared.prompts_file) if prepared.prompts_file else None,
            "base": resolved_base.id,
            "base_dir": str(base_dir),
            "train_dir": str(prepared.train_dir),
            "eval_dir": str(prepared.eval_dir) if prepared.eval_dir else None,
            "sft": resolved.sft,
            "lora": resolved.lora,
            "fingerprint": fingerprint,
            "data": {
                "ref": source.ref,
                "sha256": source.sha256,
                "rows": len(source.rows),
                "left_out_test_rows": source.left_out_test,
                "train_examples": prepared.train_examples,
                "validation_examples": prepared.eval_examples,
                "train_tokens": prepared.train_tokens,
                "longest_tokens": prepared.longest,
                **prepared.stats,
            },
            "config": resolved.to_dict(),
            "chosen": resolved.chosen,
            "launcher": {"name": launcher, "num_processes": num_processes},
            **(
                {"system_prompt": {"trained": trained_prompt, "distilled_from": spec.system_prompt()}}
                if trained_prompt is not None
                else {}
            ),
        }
        (run_dir / RUN_FILE).write_text(json.dumps(run_spec, indent=1))
        left_out = f", {source.left_out_test} test rows left out" if source.left_out_test else ""
        say(
            f"{prepared.train_examples} training examples ({prepared.train_tokens:,} tokens), "
            f"{prepared.eval_examples} held back for validation{left_out}; "
            + (
                f"{resolved.sft['max_steps']} steps"
                if resolved.sft.get("max_steps", -1) > 0
                else f"{resolved.sft['num_train_epochs']} epochs"
            )
            + f" at lr {resolved.sft['learning_rate']:g}, "
            f"LoRA r={resolved.lora['r']} on {resolved.lora['target_modules']}, "
            f"base in {precision(resolved.to_dict())}"
            + (f", value tokens weighted x{resolved.value_weight:g}" if resolved.value_weight != 1.0 else "")
        )
        say(f"run folder: {run_dir}")
        _plan_run(run_dir, prepared, resolved, num_processes, device, began, budget_seconds, budget_text, say)
    run_spec = json.loads((run_dir / RUN_FILE).read_text())

    # 3. Train (unless a resumed run had already finished training).
    result_path = run_dir / RESULT_FILE
    previous = json.loads(result_path.read_text()) if result_path.is_file() else None
    if previous is None or previous.get("status") != "finished":
        run_spec["resume_from_checkpoint"] = bool(resume and _has_checkpoint(run_dir))
        (run_dir / RUN_FILE).write_text(json.dumps(run_spec, indent=1))
        result_path.unlink(missing_ok=True)
        result = launch(
            run_dir,
            launcher=launcher,
            num_processes=num_processes,
            accelerate_config=accelerate_config,
            accelerate_args=accelerate_args,
        )
    else:
        result = previous
    if result.get("status") == "diverged":
        checkpoint = result.get("last_checkpoint")
        raise TuneloopError(
            f"training diverged: the loss became NaN or infinite at step {result.get('step')}; stopped there"
            + (f", the last good checkpoint is {checkpoint}" if checkpoint else ", before any checkpoint was saved"),
            where=str(run_dir),
            hint="lower the learning rate (sft: {learning_rate: ...}) and train again",
        )

    # 4. The loss curve, merged weights on request, and the registry.
    if stopped := result.get("budget_stopped_at"):
        say(
            f"[yellow]the time budget ran out at step {stopped['step']} of {stopped['planned_steps']}[/] (this "
            "machine ran slower than the warm-up measured); training stopped there"
        )
    if kept := result.get("kept"):
        say(
            f"kept the adapter of step {kept['step']} of {result.get('step')}: field error "
            f"{kept['field_error']:.1%} on {kept['rows']} validation rows"
            + (f", validation loss {kept['eval_loss']:.4f}" if kept.get("eval_loss") is not None else "")
        )
    adapter_dir = run_dir / "adapter"
    history = json.loads((run_dir / "log_history.json").read_text())
    curve = plot_loss_curve(history, run_dir / "loss_curve.png", title=f"{spec.name} on {resolved_base.id}")
    extra: dict[str, Path] = {}
    if curve is not None:
        extra["loss_curve.png"] = curve
    if merge:
        say("merging the adapter into the base weights")
        extra["merged"] = merge_adapter(base_dir, adapter_dir, run_dir / "merged")
    metrics = {
        **result.get("metrics", {}),
        **({"kept_step": kept["step"], "kept_field_error": kept["field_error"]} if kept else {}),
        **({"budget_stopped_at_step": stopped["step"]} if stopped else {}),
        "train_seconds": result.get("seconds"),
        "tokens_per_second": result.get("tokens_per_second"),
        "world_size": result.get("world_size"),
    }
    version, created = register_version(
        spec.name,
        adapter_dir,
        base_id=resolved_base.id,
        base_weights_hash=weights_sha256,
        system_prompt=spec.system_prompt() if trained_prompt is None else trained_prompt,
        distilled_from=None if trained_prompt is None else spec.system_prompt(),
        input_template=spec.input,
        decoding=spec.decoding.model_dump(),
        dataset_ref=f"{run_spec['data']['ref']}#sha256:{run_spec['data']['sha256'][:16]}",
        config={
            "train": run_spec["config"],
            "chosen": run_spec.get("chosen", {}),
            "data": run_spec["data"],
            "launcher": run_spec.get("launcher"),
            "plan": run_spec.get("plan"),  # the estimate, and the time budget the schedule was fitted to
            "run_dir": str(run_dir),
        },
        metrics=metrics,
        extra_files=extra,
    )
    if resolved_base.gguf_path is not None:
        _export_for_llamacpp(version, say)
    (run_dir / REGISTERED_FILE).write_text(
        json.dumps({"version": version.id, "content_hash": version.content_hash, "created": created}, indent=1)
    )
    return TrainResult(
        version=version,
        created=created,
        run_dir=run_dir,
        seconds=float(result.get("seconds") or 0.0),
        tokens_per_second=float(result.get("tokens_per_second") or 0.0),
        metrics=metrics,
        plan=run_spec.get("plan"),
    )


def merge_adapter(base_dir: Path, adapter_dir: Path, out_dir: Path) -> Path:
    """Full weights with the adapter folded in (``--merge``): for engines that take no adapters."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        base_dir, dtype=torch.float32, local_files_only=True, use_kernels=False
    )  # no Hub kernels: see train/recipe.py
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    merged.save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(adapter_dir, local_files_only=True).save_pretrained(out_dir)
    return out_dir


# --- helpers -------------------------------------------------------------------------------------


def _check_method(method: str, parent: str | None, data: str | Path | None) -> None:
    """A known method, and what it needs: SFT trains a base on --data and has no parent."""
    if method not in METHODS:
        raise TuneloopError(
            f"unknown training method {method!r}", where="--method", hint=f"use one of: {', '.join(METHODS)}"
        )
    if method != "sft":
        return
    if parent is not None:
        raise TuneloopError(
            "--parent names the version a method trains further, and SFT trains a base",
            where=f"--parent {parent}",
            hint="add --method dpo to train that version on preference pairs (or --method grpo, on the task's own "
            "score), or leave out --parent (SFT starts from --base)",
        )
    if data is None:
        raise TuneloopError(
            "SFT trains on examples, and no --data names them",
            where="--data",
            hint="pass --data FILE.jsonl (OpenAI chat rows) or --data dataset:NAME",
        )


def _refuse_sft_options(
    method: str,
    launcher: str,
    num_processes: int,
    accelerate_args: list[str] | None,
    resume: bool,
    time_budget: str | float | None,
    system_prompt: str | None,
) -> None:
    """Options of the SFT recipe that another method's run does not take: refused, never silently ignored."""
    given = {
        "--launcher": launcher != "inprocess" or num_processes != 1 or bool(accelerate_args),
        "--resume": resume,
        "--time-budget": time_budget is not None,
        "--system-prompt": system_prompt is not None,
    }
    for option, is_set in given.items():
        if is_set:
            raise TuneloopError(
                f"{option} is an option of SFT runs, and --method {method} trains its parent further in this process",
                where=option,
                hint=f"leave out {option} (and --num-processes, options after --); a {method} run is short and "
                "keeps a distilled parent's prompt",
            )


def _tokenizer(base_dir: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
    if not tokenizer.chat_template:
        raise TuneloopError(
            "the base's tokenizer has no chat template, so chats can't be formatted for training",
            where=str(base_dir),
            hint="fine-tune an instruct/chat base",
        )
    eot = end_of_turn_token(tokenizer)
    if eot is not None:
        tokenizer.eos_token = eot
    return tokenizer


def _model_info(base_dir: Path) -> dict[str, Any]:
    """Parameter count (from the safetensors headers, without loading) and context length."""
    parameters = 0
    for path in sorted(base_dir.glob("*.safetensors")):
        with path.open("rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(size))
        for name, entry in header.items():
            if name != "__metadata__":
                count = 1
                for dim in entry["shape"]:
                    count *= dim
                parameters += count
    config = json.loads((base_dir / "config.json").read_text())
    return {"parameters": parameters, "context": config.get("max_position_embeddings"), "config": config}


def _warn_on_prompt_drift(spec: Task, rows: list[Any], say: Callable[[str], None], *, distilled: bool = False) -> None:
    """Training prompts that differ from the task's are a silent quality loss at serve time: say so."""
    expected = spec.system_prompt()
    differ = [row for row in rows if row.messages and row.messages[0]["role"] == "system"]
    differ = [row for row in differ if row.messages[0]["content"].strip() != expected]
    if differ:
        served = (
            "they are trained as they are, and not given the trained prompt"
            if distilled
            else "the version is served with the task's prompt"
        )
        say(
            f"[yellow]warning:[/] {len(differ)} of {len(rows)} rows have a system prompt that differs from "
            f"task {spec.name}'s (first: {differ[0].where}); {served}"
        )


def _distill(spec: Task, rows: list[Any], prompt: str, tokenizer: Any, say: Callable[[str], None]) -> list[Any]:
    """The rows with ``prompt`` in place of the task's instructions (``data.with_system_prompt``), and a line
    saying what that saves per request; an error when no row holds the instructions to replace."""
    from tuneloop.train.data import prompt_length, with_system_prompt

    distilled, changed = with_system_prompt(rows, spec.system_prompt(), prompt)
    if not changed:
        raise TuneloopError(
            f"--system-prompt replaces task {spec.name}'s instructions in the training rows, and no row opens "
            "with them (a system message holding exactly the task's instructions)",
            where=rows[0].where,
            hint="train on rows built from the task (tuneloop data, the task's messages), or leave out --system-prompt",
        )
    index = next(i for i, (old, new) in enumerate(zip(rows, distilled, strict=True)) if old is not new)
    before = prompt_length(tokenizer, rows[index].messages)
    after = prompt_length(tokenizer, distilled[index].messages)
    what = f"the system prompt {prompt!r}" if prompt else "no system prompt"
    say(
        f"prompt distillation: trained with {what} in place of the task's instructions "
        f"({changed} of {len(rows)} rows); a request's prompt goes from {before} to {after} tokens"
    )
    return distilled


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _plan_run(
    run_dir: Path,
    prepared: PreparedData,
    resolved: ResolvedConfig,
    processes: int,
    device: str,
    began: float,
    budget_seconds: float | None,
    budget_text: str | None,
    say: Callable[[str], None],
) -> None:
    """Warm up (``recipe.warm_up``), print the run's size and cost, fit it into the budget, record the plan."""
    from tuneloop.train.recipe import warm_up

    sft = resolved.sft
    examples_per_step = sft["per_device_train_batch_size"] * sft["gradient_accumulation_steps"] * processes
    workload = Workload(
        train_examples=prepared.train_examples,
        train_tokens=prepared.train_tokens,
        validation_tokens=round(prepared.train_tokens / max(1, prepared.train_examples) * prepared.eval_examples),
        examples_per_step=examples_per_step,
        epochs=float(sft["num_train_epochs"]),
        max_steps=int(sft.get("max_steps", -1) or -1),
        evaluations=0,
        field_error_rows=0,
    )
    evaluations = _evaluations(sft, workload.steps, workload.steps_per_epoch)
    rows = min(resolved.field_error_rows, prepared.eval_examples) if evaluations else 0
    workload = dataclasses.replace(workload, evaluations=evaluations, field_error_rows=rows)
    answers = f" and {WARM_UP_ROWS} validation answers" if rows else ""
    say(f"warming up: {WARM_UP_STEPS} timed training steps{answers}, to measure this machine")
    measured = warm_up(run_dir, steps=WARM_UP_STEPS, rows=WARM_UP_ROWS if rows else 0)
    warm = WarmUp(
        load_seconds=measured["load_seconds"],
        # Under `accelerate launch` each process trains its share: about N times the throughput of one.
        tokens_per_second=measured["tokens_per_second"] * processes,
        steps=measured["steps"],
        seconds_per_generated_row=measured["seconds_per_generated_row"],
        generated_rows=measured["generated_rows"],
        seconds=measured["seconds"],
    )
    spent = time.perf_counter() - began
    chosen = (
        plan(workload, warm, spent, budget_seconds, budget_text)
        if budget_seconds is not None
        else estimate(workload, warm, spent)
    )
    for line in describe(chosen, warm, device):
        say(line)
    run_spec = json.loads((run_dir / RUN_FILE).read_text())
    run_spec["sft"] = apply_plan(run_spec["sft"], chosen, workload)
    run_spec["config"]["sft"] = run_spec["sft"]
    run_spec["config"]["field_error_rows"] = chosen.field_error_rows
    run_spec["plan"] = {**chosen.to_dict(), "warm_up": dataclasses.asdict(warm)}
    if budget_seconds is not None:
        # When training must end, on the wall clock (the trainer runs in another process): the budget from
        # the start of train(), less saving/registering and one last evaluation (callbacks.TimeBudgetGuard).
        last_evaluation = chosen.eval_seconds / chosen.evaluations if chosen.evaluations else 0.0
        remaining = budget_seconds - (time.perf_counter() - began) - FINISH_SECONDS - last_evaluation
        run_spec["plan"]["deadline_unix"] = time.time() + remaining
    (run_dir / RUN_FILE).write_text(json.dumps(run_spec, indent=1))


def _evaluations(sft: dict[str, Any], steps: int, steps_per_epoch: int) -> int:
    """Validation passes the trainer will make: every eval_steps (or epoch), and the final step."""
    strategy = str(sft.get("eval_strategy", "no"))
    if strategy == "steps":
        every = sft.get("eval_steps") or steps
        every = math.ceil(every * steps) if isinstance(every, float) and every < 1 else int(every)
        return steps // max(1, every) + (1 if steps % max(1, every) else 0)
    if strategy == "epoch":
        return max(1, math.ceil(steps / steps_per_epoch))
    return 0


def _fingerprint(
    spec: Task,
    base_id: str,
    weights: str,
    data_sha: str,
    resolved: ResolvedConfig,
    processes: int,
    budget_seconds: float | None = None,
    trained_prompt: str | None = None,
) -> str:
    payload = {
        "task": spec.name,
        "prompt": [spec.system_prompt(), spec.input],
        "base": [base_id, weights],
        "data": data_sha,
        "config": resolved.fingerprint_dict(),
        "processes": processes,
    }
    if budget_seconds is not None:  # left out without one, so earlier runs keep their fingerprint
        payload["time_budget_s"] = budget_seconds
    if trained_prompt is not None:  # likewise: only a distilled run has one
        payload["trained_system_prompt"] = trained_prompt
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def runs_dir(task: str) -> Path:
    return get_settings().home / "runs" / task


def _new_run_dir(task: str, fingerprint: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = runs_dir(task) / f"{stamp}-{fingerprint[:8]}"
    suffix = 1
    while run_dir.exists():
        suffix += 1
        run_dir = runs_dir(task) / f"{stamp}-{fingerprint[:8]}-{suffix}"
    run_dir.mkdir(parents=True)
    return run_dir


def _find_resumable(task: str, fingerprint: str) -> Path:
    candidates = []
    for run_file in runs_dir(task).glob(f"*/{RUN_FILE}"):
        run_dir = run_file.parent
        if (run_dir / REGISTERED_FILE).is_file():
            continue
        try:
            if json.loads(run_file.read_text()).get("fingerprint") == fingerprint:
                candidates.append(run_dir)
        except (OSError, ValueError):
            continue
    if not candidates:
        raise TuneloopError(
            f"no unfinished run of {task} with this data, base and config to resume",
            where=str(runs_dir(task)),
            hint="run without --resume to start a new one (the same --data, --base and --config are needed to resume)",
        )
    return max(candidates, key=lambda path: (path / RUN_FILE).stat().st_mtime)


def _has_checkpoint(run_dir: Path) -> bool:
    return any((run_dir / "checkpoints").glob("checkpoint-*"))


def elapsed(started: float) -> float:
    return time.perf_counter() - started


def _export_for_llamacpp(version: ModelVersionInfo, say: Callable[[str], None]) -> None:
    """Export the GGUF LoRA llama.cpp serves at registration, so the first request does not wait for it.
    A failure is reported, not fatal: the version stands, and serving retries the export (with its error)."""
    from tuneloop.registry.exports import ensure_gguf_lora

    try:
        path = ensure_gguf_lora(version)
    except TuneloopError as error:
        say(f"[yellow]warning:[/] no GGUF LoRA for llama.cpp: {error}")
    else:
        say(f"GGUF LoRA for llama.cpp: {path}")
