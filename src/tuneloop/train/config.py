"""The training config: HF/TRL/PEFT field names, and defaults chosen from the dataset so a user tunes nothing.

A config file is YAML with two sections named after the classes they fill, plus tuneloop's own few keys::

    sft:                     # trl.SFTConfig (and transformers.TrainingArguments) fields
      num_train_epochs: 3
      learning_rate: 1.0e-3
      max_length: 1024       # conversations longer than this are refused before training, never cut
    lora:                    # peft.LoraConfig fields
      r: 16
      lora_alpha: 32
      target_modules: all-linear
    validation_fraction: 0.05  # share of the training rows held back for validation loss
    loraplus_lr_ratio: 8     # LoRA+: the B matrices learn this many times faster than A (PEFT's optimizer)
    dtype: bfloat16          # the base's weights: float32 | bfloat16 | float16 (default: see below)
    quantization: 4bit       # QLoRA: the base in 4-bit NF4 through bitsandbytes (or 8bit); CUDA only
    value_weight: 3.0        # the loss of answer tokens inside JSON values counts this many times (weights.py)
    field_error_rows: 16     # validation rows generated at each evaluation to pick the kept adapter (0: off)

Every key is checked against the dataclass it belongs to; a misspelt one is reported with its file and line.
The resolved config is then built whole once, so keys that clash (with each other or with a default) are
reported with the file before any training starts.

Defaults (``resolve``), each overridden by the file:

- epochs: about 10,000 example-passes over the data, between 1 and 10 epochs (the rule OpenPipe uses);
- batch: enough optimizer steps per epoch (about 160) before examples per step: 16 examples per step from
  ~2,500 rows up, fewer below (4 for 665 rows, 1 under 240), padding-free micro-batches of 8 (4 on CPU,
  where memory, not parallelism, is the limit). One epoch over 665 demo documents gave 19.3 % field error
  in 42 steps of 16 and 4.5 % in 167 steps of 4 (docs/benchmarks.md → Training);
- learning rate: 1e-3 for bases under 0.5B parameters, 4e-4 under 3B, 2e-4 above (LoRA rates scale down
  with width); linear decay after a 5 % warm-up;
- LoRA r=16, alpha=32, on every linear layer of the transformer blocks, no dropout;
- the base's weights (``dtype``): bfloat16 on a CUDA GPU that computes it (Ampere and later), float16 on
  older GPUs (half the memory of float32 either way, and their tensor cores only compute 16-bit), float32
  on CPU; on a GPU, float16 when the file sets ``fp16: true`` and float32 when it sets ``bf16: false``. The LoRA
  weights stay float32 (PEFT upcasts adapters by default) and the trainer autocasts to the base's 16-bit
  dtype, so every matmul runs in one precision;
- bf16 autocast where the hardware computes bf16 natively (CUDA with bf16, CPUs with AVX512-BF16/AMX),
  else float32 (and not when the file sets ``fp16``); fp16 autocast (with its loss scaler) over a float16
  base on a GPU; no gradient checkpointing on CPU (memory is not the constraint there, time is);
- ``quantization: 4bit`` (QLoRA): the base's linear layers in 4-bit NF4 with double quantization, computed
  in the base's dtype (``bitsandbytes.BitsAndBytesConfig`` through transformers), prepared with PEFT's
  ``prepare_model_for_kbit_training``; ``8bit`` is LLM.int8(). Refused before any data work where it cannot
  run: no CUDA GPU, no bitsandbytes, a base that is already quantized;
- validation loss on 5 % of the rows (at most 100), evaluated about 4 times per run, with checkpoints at the
  same steps (the last 2 kept);
- ``value_weight``: 1, the plain token mean (see ``DEFAULT_VALUE_WEIGHT``);
- ``field_error_rows``: at each evaluation (and at the last step) the first 16 validation rows (64 on a GPU)
  are answered greedily and scored field by field; the adapter with the lowest field error is the one
  registered (``selection.py``). 0 turns it off: the last adapter is registered.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tuneloop.errors import TuneloopError

if TYPE_CHECKING:
    from peft import LoraConfig
    from trl import SFTConfig

SECTIONS = ("sft", "lora")
TOP_LEVEL_KEYS = (
    "validation_fraction",
    "loraplus_lr_ratio",
    "dtype",
    "quantization",
    "value_weight",
    "field_error_rows",
)
DTYPES = ("float32", "bfloat16", "float16")
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
QUANTIZATIONS = ("4bit", "8bit")
EXAMPLE_PASSES = 10_000
MIN_EPOCHS, MAX_EPOCHS = 1, 10
EFFECTIVE_BATCH = 16  # examples per optimizer step, at most
STEPS_PER_EPOCH = 160  # the batch shrinks (down to 1) to give an epoch about this many optimizer steps
MICRO_BATCH = 8
DEFAULT_VALIDATION_FRACTION = 0.05
MAX_VALIDATION_ROWS = 100
# Plain token mean until the paired measurement (docs/training.md) shows weighting values pays: under Adam a
# uniform loss scale changes nothing, and the forced structure tokens stop contributing gradient on their own
# once learnt (their loss goes to ~0 in the first steps), so the gain is an empirical question.
DEFAULT_VALUE_WEIGHT = 1.0
FIELD_ERROR_ROWS = {"cpu": 16, "cuda": 64}  # validation rows generated per evaluation: ~1 min per eval on 2 cores

# Keys tuneloop decides itself; setting them would break the recipe (padding-free batches from our own
# pre-tokenized data, the run's folder layout).
RESERVED_SFT_KEYS = {
    "output_dir": "checkpoints go in the run folder",
    "padding_free": "tuneloop always trains padding-free (no padding, no attention across examples)",
    "packing": "tuneloop trains padding-free on whole examples; packing would split them",
    "dataset_text_field": "the data is tokenized by tuneloop before training",
    "assistant_only_loss": "the loss is always on assistant tokens only",
    "completion_only_loss": "the loss is always on assistant tokens only",
}
RESERVED_LORA_KEYS = {"task_type": "always CAUSAL_LM"}


@dataclass
class TrainConfig:
    """What the user set (a file, or nothing); ``resolve`` fills in the rest."""

    sft: dict[str, Any] = field(default_factory=dict)
    lora: dict[str, Any] = field(default_factory=dict)
    validation_fraction: float | None = None
    loraplus_lr_ratio: float | None = None
    dtype: str | None = None  # the base's weights; None: chosen from the device (resolve_dtype)
    quantization: str | None = None  # "4bit" | "8bit" (bitsandbytes), None: full-precision base
    value_weight: float | None = None  # loss weight of answer tokens inside JSON values; None: the default
    field_error_rows: int | None = None  # validation rows scored per evaluation; None: chosen from the device
    source: str | None = None  # the file it came from
    lines: dict[str, int] = field(default_factory=dict, repr=False, compare=False)  # top-level key -> line

    def where(self, key: str) -> str:
        """``file:line`` of a top-level key, for errors about it."""
        source = self.source or "the training config"
        return f"{source}:{self.lines[key]}" if key in self.lines else source

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sft": dict(self.sft), "lora": dict(self.lora)}
        for key in TOP_LEVEL_KEYS:
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


@dataclass
class ResolvedConfig:
    """Everything a run uses: SFTConfig and LoraConfig keyword arguments, and tuneloop's own settings."""

    sft: dict[str, Any]
    lora: dict[str, Any]
    validation_fraction: float
    max_length: int
    chosen: dict[str, str]  # key -> why this default (for the run's log and `models show`)
    loraplus_lr_ratio: float | None = None  # None: one learning rate for A and B (plain LoRA)
    dtype: str = "float32"  # the base's weights as loaded for training
    quantization: str | None = None  # "4bit" | "8bit": the base through bitsandbytes (QLoRA)
    value_weight: float = 1.0  # 1: the plain token mean
    field_error_rows: int = 0  # 0: no field error, the last adapter is kept

    def to_dict(self) -> dict[str, Any]:
        """What the run records (run.json, the version's config): every setting, the dtype included."""
        out = self.fingerprint_dict()
        out["dtype"] = self.dtype
        out["value_weight"] = self.value_weight
        out["field_error_rows"] = self.field_error_rows
        return out

    def fingerprint_dict(self) -> dict[str, Any]:
        """The settings a run's fingerprint covers. A key added since is left out at its old behaviour
        (float32 weights, no LoRA+, no quantization, unweighted loss), so earlier runs keep their fingerprint
        for --resume."""
        out: dict[str, Any] = {
            "sft": self.sft,
            "lora": self.lora,
            "validation_fraction": self.validation_fraction,
            "max_length": self.max_length,
        }
        if self.loraplus_lr_ratio is not None:
            out["loraplus_lr_ratio"] = self.loraplus_lr_ratio
        if self.dtype != "float32":
            out["dtype"] = self.dtype
        if self.quantization is not None:
            out["quantization"] = self.quantization
        if self.value_weight != 1.0:
            out["value_weight"] = self.value_weight
        # field_error_rows is left out: it picks which adapter is kept, never what the run trains (generating
        # changes no weight and draws no random number), and a resumed run keeps the value it recorded.
        return out


