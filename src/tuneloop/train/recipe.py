"""The SFT recipe: LoRA fine-tuning of a base on pre-tokenized chats, one process's view, top to bottom.

Run by ``launch.py`` in the calling process, or in each process of ``accelerate launch`` (DDP, FSDP or
DeepSpeed from an accelerate config file, several machines through accelerate's own options) as
``python -m tuneloop.train.recipe RUN_DIR``. Everything it needs is in ``RUN_DIR/run.json`` and the data
folders beside it, written by ``train()`` before launching, so every process trains on identical tokens and
none tokenizes. It writes, from the main process only:

    RUN_DIR/checkpoints/checkpoint-N/   (Trainer checkpoints, the last 2 kept; ``--resume`` continues from one)
    RUN_DIR/best_adapter/               (the adapter of the evaluation with the lowest field error, kept.json)
    RUN_DIR/adapter/                    (the PEFT adapter registered: that best one, else the last; with
                                         adapter_config.json, adapter_model.safetensors, tokenizer files and
                                         chat template)
    RUN_DIR/log_history.json            (every logged loss, validation loss, learning rate)
    RUN_DIR/result.json                 (finished | diverged | failed, with the step and the metrics)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

RESULT_FILE = "result.json"
RUN_FILE = "run.json"
EXIT_DIVERGED = 3
WARM_UP_TOKENS = 48  # decoded per validation row in the warm-up, to time the field error


def run(run_dir: Path) -> dict[str, Any]:
    """Train as described by ``run_dir/run.json``; returns (and on the main process writes) the result."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # bases are local; nothing may reach the network
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from transformers.trainer_utils import get_last_checkpoint

    from tuneloop.train.callbacks import NonFiniteLossGuard, RichProgressCallback, TimeBudgetGuard
    from tuneloop.train.collate import PaddingFreeCollator
    from tuneloop.train.config import lora_arguments, sft_arguments
    from tuneloop.train.data import load_encoded
    from tuneloop.train.selection import BEST_DIR, KEPT_FILE, KeepBestAdapter
    from tuneloop.train.trainer import TuneloopSFTTrainer

    spec = json.loads((run_dir / RUN_FILE).read_text())
    config = spec.get("config", {})
    started = time.perf_counter()

    # 1. The recipe's settings, by their TRL/PEFT names (config.py chose the defaults). Built first: they
    #    pick this process's device, where a quantized base is placed.
    args = sft_arguments(spec["sft"], str(run_dir / "checkpoints"))

    # 2. The base in the resolved dtype (float32 on CPU, bf16 on most GPUs; autocast is the trainer's job),
    #    4/8-bit through bitsandbytes when asked, with attention that keeps the examples of a padding-free
    #    batch apart.
    model, tokenizer = load_model(spec, args)

    # 3. The data, tokenized before launch: input_ids, and labels that are -100 outside assistant turns.
    train_dataset = load_encoded(Path(spec["train_dir"]))
    eval_dataset = load_encoded(Path(spec["eval_dir"])) if spec.get("eval_dir") else None

    # 4. The field error at each evaluation, and the adapter it picks (selection.py).
    probe = field_error_probe(spec, tokenizer)
    trainer = TuneloopSFTTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=PaddingFreeCollator(),  # one row per micro-batch, no padding, no cross-example attention
        peft_config=lora_arguments(spec["lora"]),
        loraplus_lr_ratio=config.get("loraplus_lr_ratio"),  # LoRA+ when set
        field_error=probe,
    )
    keeper = KeepBestAdapter(run_dir) if probe is not None else None
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    guard = NonFiniteLossGuard(trainer.monitor)
    progress = RichProgressCallback(trainer.monitor, world_size=args.world_size)
    trainer.add_callback(progress)
    if keeper is not None:
        trainer.add_callback(keeper)
    deadline = (spec.get("plan") or {}).get("deadline_unix")
    budget_guard = TimeBudgetGuard(deadline) if deadline else None
    if budget_guard is not None:
        trainer.add_callback(budget_guard)
    trainer.add_callback(guard)  # last: a diverged step cancels the evaluation the keeper may have asked for

    # 5. Train, from the last checkpoint when resuming.
    checkpoint = get_last_checkpoint(args.output_dir) if spec.get("resume_from_checkpoint") else None
    try:
        trainer.train(resume_from_checkpoint=checkpoint)
    finally:
        progress.close()  # also after Ctrl-C or a crash: leave the terminal clean

    # 6. Save (main process only): the adapter kept (the best by field error, else the last) and the
    #    tokenizer, the loss history, the outcome.
    result: dict[str, Any] = {"status": "finished", "step": trainer.state.global_step, "resumed_from": checkpoint}
    if budget_guard is not None and budget_guard.stopped_at is not None:
        result["budget_stopped_at"] = {"step": budget_guard.stopped_at, "planned_steps": trainer.state.max_steps}
    history = trainer.state.log_history
    if guard.diverged_at is not None:
        result = {
            "status": "diverged",
            "step": guard.diverged_at,
            "last_checkpoint": _last_checkpoint(run_dir / "checkpoints", before=guard.diverged_at),
        }
    else:
        # Under FSDP each process holds a shard of the weights: gathering them is a collective that every
        # process joins; PEFT's save_pretrained then keeps the adapter's tensors of the full state dict.
        state_dict = trainer.accelerator.get_state_dict(trainer.model) if trainer.is_fsdp_enabled else None
        if trainer.is_world_process_zero():
            adapter_dir = run_dir / "adapter"
            kept = keeper.best if keeper is not None else None
            if kept is not None:
                shutil.rmtree(adapter_dir, ignore_errors=True)
                shutil.copytree(run_dir / BEST_DIR, adapter_dir, ignore=shutil.ignore_patterns(KEPT_FILE))
                result["kept"] = {**asdict(kept), "rows": len(probe.rows)}
            else:
                model_to_save = trainer.accelerator.unwrap_model(trainer.model)
                model_to_save.save_pretrained(str(adapter_dir), state_dict=state_dict)
            tokenizer.save_pretrained(str(adapter_dir))
    if trainer.is_world_process_zero():
        result["seconds"] = time.perf_counter() - started
        result["world_size"] = args.world_size
        result["distributed"] = trainer.accelerator.distributed_type.value  # NO, MULTI_CPU, MULTI_GPU, FSDP, ...
        result["tokens_per_second"] = _tokens_per_second(trainer, result["seconds"], args.world_size)
        result["metrics"] = _final_metrics(history)
        (run_dir / "log_history.json").write_text(json.dumps(history, indent=1))
        (run_dir / RESULT_FILE).write_text(json.dumps(result, indent=1))
    return result


