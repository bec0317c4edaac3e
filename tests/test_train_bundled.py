"""One test on the bundled base (SmolLM2-135M-Instruct): its real chat template, a few training steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_train_support import TASK, write_config, write_jsonl
from tuneloop.bases import DEFAULT_BASE, resolve_base, transformers_dir


@pytest.mark.slow
def test_a_few_steps_on_the_bundled_base_learn_the_answer_and_its_end_of_turn(
    converted_home: Path, tuneloop_home: Path, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    from tuneloop.demo.synth import synthesize
    from tuneloop.task import load_task
    from tuneloop.train import train
    from tuneloop.train.data import IGNORE_INDEX, encode_conversation

    (tuneloop_home / "cache").mkdir(parents=True, exist_ok=True)
    (tuneloop_home / "cache" / "bases").symlink_to(converted_home / "cache" / "bases")  # reuse the conversion
    rows = synthesize(load_task(TASK), 12, seed=3)
    data = write_jsonl(tmp_path / "synth.jsonl", rows)

    # The label mask against SmolLM2's own chat template: the answer and <|im_end|>, nothing else.
    tokenizer = AutoTokenizer.from_pretrained(transformers_dir(resolve_base(DEFAULT_BASE)))
    encoded = encode_conversation(tokenizer, rows[0]["messages"])
    labelled = [token for token, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != IGNORE_INDEX]
    assert tokenizer.decode(labelled) == rows[0]["messages"][-1]["content"] + "<|im_end|>"

    config = write_config(
        tmp_path / "train.yaml",
        {"max_steps": 2, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1, "logging_steps": 1},
        lora={"r": 8},
    )
    result = train(TASK, data, DEFAULT_BASE, config)
    version = result.version
    assert version.id == f"{TASK}@1" and version.base_id == DEFAULT_BASE
    history = json.loads((result.run_dir / "log_history.json").read_text())
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert len(losses) == 2 and all(0 < loss < 10 for loss in losses)
    assert json.loads((version.adapter_path / "adapter_config.json").read_text())["r"] == 8
