"""The registry's versions: the content hash (stable across identical registrations, changed by any weight),
resolution by number, hash and alias, and refusal of modified artifacts."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from test_train_support import TASK
from tuneloop.errors import TuneloopError
from tuneloop.registry.versions import (
    build_identity,
    content_hash,
    list_versions,
    register_version,
    resolve_version,
)
from tuneloop.task import load_task

CHATML = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"


def write_adapter(folder: Path, seed: int = 0) -> Path:
    generator = torch.Generator().manual_seed(seed)
    tensors = {
        f"base_model.model.model.layers.0.self_attn.{proj}.lora_{ab}.weight": torch.randn(
            (4, 32) if ab == "A" else (32, 4), generator=generator
        )
        for proj in ("q_proj", "v_proj")
        for ab in ("A", "B")
    }
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["v_proj", "q_proj"], "bias": "none"}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    (folder / "chat_template.jinja").write_text(CHATML)
    return folder


def register(folder: Path, **overrides):
    task = load_task(TASK)
    arguments = {
        "base_id": "smollm2-135m-instruct",
        "base_weights_hash": "ab" * 32,
        "system_prompt": task.system_prompt(),
        "input_template": task.input,
        "decoding": task.decoding.model_dump(),
        **overrides,
    }
    return register_version(TASK, folder, **arguments)


def test_the_hash_is_stable_across_identical_registrations(tmp_path: Path) -> None:
    first, created = register(write_adapter(tmp_path / "a"))
    assert created and first.id == f"{TASK}@1" and len(first.content_hash) == 64
    again, created = register(tmp_path / "a")
    assert not created and again.id == first.id
    copy, created = register(write_adapter(tmp_path / "elsewhere"))  # same bytes, other folder
    assert not created and copy.id == first.id
    assert [v.id for v in list_versions(TASK)] == [first.id]
    # The registered copy is read-only and carries its metadata.
    registered = first.adapter_path
    assert not (registered / "adapter_model.safetensors").stat().st_mode & stat.S_IWUSR
    assert json.loads((registered / "tuneloop.json").read_text())["content_hash"] == f"sha256:{first.content_hash}"


def test_any_change_of_weights_or_identity_gives_another_hash(tmp_path: Path) -> None:
    first, _ = register(write_adapter(tmp_path / "a"))
    changed = write_adapter(tmp_path / "b")
    weights = changed / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))
    second, created = register(changed)
    assert created and second.id == f"{TASK}@2" and second.content_hash != first.content_hash

    identity = {
        "base_id": "smollm2-135m-instruct",
        "base_weights_hash": "ab" * 32,
        "chat_template": CHATML,
        "system_prompt": "Extract.",
        "input_template": "{text}",
        "decoding": {"temperature": 0.0, "top_p": 1.0, "max_tokens": 160},
    }
    reference = content_hash(build_identity(tmp_path / "a", **identity))
    assert reference == content_hash(build_identity(tmp_path / "a", **identity))
    for key, value in (
        ("base_id", "hf:other/model"),
        ("base_weights_hash", "cd" * 32),
        ("chat_template", CHATML + " "),
        ("system_prompt", "Extract!"),
        ("input_template", "Text: {text}"),
        ("decoding", {"temperature": 0.0, "top_p": 1.0, "max_tokens": 161}),
    ):
        assert content_hash(build_identity(tmp_path / "a", **{**identity, key: value})) != reference, key
    config = tmp_path / "a" / "adapter_config.json"
    config.write_text(config.read_text().replace('"lora_alpha": 8', '"lora_alpha": 16'))
    assert content_hash(build_identity(tmp_path / "a", **identity)) != reference  # the adapter's scale


def test_versions_resolve_by_number_hash_prefix_and_alias(tmp_path: Path) -> None:
    from tuneloop.registry.promotion import promote

    one, _ = register(write_adapter(tmp_path / "a", seed=1), base_weights_hash=None)  # no base to check here
    two, _ = register(write_adapter(tmp_path / "b", seed=2), base_weights_hash=None)
    assert resolve_version(f"{TASK}@2", verify=False).content_hash == two.content_hash
    assert resolve_version(f"{TASK}@sha256:{one.content_hash[:12]}", verify=False).id == one.id
    promote(TASK, two.id, "prod")
    assert resolve_version(f"{TASK}@prod", verify=False).id == two.id
    with pytest.raises(TuneloopError) as caught:
        resolve_version(f"{TASK}@7")
    assert caught.value.where == f"model {TASK}@7" and f"{TASK}@1, {TASK}@2" in (caught.value.hint or "")
    with pytest.raises(TuneloopError, match="no alias"):
        resolve_version(f"{TASK}@staging")


def test_a_modified_artifact_is_refused_naming_the_version(tmp_path: Path, tiny_base: Path) -> None:
    from tuneloop.bases import base_weights_hash, resolve_base

    weights = base_weights_hash(resolve_base(str(tiny_base)))
    info, _ = register(write_adapter(tmp_path / "a"), base_id=str(tiny_base), base_weights_hash=weights)
    assert resolve_version(info.id).id == info.id  # verifies cleanly

    target = info.adapter_path / "adapter_model.safetensors"
    target.chmod(stat.S_IRUSR | stat.S_IWUSR)
    data = bytearray(target.read_bytes())
    data[-3] ^= 0x10
    target.write_bytes(bytes(data))
    with pytest.raises(TuneloopError) as caught:
        resolve_version(info.id)
    assert caught.value.where == info.id and "don't match its registered content hash" in caught.value.message

    shutil.copy(tmp_path / "a" / "adapter_model.safetensors", target)  # restored: accepted again
    resolve_version(info.id)

    other, _ = register(write_adapter(tmp_path / "c", seed=3), base_id=str(tiny_base), base_weights_hash="00" * 32)
    with pytest.raises(TuneloopError, match="was trained on"):
        resolve_version(other.id)