def _sft_fields() -> set[str]:
    from trl import SFTConfig

    return {f.name for f in dataclasses.fields(SFTConfig) if f.init}


def _lora_fields() -> set[str]:
    from peft import LoraConfig

    return {f.name for f in dataclasses.fields(LoraConfig) if f.init}


def load_config(path: str | Path | None) -> TrainConfig:
    """Read and check a config file; ``None`` gives the all-defaults config."""
    if path is None:
        return TrainConfig()
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TuneloopError("config file not found", where=str(path), hint="check the path") from None
    return parse_config(text, str(path))


def parse_config(text: str, source: str = "<config>") -> TrainConfig:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise TuneloopError(f"not valid YAML: {getattr(exc, 'problem', None) or exc}", where=where) from None
    if data is None:
        return TrainConfig(source=source)
    if not isinstance(data, dict):
        raise TuneloopError("a training config must be a YAML mapping (sft:, lora:)", where=f"{source}:1")
    lines = _key_lines(root)

    def fail(keys: tuple[str, ...], message: str, hint: str | None = None) -> TuneloopError:
        line = lines.get(keys) or lines.get(keys[:1]) or 1
        return TuneloopError(f"{'.'.join(keys)}: {message}", where=f"{source}:{line}", hint=hint)

    config = TrainConfig(source=source, lines={keys[0]: line for keys, line in lines.items() if len(keys) == 1})
    for key, value in data.items():
        if key in SECTIONS:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise fail(
                    (key,), f"must be a mapping of {'trl.SFTConfig' if key == 'sft' else 'peft.LoraConfig'} fields"
                )
            known = _sft_fields() if key == "sft" else _lora_fields()
            reserved = RESERVED_SFT_KEYS if key == "sft" else RESERVED_LORA_KEYS
            for name in value:
                if name in reserved:
                    raise fail((key, name), f"is set by tuneloop ({reserved[name]})", hint="remove it")
                if name not in known:
                    close = _close(name, known)
                    raise fail(
                        (key, name),
                        f"unknown {'trl.SFTConfig' if key == 'sft' else 'peft.LoraConfig'} field",
                        hint=f"did you mean {close!r}?" if close else "check its spelling against the HF/TRL/PEFT docs",
                    )
            setattr(config, key, dict(value))
        elif key == "validation_fraction":
            if not isinstance(value, int | float) or not 0 <= value < 0.5:
                raise fail((key,), "must be a number in [0, 0.5)")
            config.validation_fraction = float(value)
        elif key == "loraplus_lr_ratio":
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise fail((key,), "must be a positive number (LoRA+: B's learning rate ÷ A's; 1 is plain LoRA)")
            config.loraplus_lr_ratio = float(value)
        elif key == "value_weight":
            if isinstance(value, bool) or not isinstance(value, int | float) or not 1 <= value < math.inf:
                raise fail((key,), "must be a number, at least 1 (the loss weight of value tokens; 1 is plain)")
            config.value_weight = float(value)
        elif key == "field_error_rows":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise fail((key,), "must be a whole number of validation rows, at least 0 (0: off)")
            config.field_error_rows = value
        elif key == "dtype":
            name = DTYPE_ALIASES.get(str(value), str(value)).removeprefix("torch.")
            if name not in DTYPES:
                raise fail((key,), f"{value!r} is not a dtype for the weights", hint="use one of: " + ", ".join(DTYPES))
            config.dtype = name
        elif key == "quantization":
            if value in (None, False, "none", "no"):
                continue
            if value not in QUANTIZATIONS:
                raise fail(
                    (key,),
                    f"{value!r} is not a quantization",
                    hint="use 4bit (QLoRA: NF4 through bitsandbytes) or 8bit (LLM.int8()), or remove the key",
                )
            config.quantization = str(value)
        else:
            close = _close(str(key), {*SECTIONS, *TOP_LEVEL_KEYS})
            raise fail(
                (str(key),),
                "unknown key",
                hint=(f"did you mean {close!r}? " if close else "") + "the config has sections sft: and lora:",
            )
    _check_types(config, fail)
    return config


