"""``train(method="dpo")``: a registered version trained further on preference pairs, registered as the next version.

In the order a user would check it:

1. The parent: a version of the same task (``task@N``, ``@sha256:``, ``@alias``), verified against its files and
   its base's weights; its LoRA is what DPO trains further, and it is the reference too (``dpo.py``).
2. The pairs: from the store (``data/pairs.py``: review corrections, failed-check answers against verified
   labels, teacher answers that differ from logged ones), or from a TRL preference JSONL file. Each prompt is
   asked as the parent is served: a distilled parent's trained system prompt in place of the instructions.
   Every pair must fit the base's context (nothing is cut).
3. The config (``--config``): a ``dpo:`` section of ``trl.DPOConfig`` fields, ``validation_fraction`` and
   ``dtype``; defaults chosen from the pairs and the base (``resolve_dpo``). LoRA settings are the parent's.
4. The run folder ``$TUNELOOP_HOME/runs/<task>/<time>-dpo-<pairs hash>/`` with ``run.json`` and the pairs; the
   recipe (``dpo.py``) in this process; the curves; the version registered like an SFT one, its config naming
   the method, the parent, the pairs' hash and the settings, its metrics DPO's final loss, reward margin and
   preference accuracy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from tuneloop.bases import resolve_base, transformers_dir
from tuneloop.data.pairs import (
    PAIRS_PREFIX,
    PairSet,
    PreferencePair,
    build_pairs,
    no_pairs_message,
    pairs_from_file,
    write_pairs,
)
from tuneloop.errors import TuneloopError
from tuneloop.registry.versions import ModelVersionInfo
from tuneloop.task import Task, load_task
from tuneloop.train.api import (
    REGISTERED_FILE,
    TrainResult,
    _export_for_llamacpp,
    _model_info,
    merge_adapter,
    runs_dir,
)
from tuneloop.train.config import DTYPE_ALIASES, DTYPES, _close, _key_lines, bf16_is_fast, default_learning_rate
from tuneloop.train.parent import parent_lora, register_child, resolve_parent
from tuneloop.train.plots import plot_preference_curves

# Keys tuneloop sets itself in a DPO run; each with why.
RESERVED_DPO_KEYS = {
    "output_dir": "the run folder holds everything",
    "max_length": "every pair is checked against the base's context before training; nothing is ever cut",
    "truncation_mode": "nothing is cut",
    "padding_free": "TRL's DPO pads (its padding-free path is off in TRL 1.16)",
    "model_init_kwargs": "the base is loaded by tuneloop, with the parent's adapter",
    "sync_ref_model": "the reference is the parent's frozen adapter; TRL cannot sync it under PEFT",
}
DPO_TOP_LEVEL_KEYS = ("dpo", "validation_fraction", "dtype")
MIN_VALIDATION_PAIRS = 20  # fewer pairs: all of them train
VALIDATION_FRACTION = 0.1
MAX_VALIDATION_PAIRS = 50
STEPS_PER_EPOCH = 25  # the batch grows (to 16 pairs) before an epoch has fewer optimizer steps than this
MAX_PAIRS_PER_STEP = 16
LR_DIVISOR = 10  # DPO's rate: a tenth of the SFT rate for the base's size


@dataclass
class DpoConfig:
    """What the user set for a DPO run (a file, or nothing)."""

    dpo: dict[str, Any] = field(default_factory=dict)
    validation_fraction: float | None = None
    dtype: str | None = None
    source: str | None = None
    lines: dict[tuple[str, ...], int] = field(default_factory=dict, repr=False)

    def where(self, *keys: str) -> str:
        source = self.source or "the training config"
        line = self.lines.get(keys) or self.lines.get(keys[:1])
        return f"{source}:{line}" if line else source


def train_dpo(
    task: str | Task,
    data: str | Path | None,
    *,
    parent: str | None,
    base: str | None = None,
    config: str | Path | DpoConfig | None = None,
    merge: bool = False,
    console: Console | None = None,
) -> TrainResult:
    """Train ``parent``'s LoRA further with DPO on preference pairs and register the result as ``task@N``.

    ``data``: None or ``pairs:`` (every source of the store), ``pairs:corrections,teacher`` (those sources), or a
    TRL preference JSONL file (``tuneloop data pairs --out``). ``base``, when given, must be the parent's.
    """
    began = time.perf_counter()
    console = console or Console(stderr=True)
    say: Callable[[str], None] = lambda message: console.print(message, highlight=False)  # noqa: E731

    # 1. The parent version, and the task and base it must share.
    spec = task if isinstance(task, Task) else load_task(task)
    version = resolve_parent(parent, spec, base, "DPO")
    user = config if isinstance(config, DpoConfig) else load_dpo_config(config)

    # 2. The pairs, asked as the parent is served, and their lengths.
    pair_set = load_pair_set(spec, data)
    pairs = [_as_served(pair, version) for pair in pair_set.pairs]
    resolved_base = resolve_base(version.base_id)
    base_dir = transformers_dir(resolved_base, progress=say)
    model_info = _model_info(base_dir)
    longest = _check_lengths(pairs, version, model_info["context"])

    # 3. The settings: the file's keys, the rest chosen from the pairs and the base.
    device = "cuda" if _cuda_available() else "cpu"
    train_pairs, eval_pairs = split_pairs(pairs, user.validation_fraction)
    dpo, chosen, dtype = resolve_dpo(
        user, train_pairs=len(train_pairs), parameters=model_info["parameters"], device=device
    )

    # 4. The run folder, the recipe, the curves, the registry.
    run_dir = _new_run_dir(spec.name, pair_set.sha256)
    write_pairs(run_dir / "pairs" / "train.jsonl", train_pairs)
    if eval_pairs:
        write_pairs(run_dir / "pairs" / "validation.jsonl", eval_pairs)
    lora = parent_lora(version)
    run_spec = {
        "method": "dpo",
        "task": spec.name,
        "base": resolved_base.id,
        "base_dir": str(base_dir),
        "parent": {"id": version.id, "content_hash": version.content_hash, "adapter_path": str(version.adapter_path)},
        "train_file": str(run_dir / "pairs" / "train.jsonl"),
        "eval_file": str(run_dir / "pairs" / "validation.jsonl") if eval_pairs else None,
        "dpo": dpo,
        "dtype": dtype,
        "pairs": {
            "ref": pair_set.ref,
            "sha256": pair_set.sha256,
            "count": len(pairs),
            "train": len(train_pairs),
            "validation": len(eval_pairs),
            "longest_tokens": longest,
            "by_source": {name: dataclasses.asdict(count) for name, count in pair_set.counts.items()},
        },
        "chosen": chosen,
    }
    (run_dir / "run.json").write_text(json.dumps(run_spec, indent=1))
    sources = ", ".join(f"{name} {count.kept}" for name, count in pair_set.counts.items() if count.kept)
    say(
        f"DPO from {version.id}: {len(train_pairs)} training pairs ({sources}), {len(eval_pairs)} held back; "
        f"{_schedule(dpo)} at lr {dpo['learning_rate']:g}, beta {dpo.get('beta', 0.1):g}; the reference is "
        f"{version.id} itself (a frozen copy of its adapter)"
    )
    say(f"run folder: {run_dir}")
    result = _launch(run_dir)
    if result.get("status") == "diverged":
        raise TuneloopError(
            f"DPO diverged: the loss became NaN or infinite at step {result.get('step')}; stopped there, nothing "
            "registered",
            where=str(run_dir),
            hint="lower the learning rate (dpo: {learning_rate: ...}) or raise beta, and train again",
        )

    history = json.loads((run_dir / "log_history.json").read_text())
    adapter_dir = run_dir / "adapter"
    extra: dict[str, Path] = {}
    curve = plot_preference_curves(
        history, run_dir / "loss_curve.png", title=f"{spec.name}: DPO from {version.id} on {resolved_base.id}"
    )
    if curve is not None:
        extra["loss_curve.png"] = curve
    if merge:
        say("merging the adapter into the base weights")
        extra["merged"] = merge_adapter(base_dir, adapter_dir, run_dir / "merged")
    metrics = {
        **result.get("metrics", {}),
        "train_seconds": result.get("seconds"),
        "tokens_per_second": result.get("tokens_per_second"),
        "world_size": 1,
    }
    registered, created = register_child(
        spec,
        version,
        adapter_dir,
        method="dpo",
        dataset_ref=f"{pair_set.ref}#sha256:{pair_set.sha256[:16]}",
        config={
            "pairs": run_spec["pairs"],
            "train": {"dpo": dpo, "lora": lora, "dtype": dtype, "validation_fraction": _fraction(eval_pairs, pairs)},
            "chosen": chosen,
            "launcher": {"name": "inprocess", "num_processes": 1},
            "run_dir": str(run_dir),
        },
        metrics=metrics,
        extra_files=extra,
    )
    if resolved_base.gguf_path is not None:
        _export_for_llamacpp(registered, say)
    (run_dir / REGISTERED_FILE).write_text(
        json.dumps({"version": registered.id, "content_hash": registered.content_hash, "created": created}, indent=1)
    )
    say(f"DPO took {time.perf_counter() - began:.0f} s in all")
    return TrainResult(
        version=registered,
        created=created,
        run_dir=run_dir,
        seconds=float(result.get("seconds") or 0.0),
        tokens_per_second=float(result.get("tokens_per_second") or 0.0),
        metrics=metrics,
    )


# --- 1. the parent ---------------------------------------------------------------------------------


# --- 2. the pairs ----------------------------------------------------------------------------------


def load_pair_set(spec: Task, data: str | Path | None) -> PairSet:
    """The pairs ``--data`` names: the store's (None, ``pairs:``, ``pairs:SOURCES``) or a TRL preference file."""
    text = str(data) if data is not None else PAIRS_PREFIX
    if text.startswith("dataset:"):
        raise TuneloopError(
            "DPO trains on preference pairs (a chosen and a rejected answer per input), and a dataset holds answers",
            where=f"--data {text}",
            hint=f"leave out --data to use the store's pairs of {spec.name}, or pass pairs:corrections,checks,teacher "
            "or a file from `tuneloop data pairs --out FILE.jsonl`",
        )
    if text.startswith(PAIRS_PREFIX):
        try:
            pair_set = build_pairs(spec, text.removeprefix(PAIRS_PREFIX) or None)
        except TuneloopError as error:
            raise TuneloopError(error.message, where=f"--data {text}", hint=error.hint) from None
        if not pair_set.pairs:
            raise TuneloopError(
                no_pairs_message(spec.name, pair_set.sources, pair_set.counts),
                where=f"--data {text}",
                hint=f"see what the store holds with `tuneloop data pairs --task {spec.name}`",
            )
        return pair_set
    pair_set = pairs_from_file(Path(text), spec)
    if not pair_set.pairs:
        raise TuneloopError(
            "no usable pairs: the file is empty, or every pair's chosen and rejected answers are the same",
            where=str(text),
            hint=f"write pairs with `tuneloop data pairs --task {spec.name} --out FILE.jsonl`",
        )
    return pair_set