def warm_up(run_dir: Path, steps: int = 3, rows: int = 4) -> dict[str, Any]:
    """A few real optimizer steps on the run's data and model, timed, and one field-error generation over
    ``rows`` validation rows, timed (``budget.py`` turns them into the run's estimate). Nothing is kept: the
    run starts from the base again, so the warm-up changes no result.
    """
    import gc
    import tempfile

    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from tuneloop.train.collate import PaddingFreeCollator
    from tuneloop.train.config import lora_arguments, sft_arguments
    from tuneloop.train.data import load_encoded
    from tuneloop.train.trainer import TuneloopSFTTrainer

    spec = json.loads((run_dir / RUN_FILE).read_text())
    config = spec.get("config", {})
    started = time.perf_counter()
    sft = {
        **spec["sft"],
        "max_steps": steps + 1,  # the first step is not timed (allocations, lazy initialisation)
        "eval_strategy": "no",
        "save_strategy": "no",
        "logging_strategy": "no",
        "load_best_model_at_end": False,
    }

    class StepTimes(TrainerCallback):
        def __init__(self, monitor: Any) -> None:
            self.monitor, self.marks = monitor, []

        def on_step_end(self, args, state, control, **kwargs):  # type: ignore[override]
            self.marks.append((time.perf_counter(), self.monitor.tokens))

    with tempfile.TemporaryDirectory(prefix="tuneloop-warm-up-") as scratch:
        args = sft_arguments(sft, scratch)
        model, tokenizer = load_model(spec, args)
        trainer = TuneloopSFTTrainer(
            model=model,
            args=args,
            train_dataset=load_encoded(Path(spec["train_dir"])),
            processing_class=tokenizer,
            data_collator=PaddingFreeCollator(),
            peft_config=lora_arguments(spec["lora"]),
            loraplus_lr_ratio=config.get("loraplus_lr_ratio"),
        )
        trainer.remove_callback(ProgressCallback)
        trainer.remove_callback(PrinterCallback)
        timer = StepTimes(trainer.monitor)
        trainer.add_callback(timer)
        loaded = time.perf_counter() - started
        trainer.train()
        (t0, k0), (t1, k1) = timer.marks[0], timer.marks[-1]
        tokens_per_second = (k1 - k0) / (t1 - t0) if t1 > t0 and k1 > k0 else k1 / max(t1 - started - loaded, 1e-6)
        probe = field_error_probe({**spec, "config": {**config, "field_error_rows": rows}}, tokenizer, quiet=True)
        generated, per_row = 0, 0.0
        if probe is not None and probe.rows:
            per_row = _seconds_per_answer(probe, trainer.accelerator.unwrap_model(trainer.model), tokenizer)
            generated = len(probe.rows)
        del trainer, model
        gc.collect()
    return {
        "load_seconds": loaded,
        "tokens_per_second": tokens_per_second,
        "steps": len(timer.marks) - 1,
        "seconds_per_generated_row": per_row,
        "generated_rows": generated,
        "seconds": time.perf_counter() - started,
    }


