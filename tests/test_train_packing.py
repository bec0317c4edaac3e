"""Padding-free batches: an example's logits and gradients are the same alone and packed with others,
including when the examples' shared prefix is stored once."""

from __future__ import annotations

import pytest
import torch

from tuneloop.train.attention import register
from tuneloop.train.collate import MIN_SHARED_PREFIX, PaddingFreeCollator, shared_prefix_length
from tuneloop.train.data import IGNORE_INDEX


def tiny_model(implementation: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        attn_implementation=implementation,
    )
    return LlamaForCausalLM(config)


def examples(prefix: int, tails: tuple[int, ...], seed: int = 1) -> list[dict[str, list[int]]]:
    generator = torch.Generator().manual_seed(seed)
    shared = torch.randint(1, 64, (prefix,), generator=generator).tolist()
    out = []
    for tail in tails:
        ids = shared + torch.randint(1, 64, (tail,), generator=generator).tolist()
        answer_from = prefix + tail // 2  # the answer is the second half of each tail
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * answer_from + ids[answer_from:]})
    return out


def forward(model, batch):
    return model(
        input_ids=batch["input_ids"],
        position_ids=batch["position_ids"],
        cu_seq_lens_q=batch["cu_seq_lens_q"],
        shared_prefix_length=batch["shared_prefix_length"],
        use_cache=False,
    ).logits[0]


@pytest.mark.parametrize("share_prefix", [False, True])
def test_logits_of_an_example_are_identical_alone_and_packed(share_prefix: bool) -> None:
    model = tiny_model(register()).eval()
    items = examples(prefix=12, tails=(9, 5, 14))
    batch = PaddingFreeCollator(share_prefix=share_prefix)(items)
    prefix = batch["shared_prefix_length"]
    assert prefix == (12 if share_prefix else 0)
    bounds = batch["cu_seq_lens_q"].tolist()
    segments = bounds[1:] if prefix else bounds
    with torch.no_grad():
        packed = forward(model, batch)
        for index, item in enumerate(items):
            alone = model(input_ids=torch.tensor([item["input_ids"]])).logits[0]
            start, end = segments[index], segments[index + 1]
            torch.testing.assert_close(packed[start:end], alone[prefix:], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(packed[:prefix], alone[:prefix], atol=1e-5, rtol=1e-5)


def test_a_shared_prefix_batch_trains_under_bf16_autocast() -> None:
    """bf16 autocast (the default where the hardware has it) leaves query/key in float32 after the rotary
    embedding and value in bf16; the shared-prefix path must still run and match the unshared one."""
    model = tiny_model(register())
    items = examples(prefix=12, tails=(9, 5, 14))
    shared, plain = PaddingFreeCollator()(items), PaddingFreeCollator(share_prefix=False)(items)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        packed = forward(model, shared)
        reference = forward(model, plain)
    packed.float().sum().backward()  # the backward pass runs too
    prefix = shared["shared_prefix_length"]
    last = shared["cu_seq_lens_q"].tolist()[-2:]
    torch.testing.assert_close(
        packed[last[0] : last[1]].float(), reference[-(last[1] - last[0]) :].float(), atol=5e-2, rtol=5e-2
    )
    assert prefix == 12


def test_gradients_are_those_of_the_examples_run_one_by_one() -> None:
    items = examples(prefix=12, tails=(9, 5, 14))

    def loss_sum(logits, labels):
        return torch.nn.functional.cross_entropy(logits[:-1], labels[1:], ignore_index=IGNORE_INDEX, reduction="sum")

    separate = tiny_model(register())
    total = sum(
        loss_sum(separate(input_ids=torch.tensor([it["input_ids"]])).logits[0], torch.tensor(it["labels"]))
        for it in items
    )
    total.backward()

    packed_model = tiny_model(register())
    batch = PaddingFreeCollator()(items)
    assert batch["shared_prefix_length"] == 12
    loss_sum(forward(packed_model, batch), batch["labels"][0]).backward()
    for (name, a), (_, b) in zip(separate.named_parameters(), packed_model.named_parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_the_stock_sdpa_path_lets_packed_examples_attend_to_each_other_when_a_cache_is_built() -> None:
    """Why tuneloop brings its own attention: transformers keeps packed examples apart only without a KV cache."""
    model = tiny_model("sdpa").eval()
    first, second = examples(prefix=0, tails=(7, 5))
    row = torch.tensor([first["input_ids"] + second["input_ids"]])
    positions = torch.tensor([list(range(7)) + list(range(5))])
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([second["input_ids"]])).logits[0]
        with_cache = model(input_ids=row, position_ids=positions).logits[0, 7:]
        without_cache = model(input_ids=row, position_ids=positions, use_cache=False).logits[0, 7:]
    assert not torch.allclose(with_cache, alone, atol=1e-4)
    torch.testing.assert_close(without_cache, alone, atol=1e-5, rtol=1e-5)


def test_the_shared_prefix_stops_before_any_label_and_needs_a_minimum_length() -> None:
    items = examples(prefix=20, tails=(6, 6))
    ids = [it["input_ids"] for it in items]
    labels = [list(it["labels"]) for it in items]
    assert shared_prefix_length(ids, labels) == 20
    labels[1][15] = ids[1][15]  # a labelled token inside the common part: the prefix must end before it
    assert shared_prefix_length(ids, labels) == 14
    assert shared_prefix_length(ids[:1], labels[:1]) == 0  # one example: nothing to share
    short = examples(prefix=MIN_SHARED_PREFIX - 1, tails=(6, 6), seed=3)
    assert shared_prefix_length([s["input_ids"] for s in short], [s["labels"] for s in short]) == 0


def test_a_packed_row_has_no_padding_and_never_predicts_across_examples() -> None:
    items = examples(prefix=10, tails=(4, 6))
    batch = PaddingFreeCollator()(items)
    assert batch["input_ids"].shape == (1, 10 + 4 + 6)
    assert batch["example_tokens"] == 14 + 16
    starts = batch["cu_seq_lens_q"].tolist()[:-1]
    assert all(batch["labels"][0, start] == IGNORE_INDEX for start in starts)
    assert batch["position_ids"][0].tolist() == list(range(14)) + list(range(10, 16))
