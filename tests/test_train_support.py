"""Shared by the training tests: a tiny in-process Llama base with a ChatML tokenizer, and short rows.

The tiny base is a local HF folder (a ``resolve_base`` path), so ``train()`` runs end to end in seconds:
byte-level BPE tokenizer trained on the fly, 2 layers of width 32, the SmolLM2 chat template.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneloop.task import load_task

TASK = "liability-extraction"
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + "
    "'\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SERVICERS = ["Rocket Mortgage", "Mr. Cooper", "PennyMac", "Newrez"]


def make_tiny_base(folder: Path, *, layers: int = 2, seed: int = 0) -> Path:
    """A 2-layer Llama with a 400-token byte-level BPE tokenizer and a ChatML template, saved to ``folder``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    task = load_task(TASK)
    corpus = [task.system_prompt(), *(json.dumps(row) for row in rows(20, seed=99))] * 3
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>"
    )
    fast.chat_template = CHATML
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
    )
    folder.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    fast.save_pretrained(folder)
    return folder


def rows(n: int, *, seed: int = 0, split: str | None = None) -> list[dict[str, Any]]:
    """Short liability-extraction rows built with the task's own prompt and answer format."""
    import random

    task = load_task(TASK)
    rng = random.Random(seed)
    out = []
    for index in range(n):
        amount = round(rng.uniform(1000, 90000), 2)
        servicer = rng.choice(SERVICERS)
        last4 = f"{rng.randrange(10000):04d}"
        text = f"{servicer}: payoff ${amount:,.2f} for loan ending {last4}."
        fields = {"payoff_amount": amount, "account_last4": last4, "servicer": servicer}
        row: dict[str, Any] = {
            "id": f"r{index}",
            "messages": [
                *task.build_messages({"text": text}),
                {"role": "assistant", "content": task.answer_json(fields)},
            ],
            "metadata": {"fields": {name: fields.get(name) for name in task.field_names}},
        }
        if split:
            row["metadata"]["split"] = split
        out.append(row)
    return out


def write_jsonl(path: Path, items: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def write_config(path: Path, sft: dict[str, Any], lora: dict[str, Any] | None = None, **top: Any) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"sft": sft, "lora": lora or {"r": 4}, **top}))
    return path


def test_the_tiny_base_loads_and_formats_chats(tiny_base: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    text = tokenizer.apply_chat_template(rows(1)[0]["messages"], tokenize=False)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_end|>\n")
