"""Launchers: the recipe in this process, or in N processes under ``accelerate launch``.

Both run the same ``recipe.run(RUN_DIR)`` over the same pre-tokenized data. ``accelerate`` brings the
distributed part (no home-made distributed code): DDP by default, FSDP or DeepSpeed from an accelerate config
file (``--accelerate-config``), several machines through accelerate's own options passed after ``--``
(``--num_machines 2 --machine_rank 0 --main_process_ip ...``). On CPU the processes talk over gloo and share
the cores, so each gets ``cores / N`` threads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tuneloop.errors import TuneloopError
from tuneloop.train.recipe import EXIT_DIVERGED, RESULT_FILE

LAUNCHERS = ("inprocess", "accelerate")


def launch(
    run_dir: Path,
    *,
    launcher: str = "inprocess",
    num_processes: int = 1,
    accelerate_config: Path | None = None,
    accelerate_args: list[str] | None = None,
) -> dict[str, Any]:
    if launcher == "inprocess":
        if num_processes != 1:
            raise TuneloopError(
                "--num-processes needs --launcher accelerate", where="--num-processes", hint="add --launcher accelerate"
            )
        return launch_in_process(run_dir)
    if launcher == "accelerate":
        return launch_accelerate(run_dir, num_processes, accelerate_config, accelerate_args or [])
    raise TuneloopError(
        f"unknown launcher {launcher!r}", where="--launcher", hint="use one of: " + ", ".join(LAUNCHERS)
    )


def launch_in_process(run_dir: Path) -> dict[str, Any]:
    import torch

    from tuneloop.train.recipe import run

    threads = torch.get_num_threads()
    try:
        return run(run_dir)
    finally:
        torch.set_num_threads(threads)


def accelerate_command(
    run_dir: Path, num_processes: int, accelerate_config: Path | None = None, extra: list[str] | None = None
) -> list[str]:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes)]
    if accelerate_config is not None:
        command += ["--config_file", str(accelerate_config)]
    elif num_processes > 1:
        # accelerate's torchrun launcher ("multi_gpu") also starts CPU processes; the recipe asks for CPU
        # itself when there is no GPU, and accelerate then uses gloo.
        command += ["--multi_gpu"]
    extra = list(extra or [])
    for option, value in (("--num_machines", "1"), ("--mixed_precision", "no"), ("--dynamo_backend", "no")):
        if option not in extra and accelerate_config is None:
            command += [option, value]
    command += extra
    command += ["-m", "tuneloop.train.recipe", str(run_dir)]
    return command


def launch_accelerate(
    run_dir: Path, num_processes: int, accelerate_config: Path | None, extra: list[str]
) -> dict[str, Any]:
    if num_processes < 1:
        raise TuneloopError("must be at least 1", where="--num-processes")
    if accelerate_config is not None and not accelerate_config.is_file():
        raise TuneloopError("accelerate config file not found", where=str(accelerate_config))
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // num_processes))
    command = accelerate_command(run_dir, num_processes, accelerate_config, extra)
    (run_dir / "launch.json").write_text(json.dumps({"command": command}, indent=1))
    completed = subprocess.run(command, env=env, check=False)
    result_path = run_dir / RESULT_FILE
    if completed.returncode not in (0, EXIT_DIVERGED) or not result_path.is_file():
        raise TuneloopError(
            f"accelerate launch exited with status {completed.returncode}",
            where=str(run_dir),
            hint="see the output above; `tuneloop train ... --resume` continues from the last checkpoint",
        )
    return json.loads(result_path.read_text())