def _as_served(pair: PreferencePair, version: ModelVersionInfo) -> PreferencePair:
    """The pair's prompt as ``version`` is served (serve/backends/base.py ``served_messages``): a distilled
    version's trained system prompt in place of the task's instructions (or no system message for "")."""
    if version.distilled_from is None or not pair.prompt:
        return pair
    first = pair.prompt[0]
    content = first.get("content")
    if first.get("role") not in ("system", "developer") or not isinstance(content, str):
        return pair
    if content.strip() != version.distilled_from.strip():
        return pair
    rest = pair.prompt[1:]
    prompt = [{**first, "content": version.system_prompt}, *rest] if version.system_prompt else rest
    return dataclasses.replace(pair, prompt=prompt)


def _check_lengths(pairs: list[PreferencePair], version: ModelVersionInfo, context: int | None) -> int:
    """The longest pair in tokens (prompt and its longer answer); a pair beyond the base's context is refused."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(version.adapter_path, local_files_only=True)
    longest = 0
    for pair in pairs:
        for answer in (pair.chosen, pair.rejected):
            text = tokenizer.apply_chat_template(
                [*pair.prompt, {"role": "assistant", "content": answer}], tokenize=False
            )
            length = len(tokenizer(text, add_special_tokens=False)["input_ids"])
            if context and length > context:
                ids = ", ".join(f"{key} {value}" for key, value in pair.ids.items() if value is not None)
                raise TuneloopError(
                    f"a {pair.source} pair is {length} tokens long, beyond the base's context of {context}",
                    where=f"pair of input {pair.input_hash[:12]}" + (f" ({ids})" if ids else ""),
                    hint="leave it out (write the pairs with `tuneloop data pairs --out`, edit, and pass the file "
                    "as --data), or train on a base with a longer context",
                )
            longest = max(longest, length)
    return longest


def split_pairs(
    pairs: list[PreferencePair], fraction: float | None
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(train, validation): from 20 pairs up, a tenth (at most 50) held back to measure the preference accuracy
    on pairs the run never saw; chosen by input hash, so the same pairs are held back every time."""
    if fraction is None:
        fraction = VALIDATION_FRACTION if len(pairs) >= MIN_VALIDATION_PAIRS else 0.0
        held = min(MAX_VALIDATION_PAIRS, round(len(pairs) * fraction))
    else:
        held = round(len(pairs) * fraction)
    if held == 0:
        return list(pairs), []
    order = sorted(pairs, key=lambda pair: hashlib.sha256(pair.input_hash.encode()).hexdigest())
    chosen = {id(pair) for pair in order[:held]}
    return [p for p in pairs if id(p) not in chosen], [p for p in pairs if id(p) in chosen]