def _check_types(config: TrainConfig, fail: Any) -> None:
    """Build the real SFTConfig/LoraConfig with each key alone, so a bad value is reported now with its line."""
    max_length = config.sft.get("max_length")
    if max_length is not None and (not isinstance(max_length, int) or max_length < 8):
        raise fail(("sft", "max_length"), "must be a whole number of tokens (at least 8)")
    for section, build in _BUILDERS:
        for key, value in getattr(config, section).items():
            if key == "max_length":  # tuneloop's own check above; the trainer never cuts
                continue
            try:
                build({key: value})
            except (TypeError, ValueError) as exc:
                raise fail((section, key), f"invalid value {value!r}: {exc}") from None


def _key_lines(root: yaml.Node | None) -> dict[tuple[str, ...], int]:
    lines: dict[tuple[str, ...], int] = {}
    if not isinstance(root, yaml.MappingNode):
        return lines
    for key_node, value_node in root.value:
        lines[(str(key_node.value),)] = key_node.start_mark.line + 1
        if isinstance(value_node, yaml.MappingNode):
            for sub_key, _ in value_node.value:
                lines[(str(key_node.value), str(sub_key.value))] = sub_key.start_mark.line + 1
    return lines


def _close(name: str, known: set[str]) -> str | None:
    import difflib

    matches = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
    return matches[0] if matches else None


