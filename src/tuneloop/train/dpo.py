"""The DPO recipe: a registered version's LoRA trained further on preference pairs, top to bottom.

Run by ``dpo_api.train_dpo`` in the calling process, as ``python -m tuneloop.train.dpo RUN_DIR`` too.
Everything it needs is in ``RUN_DIR/run.json`` and the pair files beside it, written before launching:

    RUN_DIR/pairs/train.jsonl, validation.jsonl   (TRL's conversational preference rows)
    RUN_DIR/adapter/            (the trained adapter: the parent's LoRA after DPO, with the tokenizer files)
    RUN_DIR/log_history.json    (every logged loss, reward margin and preference accuracy)
    RUN_DIR/result.json         (finished | diverged, with the step and the metrics)

The reference model is the parent itself, kept as a second, frozen copy of its adapter on the same base
weights: given a ``PeftModel`` whose adapter is loaded trainable and no ``peft_config``, TRL's ``DPOTrainer``
adds an adapter named ``ref`` with the parent's weights and computes the reference log-probabilities under it
(``use_adapter(model, "ref")``). One base in memory (a second 135M float32 base would double it), a reference
that is exactly the parent (bit for bit: the first step's loss is ln 2), and nothing written outside the run
folder. ``precompute_ref_log_probs: true`` in the config's ``dpo:`` section computes the reference once
before training instead (fewer forward passes over several epochs, a cache file in datasets' temporary
folder); TRL then uses the same ``ref`` adapter for it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from trl import DPOTrainer

from tuneloop.train.callbacks import NonFiniteLossGuard, RichProgressCallback
from tuneloop.train.trainer import RunMonitor

RESULT_FILE = "result.json"
RUN_FILE = "run.json"
REFERENCE_ADAPTER = "ref"  # the name TRL gives the parent's frozen copy
POLICY_ADAPTER = "default"  # the adapter trained, saved and registered


def run(run_dir: Path) -> dict[str, Any]:
    """Train as described by ``run_dir/run.json``; returns (and writes) the result."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # bases are local; nothing may reach the network
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    spec = json.loads((run_dir / RUN_FILE).read_text())
    started = time.perf_counter()

    # 1. The recipe's settings by their TRL names (dpo_api chose the defaults).
    args = dpo_arguments(spec["dpo"], str(run_dir / "checkpoints"))

    # 2. The base, and the parent's adapter on it, trainable: the policy starts as the parent.
    model, tokenizer = load_parent(spec)

    # 3. The pairs, in TRL's conversational preference format (prompt, chosen, rejected).
    train_dataset = load_pairs(Path(spec["train_file"]))
    eval_dataset = load_pairs(Path(spec["eval_file"])) if spec.get("eval_file") else None

    # 4. The trainer; TRL copies the parent's adapter as the frozen reference ("ref").
    trainer = TuneloopDPOTrainer(
        model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset, processing_class=tokenizer
    )
    if REFERENCE_ADAPTER not in trainer.accelerator.unwrap_model(trainer.model).peft_config:
        raise RuntimeError("TRL did not add the reference adapter: the reference would be the bare base")
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    guard = NonFiniteLossGuard(trainer.monitor)
    progress = DpoProgressCallback(trainer.monitor, world_size=args.world_size)
    trainer.add_callback(progress)
    trainer.add_callback(guard)

    # 5. Train; then the preference accuracy on the held-back pairs, of the adapter registered.
    try:
        trainer.train()
    finally:
        progress.close()  # also after Ctrl-C or a crash: leave the terminal clean
    if eval_dataset is not None and guard.diverged_at is None:
        trainer.evaluate()

    # 6. Save: the trained adapter alone (not the reference copy), the tokenizer, the history, the outcome.
    history = trainer.state.log_history
    result: dict[str, Any] = {"status": "finished", "step": trainer.state.global_step}
    if guard.diverged_at is not None:
        result = {"status": "diverged", "step": guard.diverged_at}
    else:
        adapter_dir = run_dir / "adapter"
        policy = trainer.accelerator.unwrap_model(trainer.model)
        policy.save_pretrained(str(adapter_dir), selected_adapters=[POLICY_ADAPTER])
        tokenizer.save_pretrained(str(adapter_dir))
    result["seconds"] = time.perf_counter() - started
    result["tokens_per_second"] = trainer.monitor.tokens / max(1e-9, _train_runtime(history) or result["seconds"])
    result["metrics"] = final_metrics(history)
    (run_dir / "log_history.json").write_text(json.dumps(history, indent=1))
    (run_dir / RESULT_FILE).write_text(json.dumps(result, indent=1))
    return result


def dpo_arguments(dpo: dict[str, Any], output_dir: str) -> Any:
    """The trainer's ``trl.DPOConfig``: the resolved keys, and those tuneloop always sets."""
    from trl import DPOConfig

    settings = {
        "report_to": "none",
        "disable_tqdm": True,  # tuneloop's own progress bar
        "dataloader_pin_memory": torch.cuda.is_available(),
        "use_cpu": not torch.cuda.is_available(),
        "save_strategy": "no",  # a DPO run is short and not resumed: the adapter is saved once, at the end
        **dpo,
    }
    return DPOConfig(output_dir=output_dir, max_length=None, **settings)  # lengths were checked before launch


