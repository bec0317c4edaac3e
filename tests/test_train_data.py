"""Training data and config: assistant-only labels read off the chat template, bad rows refused before
training (naming file:line and field), config keys checked with their line, defaults from the data size."""

from __future__ import annotations

from pathlib import Path

import pytest

from test_train_support import rows, write_config, write_jsonl
from tuneloop.errors import TuneloopError
from tuneloop.train import config as train_config
from tuneloop.train.data import IGNORE_INDEX, encode_conversation, load_source

MULTI_TURN = [
    {"role": "system", "content": "Answer in JSON."},
    {"role": "user", "content": "Pay $12?"},
    {"role": "assistant", "content": '{"amount": 12}'},
    {"role": "user", "content": "And $7?"},
    {"role": "assistant", "content": '{"amount": 7}'},
]


def _labelled_spans(tokenizer, encoded) -> list[str]:
    """The labelled tokens, decoded run by run."""
    spans, current = [], []
    for token, label in zip(encoded.input_ids, encoded.labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    if current:
        spans.append(tokenizer.decode(current))
    return spans


def test_only_the_assistant_answers_and_their_end_of_turn_carry_labels(tiny_base: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    encoded = encode_conversation(tokenizer, MULTI_TURN)
    # The ids are exactly what the chat template tokenizes to (what serving sends the model)...
    assert encoded.input_ids == list(
        tokenizer.apply_chat_template(MULTI_TURN, tokenize=True, return_dict=True)["input_ids"]
    )
    # ...and the labels pick out each answer with the end-of-turn token that teaches the model to stop;
    # never the system or user turns, the role headers, or the newline after <|im_end|>.
    assert _labelled_spans(tokenizer, encoded) == ['{"amount": 12}<|im_end|>', '{"amount": 7}<|im_end|>']


def test_labels_on_a_real_demo_row(tiny_base: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    row = rows(1)[0]
    encoded = encode_conversation(tokenizer, row["messages"])
    assert _labelled_spans(tokenizer, encoded) == [row["messages"][-1]["content"] + "<|im_end|>"]


def _train_must_not_start(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("training started despite bad input")

    monkeypatch.setattr("tuneloop.train.api.launch", refuse)


def test_a_row_without_an_assistant_message_is_refused_with_its_line(
    tiny_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tuneloop.train import train

    _train_must_not_start(monkeypatch)
    items = rows(5)
    items[2]["messages"] = items[2]["messages"][:-1]  # system + user only
    data = write_jsonl(tmp_path / "data.jsonl", items)
    with pytest.raises(TuneloopError) as caught:
        train("liability-extraction", data, str(tiny_base))
    assert caught.value.where == f"{data}:3"
    assert "messages" in caught.value.message and "no assistant message" in caught.value.message


def test_a_conversation_longer_than_max_length_is_refused_with_its_line(
    tiny_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tuneloop.train import train

    _train_must_not_start(monkeypatch)
    items = rows(4)
    items[1]["messages"][1]["content"] += " and more" * 200
    data = write_jsonl(tmp_path / "data.jsonl", items)
    config = write_config(tmp_path / "train.yaml", {"max_length": 400})
    with pytest.raises(TuneloopError) as caught:
        train("liability-extraction", data, str(tiny_base), config)
    assert caught.value.where == f"{data}:2"
    assert "longer than the maximum length 400" in caught.value.message
    assert "max_length" in (caught.value.hint or "")


def test_an_unknown_base_is_refused_before_the_data_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tuneloop.train import train

    _train_must_not_start(monkeypatch)
    with pytest.raises(TuneloopError) as caught:
        train("liability-extraction", tmp_path / "missing.jsonl", "smollm-9000")
    assert "unknown base model" in caught.value.message and caught.value.where == "smollm-9000"


def test_test_split_rows_of_a_file_are_left_out(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "data.jsonl", rows(3, split="train") + rows(2, seed=5, split="test"))
    source = load_source(str(data))
    assert len(source.rows) == 3 and source.left_out_test == 2
    assert source.rows[2].where == f"{data}:3"


def test_config_keys_are_checked_against_trl_and_peft_with_their_line(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("sft:\n  num_train_epochs: 2\n  learning_rat: 0.001\nlora:\n  r: 8\n")
    with pytest.raises(TuneloopError) as caught:
        train_config.load_config(path)
    assert caught.value.where == f"{path}:3"
    assert "sft.learning_rat" in caught.value.message and "learning_rate" in (caught.value.hint or "")

    path.write_text("sft:\n  num_train_epochs: 2\nlora:\n  r: 8\n  lora_alfa: 16\n")
    with pytest.raises(TuneloopError) as caught:
        train_config.load_config(path)
    assert caught.value.where == f"{path}:5" and "lora_alpha" in (caught.value.hint or "")

    path.write_text("sft:\n  output_dir: /tmp/x\n")
    with pytest.raises(TuneloopError, match="set by tuneloop"):
        train_config.load_config(path)

    path.write_text("sft:\n  num_train_epochs: 2\n  learning_rate: 0.002\nlora:\n  r: 32\n")
    loaded = train_config.load_config(path)
    assert loaded.sft == {"num_train_epochs": 2, "learning_rate": 0.002} and loaded.lora == {"r": 32}

    for bad in ("0", "-4", "true", "fast"):
        path.write_text(f"sft:\n  num_train_epochs: 2\nloraplus_lr_ratio: {bad}\n")
        with pytest.raises(TuneloopError, match="loraplus_lr_ratio: must be a positive number") as caught:
            train_config.load_config(path)
        assert caught.value.where == f"{path}:3"


def test_defaults_come_from_the_dataset_size() -> None:
    def resolved(examples: int, **user):
        return train_config.resolve_config(
            train_config.TrainConfig(sft=user), examples=examples, longest=500, parameters=135_000_000
        )

    # ~10,000 example-passes, 1 to 10 epochs (the validation share is held back first)
    assert resolved(100).sft["num_train_epochs"] == 10
    assert resolved(2105).sft["num_train_epochs"] == 5
    assert resolved(50_000).sft["num_train_epochs"] == 1
    small = resolved(1000)
    assert small.sft["learning_rate"] == 1e-3 and small.lora["r"] == 16 and small.lora["target_modules"] == "all-linear"
    assert small.max_length == 512  # fit to the longest example
    # Small datasets get small batches, so that an epoch still has ~160 optimizer steps.
    assert small.sft["per_device_train_batch_size"] * small.sft["gradient_accumulation_steps"] == 6
    large = resolved(50_000).sft
    assert large["per_device_train_batch_size"] * large["gradient_accumulation_steps"] == 16
    assert resolved(100).sft["per_device_train_batch_size"] * resolved(100).sft["gradient_accumulation_steps"] == 1
    assert small.sft["eval_strategy"] == "steps"
    # The user's keys win.
    assert resolved(1000, num_train_epochs=2, learning_rate=5e-4).sft["num_train_epochs"] == 2
    assert resolved(10).sft["eval_strategy"] == "no"  # too few rows to hold any back


def test_settings_that_clash_are_refused_before_training_naming_the_file(tmp_path: Path) -> None:
    # PEFT refuses layers_to_transform with a target_modules string, and "all-linear" is tuneloop's default.
    path = tmp_path / "train.yaml"
    path.write_text("lora:\n  layers_to_transform: [0, 1]\n")
    with pytest.raises(TuneloopError) as caught:
        train_config.resolve_config(train_config.load_config(path), examples=1000, longest=500, parameters=135_000_000)
    assert caught.value.where == str(path)
    assert caught.value.message.startswith("lora:") and "layers_to_transform" in caught.value.message
    assert "target_modules='all-linear'" in (caught.value.hint or "")

    path.write_text("lora:\n  layers_to_transform: [0, 1]\n  target_modules: [q_proj, v_proj]\n")
    resolved = train_config.resolve_config(
        train_config.load_config(path), examples=1000, longest=500, parameters=135_000_000
    )
    assert resolved.lora["layers_to_transform"] == [0, 1]

    # TrainingArguments takes one mixed precision; each key alone is valid.
    path.write_text("sft:\n  fp16: true\n  bf16: true\n")
    with pytest.raises(TuneloopError) as caught:
        train_config.resolve_config(train_config.load_config(path), examples=1000, longest=500, parameters=135_000_000)
    assert caught.value.message.startswith("sft:") and "fp16 and bf16" in caught.value.message
    # fp16 alone is the user's choice of precision: the bf16 default steps aside rather than clash.
    path.write_text("sft:\n  fp16: true\n")
    resolved = train_config.resolve_config(
        train_config.load_config(path), examples=1000, longest=500, parameters=135_000_000
    )
    assert resolved.sft["fp16"] is True and resolved.sft["bf16"] is False


def test_the_trainers_own_settings_are_tuneloops_unless_the_file_sets_them(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("sft:\n  disable_tqdm: false\n")
    resolved = train_config.resolve_config(
        train_config.load_config(path), examples=1000, longest=500, parameters=135_000_000
    )
    assert train_config.sft_arguments(resolved.sft, str(tmp_path / "out")).disable_tqdm is False
    defaults = train_config.resolve_config(
        train_config.TrainConfig(), examples=1000, longest=500, parameters=135_000_000
    )
    arguments = train_config.sft_arguments(defaults.sft, str(tmp_path / "out"))
    assert arguments.disable_tqdm is True and arguments.report_to in ([], "none", ["none"])