def _fraction(part: list[Any], whole: list[Any]) -> float:
    return round(len(part) / len(whole), 4) if whole else 0.0


# --- 3. the config ---------------------------------------------------------------------------------


def load_dpo_config(path: str | Path | None) -> DpoConfig:
    """Read and check a DPO config file (``dpo:``, ``validation_fraction``, ``dtype``); None: all defaults."""
    if path is None:
        return DpoConfig()
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TuneloopError("config file not found", where=str(path), hint="check the path") from None
    return parse_dpo_config(text, str(path))


def parse_dpo_config(text: str, source: str = "<config>") -> DpoConfig:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise TuneloopError(f"not valid YAML: {exc}", where=f"{source}:{mark.line + 1}" if mark else source) from None
    config = DpoConfig(source=source, lines=_key_lines(root))
    if data is None:
        return config
    if not isinstance(data, dict):
        raise TuneloopError("a DPO config must be a YAML mapping (dpo: ...)", where=f"{source}:1")
    for key, value in data.items():
        if key == "dpo":
            config.dpo = _check_dpo_section(value, config)
        elif key == "validation_fraction":
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 0.5:
                raise TuneloopError(f"{key}: must be a number in [0, 0.5)", where=config.where(key))
            config.validation_fraction = float(value)
        elif key == "dtype":
            name = DTYPE_ALIASES.get(str(value), str(value)).removeprefix("torch.")
            if name not in DTYPES:
                raise TuneloopError(
                    f"dtype: {value!r} is not a dtype for the weights", where=config.where(key), hint=", ".join(DTYPES)
                )
            config.dtype = name
        elif key == "lora":
            raise TuneloopError(
                "lora: DPO trains the parent's LoRA further, so its settings (r, alpha, modules) are the parent's",
                where=config.where(key),
                hint="remove the lora: section (train a new SFT version to change them)",
            )
        elif key == "sft":
            raise TuneloopError(
                "sft: this is a DPO run; its trainer settings are trl.DPOConfig fields, under dpo:",
                where=config.where(key),
                hint="rename the section to dpo: (learning_rate, num_train_epochs, beta, loss_type, ...)",
            )
        else:
            close = _close(str(key), set(DPO_TOP_LEVEL_KEYS))
            raise TuneloopError(
                f"{key}: unknown key of a DPO config",
                where=config.where(str(key)),
                hint=(f"did you mean {close!r}? " if close else "") + "keys: " + ", ".join(DPO_TOP_LEVEL_KEYS),
            )
    return config