def _seconds_per_answer(probe: Any, model: Any, tokenizer: Any) -> float:
    """Seconds to answer one validation row greedily, at the length a trained model answers.

    A base a few steps into training rambles on to ``max_tokens`` (or stops at once); a trained one stops
    where the rows' own answers do. So the time measured is scaled from the longest answer generated here to
    the longest of the rows' own answers (plus a fifth): decoding is most of the time, one step per token.
    The warm-up decodes at most ``WARM_UP_TOKENS`` of it: enough to time a step, not a whole ramble.
    """
    from tuneloop.train.selection import generate_answers

    max_tokens = min(probe.task.decoding.max_tokens, WARM_UP_TOKENS)
    began = time.perf_counter()
    outputs = generate_answers(model, tokenizer, [row.prompt_ids for row in probe.rows], max_tokens)
    elapsed = time.perf_counter() - began

    def length(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1  # + the end-of-turn token

    generated = min(max_tokens, max(length(text) for text in outputs))
    expected = min(probe.task.decoding.max_tokens, round(1.2 * max(length(row.answer) for row in probe.rows)))
    return elapsed / len(probe.rows) * expected / max(1, generated)


def load_model(spec: dict[str, Any], args: Any) -> tuple[Any, Any]:
    """The base in the resolved dtype, 4/8-bit when asked, with padding-free attention; and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneloop.bases import align_special_tokens
    from tuneloop.train import attention

    config = spec.get("config", {})
    dtype = getattr(torch, config.get("dtype", "float32"))
    quantization = config.get("quantization")
    tokenizer = AutoTokenizer.from_pretrained(spec["base_dir"], local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        spec["base_dir"],
        dtype=dtype,
        attn_implementation=attention.register(),
        local_files_only=True,
        # transformers 5.25 swaps layers for Hub kernels by default, fetched from the Hub on a GPU when training
        # starts: a network call (it failed on an offline H200) and code that is not the base's.
        use_kernels=False,
        **quantized_loading(quantization, dtype, args.device),
    )
    align_special_tokens(model, tokenizer)  # eos = the end-of-turn token, which the labels teach
    if quantization:
        from peft import prepare_model_for_kbit_training

        # Freezes the base, keeps norms and embeddings in float32, and turns on gradient checkpointing
        # (with inputs that require grad) as the arguments say.
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=args.gradient_checkpointing,
            gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs,
        )
    return model, tokenizer


def field_error_probe(spec: dict[str, Any], tokenizer: Any, quiet: bool = False) -> Any:
    """The ``FieldErrorProbe`` over the run's first ``field_error_rows`` validation rows, or None when off.

    Not under FSDP or DeepSpeed: there the processes may hold shards of the weights, so generating on the
    main process alone would wait for the others forever; the last adapter is kept there, as with
    ``field_error_rows: 0``.
    """
    from tuneloop.task import Task
    from tuneloop.train.selection import FieldErrorProbe, load_validation_rows

    limit = spec.get("config", {}).get("field_error_rows", 0)
    prompts = spec.get("validation_prompts")
    if not limit or not prompts or not spec.get("task_spec"):
        return None
    if _under_fsdp() or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        if not quiet:
            print("field error: not measured with sharded weights (FSDP, DeepSpeed); the last adapter is kept")
        return None
    rows = load_validation_rows(Path(prompts), limit)
    return FieldErrorProbe(Task.model_validate(spec["task_spec"]), tokenizer, rows)


def quantized_loading(quantization: str | None, dtype: Any, device: Any) -> dict[str, Any]:
    """``from_pretrained`` arguments for a 4-bit (QLoRA: NF4, double quantization) or 8-bit base on ``device``.

    The 4-bit layers compute in the base's dtype. Under FSDP the packed 4-bit weights are stored in that
    dtype too, so that FSDP can shard them with the rest (transformers' Trainer then sets FSDP's mixed
    precision to it).
    """
    if not quantization:
        return {}
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        settings: dict[str, Any] = {"load_in_8bit": True}
    else:
        settings = {
            "load_in_4bit": True,
            "bnb_4bit_quant_type": "nf4",
            "bnb_4bit_use_double_quant": True,
            "bnb_4bit_compute_dtype": dtype,
        }
        if _under_fsdp():
            settings["bnb_4bit_quant_storage"] = dtype
    # Each process quantizes onto its own device (under accelerate: this process's GPU).
    return {"quantization_config": BitsAndBytesConfig(**settings), "device_map": {"": device}}


def _under_fsdp() -> bool:
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"  # set by `accelerate launch` for FSDP


def _tokens_per_second(trainer: Any, seconds: float, world_size: int) -> float:
    train_seconds = trainer.state.log_history[-1].get("train_runtime") if trainer.state.log_history else None
    return trainer.monitor.tokens * world_size / (train_seconds or seconds)


def _final_metrics(history: list[dict[str, Any]]) -> dict[str, Any]:
    train = [h for h in history if "loss" in h]
    evals = [h for h in history if "eval_loss" in h]
    fields = [h for h in history if "eval_field_error" in h]
    summary = next((h for h in reversed(history) if "train_runtime" in h), {})
    return {
        "train_loss": train[-1]["loss"] if train else None,
        "eval_loss": evals[-1]["eval_loss"] if evals else None,
        "best_eval_loss": min(h["eval_loss"] for h in evals) if evals else None,
        "eval_field_error": fields[-1]["eval_field_error"] if fields else None,
        "best_eval_field_error": min(h["eval_field_error"] for h in fields) if fields else None,
        "train_runtime_s": summary.get("train_runtime"),
        "steps": summary.get("step") or (history[-1].get("step") if history else 0),
        "epochs": summary.get("epoch"),
    }


def _last_checkpoint(folder: Path, before: int) -> str | None:
    steps = sorted(
        int(path.name.split("-")[1])
        for path in folder.glob("checkpoint-*")
        if path.name.split("-")[1].isdigit() and int(path.name.split("-")[1]) < before
    )
    return str(folder / f"checkpoint-{steps[-1]}") if steps else None


def main() -> None:
    """Entry point for ``accelerate launch -m tuneloop.train.recipe RUN_DIR``."""
    from tuneloop.train.quiet import quiet_libraries

    with quiet_libraries():
        result = run(Path(sys.argv[1]))
    sys.exit(EXIT_DIVERGED if result.get("status") == "diverged" else 0)


if __name__ == "__main__":
    main()