# --- defaults from the data and the machine -----------------------------------------------------


def default_epochs(examples: int) -> int:
    """About 10,000 example-passes, 1 to 10 epochs."""
    return max(MIN_EPOCHS, min(MAX_EPOCHS, round(EXAMPLE_PASSES / max(1, examples))))


def default_learning_rate(parameters: int) -> float:
    if parameters < 500_000_000:
        return 1e-3
    if parameters < 3_000_000_000:
        return 4e-4
    return 2e-4


def bf16_is_fast(device: str) -> bool:
    """Whether bf16 autocast speeds training up here (it slows it down on CPUs without native bf16)."""
    import torch

    if device == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device == "cpu":
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags
    return False


def resolve_dtype(user: TrainConfig, device: str, native_bf16: bool) -> tuple[str, str]:
    """The dtype the base's weights load in, and why: the file's ``dtype`` wins, then its choice of autocast.

    On a GPU, 16-bit weights halve the memory of float32 and are what the tensor cores compute; bfloat16 has
    float32's range, so activations cannot overflow; float16 (pre-Ampere GPUs: T4, V100) can, which the
    trainer's loss scaler and the NaN guard cover. On CPU float32 stays: 16-bit weights there save memory
    the runs do not lack and cost time (bf16 is emulated on CPUs without AVX512-BF16/AMX).
    """
    if user.dtype is not None:
        return user.dtype, "set in the config"
    if device != "cuda":
        return "float32", "float32 on CPU"
    if user.sft.get("fp16"):
        return "float16", "fp16 autocast chosen in the config"
    if user.sft.get("bf16") is False:
        return "float32", "bf16: false in the config"
    if native_bf16:
        return "bfloat16", "the GPU computes bf16: half the memory of float32, float32's range"
    return "float16", "the GPU has no bf16: float16 halves the memory (fp16 autocast, loss scaling)"


