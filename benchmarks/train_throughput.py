"""Training tokens/s of ``tuneloop train`` against a plain TRL SFTTrainer script, in one run.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/train_throughput.py [--documents 200] [--steps 6] [--rounds 1]
        [--base smollm2-135m-instruct | --random-llama 1b|3b|8b]

Both sides train the same model on the same synthetic documents (the demo task's train split, the task's
prompt), with the same LoRA config (r=16, alpha=32, every linear layer), the same sequence length (the longest
example: nothing is truncated), the same 16 examples per optimizer step, learning rate and precision, for the
same number of steps, each in this process, one after the other (``--rounds`` alternates them to average out
neighbours' load). Tokens/s = the examples' tokens (padding not counted) / Trainer's ``train_runtime``.

- **plain TRL**: ``SFTTrainer`` on a prompt-completion dataset (loss on the completion, as TRL does by
  default), its default padding collator, default attention (``sdpa``); gradient checkpointing off like ours
  (TRL turns it on by default, which would slow it further: off keeps the comparison about batching).
- **tuneloop**: the recipe ``tuneloop train`` runs (``tuneloop.train.recipe``), on data tokenized before
  launch: padding-free rows with the task's shared prefix stored once, per-example attention, logits only at
  the answer's positions.

``--random-llama`` builds a randomly initialised Llama-shaped model of that size (no hub access) with the
bundled tokenizer, for GPU runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear", "bias": "none"}
RANDOM_LLAMA = {  # hidden, intermediate, layers, heads, kv heads (Llama 3.2 1B / 3B, Llama 3.1 8B shapes)
    "1b": (2048, 8192, 16, 32, 8),
    "3b": (3072, 8192, 28, 24, 8),
    "8b": (4096, 14336, 32, 32, 8),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--documents", type=int, default=200, help="synthetic documents (train split is used)")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per measurement")
    parser.add_argument("--rounds", type=int, default=1, help="measurements of each side, alternating")
    parser.add_argument("--base", default="smollm2-135m-instruct")
    parser.add_argument("--random-llama", choices=sorted(RANDOM_LLAMA), default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    import torch

    from tuneloop.bases import resolve_base, transformers_dir
    from tuneloop.demo.synth import synthesize
    from tuneloop.task import load_task
    from tuneloop.train.config import TrainConfig, bf16_is_fast, resolve_dtype
    from tuneloop.train.data import encode_rows, load_source, prepare

    work = Path(tempfile.mkdtemp(prefix="tuneloop-train-bench-"))
    try:
        task = load_task("liability-extraction")
        rows = [r for r in synthesize(task, args.documents, seed=0) if r["metadata"]["split"] == "train"]
        data_file = work / "train.jsonl"
        data_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
        base_dir = transformers_dir(resolve_base(args.base))
        if args.random_llama:
            base_dir = random_llama(args.random_llama, base_dir, work / "random-llama")
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(base_dir)
        tokenizer.eos_token = "<|im_end|>"
        encoded = encode_rows(load_source(str(data_file)).rows, tokenizer, None)
        max_length = max(len(e.input_ids) for e in encoded)
        cuda = torch.cuda.is_available()
        bf16 = bf16_is_fast("cuda" if cuda else "cpu")
        # Both sides load the base in the dtype `tuneloop train` picks here (bf16 on most GPUs, fp32 on CPU).
        dtype, _ = resolve_dtype(TrainConfig(), "cuda" if cuda else "cpu", bf16)
        if dtype == "float16":
            bf16 = False
        common = {
            "per_device_train_batch_size": 8,
            "gradient_accumulation_steps": 2,
            "learning_rate": 1e-3,
            "max_steps": args.steps,
            "lr_scheduler_type": "linear",
            "warmup_steps": 0,
            "logging_steps": 1,
            "bf16": bf16,
            "fp16": dtype == "float16",
            "use_cpu": not cuda,  # transformers refuses bf16 on CPU unless told the CPU is meant
            "gradient_checkpointing": False,
            "seed": 42,
            "report_to": "none",
            "save_strategy": "no",
            "eval_strategy": "no",
        }
        examples = len(encoded)
        mean_tokens = sum(len(e.input_ids) for e in encoded) / examples
        print(
            f"model {args.random_llama or args.base}; {examples} examples, mean {mean_tokens:.0f} tokens, "
            f"max {max_length}; {args.steps} steps x 16 examples; weights {dtype}, bf16 autocast={bf16}; "
            f"torch threads {torch.get_num_threads()}; device {'cuda' if cuda else 'cpu'}",
            flush=True,
        )
        prepared = prepare(encoded, work / "tokenized", validation_fraction=0.0, seed=0)
        results: dict[str, list[float]] = {"plain TRL SFTTrainer": [], "tuneloop train": []}
        for round_index in range(args.rounds):
            for name in results:
                if name == "tuneloop train":
                    rate = run_tuneloop(work / f"run-{round_index}", base_dir, prepared.train_dir, common, dtype)
                else:
                    rate = run_plain_trl(base_dir, rows, max_length, common, dtype)
                results[name].append(rate)
                print(f"  round {round_index + 1}: {name:22s} {rate:8.1f} tokens/s", flush=True)
        plain = sum(results["plain TRL SFTTrainer"]) / args.rounds
        ours = sum(results["tuneloop train"]) / args.rounds
        print(f"plain TRL SFTTrainer: {plain:.1f} tokens/s")
        print(f"tuneloop train:       {ours:.1f} tokens/s")
        print(f"ratio (tuneloop / plain TRL): {ours / plain:.2f}")
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "plain": results["plain TRL SFTTrainer"],
                        "tuneloop": results["tuneloop train"],
                        "ratio": ours / plain,
                        "model": args.random_llama or args.base,
                        "dtype": dtype,
                        "device": "cuda" if cuda else "cpu",
                    }
                )
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_plain_trl(
    base_dir: Path, rows: list[dict[str, Any]], max_length: int, common: dict[str, Any], dtype: str
) -> float:
    """A plain TRL script: prompt-completion dataset, SFTTrainer's own tokenization and collator."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    dataset = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=getattr(torch, dtype))
    out = Path(tempfile.mkdtemp(prefix="plain-trl-"))
    try:
        args = SFTConfig(output_dir=str(out), max_length=max_length, disable_tqdm=True, **common)
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=LoraConfig(task_type="CAUSAL_LM", **LORA),
        )
        counted = TokenCounter(trainer.data_collator)
        trainer.data_collator = counted
        metrics = trainer.train().metrics
        return counted.tokens / metrics["train_runtime"]
    finally:
        shutil.rmtree(out, ignore_errors=True)


