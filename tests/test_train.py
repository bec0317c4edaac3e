"""`tuneloop train` end to end on a tiny in-process base: a registered version with its artifacts, the models
commands, resume after a crash, and a diverging run stopped with its last good checkpoint kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from test_train_support import TASK, rows, write_config, write_jsonl
from tuneloop.errors import TuneloopError
from tuneloop.registry.versions import list_versions, register_version, resolve_version

SFT = {
    "max_steps": 6,
    "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 1,
    "learning_rate": 5e-3,
    "logging_steps": 1,
    "eval_steps": 3,
    "save_steps": 2,
    "bf16": False,
}


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "train.jsonl", rows(40, split="train") + rows(6, seed=7, split="test"))


def test_train_registers_an_immutable_version_with_its_artifacts(tiny_base: Path, data: Path, tmp_path: Path) -> None:
    from tuneloop.train import train

    result = train(TASK, data, str(tiny_base), write_config(tmp_path / "train.yaml", SFT))
    version = result.version
    assert result.created and version.id == f"{TASK}@1" and version.base_id == str(tiny_base)
    folder = version.adapter_path
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "chat_template.jinja"):
        assert (folder / name).is_file(), name
    metadata = json.loads((folder / "tuneloop.json").read_text())
    assert metadata["id"] == version.id and metadata["content_hash"] == f"sha256:{version.content_hash}"
    assert metadata["decoding"] == {"temperature": 0.0, "top_p": 1.0, "max_tokens": 160}
    assert version.loss_curve_path is not None and version.loss_curve_path.read_bytes()[:4] == b"\x89PNG"
    assert version.metrics["loss_curve"] == str(version.loss_curve_path)  # recorded in the store
    assert version.metrics["eval_loss"] is not None  # validation loss on the held-back share
    data_info = version.config["data"]
    assert data_info["left_out_test_rows"] == 6 and data_info["train_examples"] + data_info["validation_examples"] == 40
    # LoRA on every linear layer of the blocks
    config = json.loads((folder / "adapter_config.json").read_text())
    targets = {name.rsplit(".", 1)[-1] for name in config["target_modules"]}
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

    # Registering the same files again gives the same version, not a new number.
    again, created = register_version(
        TASK,
        folder,
        base_id=version.base_id,
        base_weights_hash=version.base_weights_hash,
        system_prompt=version.system_prompt,
        input_template=version.input_template,
        decoding=version.decoding,
    )
    assert not created and again.id == version.id and again.content_hash == version.content_hash
    assert [v.id for v in list_versions(TASK)] == [version.id]
    assert resolve_version(f"{TASK}@1").content_hash == version.content_hash  # verified against its files

    from tuneloop.cli.main import app

    runner = CliRunner()
    listed = runner.invoke(app, ["models", "list"], env={"COLUMNS": "250"})
    assert listed.exit_code == 0 and f"{TASK}@1" in listed.output and version.content_hash[:12] in listed.output
    shown = runner.invoke(app, ["models", "show", f"{TASK}@1"], env={"COLUMNS": "250"})
    assert shown.exit_code == 0, shown.output
    for text in (version.content_hash, str(tiny_base), "loss_curve.png", "files match", "learning_rate"):
        assert text in shown.output, text


def test_merge_writes_full_weights_that_equal_base_plus_adapter(tiny_base: Path, data: Path, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuneloop.train import train

    config = write_config(tmp_path / "train.yaml", {**SFT, "max_steps": 2, "eval_strategy": "no"})
    version = train(TASK, data, str(tiny_base), config, merge=True).version
    assert version.merged_path is not None
    ids = torch.tensor([[5, 9, 30, 2, 7]])
    merged = AutoModelForCausalLM.from_pretrained(version.merged_path).eval()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), version.adapter_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapted(ids).logits, atol=1e-5, rtol=1e-5)


def test_loraplus_trains_the_b_matrices_at_the_ratio_of_the_learning_rate(
    tiny_base: Path, data: Path, tmp_path: Path
) -> None:
    import torch

    from tuneloop.train import train

    sft = {**SFT, "max_steps": 2, "save_steps": 2, "eval_strategy": "no"}
    result = train(TASK, data, str(tiny_base), write_config(tmp_path / "train.yaml", sft, loraplus_lr_ratio=16))
    assert result.version.config["train"]["loraplus_lr_ratio"] == 16  # recorded with the version
    checkpoint = result.run_dir / "checkpoints" / "checkpoint-2"
    groups = torch.load(checkpoint / "optimizer.pt", weights_only=False)["param_groups"]
    rates = sorted((group["initial_lr"], len(group["params"])) for group in groups if group["params"])
    (a_rate, a_matrices), (b_rate, b_matrices) = rates
    assert a_rate == pytest.approx(5e-3) and b_rate == pytest.approx(16 * 5e-3)
    assert a_matrices == b_matrices == 2 * 7  # every linear layer of the tiny base's 2 blocks

    from tuneloop.cli.main import app

    shown = CliRunner().invoke(app, ["models", "show", result.version.id], env={"COLUMNS": "250"})
    assert shown.exit_code == 0 and '"loraplus_lr_ratio": 16' in shown.output, shown.output


def test_resume_continues_from_the_last_checkpoint_after_a_crash(
    tiny_base: Path, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tuneloop.train import callbacks, train

    config = write_config(tmp_path / "train.yaml", {**SFT, "save_steps": 1, "eval_strategy": "no"})
    uninterrupted = train(TASK, data, str(tiny_base), config)

    # Same run again, killed during step 4 (after checkpoint-3 was written).
    original = callbacks.NonFiniteLossGuard.on_step_end

    def crash_at_step_4(self, args, state, control, **kwargs):
        if state.global_step == 4:
            raise KeyboardInterrupt
        return original(self, args, state, control, **kwargs)

    monkeypatch.setattr(callbacks.NonFiniteLossGuard, "on_step_end", crash_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        train(TASK, data, str(tiny_base), config)
    monkeypatch.setattr(callbacks.NonFiniteLossGuard, "on_step_end", original)
    runs = sorted(p for p in uninterrupted.run_dir.parent.iterdir() if p != uninterrupted.run_dir)
    crashed = runs[-1]
    assert (crashed / "checkpoints" / "checkpoint-3").is_dir() and not (crashed / "adapter").exists()

    resumed = train(TASK, data, str(tiny_base), config, resume=True)
    assert resumed.run_dir == crashed
    outcome = json.loads((crashed / "result.json").read_text())
    assert outcome["resumed_from"] == str(crashed / "checkpoints" / "checkpoint-3")
    history = json.loads((crashed / "log_history.json").read_text())
    assert [h["step"] for h in history if "loss" in h] == [1, 2, 3, 4, 5, 6]  # 1-3 restored with the checkpoint
    # Continuing from the checkpoint reproduces the uninterrupted run: the same weights, so the same version.
    a = load_file(uninterrupted.version.adapter_path / "adapter_model.safetensors")
    b = load_file(resumed.version.adapter_path / "adapter_model.safetensors")
    for name in a:
        assert (a[name] - b[name]).abs().max() < 1e-5, name
    with pytest.raises(TuneloopError, match="no unfinished run"):
        train(TASK, data, str(tiny_base), config, resume=True)


def test_a_diverging_run_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(
    tiny_base: Path, data: Path, tmp_path: Path
) -> None:
    from tuneloop.train import train

    config = write_config(
        tmp_path / "train.yaml",
        {**SFT, "learning_rate": 1e30, "warmup_steps": 0, "save_steps": 1, "eval_strategy": "no"},
    )
    with pytest.raises(TuneloopError) as caught:
        train(TASK, data, str(tiny_base), config)
    message = str(caught.value)
    assert "diverged" in message and "NaN" in message and "learning_rate" in message
    checkpoint = Path(message.split("last good checkpoint is ")[1].split("\n")[0].strip())
    assert checkpoint.is_dir()
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert all(entry["loss"] == entry["loss"] for entry in state["log_history"] if "loss" in entry)  # no NaN
    assert list_versions(TASK) == []  # nothing registered


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--time-limit", "2m"], "No such option: --time-limit"),
        (["--epochs", "3"], "No such option: --epochs"),
        (["--", "--num_machines", "2"], "would go to `accelerate launch`"),
        (["stray"], "would go to `accelerate launch`"),
    ],
)
def test_a_typo_in_train_is_an_error_not_a_default_run(
    tiny_base: Path, data: Path, extra: list[str], says: str
) -> None:
    from tuneloop.cli.main import app

    arguments = ["train", "--task", TASK, "--data", str(data), "--base", str(tiny_base), *extra]
    result = CliRunner().invoke(app, arguments, env={"COLUMNS": "200"})
    # Typer refuses an unknown option (exit 2); a TuneloopError is printed by main() (exit 2 there too).
    assert result.exit_code == 2 or isinstance(result.exception, TuneloopError), result.output
    assert says in result.output + str(result.exception)
    assert list_versions() == []  # nothing trained, nothing registered