def check_quantization(user: TrainConfig, device: str) -> None:
    """Refuse ``quantization`` where it cannot run, naming the config file and line; before any data work."""
    if user.quantization is None:
        return
    import importlib.util

    what = f"quantization: {user.quantization}"
    if device != "cuda":
        raise TuneloopError(
            f"{what} trains QLoRA through bitsandbytes on a CUDA GPU, and torch sees no GPU here",
            where=user.where("quantization"),
            hint="remove `quantization:` to train the full-precision base on this machine (quantizing saves GPU "
            "memory; on a CPU it only makes each matmul dequantize its weights first), or run on an NVIDIA GPU",
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise TuneloopError(
            f"{what} needs the bitsandbytes package, which is not installed",
            where=user.where("quantization"),
            hint="pip install 'tuneloop[gpu]' (or pip install bitsandbytes), or remove `quantization:`",
        )


def check_base_quantizable(user: TrainConfig, base_config: dict[str, Any], base: str) -> None:
    """A base that is already quantized (GPTQ, AWQ, bitsandbytes, ...) cannot be quantized again."""
    existing = base_config.get("quantization_config")
    if user.quantization is None or not existing:
        return
    method = existing.get("quant_method", "unknown") if isinstance(existing, dict) else "unknown"
    raise TuneloopError(
        f"quantization: {user.quantization} needs a full-precision base, and {base} is already quantized ({method})",
        where=user.where("quantization"),
        hint="remove `quantization:` (the base's own quantization is used as it is), or pick the base's "
        "full-precision release",
    )


def _refuse_field_keys(user: TrainConfig) -> None:
    """value_weight and field_error_rows work on JSON answers; on free text they would silently do nothing."""
    for key, value, off in (("field_error_rows", user.field_error_rows, 0), ("value_weight", user.value_weight, 1.0)):
        if value is not None and value != off:
            raise TuneloopError(
                f"{key} works on JSON answers, and this task answers in free text (output: text)",
                where=user.where(key),
                hint=f"remove `{key}:` from the config (a text task trains on the plain token mean and keeps "
                "the last adapter)",
            )


def resolve_config(
    user: TrainConfig,
    *,
    examples: int,
    longest: int,
    parameters: int,
    world_size: int = 1,
    device: str = "cpu",
    context_length: int | None = None,
    text_answers: bool = False,
) -> ResolvedConfig:
    """The run's full config: the user's keys win; every other key is chosen from the data and machine.

    ``text_answers``: the task answers in free text (``output: text``), which has no fields to score at
    evaluations and no JSON values to weight, so those two keys are refused when set and off otherwise.
    """
    if text_answers:
        _refuse_field_keys(user)
    chosen: dict[str, str] = {}
    sft: dict[str, Any] = dict(user.sft)
    lora: dict[str, Any] = dict(user.lora)

    validation_fraction = (
        user.validation_fraction if user.validation_fraction is not None else DEFAULT_VALIDATION_FRACTION
    )
    if user.validation_fraction is None and examples * validation_fraction > MAX_VALIDATION_ROWS:
        validation_fraction = MAX_VALIDATION_ROWS / examples
    train_examples = examples - (round(examples * validation_fraction) if examples >= 20 else 0)

    def default(key: str, value: Any, why: str, into: dict[str, Any] = sft) -> None:
        if key not in into:
            into[key] = value
            chosen[key] = why

    max_length = sft.pop("max_length", None) or _round_up(longest, 64)
    if context_length:
        max_length = min(max_length, context_length)

    # On CPU every activation is kept (no gradient checkpointing), so memory rather than parallelism bounds
    # the micro-batch there: 4 examples; accumulation makes up the rest of the optimizer step.
    micro = sft.get("per_device_train_batch_size", MICRO_BATCH if device != "cpu" else MICRO_BATCH // 2)
    target = min(EFFECTIVE_BATCH, max(1, round(train_examples / STEPS_PER_EPOCH)))
    # As few micro-batches as hold the target, of equal size (6 examples: 2 of 3, not 2 of 4).
    default("per_device_train_batch_size", math.ceil(target / math.ceil(target / micro)), "padding-free micro-batch")
    accumulation = max(1, round(target / (sft["per_device_train_batch_size"] * world_size)))
    default(
        "gradient_accumulation_steps",
        accumulation,
        f"{target} examples per optimizer step (~{STEPS_PER_EPOCH} steps an epoch, at most {EFFECTIVE_BATCH})",
    )
    default("num_train_epochs", default_epochs(train_examples), f"~{EXAMPLE_PASSES:,} example-passes, 1-10 epochs")
    default("learning_rate", default_learning_rate(parameters), "LoRA rate for the base's size")
    default("lr_scheduler_type", "linear", "linear decay")
    default("warmup_steps", 0.05, "5% warm-up")
    default("weight_decay", 0.0, "no decay on LoRA weights")
    default("max_grad_norm", 1.0, "clip")
    check_quantization(user, device)
    native_bf16 = bf16_is_fast(device)
    dtype, why_dtype = resolve_dtype(user, device, native_bf16)
    if user.dtype is None:
        chosen["dtype"] = why_dtype
    # Autocast computes in the base's 16-bit dtype (its weights are not cast at each matmul); over float32
    # weights, bf16 autocast where the hardware computes bf16 natively.
    if dtype == "float16" and device == "cuda":
        default("fp16", not sft.get("bf16"), "fp16 autocast over the float16 base (with loss scaling)")
    fast_bf16 = (dtype == "bfloat16" or (dtype == "float32" and native_bf16)) and not sft.get("fp16")
    default("bf16", fast_bf16, "native bf16" if fast_bf16 else "no native bf16 (or fp16 chosen): no bf16")
    default("gradient_checkpointing", device != "cpu", "off on CPU: time, not memory, is short")
    default("seed", 42, "HF default")
    default("optim", "adamw_torch", "AdamW")

    batch = sft["per_device_train_batch_size"] * sft["gradient_accumulation_steps"] * world_size
    steps = max(1, math.ceil(train_examples / batch) * max(1, math.ceil(float(sft["num_train_epochs"]))))
    if sft.get("max_steps", -1) > 0:
        steps = sft["max_steps"]
    default("logging_steps", max(1, min(10, steps // 40)), "~40 points on the loss curve")
    has_validation = train_examples < examples
    every = max(1, math.ceil(steps / 4))
    if has_validation:
        default("eval_strategy", "steps", "validation loss ~4 times per run")
        default("eval_steps", every, "validation loss ~4 times per run")
        default("per_device_eval_batch_size", sft["per_device_train_batch_size"], "as training")
    else:
        default("eval_strategy", "no", "too few rows to hold any back")
    default("save_strategy", "steps", "checkpoints for --resume")
    default("save_steps", every, "checkpoint ~4 times per run")
    default("save_total_limit", 2, "keep the last 2 checkpoints")

    value_weight = user.value_weight if user.value_weight is not None else DEFAULT_VALUE_WEIGHT
    if user.value_weight is None:
        chosen["value_weight"] = "the plain token mean" if value_weight == 1.0 else "value tokens weigh more"
    field_error_rows = user.field_error_rows
    if field_error_rows is None and text_answers:
        field_error_rows = 0
        chosen["field_error_rows"] = "a text task has no fields to score: the last adapter is kept"
    if field_error_rows is None:
        evaluates = has_validation and sft["eval_strategy"] != "no"
        field_error_rows = FIELD_ERROR_ROWS.get(device, FIELD_ERROR_ROWS["cpu"]) if evaluates else 0
        chosen["field_error_rows"] = (
            "validation rows answered at each evaluation; the adapter with the lowest field error is kept"
            if field_error_rows
            else "no evaluation: the last adapter is kept"
        )

    default("r", 16, "LoRA rank", lora)
    default("lora_alpha", 2 * lora["r"], "alpha = 2r", lora)
    default("lora_dropout", 0.0, "no dropout", lora)
    default("target_modules", "all-linear", "every linear layer of the blocks", lora)
    default("bias", "none", "no bias training", lora)
    resolved = ResolvedConfig(
        sft,
        lora,
        validation_fraction,
        max_length,
        chosen,
        user.loraplus_lr_ratio,
        dtype,
        user.quantization,
        value_weight,
        field_error_rows,
    )
    _check_precision(resolved, user)
    _check_combination(resolved, user.source)
    return resolved


def precision(train_config: dict[str, Any]) -> str:
    """How the base was held in training, from a run's config: "float32", "bfloat16, 4-bit NF4 (QLoRA)"."""
    dtype = train_config.get("dtype", "float32")  # runs from before the key trained in float32
    quantization = train_config.get("quantization")
    if quantization == "4bit":
        return f"4-bit NF4 (QLoRA, double quantization), computing in {dtype}"
    if quantization == "8bit":
        return f"8-bit LLM.int8(), computing in {dtype}"
    return dtype


def sft_arguments(sft: dict[str, Any], output_dir: str) -> SFTConfig:
    """The trainer's ``trl.SFTConfig``: the resolved keys, and those tuneloop always sets (RESERVED_SFT_KEYS)."""
    import torch
    from trl import SFTConfig

    settings = {
        "report_to": "none",
        "disable_tqdm": True,  # tuneloop's own progress bar
        "dataloader_pin_memory": torch.cuda.is_available(),
        "use_cpu": not torch.cuda.is_available(),
        **sft,  # the file may change the four above
    }
    return SFTConfig(
        output_dir=output_dir,
        padding_free=False,  # TRL's flag; batches are padding-free through tuneloop's collator
        max_length=None,  # lengths were checked before launch; nothing is ever cut
        **settings,
    )


def lora_arguments(lora: dict[str, Any]) -> LoraConfig:
    """The run's ``peft.LoraConfig``."""
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", **lora)


# Each section, and how to build its library object from a dict of its keys (a check never writes output_dir).
_BUILDERS: tuple[tuple[str, Callable[[dict[str, Any]], Any]], ...] = (
    ("sft", lambda keys: sft_arguments(keys, "/tmp/tuneloop-config-check")),
    ("lora", lora_arguments),
)


def _check_combination(resolved: ResolvedConfig, source: str | None) -> None:
    """Keys valid alone can clash together (or with a default): report that before any training starts."""
    for section, build in _BUILDERS:
        values = getattr(resolved, section)
        try:
            build(values)
        except (TypeError, ValueError) as exc:
            defaults = ", ".join(f"{key}={values[key]!r}" for key in values if key in resolved.chosen)
            raise TuneloopError(
                f"{section}: these settings do not go together: {exc}",
                where=source or "the training config",
                hint=f"change the {section}: keys named above; tuneloop's defaults for the keys you did not set "
                f"were {defaults} (set a key in the file to change it)",
            ) from None


def _check_precision(resolved: ResolvedConfig, user: TrainConfig) -> None:
    """16-bit weights under the other 16-bit autocast: bfloat16 values beyond float16's range overflow."""
    autocast = "bfloat16" if resolved.sft.get("bf16") else "float16" if resolved.sft.get("fp16") else None
    if autocast is None or resolved.dtype in ("float32", autocast):
        return
    flag = "bf16" if autocast == "bfloat16" else "fp16"
    raise TuneloopError(
        f"dtype: {resolved.dtype} weights under {flag} autocast compute in two 16-bit formats",
        where=user.where("dtype") if user.dtype else user.source or "the training config",
        hint=f"set dtype: {autocast} (or float32), or turn {flag} off in sft:",
    )


def _round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)
