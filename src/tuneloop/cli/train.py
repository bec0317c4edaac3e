"""CLI: train — LoRA fine-tuning of a base on a dataset (or of a version on preference pairs), registered as the
next ``task@N``."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

from tuneloop.bases import DEFAULT_BASE

console = Console()
err_console = Console(stderr=True)


def train(
    ctx: typer.Context,
    task: str = typer.Option(..., "--task", help="Task name or path of its YAML spec."),
    data: str | None = typer.Option(
        None,
        "--data",
        help="Training data: FILE.jsonl (its train split) or dataset:NAME. --method dpo: pairs:SOURCES "
        "(corrections,checks,teacher) or a TRL preference JSONL file; default: every pair in the store. --method grpo: "
        "as SFT's, each row's last message the verified answer its samples are scored against.",
    ),
    base: str | None = typer.Option(
        None,
        "--base",
        help=f"Base model: a bundled id, hf:org/name, or a path (default {DEFAULT_BASE}; dpo, grpo: the parent's).",
    ),
    method: str = typer.Option(
        "sft",
        "--method",
        help="sft (LoRA on examples), dpo (a --parent version on preference pairs: TRL DPOTrainer), or grpo (a "
        "--parent version on --data's prompts, rewarded by the task's own score: TRL GRPOTrainer).",
    ),
    parent: str | None = typer.Option(
        None,
        "--parent",
        help="--method dpo/grpo: the version to train further, task@N (also the DPO reference).",
    ),
    config: Path | None = typer.Option(
        None,
        "--config",
        help="Training config YAML (sft: TRL SFTConfig fields, lora: PEFT LoraConfig fields; dpo: TRL DPOConfig "
        "fields; grpo: TRL GRPOConfig fields).",
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the unfinished run with these arguments."),
    merge: bool = typer.Option(False, "--merge", help="Also write merged full weights beside the adapter."),
    time_budget: str | None = typer.Option(
        None,
        "--time-budget",
        help="Fit the run into this wall time (90s, 20m, 1h, 1h30m): fewer epochs or steps, fewer evaluations.",
    ),
    system_prompt: str | None = typer.Option(
        None,
        "--system-prompt",
        help='Train with this system prompt in place of the task\'s instructions ("": none); the version is '
        "served with it, so requests stop paying prefill for the instructions (prompt distillation).",
    ),
    launcher: str = typer.Option("inprocess", "--launcher", help="inprocess, or accelerate (accelerate launch)."),
    num_processes: int = typer.Option(1, "--num-processes", min=1, help="Processes for --launcher accelerate."),
    accelerate_config: Path | None = typer.Option(
        None, "--accelerate-config", help="An accelerate config file (FSDP, DeepSpeed, several machines)."
    ),
) -> None:
    """Fine-tune a base with LoRA (TRL SFTTrainer + PEFT) and register it as an immutable version.

    --method dpo --parent TASK@N trains that version's LoRA further on preference pairs (TRL DPOTrainer: review
    corrections, failed-check answers against verified labels, teacher answers; see `tuneloop data pairs`).
    --method grpo --parent TASK@N trains it further by reinforcement (TRL GRPOTrainer): answers sampled to --data's
    prompts, rewarded by the task's own field score against each row's verified answer (docs/training.md).

    Options after `--` go to `accelerate launch` unchanged (e.g. -- --num_machines 2 --machine_rank 0
    --main_process_ip 10.0.0.1 --main_process_port 29500).
    """
    from tuneloop.train import train as run_training

    try:
        result = run_training(
            task,
            data,
            base,
            config,
            method=method,
            parent=parent,
            launcher=launcher,
            num_processes=num_processes,
            accelerate_config=accelerate_config,
            accelerate_args=list(ctx.args),
            resume=resume,
            merge=merge,
            time_budget=time_budget,
            system_prompt=system_prompt,
            console=err_console,
        )
    except KeyboardInterrupt:
        err_console.print(
            "[yellow]interrupted[/]: the checkpoints are kept; run the same command with --resume to continue"
        )
        sys.exit(130)
    version = result.version
    metrics = result.metrics
    verb = "registered" if result.created else "identical to the existing version"
    console.print(f"[bold green]{version.id}[/] {verb} (sha256:{version.content_hash[:12]})", highlight=False)
    parts = []
    if metrics.get("train_loss") is not None:
        parts.append(f"train loss {metrics['train_loss']:.4f}")
    if metrics.get("eval_loss") is not None:
        parts.append(f"validation loss {metrics['eval_loss']:.4f}")
    if metrics.get("rewards_margins") is not None:  # DPO: how much more the chosen answers are preferred
        parts.append(f"reward margin {metrics['rewards_margins']:.3f}")
    if metrics.get("eval_rewards_accuracies") is not None:
        parts.append(f"held-back pairs preferred {metrics['eval_rewards_accuracies']:.0%}")
    if metrics.get("final_mean_reward") is not None:  # GRPO: the task's score of sampled answers, start → end
        parts.append(f"mean reward {metrics['first_mean_reward']:+.3f} → {metrics['final_mean_reward']:+.3f}")
    parts.append(f"{result.seconds / 60:.1f} min, {result.tokens_per_second:,.0f} tokens/s")
    console.print("  " + ", ".join(parts), highlight=False)
    console.print(f"  adapter: {version.adapter_path}", highlight=False)
    if version.loss_curve_path:
        console.print(f"  loss curve: {version.loss_curve_path}", highlight=False)
    if (reward_curve := version.artifact_path / "reward_curve.png").is_file():
        console.print(f"  reward curve: {reward_curve}", highlight=False)
    console.print(f"  evaluate: tuneloop eval run --task {version.task} --model {version.id}", highlight=False)