def load_parent(spec: dict[str, Any]) -> tuple[Any, Any]:
    """The base in the run's dtype with the parent's adapter loaded trainable, and the parent's tokenizer."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneloop.bases import align_special_tokens

    tokenizer = AutoTokenizer.from_pretrained(spec["parent"]["adapter_path"], local_files_only=True)
    base = AutoModelForCausalLM.from_pretrained(
        spec["base_dir"],
        dtype=getattr(torch, spec.get("dtype", "float32")),
        local_files_only=True,
        # transformers 5.25 swaps layers for Hub kernels by default, fetched from the Hub on GPUs (at load and at
        # model.train()): a network call, and code that is not the version's.
        use_kernels=False,
    )
    align_special_tokens(base, tokenizer)  # eos = the end-of-turn token, as the parent was trained
    model = PeftModel.from_pretrained(base, spec["parent"]["adapter_path"], is_trainable=True)
    return model, tokenizer


def load_pairs(path: Path) -> Any:
    """A pair file as a ``datasets.Dataset`` of prompt, chosen and rejected (in memory: nothing cached)."""
    from datasets import Dataset

    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return Dataset.from_list([{key: row[key] for key in ("prompt", "chosen", "rejected")} for row in rows])


class TuneloopDPOTrainer(DPOTrainer):
    """TRL's DPOTrainer that also counts the tokens it trains on and notices a non-finite loss, for the progress
    bar and the NaN guard (``callbacks.py``), as the SFT trainer does."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.monitor = RunMonitor()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[override]
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if model.training:
            loss = result[0] if isinstance(result, tuple) else result
            self.monitor.tokens += int(inputs["attention_mask"].sum())  # the chosen and the rejected sequences
            if not torch.isfinite(loss.detach()).all():
                self.monitor.nonfinite = True
        return result


class DpoProgressCallback(RichProgressCallback):
    """``dpo ━━━━━━━  12/25  48%  loss 0.512  margin 0.84  acc 88%  1,950 tok/s`` : the DPO loss, the reward margin
    (how much more the policy prefers chosen over rejected than the parent did, times beta) and the share of
    pairs where it prefers chosen."""

    def __init__(self, monitor: RunMonitor, console: Console | None = None, world_size: int = 1) -> None:
        super().__init__(monitor, console, world_size)
        self.margin: float | None = None
        self.accuracy: float | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[override]
        super().on_log(args, state, control, logs=logs, **kwargs)
        logs = logs or {}
        if "rewards/margins" in logs:
            self.margin = float(logs["rewards/margins"])
        if "rewards/accuracies" in logs:
            self.accuracy = float(logs["rewards/accuracies"])

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[override]
        if self.progress is None:
            return
        elapsed = time.perf_counter() - self._started
        tokens = (self.monitor.tokens - self._tokens_at_start) * self.world_size
        parts = ["dpo"]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.3f}")
        if self.margin is not None:
            parts.append(f"margin {self.margin:.2f}")
        if self.accuracy is not None:
            parts.append(f"acc {self.accuracy:.0%}")
        if elapsed > 0 and tokens:
            parts.append(f"{tokens / elapsed:,.0f} tok/s")
        self.progress.update(self.bar, completed=state.global_step, description="  ".join(parts))


def final_metrics(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's figures for the version: the last logged training values, the held-back pairs' at the end."""
    train = [h for h in history if "loss" in h]
    evals = [h for h in history if "eval_loss" in h]
    summary = next((h for h in reversed(history) if "train_runtime" in h), {})
    last, final_eval = (train[-1] if train else {}), (evals[-1] if evals else {})
    names = ("rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected")
    return {
        "train_loss": last.get("loss"),
        "first_loss": train[0]["loss"] if train else None,  # ln 2 = 0.693: the policy starts as the reference
        **{name.replace("/", "_"): last.get(name) for name in names},
        "eval_loss": final_eval.get("eval_loss"),
        **{f"eval_{name.replace('/', '_')}": final_eval.get(f"eval_{name}") for name in names},
        "train_runtime_s": summary.get("train_runtime"),
        "steps": summary.get("step") or (history[-1].get("step") if history else 0),
        "epochs": summary.get("epoch"),
    }


def _train_runtime(history: list[dict[str, Any]]) -> float | None:
    return next((h["train_runtime"] for h in reversed(history) if "train_runtime" in h), None)


def main() -> None:
    """Entry point for ``python -m tuneloop.train.dpo RUN_DIR``."""
    from tuneloop.train.quiet import quiet_libraries

    with quiet_libraries():
        result = run(Path(sys.argv[1]))
    sys.exit(3 if result.get("status") == "diverged" else 0)


if __name__ == "__main__":
    main()
