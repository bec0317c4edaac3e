"""The version a DPO or GRPO run starts from (``--parent task@N``): of the run's task and base, its files
verified, and the LoRA settings it is trained further with (its own)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneloop.bases import resolve_base
from tuneloop.errors import TuneloopError
from tuneloop.registry.ids import VersionRef, parse_model_id
from tuneloop.registry.versions import ModelVersionInfo, register_version, resolve_version
from tuneloop.task import Task

LORA_KEYS = ("r", "lora_alpha", "lora_dropout", "target_modules", "bias", "use_rslora", "use_dora")


def resolve_parent(parent: str | None, spec: Task, base: str | None, method: str) -> ModelVersionInfo:
    """The version ``method`` (DPO, GRPO) trains further: a registered version of this task, on this base (when
    ``--base`` names one), its files verified."""
    first = (
        f"train an SFT version first (tuneloop train --task {spec.name} --data ...), then pass --parent {spec.name}@N"
    )
    if not parent:
        raise TuneloopError(
            f"{method} trains a registered version further, and no --parent names one", where="--parent", hint=first
        )
    ref = parse_model_id(parent)
    if not isinstance(ref, VersionRef):
        raise TuneloopError(
            f"{parent!r} is not a version of a task: {method} trains a version's LoRA further",
            where=f"--parent {parent}",
            hint=f"name a version, {spec.name}@N (`tuneloop models list`); or {first}",
        )
    if ref.task != spec.name:
        raise TuneloopError(
            f"{parent} is a version of task {ref.task}, and this run trains task {spec.name}",
            where=f"--parent {parent}",
            hint=f"pass a version of {spec.name} (`tuneloop models list`), or --task {ref.task}",
        )
    version = resolve_version(ref)  # verified: its files give its content hash, its base's weights are the same
    if base is not None and resolve_base(base).id != version.base_id:
        raise TuneloopError(
            f"{version.id} was trained on {version.base_id}, and --base names {resolve_base(base).id}",
            where=f"--base {base}",
            hint=f"leave out --base ({method} trains on the parent's base), or pick a parent trained on {base}",
        )
    return version


def parent_lora(version: ModelVersionInfo) -> dict[str, Any]:
    """The LoRA settings trained further: the parent's, as its adapter_config.json says."""
    config = json.loads((version.adapter_path / "adapter_config.json").read_text())
    return {key: config[key] for key in LORA_KEYS if key in config}


def register_child(
    spec: Task,
    parent: ModelVersionInfo,
    adapter_dir: Path,
    *,
    method: str,
    dataset_ref: str,
    config: dict[str, Any],
    metrics: dict[str, Any],
    extra_files: dict[str, Path],
) -> tuple[ModelVersionInfo, bool]:
    """Register the adapter a ``method`` run trained from ``parent``: on the parent's base, asked with the
    prompt the run used (a distilled parent's trained one, else the task's instructions), its config naming
    the method and the parent first."""
    return register_version(
        spec.name,
        adapter_dir,
        base_id=parent.base_id,
        base_weights_hash=parent.base_weights_hash,
        system_prompt=parent.system_prompt if parent.distilled_from is not None else spec.system_prompt(),
        distilled_from=parent.distilled_from,
        input_template=spec.input,
        decoding=spec.decoding.model_dump(),
        dataset_ref=dataset_ref,
        config={"method": method, "parent": {"id": parent.id, "content_hash": parent.content_hash}, **config},
        metrics=metrics,
        extra_files=extra_files,
    )