class TokenCounter:
    """Wraps a collator and counts the real (non-padding) tokens of the batches it builds."""

    def __init__(self, collator: Any) -> None:
        self.collator = collator
        self.tokens = 0

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(examples)
        self.tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
        return batch


def run_tuneloop(run_dir: Path, base_dir: Path, train_dir: Path, common: dict[str, Any], dtype: str) -> float:
    """The recipe `tuneloop train` launches, on its pre-tokenized data."""
    from tuneloop.train.recipe import RUN_FILE, run

    run_dir.mkdir(parents=True)
    sft = {k: v for k, v in common.items() if k not in ("report_to", "use_cpu")}  # the recipe sets these
    spec = {
        "base_dir": str(base_dir),
        "train_dir": str(train_dir),
        "eval_dir": None,
        "sft": sft,
        "lora": LORA,
        "config": {"dtype": dtype},
    }
    (run_dir / RUN_FILE).write_text(json.dumps(spec))
    return float(run(run_dir)["tokens_per_second"])


def random_llama(size: str, tokenizer_dir: Path, out: Path) -> Path:
    """A randomly initialised Llama of ``size`` with the bundled tokenizer (nothing from the hub)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    hidden, intermediate, layers, heads, kv_heads = RANDOM_LLAMA[size]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        tie_word_embeddings=False,
    )
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"({time.perf_counter() - started:.0f} s in all)")