def _check_dpo_section(value: Any, config: DpoConfig) -> dict[str, Any]:
    """Every key a ``trl.DPOConfig`` field, tuneloop's own refused, each value checked alone with its line."""
    from trl import DPOConfig as TrlDpoConfig

    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TuneloopError("dpo: must be a mapping of trl.DPOConfig fields", where=config.where("dpo"))
    known = {f.name for f in dataclasses.fields(TrlDpoConfig) if f.init}
    for name, setting in value.items():
        where = config.where("dpo", str(name))
        if name in RESERVED_DPO_KEYS:
            raise TuneloopError(
                f"dpo.{name}: is set by tuneloop ({RESERVED_DPO_KEYS[name]})", where=where, hint="remove it"
            )
        if name not in known:
            close = _close(str(name), known)
            raise TuneloopError(
                f"dpo.{name}: unknown trl.DPOConfig field",
                where=where,
                hint=f"did you mean {close!r}?" if close else "check its spelling against TRL's DPOConfig docs",
            )
        try:
            _dpo_args({name: setting})
        except (TypeError, ValueError) as exc:
            raise TuneloopError(f"dpo.{name}: invalid value {setting!r}: {exc}", where=where) from None
    return dict(value)


def _dpo_args(keys: dict[str, Any]) -> Any:
    from tuneloop.train.dpo import dpo_arguments

    return dpo_arguments(keys, "/tmp/tuneloop-config-check")


