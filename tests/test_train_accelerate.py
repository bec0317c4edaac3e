"""`tuneloop train --launcher accelerate --num-processes 2`: a real 2-process DDP run over gloo on CPU."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from test_train_support import TASK, rows, write_config, write_jsonl


def test_two_processes_under_accelerate_launch_train_and_register(tiny_base: Path, tmp_path: Path) -> None:
    from tuneloop.cli.main import app
    from tuneloop.registry.versions import resolve_version

    data = write_jsonl(tmp_path / "train.jsonl", rows(40))
    config = write_config(
        tmp_path / "train.yaml",
        {"max_steps": 3, "per_device_train_batch_size": 4, "logging_steps": 1, "eval_steps": 3, "bf16": False},
    )
    result = CliRunner().invoke(
        app,
        [
            "train", "--task", TASK, "--data", str(data), "--base", str(tiny_base), "--config", str(config),
            "--launcher", "accelerate", "--num-processes", "2",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    version = resolve_version(f"{TASK}@1")
    run_dir = Path(version.config["run_dir"])
    outcome = json.loads((run_dir / "result.json").read_text())
    assert outcome["status"] == "finished" and outcome["world_size"] == 2 and outcome["step"] == 3
    launched = json.loads((run_dir / "launch.json").read_text())["command"]
    assert launched[1:4] == ["-m", "accelerate.commands.launch", "--num_processes"]
    # The batch per optimizer step is split over the processes, not multiplied by them.
    assert version.config["train"]["sft"]["gradient_accumulation_steps"] == 1
    assert (version.adapter_path / "adapter_model.safetensors").is_file()
