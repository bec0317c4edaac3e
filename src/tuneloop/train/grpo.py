"""GRPO: reinforcement from the task's own score, continuing a registered version's LoRA; top to bottom.

``tuneloop train --method grpo --parent T@N --task T --data FILE.jsonl|dataset:NAME``

1. What to train: the task (a JSON task: the reward is its field score), the parent version ``T@N`` of that
   task (its base, LoRA adapter, chat template and prompt) and the config (``grpo:``: TRL ``GRPOConfig``
   fields; every other key is chosen in ``resolve_grpo_config`` from the data and the machine).
2. The prompts and their verified answers: each row's chat up to its last answer is a prompt, and that
   answer, read as the task reads answers, is what the reward compares with (a row whose answer is not a
   valid answer is refused, naming its line). A parent trained with a distilled prompt is asked with it.
3. The model: the base, with the parent's adapter loaded trainable (PEFT). GRPO continues that adapter; it
   adds no new LoRA, so the version's rank and targets are its parent's.
4. TRL's ``GRPOTrainer``: for each prompt ``num_generations`` answers are sampled (through transformers'
   ``generate``, or vLLM where it is installed: ``generation_engine``), each is scored by the task
   (``reward.py``: -1 invalid, else field agreement less check penalties), the advantages are the rewards
   standardised within the prompt's group, and the policy gradient moves the adapter. A progress bar shows
   the mean reward per step; ``time_budget`` stops training at the first step past its deadline.
5. The adapter and tokenizer are saved, the reward curve is drawn (``reward_curve.png``) and the version is
   registered as the next ``T@N`` with ``method: grpo``, its parent, the data's hash, the config and the
   mean reward at the start and at the end.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from rich.console import Console

from tuneloop.answers import parse_answer
from tuneloop.bases import resolve_base, transformers_dir
from tuneloop.errors import TuneloopError
from tuneloop.registry.versions import ModelVersionInfo
from tuneloop.task import Task, load_task
from tuneloop.train.api import REGISTERED_FILE, TrainResult, _export_for_llamacpp, merge_adapter, runs_dir
from tuneloop.train.budget import FINISH_SECONDS, parse_duration
from tuneloop.train.config import _key_lines  # the config file's key -> line reader, shared
from tuneloop.train.data import SourceRow, load_source, with_system_prompt
from tuneloop.train.parent import parent_lora, register_child, resolve_parent
from tuneloop.train.quiet import quiet_libraries
from tuneloop.train.reward import VERIFIED_COLUMN, TaskReward

if TYPE_CHECKING:
    from trl import GRPOConfig

METHOD = "grpo"
NUM_GENERATIONS = 4  # answers per prompt: the fewest whose group gives the advantage some spread, on a CPU
PROMPTS_PER_STEP = 2  # prompts per optimizer step (gradient accumulation over one prompt's group at a time)
MAX_STEPS = 40  # one pass over the prompts, at most this many steps: ~minutes of sampling on a CPU
LEARNING_RATE = 2e-5  # policy-gradient steps are noisy: ~50x below SFT's LoRA rate, so a good parent survives
ANSWER_ROOM = 1.25  # max_completion_length: the longest verified answer x this (+8), within the task's max_tokens
REWARD_CURVE = "reward_curve.png"
SUMMARY_STEPS = 5  # the first and final mean reward: averaged over this many logged steps (one is 2 prompts)
GRPO_SECTION = "grpo"
RESERVED_GRPO_KEYS = {
    "output_dir": "the run's files go in its run folder",
    "remove_unused_columns": "the reward reads the dataset's verified-answer column",
}


@dataclass(frozen=True)
class Prompts:
    """What GRPO trains on: chats to answer, and the verified answer of each (the task's canonical JSON)."""

    prompts: list[list[dict[str, str]]]
    verified: list[str]
    ref: str  # the data as the registry records it: "dataset:NAME" or the file's path
    sha256: str
    left_out_test: int
    longest_answer_tokens: int
    longest_prompt_tokens: int


def train_grpo(
    task: str | Task,
    data: str | Path | None,
    *,
    parent: str | None,
    base: str | None = None,
    config: str | Path | None = None,
    time_budget: str | float | None = None,
    merge: bool = False,
    console: Console | None = None,
) -> TrainResult:
    """Continue ``parent``'s adapter with GRPO on ``data``'s prompts, rewarded by the task's score; register it.

    ``data``: ``FILE.jsonl`` (its train split) or ``dataset:NAME``, rows whose last message is the verified
    answer. ``base``, when given, must be the parent's. ``time_budget`` (``"20m"``, seconds) stops training
    at the first step past it, leaving time to save and register.
    """
    with quiet_libraries():  # our progress bar and lines only (quiet.py)
        return _train_grpo(task, data, parent, base, config, time_budget=time_budget, merge=merge, console=console)


def _train_grpo(
    task: str | Task,
    data: str | Path | None,
    parent: str | None,
    base_name: str | None,
    config: str | Path | None,
    *,
    time_budget: str | float | None,
    merge: bool,
    console: Console | None,
) -> TrainResult:
    began = time.perf_counter()
    budget_seconds = parse_duration(time_budget) if time_budget is not None else None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    console = console or Console(stderr=True)
    say: Callable[[str], None] = lambda message: console.print(message, highlight=False)  # noqa: E731

    # 1. What to train: the task, the parent version, the config. Every check before any model is loaded.
    spec = task if isinstance(task, Task) else load_task(task)
    if spec.is_text:
        raise TuneloopError(
            f"--method grpo rewards answers by task {spec.name}'s field score, and this task answers in free text "
            "(output: text), which has no fields to score",
            where="--method grpo",
            hint="train a text task with SFT (the default) or --method dpo",
        )
    version = resolve_parent(parent, spec, base_name, "GRPO")
    if data is None:
        raise TuneloopError(
            "GRPO samples answers to prompts and rewards them against verified answers, and no --data names them",
            where="--data",
            hint="pass --data FILE.jsonl (chat rows ending in the verified answer) or --data dataset:NAME",
        )
    user = load_grpo_config(config)
    base = resolve_base(version.base_id)
    base_dir = transformers_dir(base, progress=say)
    tokenizer = _tokenizer(version)

    # 2. The prompts and their verified answers.
    prompts = read_prompts(spec, str(data), version, tokenizer)
    context = json.loads((base_dir / "config.json").read_text()).get("max_position_embeddings")
    device = "cuda" if _cuda_available() else "cpu"
    engine = generation_engine(user)
    resolved, chosen = resolve_grpo_config(user, spec, prompts, device=device, engine=engine)
    _check_lengths(prompts, resolved, context, user)
    dtype = base_dtype(device, resolved)
    run_dir = _new_run_dir(spec.name, version, prompts, resolved)
    run_spec = {
        "method": METHOD,
        "task": spec.name,
        "parent": {"id": version.id, "content_hash": version.content_hash},
        "base": version.base_id,
        "base_dir": str(base_dir),
        "prompts": {  # not "data": SFT's key, whose counts are of trained examples
            "ref": prompts.ref,
            "sha256": prompts.sha256,
            "prompts": len(prompts.prompts),
            "left_out_test_rows": prompts.left_out_test,
            "longest_answer_tokens": prompts.longest_answer_tokens,
            "longest_prompt_tokens": prompts.longest_prompt_tokens,
        },
        "grpo": resolved,
        "dtype": dtype,
        "chosen": chosen,
        "generation": engine,
        "time_budget_s": budget_seconds,
    }
    (run_dir / "run.json").write_text(json.dumps(run_spec, indent=1, default=str))
    say(
        f"GRPO from {version.id}: {len(prompts.prompts)} prompts"
        + (f" ({prompts.left_out_test} test rows left out)" if prompts.left_out_test else "")
        + f", {resolved['max_steps']} steps of {_prompts_per_step(resolved)} prompts x "
        f"{resolved['num_generations']} answers (at most {resolved['max_completion_length']} tokens each), "
        f"lr {resolved['learning_rate']:g}, beta {resolved.get('beta', 0.0):g}"
    )
    say(f"generation: {_describe_engine(engine)}")
    say(f"run folder: {run_dir}")

    # 3. The model: the base with the parent's adapter, trainable.
    model = _load_policy(base_dir, version, tokenizer, dtype)

    # 4. TRL's GRPOTrainer, the task's score as the reward; our progress bar; the time budget held to.
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import GRPOTrainer

    from tuneloop.train.callbacks import RewardProgressCallback, TimeBudgetGuard

    trainer = GRPOTrainer(
        model=model,
        reward_funcs=TaskReward(spec),
        args=grpo_arguments(resolved, str(run_dir / "checkpoints")),
        train_dataset=Dataset.from_dict({"prompt": prompts.prompts, VERIFIED_COLUMN: prompts.verified}),
        processing_class=tokenizer,
    )
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    progress = RewardProgressCallback(console)
    trainer.add_callback(progress)
    guard = None
    if budget_seconds is not None:
        guard = TimeBudgetGuard(time.time() + budget_seconds - (time.perf_counter() - began) - FINISH_SECONDS)
        trainer.add_callback(guard)
    started = time.perf_counter()
    try:
        trainer.train()
    finally:
        progress.close()  # also after Ctrl-C or a crash: leave the terminal clean
    seconds = time.perf_counter() - started

    # 5. Save, plot, register.
    adapter_dir = run_dir / "adapter"
    trainer.model.save_pretrained(str(adapter_dir), selected_adapters=["default"])  # not TRL's "ref" copy
    tokenizer.save_pretrained(str(adapter_dir))
    history = trainer.state.log_history
    (run_dir / "log_history.json").write_text(json.dumps(history, indent=1))
    from tuneloop.train.plots import plot_reward_curve

    curve = plot_reward_curve(
        history, run_dir / REWARD_CURVE, title=f"{spec.name}: GRPO from {version.id} on {version.base_id}"
    )
    extra: dict[str, Path] = {REWARD_CURVE: curve} if curve is not None else {}
    if merge:
        say("merging the adapter into the base weights")
        extra["merged"] = merge_adapter(base_dir, adapter_dir, run_dir / "merged")
    metrics = reward_metrics(history)
    stopped = guard.stopped_at if guard is not None else None
    if stopped is not None:
        say(f"[yellow]the time budget ran out at step {stopped} of {resolved['max_steps']}[/]; training stopped there")
        metrics["budget_stopped_at_step"] = stopped
    tokens = next((h.get("num_tokens") for h in reversed(history) if h.get("num_tokens")), 0) or 0
    metrics.update({"train_seconds": seconds, "tokens_per_second": tokens / seconds if seconds > 0 else 0.0})
    new_version, created = register_child(
        spec,
        version,
        adapter_dir,
        method=METHOD,
        dataset_ref=f"{prompts.ref}#sha256:{prompts.sha256[:16]}",
        config={
            "train": {"grpo": resolved, "lora": parent_lora(version), "dtype": dtype},
            "chosen": chosen,
            "prompts": run_spec["prompts"],
            "generation": engine,
            "time_budget_s": budget_seconds,
            "run_dir": str(run_dir),
        },
        metrics=metrics,
        extra_files=extra,
    )
    if new_version.content_hash == version.content_hash:
        say(
            f"[yellow]the adapter did not move[/]: within each prompt's group every answer scored the same (e.g. all "
            f"invalid), so GRPO had no advantage to learn from; {new_version.id} is the same weights"
        )
    if base.gguf_path is not None:
        _export_for_llamacpp(new_version, say)
    (run_dir / REGISTERED_FILE).write_text(
        json.dumps({"version": new_version.id, "content_hash": new_version.content_hash, "created": created}, indent=1)
    )
    return TrainResult(
        version=new_version,
        created=created,
        run_dir=run_dir,
        seconds=seconds,
        tokens_per_second=metrics["tokens_per_second"],
        metrics=metrics,
    )


# --- 1. the parent, the config, the generation engine ---------------------------------------------


@dataclass(frozen=True)
class GrpoUserConfig:
    """What a config file set: ``grpo:`` keys (``trl.GRPOConfig`` fields), and where each one is."""

    grpo: dict[str, Any]
    source: str | None = None
    lines: dict[str, int] | None = None  # grpo key -> line

    def where(self, key: str | None = None) -> str:
        if self.source is None:
            return "the GRPO defaults"
        line = (self.lines or {}).get(key or "")
        return f"{self.source}:{line}" if line else self.source


def load_grpo_config(path: str | Path | None) -> GrpoUserConfig:
    """The ``grpo:`` section of a config file (``trl.GRPOConfig`` fields), every key checked with its line."""
    if path is None:
        return GrpoUserConfig({})
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TuneloopError("config file not found", where=str(path), hint="check the path") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise TuneloopError(f"not valid YAML: {getattr(exc, 'problem', None) or exc}", where=where) from None
    if data is None:
        return GrpoUserConfig({}, str(path))
    if not isinstance(data, dict):
        raise TuneloopError("a GRPO config must be a YAML mapping with a grpo: section", where=f"{path}:1")
    lines = _key_lines(root)
    for key in data:
        if key != GRPO_SECTION:
            why = (
                "GRPO continues the parent's LoRA adapter, so its rank and targets are the parent's"
                if key == "lora"
                else "a GRPO config has one section, grpo: (trl.GRPOConfig fields)"
            )
            raise TuneloopError(f"{key}: {why}", where=f"{path}:{lines.get((str(key),), 1)}", hint=f"remove `{key}:`")
    section = data.get(GRPO_SECTION) or {}
    if not isinstance(section, dict):
        raise TuneloopError(
            "grpo: must be a mapping of trl.GRPOConfig fields", where=f"{path}:{lines.get((GRPO_SECTION,), 1)}"
        )
    config = GrpoUserConfig(
        dict(section),
        str(path),
        {key[1]: line for key, line in lines.items() if len(key) == 2 and key[0] == GRPO_SECTION},
    )
    known = _grpo_fields()
    for name in section:
        if name in RESERVED_GRPO_KEYS:
            raise TuneloopError(
                f"grpo.{name}: is set by tuneloop ({RESERVED_GRPO_KEYS[name]})",
                where=config.where(name),
                hint="remove it",
            )
        if name not in known:
            close = difflib.get_close_matches(str(name), sorted(known), n=1, cutoff=0.75)
            raise TuneloopError(
                f"grpo.{name}: unknown trl.GRPOConfig field",
                where=config.where(name),
                hint=f"did you mean {close[0]!r}?" if close else "check its spelling against TRL's GRPOConfig docs",
            )
    return config


def generation_engine(user: GrpoUserConfig) -> str:
    """Who samples the answers: ``vllm`` where vLLM is installed (TRL's ``use_vllm``, colocated in this
    process; its CPU build runs on CPUs), else ``transformers`` (``generate`` on the policy itself). The
    config's ``grpo.use_vllm`` wins."""
    if "use_vllm" in user.grpo:
        return "vllm" if user.grpo["use_vllm"] else "transformers"
    return "vllm" if importlib.util.find_spec("vllm") is not None else "transformers"


def _describe_engine(engine: str) -> str:
    if engine == "vllm":
        return "vLLM (colocated, TRL's use_vllm)"
    why = "grpo.use_vllm: false in the config" if importlib.util.find_spec("vllm") else "vLLM is not installed"
    return f"transformers generate ({why})"


def resolve_grpo_config(
    user: GrpoUserConfig, spec: Task, prompts: Prompts, *, device: str, engine: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """GRPOConfig keyword arguments: the file's keys win; the rest chosen small for a CPU. Also why each was."""
    from tuneloop.train.config import bf16_is_fast

    settings = dict(user.grpo)
    chosen: dict[str, str] = {}

    def default(key: str, value: Any, why: str) -> None:
        if key not in settings:
            settings[key] = value
            chosen[key] = why

    default("num_generations", NUM_GENERATIONS, "4 answers per prompt: a group's spread at a CPU's cost")
    default("per_device_train_batch_size", settings["num_generations"], "one prompt's answers per micro-batch")
    per_prompt = max(1, settings["per_device_train_batch_size"] // max(1, settings["num_generations"]))
    default(
        "gradient_accumulation_steps",
        max(1, PROMPTS_PER_STEP // per_prompt),
        f"{PROMPTS_PER_STEP} prompts per optimizer step (sampled together)",
    )
    step_prompts = _prompts_per_step(settings)
    default(
        "max_steps",
        max(1, min(MAX_STEPS, math.ceil(len(prompts.prompts) / step_prompts))),
        f"one pass over the prompts, at most {MAX_STEPS} steps",
    )
    room = min(spec.decoding.max_tokens, math.ceil(prompts.longest_answer_tokens * ANSWER_ROOM) + 8)
    default(
        "max_completion_length",
        room,
        f"the longest verified answer ({prompts.longest_answer_tokens} tokens) x {ANSWER_ROOM} + 8, within the "
        f"task's max_tokens ({spec.decoding.max_tokens}): a longer answer is cut, and so invalid",
    )
    default("learning_rate", LEARNING_RATE, "LoRA rate for policy-gradient steps: well below SFT's")
    default("lr_scheduler_type", "constant", "no decay over a short run")
    default("warmup_steps", 0, "no warm-up: the parent is already trained")
    default("logging_steps", 1, "the mean reward of every step, for the bar and the curve")
    default("save_strategy", "no", "no checkpoints: a GRPO run is short")
    default("seed", 42, "HF default")
    default("gradient_checkpointing", device != "cpu", "off on CPU: time, not memory, is short")
    default("bf16", bf16_is_fast(device), "native bf16" if bf16_is_fast(device) else "no native bf16 here")
    default("use_vllm", engine == "vllm", "vLLM is installed" if engine == "vllm" else "vLLM is not installed")
    if settings["use_vllm"]:
        default("vllm_mode", "colocate", "vLLM in this process, sharing the device")
    return settings, chosen


def grpo_arguments(settings: dict[str, Any], output_dir: str) -> GRPOConfig:
    """The trainer's ``trl.GRPOConfig``: the resolved keys, and those tuneloop always sets."""
    import torch
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=output_dir,
        remove_unused_columns=False,  # the reward reads the verified answers' column
        **{
            "report_to": "none",
            "disable_tqdm": True,  # tuneloop's own progress bar
            "dataloader_pin_memory": torch.cuda.is_available(),
            "use_cpu": not torch.cuda.is_available(),
            **settings,
        },
    )


def _prompts_per_step(settings: dict[str, Any]) -> int:
    batch = settings["per_device_train_batch_size"] * settings.get("gradient_accumulation_steps", 1)
    return max(1, batch // max(1, settings["num_generations"]))


def _check_lengths(prompts: Prompts, settings: dict[str, Any], context: int | None, user: GrpoUserConfig) -> None:
    """The whole config built once (keys that clash are reported now), and prompts that fit the context."""
    try:
        grpo_arguments(settings, "/tmp/tuneloop-config-check")
    except (TypeError, ValueError) as exc:
        raise TuneloopError(
            f"grpo: these settings do not go together: {exc}",
            where=user.where(),
            hint="per_device_train_batch_size x gradient_accumulation_steps must be a multiple of num_generations",
        ) from None
    needed = prompts.longest_prompt_tokens + settings["max_completion_length"]
    if context and needed > context:
        raise TuneloopError(
            f"the longest prompt ({prompts.longest_prompt_tokens} tokens) and an answer of "
            f"{settings['max_completion_length']} tokens do not fit the base's context of {context} tokens",
            where="--data",
            hint="leave out the longest rows, or lower grpo.max_completion_length in the config",
        )


# --- 2. the prompts and their verified answers -------------------------------------------------


def read_prompts(spec: Task, data: str, version: ModelVersionInfo, tokenizer: Any) -> Prompts:
    """Each row's chat up to its last answer, and that answer read as the task reads answers (its canonical
    JSON). Every row whose answer is not a valid answer is listed in one error, with its line."""
    source = load_source(data)
    rows: list[SourceRow] = source.rows
    if version.distilled_from is not None:
        # The parent is served with a short prompt in place of the instructions: ask it as it is served.
        rows, _ = with_system_prompt(rows, version.distilled_from, version.system_prompt)
    prompts: list[list[dict[str, str]]] = []
    verified: list[str] = []
    problems: list[str] = []
    for row in rows:
        last = row.messages[-1] if row.messages else {}
        if last.get("role") != "assistant" or len(row.messages) < 2:
            problems.append(f"{row.where}: messages: the last message must be the verified answer (role assistant)")
            continue
        answer, reason = parse_answer(spec, str(last.get("content") or ""))
        if answer is None:
            problems.append(f"{row.where}: messages[{len(row.messages) - 1}].content: not a valid answer: {reason}")
            continue
        prompts.append([{"role": m["role"], "content": m["content"]} for m in row.messages[:-1]])
        verified.append(spec.answer_json(answer))
    if problems:
        shown = problems[:5] + ([f"... and {len(problems) - 5} more"] if len(problems) > 5 else [])
        raise TuneloopError(
            f"{len(problems)} row{'s' if len(problems) > 1 else ''} can't be rewarded:\n  " + "\n  ".join(shown),
            where=problems[0].split(": ", 1)[0],
            hint=f"GRPO compares answers with each row's verified answer: a JSON answer fitting task {spec.name}'s "
            "schema; fix or remove these rows",
        )
    answer_tokens = max(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in verified)
    prompt_tokens = max(
        len(
            tokenizer.apply_chat_template(chat, tokenize=True, add_generation_prompt=True, return_dict=True)[
                "input_ids"
            ]
        )
        for chat in prompts
    )
    digest = hashlib.sha256()
    for chat, answer_json in zip(prompts, verified, strict=True):
        digest.update(json.dumps([chat, answer_json], sort_keys=True, ensure_ascii=False).encode() + b"\n")
    return Prompts(
        prompts, verified, source.ref, digest.hexdigest(), source.left_out_test, answer_tokens, prompt_tokens
    )


# --- 3. the model ---------------------------------------------------------------------------------


def _tokenizer(version: ModelVersionInfo) -> Any:
    """The parent's tokenizer and chat template (saved with its adapter), ending turns where it learnt to."""
    from transformers import AutoTokenizer

    from tuneloop.bases import end_of_turn_token

    tokenizer = AutoTokenizer.from_pretrained(version.adapter_path, local_files_only=True)
    if (eot := end_of_turn_token(tokenizer)) is not None:
        tokenizer.eos_token = eot
    return tokenizer


def base_dtype(device: str, settings: dict[str, Any]) -> str:
    """The base's weights: float32 on CPU; on a GPU bfloat16 where it computes it (else float16), as SFT."""
    import torch

    if device != "cuda":
        return "float32"
    return "bfloat16" if torch.cuda.is_bf16_supported() and not settings.get("fp16") else "float16"


def _load_policy(base_dir: Path, version: ModelVersionInfo, tokenizer: Any, dtype: str) -> Any:
    """The base in ``dtype`` with the parent's LoRA adapter, trainable."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuneloop.bases import align_special_tokens

    model = AutoModelForCausalLM.from_pretrained(
        base_dir,
        dtype=getattr(torch, dtype),
        local_files_only=True,
        use_kernels=False,  # transformers' Hub kernels would be fetched on a GPU: a network call, other code
    )
    align_special_tokens(model, tokenizer)  # answers end at the end-of-turn token, as the parent learnt
    return PeftModel.from_pretrained(model, version.adapter_path, is_trainable=True)


# --- 5. the record ------------------------------------------------------------------------------


def reward_metrics(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean reward at the start and at the end (each over up to ``SUMMARY_STEPS`` logged steps), the
    best step's, and the end's share of invalid answers and field agreement."""
    steps = [h for h in history if h.get("reward") is not None and "step" in h]
    if not steps:
        return {"steps": 0, "first_mean_reward": None, "final_mean_reward": None}

    def mean(key: str, items: list[dict[str, Any]]) -> float | None:
        values = [h[key] for h in items if h.get(key) is not None]
        return sum(values) / len(values) if values else None

    first, final = steps[:SUMMARY_STEPS], steps[-SUMMARY_STEPS:]
    return {
        "steps": steps[-1]["step"],
        "first_mean_reward": mean("reward", first),
        "final_mean_reward": mean("reward", final),
        "best_step_mean_reward": max(h["reward"] for h in steps),
        "final_invalid_share": mean("task/invalid_share", final),
        "final_field_agreement": mean("task/field_agreement", final),
        "reward_summary_steps": len(final),
    }


# --- helpers ----------------------------------------------------------------------------------------


def _grpo_fields() -> set[str]:
    import dataclasses

    from trl import GRPOConfig

    return {f.name for f in dataclasses.fields(GRPOConfig) if f.init}


def _new_run_dir(task: str, parent: ModelVersionInfo, prompts: Prompts, settings: dict[str, Any]) -> Path:
    payload = json.dumps([parent.content_hash, prompts.sha256, settings], sort_keys=True, default=str)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    name = f"{stamp}-{METHOD}-{hashlib.sha256(payload.encode()).hexdigest()[:8]}"
    run_dir, suffix = runs_dir(task) / name, 1
    while run_dir.exists():
        suffix += 1
        run_dir = runs_dir(task) / f"{name}-{suffix}"
    run_dir.mkdir(parents=True)
    return run_dir


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