def resolve_dpo(
    user: DpoConfig, *, train_pairs: int, parameters: int, device: str
) -> tuple[dict[str, Any], dict[str, str], str]:
    """The run's DPOConfig keys (the file's win), why each default was chosen, and the base's dtype.

    - one epoch: a pass over the pairs (DPO overfits a few hundred pairs fast; the alignment handbook's default);
    - pairs per optimizer step: enough for ~25 steps an epoch, 1 to 16, in micro-batches of 2 pairs on CPU
      (each pair is two sequences), 4 on a GPU;
    - learning rate: a tenth of the SFT rate for the base's size (the adapter is already trained; DPO moves it
      by small margins), linear decay after a 10 % warm-up; beta 0.1, the sigmoid loss (TRL's defaults);
    - float32 weights on CPU with bf16 autocast where the CPU computes it; bfloat16 on a GPU that does;
      gradient checkpointing only on a GPU.
    """
    dpo: dict[str, Any] = dict(user.dpo)
    chosen: dict[str, str] = {}

    def default(key: str, value: Any, why: str) -> None:
        if key not in dpo:
            dpo[key] = value
            chosen[key] = why

    micro = dpo.get("per_device_train_batch_size", 2 if device == "cpu" else 4)
    target = max(1, min(MAX_PAIRS_PER_STEP, round(train_pairs / STEPS_PER_EPOCH)))
    default("per_device_train_batch_size", math.ceil(target / math.ceil(target / micro)), "pairs per micro-batch")
    default(
        "gradient_accumulation_steps",
        max(1, round(target / dpo["per_device_train_batch_size"])),
        f"{target} pairs per optimizer step (~{STEPS_PER_EPOCH} steps an epoch, at most {MAX_PAIRS_PER_STEP})",
    )
    default("num_train_epochs", 1, "one pass over the pairs")
    default(
        "learning_rate", default_learning_rate(parameters) / LR_DIVISOR, "a tenth of the SFT rate for the base's size"
    )
    default("beta", 0.1, "TRL's default: how far the policy may move from the parent")
    default("lr_scheduler_type", "linear", "linear decay")
    default("warmup_steps", 0.1, "10% warm-up")
    default("weight_decay", 0.0, "no decay on LoRA weights")
    default("max_grad_norm", 1.0, "clip")
    native_bf16 = bf16_is_fast(device)
    dtype = user.dtype or ("bfloat16" if device == "cuda" and native_bf16 else "float32")
    if user.dtype is None:
        chosen["dtype"] = "bfloat16 on a GPU that computes it" if dtype == "bfloat16" else "float32"
    default("bf16", native_bf16 and dtype in ("float32", "bfloat16"), "bf16 autocast where computed natively")
    default("gradient_checkpointing", device != "cpu", "off on CPU: time, not memory, is short")
    default("seed", 42, "HF default")
    default("optim", "adamw_torch", "AdamW")
    per_step = dpo["per_device_train_batch_size"] * dpo["gradient_accumulation_steps"]
    steps = max(1, math.ceil(train_pairs / per_step)) * max(1, math.ceil(float(dpo["num_train_epochs"])))
    if dpo.get("max_steps", -1) > 0:
        steps = dpo["max_steps"]
    default("logging_steps", max(1, min(10, steps // 40)), "~40 points on the curves")
    default("per_device_eval_batch_size", dpo["per_device_train_batch_size"], "as training")
    default("eval_strategy", "no", "the held-back pairs are scored once, at the end")
    try:
        _dpo_args(dpo)
    except (TypeError, ValueError) as exc:
        raise TuneloopError(
            f"dpo: these settings do not go together: {exc}",
            where=user.source or "the training config",
            hint="change the dpo: keys named above; defaults for keys you did not set: "
            + ", ".join(f"{key}={dpo[key]!r}" for key in chosen if key in dpo),
        ) from None
    return dpo, chosen, dtype


def _schedule(dpo: dict[str, Any]) -> str:
    pairs = dpo["per_device_train_batch_size"] * dpo["gradient_accumulation_steps"]
    per_step = f"{pairs} pair{'s' if pairs != 1 else ''} per step"
    if dpo.get("max_steps", -1) > 0:
        return f"{dpo['max_steps']} steps, {per_step},"
    return f"{dpo['num_train_epochs']:g} epoch(s), {per_step},"


# --- 4. the run ------------------------------------------------------------------------------------


def _new_run_dir(task: str, pairs_sha256: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = runs_dir(task) / f"{stamp}-dpo-{pairs_sha256[:8]}"
    suffix = 1
    while run_dir.exists():
        suffix += 1
        run_dir = runs_dir(task) / f"{stamp}-dpo-{pairs_sha256[:8]}-{suffix}"
    (run_dir / "pairs").mkdir(parents=True)
    return run_dir


def _launch(run_dir: Path) -> dict[str, Any]:
    """The recipe in this process (its thread count restored after, as the SFT launcher does)."""
    import torch

    from tuneloop.train.dpo import run

    threads = torch.get_num_threads()
    try:
        return run(run_dir)
    finally:
        torch.set_num_threads(threads)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
