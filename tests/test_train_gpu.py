"""Training made ready for GPUs, tested on this CPU: the base's dtype rule, ``quantization:`` (QLoRA through
bitsandbytes) resolved, refused where it cannot run, recorded and fingerprinted, and the FSDP example config.

What only a GPU can show (a 4-bit run on CUDA, an FSDP run over several GPUs) is in docs/training.md →
"Checked on a GPU"; the recipe's 4-bit path itself runs here on CPU when bitsandbytes is installed.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from test_train_support import TASK, rows, write_config, write_jsonl
from tuneloop.errors import TuneloopError
from tuneloop.train import config as train_config

REPO = Path(__file__).resolve().parent.parent
FSDP_EXAMPLE = REPO / "examples" / "accelerate" / "fsdp.yaml"
SIZES = {"examples": 1000, "longest": 500, "parameters": 135_000_000}


def config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(text)
    return path


# --- the dtype rule ------------------------------------------------------------------------------


def test_the_base_loads_in_bf16_on_a_gpu_that_computes_it_and_float32_on_cpu() -> None:
    plain = train_config.TrainConfig()
    assert train_config.resolve_dtype(plain, "cuda", native_bf16=True)[0] == "bfloat16"
    assert train_config.resolve_dtype(plain, "cuda", native_bf16=False)[0] == "float16"  # T4, V100
    assert train_config.resolve_dtype(plain, "cpu", native_bf16=False)[0] == "float32"
    assert train_config.resolve_dtype(plain, "cpu", native_bf16=True)[0] == "float32"  # AMX: autocast, not weights
    # The file's choices win: its dtype, then its autocast.
    assert train_config.resolve_dtype(train_config.TrainConfig(dtype="float32"), "cuda", True) == (
        "float32",
        "set in the config",
    )
    assert train_config.resolve_dtype(train_config.TrainConfig(dtype="bfloat16"), "cpu", False)[0] == "bfloat16"
    assert train_config.resolve_dtype(train_config.TrainConfig(sft={"fp16": True}), "cuda", True)[0] == "float16"
    assert train_config.resolve_dtype(train_config.TrainConfig(sft={"bf16": False}), "cuda", True)[0] == "float32"


def test_a_cpu_run_records_float32_and_keeps_the_fingerprint_of_runs_from_before_the_key() -> None:
    resolved = train_config.resolve_config(train_config.TrainConfig(), **SIZES, device="cpu")
    assert resolved.dtype == "float32" and resolved.quantization is None
    assert resolved.to_dict()["dtype"] == "float32" and resolved.chosen["dtype"] == "float32 on CPU"
    # Runs from before dtype/quantization existed were float32 and unquantized: same fingerprint fields.
    assert set(resolved.fingerprint_dict()) == {"sft", "lora", "validation_fraction", "max_length"}
    assert resolved.sft["bf16"] is False or train_config.bf16_is_fast("cpu")


def test_a_16_bit_base_is_fingerprinted_and_autocast_follows_it(tmp_path: Path) -> None:
    path = config_file(tmp_path, "sft:\n  max_steps: 2\ndtype: bf16\n")
    user = train_config.load_config(path)
    assert user.dtype == "bfloat16"  # the alias, normalised
    resolved = train_config.resolve_config(user, **SIZES, device="cpu")
    assert resolved.dtype == "bfloat16" and "dtype" not in resolved.chosen  # the file's, not a default
    assert resolved.fingerprint_dict()["dtype"] == "bfloat16"
    assert resolved.sft["bf16"] is True  # bf16 weights compute under bf16 autocast, not float32


def test_16_bit_weights_under_the_other_16_bit_autocast_are_refused_naming_the_line(tmp_path: Path) -> None:
    path = config_file(tmp_path, "sft:\n  bf16: true\ndtype: float16\n")
    with pytest.raises(TuneloopError, match="float16 weights under bf16 autocast") as caught:
        train_config.resolve_config(train_config.load_config(path), **SIZES, device="cpu")
    assert caught.value.where == f"{path}:3"


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("sft:\n  max_steps: 2\ndtype: int4\n", 3, "dtype: 'int4' is not a dtype"),
        ("quantization: 3bit\n", 1, "quantization: '3bit' is not a quantization"),
    ],
)
def test_a_bad_dtype_or_quantization_names_its_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = config_file(tmp_path, text)
    with pytest.raises(TuneloopError, match=message) as caught:
        train_config.load_config(path)
    assert caught.value.where == f"{path}:{line}"


# --- quantization: refused where it cannot run ---------------------------------------------------


def test_4bit_is_refused_without_cuda_naming_the_file_and_line(tmp_path: Path) -> None:
    path = config_file(tmp_path, "sft:\n  max_steps: 2\nquantization: 4bit\n")
    user = train_config.load_config(path)
    with pytest.raises(TuneloopError, match=r"quantization: 4bit .* no GPU") as caught:
        train_config.check_quantization(user, "cpu")
    assert caught.value.where == f"{path}:3" and "remove `quantization:`" in (caught.value.hint or "")
    with pytest.raises(TuneloopError, match="no GPU"):  # and by the resolution every run goes through
        train_config.resolve_config(user, **SIZES, device="cpu")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal on a machine with no GPU")
def test_train_refuses_4bit_on_this_cpu_before_reading_any_data(tiny_base: Path, tmp_path: Path) -> None:
    from tuneloop.cli.main import app

    path = config_file(tmp_path, "quantization: 4bit\n")
    missing = tmp_path / "not-written-yet.jsonl"  # the refusal comes first, so the data is never opened
    result = CliRunner().invoke(
        app, ["train", "--task", TASK, "--data", str(missing), "--base", str(tiny_base), "--config", str(path)]
    )
    # main() prints a TuneloopError; under CliRunner it is the result's exception.
    error = result.exception
    assert isinstance(error, TuneloopError), result.output
    assert error.message.startswith("quantization: 4bit") and error.where == f"{path}:1"


def test_4bit_is_refused_without_bitsandbytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = config_file(tmp_path, "quantization: 8bit\n")
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed, whether it is or not
    with pytest.raises(TuneloopError, match="needs the bitsandbytes package") as caught:
        train_config.check_quantization(train_config.load_config(path), "cuda")
    assert caught.value.where == f"{path}:1" and "tuneloop[gpu]" in (caught.value.hint or "")


def test_an_already_quantized_base_is_refused(tmp_path: Path) -> None:
    user = train_config.load_config(config_file(tmp_path, "quantization: 4bit\n"))
    with pytest.raises(TuneloopError, match="already quantized \\(gptq\\)"):
        train_config.check_base_quantizable(user, {"quantization_config": {"quant_method": "gptq"}}, "hf:org/m-GPTQ")
    train_config.check_base_quantizable(user, {"model_type": "llama"}, "hf:org/m")  # full precision: fine


def test_quantization_is_recorded_and_fingerprinted_only_when_set() -> None:
    resolved = train_config.resolve_config(train_config.TrainConfig(), **SIZES, device="cpu")
    quantized = dataclasses.replace(resolved, quantization="4bit", dtype="bfloat16")
    assert quantized.to_dict()["quantization"] == "4bit"
    assert quantized.fingerprint_dict() != resolved.fingerprint_dict()
    assert "quantization" not in resolved.to_dict()
    shown = train_config.precision(quantized.to_dict())
    assert shown == "4-bit NF4 (QLoRA, double quantization), computing in bfloat16"
    assert train_config.precision({"sft": {}}) == "float32"  # a version trained before the key


# --- the recipe, for real --------------------------------------------------------------------------


def test_a_bf16_base_trains_with_float32_lora_weights_and_the_version_shows_it(tiny_base: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from tuneloop.cli.main import app
    from tuneloop.train import train

    data = write_jsonl(tmp_path / "train.jsonl", rows(24))
    sft = {"max_steps": 2, "per_device_train_batch_size": 4, "logging_steps": 1}
    config = write_config(tmp_path / "train.yaml", sft, dtype="bfloat16")
    result = train(TASK, data, str(tiny_base), config)
    assert result.version.config["train"]["dtype"] == "bfloat16"
    assert result.version.config["train"]["sft"]["bf16"] is True
    tensors = load_file(result.version.adapter_path / "adapter_model.safetensors")
    assert tensors and {tensor.dtype for tensor in tensors.values()} == {__import__("torch").float32}
    shown = CliRunner().invoke(app, ["models", "show", result.version.id])
    assert shown.exit_code == 0 and "base precision" in shown.output and "bfloat16" in shown.output, shown.output


def test_the_recipe_trains_a_4bit_base_through_bitsandbytes(tiny_base: Path, tmp_path: Path) -> None:
    """The 4-bit path of the recipe (BitsAndBytesConfig, prepare_model_for_kbit_training, TRL, our trainer).
    tuneloop refuses 4-bit on CPU (no gain there); recent bitsandbytes runs it, so the recipe is checked here."""
    pytest.importorskip("bitsandbytes")
    from transformers import AutoTokenizer

    from tuneloop.train.data import encode_rows, load_source, prepare
    from tuneloop.train.recipe import RUN_FILE, run

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    encoded = encode_rows(load_source(str(write_jsonl(tmp_path / "t.jsonl", rows(16)))).rows, tokenizer, None)
    prepared = prepare(encoded, tmp_path / "data", validation_fraction=0.0, seed=0)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    sft = {"max_steps": 2, "per_device_train_batch_size": 4, "logging_steps": 1, "save_strategy": "no", "bf16": False}
    spec = {
        "base_dir": str(tiny_base),
        "train_dir": str(prepared.train_dir),
        "eval_dir": None,
        "sft": sft,
        "lora": {"r": 4, "target_modules": "all-linear"},
        "config": {"dtype": "float32", "quantization": "4bit"},
    }
    (run_dir / RUN_FILE).write_text(json.dumps(spec))
    result = run(run_dir)
    assert result["status"] == "finished" and result["step"] == 2
    adapter = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and (run_dir / "adapter" / "adapter_model.safetensors").is_file()


def test_quantized_loading_asks_bitsandbytes_for_nf4_with_double_quantization() -> None:
    import torch

    from tuneloop.train.recipe import quantized_loading

    assert quantized_loading(None, torch.bfloat16, "cuda:0") == {}
    settings = quantized_loading("4bit", torch.bfloat16, "cuda:1")
    quant = settings["quantization_config"]
    assert quant.load_in_4bit and quant.bnb_4bit_quant_type == "nf4" and quant.bnb_4bit_use_double_quant
    assert quant.bnb_4bit_compute_dtype == torch.bfloat16 and settings["device_map"] == {"": "cuda:1"}
    assert quantized_loading("8bit", torch.float16, "cuda:0")["quantization_config"].load_in_8bit


# --- FSDP ------------------------------------------------------------------------------------------


def test_the_fsdp_example_parses_with_accelerates_config_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, prepare_multi_gpu_env

    from tuneloop.train.launch import accelerate_command

    loaded = load_config_from_file(str(FSDP_EXAMPLE))
    assert loaded.distributed_type == DistributedType.FSDP
    fsdp = loaded.fsdp_config
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # the adapter is saved whole
    assert fsdp["fsdp_activation_checkpointing"] is False  # the recipe's gradient_checkpointing does it

    # The command tuneloop runs, through accelerate launch's own parsing, to the environment each process
    # gets and the FSDP plugin accelerate builds from it.
    command = accelerate_command(Path("/run"), 8, FSDP_EXAMPLE)
    assert command[1:3] == ["-m", "accelerate.commands.launch"]
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(command[3:]))
    assert args.use_fsdp and args.num_processes == 8  # --num-processes wins over the file's num_processes
    for key, value in prepare_multi_gpu_env(args).items():
        if key.startswith("FSDP_"):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.state_dict_type.name == "FULL_STATE_DICT"
    assert plugin.auto_wrap_policy is not None and plugin.cpu_ram_efficient_loading
