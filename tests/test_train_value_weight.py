"""Value-weighted loss and the kept adapter: the answer's JSON values weigh ``value_weight`` in the loss (a
weighted mean that gradient accumulation does not change), 1.0 is the plain recipe, and the adapter
registered is the one with the lowest validation field error, from a bounded number of generated rows."""

from __future__ import annotations

import json
import math
from io import StringIO
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from safetensors.torch import load_file

from test_train_support import TASK, rows, write_config, write_jsonl
from tuneloop.errors import TuneloopError
from tuneloop.task import load_task
from tuneloop.train import config as train_config
from tuneloop.train.collate import PaddingFreeCollator
from tuneloop.train.data import IGNORE_INDEX, encode_conversation, load_encoded, prepare
from tuneloop.train.weights import loss_weights, value_spans

ANSWER = {
    "payoff_amount": 12500.5,
    "escrow_balance": None,
    "next_due_date": "2026-05-01",
    "interest_rate": 6.125,
    "account_last4": "0042",
    "servicer": "Mr. Cooper",
}
VALUES = ["12500.5", "null", '"2026-05-01"', "6.125", '"0042"', '"Mr. Cooper"']


def _conversation(answer: str) -> list[dict[str, str]]:
    task = load_task(TASK)
    return [
        *task.build_messages({"text": "Mr. Cooper: payoff $12,500.50, loan 0042."}),
        {"role": "assistant", "content": answer},
    ]


def _marked_runs(tokenizer, encoded) -> list[str]:
    """The value-marked tokens, decoded run by run."""
    runs, current = [], []
    for token, marked in zip(encoded.input_ids, encoded.value_mask, strict=True):
        if marked:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    return [*runs, tokenizer.decode(current)] if current else runs


# --- which tokens are values ------------------------------------------------------------------------


def test_value_spans_are_the_scalars_of_the_json_never_its_keys() -> None:
    text = '{"a": 1, "b": ["x", {"k": null}], "c": "", "d": {}, "e": "q\\"t", "f": -2.5e3, "g": true}'
    assert [text[start:end] for start, end in value_spans(text)] == [
        "1",
        '"x"',
        "null",
        '""',
        '"q\\"t"',
        "-2.5e3",
        "true",
    ]
    assert value_spans("not json {") == [] and value_spans('{"a": 1') == []


def test_the_value_tokens_of_an_answer_are_exactly_its_values(tiny_base: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    answer = load_task(TASK).answer_json(ANSWER)
    encoded = encode_conversation(tokenizer, _conversation(answer))
    # Each run of value tokens is one value; a token may also carry the punctuation or space next to it
    # (BPE merges a closing quote with its comma), never a key or a quote of a key.
    runs = _marked_runs(tokenizer, encoded)
    assert [run.strip(" ,:{}") for run in runs] == VALUES
    assert not any(name in run for run in runs for name in ANSWER)
    # Only labelled tokens are marked: the prompt's "Mr. Cooper" and "0042" are not.
    assert all(
        label != IGNORE_INDEX for label, marked in zip(encoded.labels, encoded.value_mask, strict=True) if marked
    )
    weights = loss_weights(encoded.value_mask, 3.0)
    assert {w for w, marked in zip(weights, encoded.value_mask, strict=True) if marked} == {3.0}
    assert {w for w, marked in zip(weights, encoded.value_mask, strict=True) if not marked} == {1.0}


def test_an_answer_that_is_not_json_keeps_weight_one_everywhere(tiny_base: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    encoded = encode_conversation(tokenizer, _conversation('payoff is 12500.5, servicer "Mr. Cooper"'))
    assert encoded.trained_tokens > 0 and not any(encoded.value_mask)
    assert set(loss_weights(encoded.value_mask, 3.0)) == {1.0}


def test_prepared_data_carries_weights_in_the_training_split_only_under_a_weight(
    tiny_base: Path, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    encoded = [encode_conversation(tokenizer, row["messages"]) for row in rows(30)]
    plain = prepare(encoded, tmp_path / "plain", validation_fraction=0.2, seed=1)
    weighted = prepare(encoded, tmp_path / "weighted", validation_fraction=0.2, seed=1, value_weight=3.0)
    assert load_encoded(plain.train_dir).column_names == ["input_ids", "labels"]  # the plain recipe's data
    assert load_encoded(weighted.train_dir).column_names == ["input_ids", "labels", "loss_weights"]
    assert load_encoded(weighted.eval_dir).column_names == ["input_ids", "labels"]  # validation loss stays plain
    first = load_encoded(weighted.train_dir)[0]
    assert set(first["loss_weights"]) == {1.0, 3.0} and len(first["loss_weights"]) == len(first["input_ids"])


# --- the loss -----------------------------------------------------------------------------------------


@pytest.fixture
def trainer_and_examples(tiny_base: Path, tmp_path: Path):
    """A trainer over the tiny base (no LoRA: every weight gets a gradient) and two encoded demo rows."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneloop.train.attention import register
    from tuneloop.train.config import sft_arguments
    from tuneloop.train.trainer import TuneloopSFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    model = AutoModelForCausalLM.from_pretrained(tiny_base, attn_implementation=register())
    encoded = [encode_conversation(tokenizer, row["messages"]) for row in rows(2, seed=5)]
    examples = [{"input_ids": e.input_ids, "labels": e.labels, "value_mask": e.value_mask} for e in encoded]
    dataset = Dataset.from_dict({"input_ids": [e.input_ids for e in encoded], "labels": [e.labels for e in encoded]})
    trainer = TuneloopSFTTrainer(
        model=model,
        args=sft_arguments({"per_device_train_batch_size": 2, "bf16": False}, str(tmp_path / "out")),
        train_dataset=dataset,
        processing_class=tokenizer,
        data_collator=PaddingFreeCollator(),
    )
    return trainer, examples


def _batch(examples: list[dict], value_weight: float) -> dict:
    items = [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples]
    if value_weight != 1.0:  # as prepare() writes the data: no column at weight 1
        for item, example in zip(items, examples, strict=True):
            item["loss_weights"] = loss_weights(example["value_mask"], value_weight)
    return PaddingFreeCollator()(items)


def _loss(trainer, batches: list[dict]) -> torch.Tensor:
    """What the trainer's step computes: each micro-batch's loss over the all-batch denominator, summed."""
    denominator = trainer._get_num_items_in_batch(batches, torch.device("cpu"))
    return sum(trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=denominator) for batch in batches)


def _weighted_mean_by_hand(model, examples: list[dict], value_weight: float) -> torch.Tensor:
    """sum(w_i * ce_i) / sum(w_i) over every answer token of the examples, each run alone."""
    numerator = denominator = torch.tensor(0.0)
    for example in examples:
        logits = model(input_ids=torch.tensor([example["input_ids"]])).logits[0, :-1]
        targets = torch.tensor(example["labels"][1:])
        weights = torch.tensor(loss_weights(example["value_mask"], value_weight)[1:])
        counted = targets != IGNORE_INDEX
        token_loss = F.cross_entropy(logits[counted], targets[counted], reduction="none")
        numerator = numerator + (weights[counted] * token_loss).sum()
        denominator = denominator + weights[counted].sum()
    return numerator / denominator


@pytest.mark.parametrize("value_weight", [1.0, 3.0])
def test_the_loss_is_the_weighted_mean_of_the_answer_tokens(trainer_and_examples, value_weight: float) -> None:
    trainer, examples = trainer_and_examples
    trainer.model.train()
    loss = _loss(trainer, [_batch(examples, value_weight)])
    with torch.no_grad():
        expected = _weighted_mean_by_hand(trainer.model, examples, value_weight)
        plain = _weighted_mean_by_hand(trainer.model, examples, 1.0)
    torch.testing.assert_close(loss.detach(), expected, atol=1e-5, rtol=1e-5)
    if value_weight != 1.0:
        assert abs(float(expected) - float(plain)) > 1e-3  # the weighting changes the loss


def test_weight_one_data_takes_exactly_the_plain_path(trainer_and_examples) -> None:
    trainer, examples = trainer_and_examples
    trainer.model.train()
    plain = _batch(examples, 1.0)
    assert "loss_weights" not in plain  # the plain recipe's batches, as before value_weight existed
    ones = dict(plain, loss_weights=torch.ones_like(plain["labels"], dtype=torch.float32))
    torch.testing.assert_close(_loss(trainer, [ones]), _loss(trainer, [plain]), atol=1e-6, rtol=1e-6)
    assert trainer._get_num_items_in_batch([plain], torch.device("cpu")) == (plain["labels"][:, 1:] != -100).sum()


@pytest.mark.parametrize("value_weight", [1.0, 3.0])
def test_two_micro_batches_give_the_loss_and_gradient_of_one_batch(trainer_and_examples, value_weight: float) -> None:
    trainer, examples = trainer_and_examples
    model = trainer.model.train()

    def loss_and_gradient(batches: list[dict]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        loss = _loss(trainer, batches)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    accumulated, accumulated_grads = loss_and_gradient(
        [_batch(examples[:1], value_weight), _batch(examples[1:], value_weight)]
    )
    whole, whole_grads = loss_and_gradient([_batch(examples, value_weight)])
    torch.testing.assert_close(accumulated, whole, atol=1e-5, rtol=1e-5)
    for a, b in zip(accumulated_grads, whole_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


# --- the config -----------------------------------------------------------------------------------------


def _resolve(text: str, **kwargs):
    return train_config.resolve_config(
        train_config.parse_config(text, "train.yaml"), examples=400, longest=300, parameters=1_000_000, **kwargs
    )


def test_weight_one_keeps_the_fingerprint_of_runs_from_before_the_keys() -> None:
    before = _resolve("")
    assert set(before.fingerprint_dict()) == {"sft", "lora", "validation_fraction", "max_length"}
    assert before.value_weight == 1.0 and before.to_dict()["value_weight"] == 1.0  # recorded, not fingerprinted
    # The kept adapter's sample changes no weight: the run is the same run whatever its size.
    for text in ("value_weight: 1", "field_error_rows: 0", "field_error_rows: 40"):
        assert _resolve(text).fingerprint_dict() == before.fingerprint_dict(), text
    weighted = _resolve("value_weight: 3")
    assert weighted.fingerprint_dict() == {**before.fingerprint_dict(), "value_weight": 3.0}


def test_field_error_rows_default_to_a_bounded_sample_when_the_run_evaluates() -> None:
    assert _resolve("").field_error_rows == 16  # CPU
    assert _resolve("", device="cuda").field_error_rows == 64
    assert _resolve("sft: {eval_strategy: 'no'}").field_error_rows == 0
    assert (
        train_config.resolve_config(
            train_config.TrainConfig(), examples=10, longest=300, parameters=1_000_000
        ).field_error_rows
        == 0
    )  # too few rows to hold any back
    assert _resolve("field_error_rows: 5").field_error_rows == 5


@pytest.mark.parametrize(
    ("line", "says"),
    [("value_weight: 0.5", "at least 1"), ("value_weight: yes", "at least 1"), ("field_error_rows: -1", "at least 0")],
)
def test_bad_settings_are_refused_with_their_line(line: str, says: str) -> None:
    with pytest.raises(TuneloopError) as caught:
        train_config.parse_config(f"sft: {{}}\n{line}\n", "train.yaml")
    assert says in caught.value.message and caught.value.where == "train.yaml:2"


# --- the kept adapter -------------------------------------------------------------------------------------


def _evaluate(keeper, step: int, field_error: float, eval_loss: float) -> None:
    from transformers import TrainerControl, TrainerState

    state = TrainerState(global_step=step)
    keeper.on_evaluate(
        None, state, TrainerControl(), metrics={"eval_field_error": field_error, "eval_loss": eval_loss}, model=step
    )


def test_the_keeper_keeps_the_lowest_field_error_then_the_lower_loss_then_the_later_step(tmp_path: Path) -> None:
    from transformers import TrainerControl, TrainerState

    from tuneloop.train.selection import KeepBestAdapter

    saved: list[int] = []

    def save(step, folder: Path) -> None:
        saved.append(step)
        folder.mkdir(parents=True)
        (folder / "weights").write_text(str(step))

    keeper = KeepBestAdapter(tmp_path, save=save)
    for step, error, loss in [(2, 0.5, 1.0), (4, 0.25, 0.9), (6, 0.25, 0.95), (8, 0.75, 0.5), (10, 0.25, 0.9)]:
        _evaluate(keeper, step, error, loss)
    assert saved == [2, 4, 10]  # 6 ties on field error with a higher loss; 10 ties on both and is later
    assert keeper.best.step == 10 and (tmp_path / "best_adapter" / "weights").read_text() == "10"
    assert json.loads((tmp_path / "best_adapter" / "kept.json").read_text())["field_error"] == 0.25

    # A resumed run reads the record back, and drops it when it comes from beyond the checkpoint.
    assert KeepBestAdapter(tmp_path, save=save).best == keeper.best
    resumed = KeepBestAdapter(tmp_path, save=save)
    resumed.on_step_begin(None, TrainerState(global_step=10), TrainerControl())
    assert resumed.best is not None
    stale = KeepBestAdapter(tmp_path, save=save)
    stale.on_step_begin(None, TrainerState(global_step=8), TrainerControl())
    assert stale.best is None and not (tmp_path / "best_adapter").exists()


SFT = {
    "max_steps": 5,
    "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 1,
    "learning_rate": 5e-3,
    "logging_steps": 1,
    "eval_steps": 2,
    "save_steps": 2,
    "save_total_limit": 10,
    "bf16": False,
}


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "train.jsonl", rows(40, split="train"))


def test_the_registered_adapter_is_the_one_with_the_lowest_validation_field_error(
    tiny_base: Path, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tuneloop.train import selection, train, trainer

    generated: list[int] = []
    original_generate = selection.generate_answers

    def counting_generate(model, tokenizer, prompts, max_new_tokens):
        generated.append(len(prompts))
        return original_generate(model, tokenizer, prompts, max_new_tokens)

    # The tiny model gets every field wrong at every step; these field errors make step 4 the best and the
    # last step (5, evaluated because it is the last) worse.
    scripted = iter([0.5, 0.25, 0.75])
    monkeypatch.setattr(selection, "generate_answers", counting_generate)
    monkeypatch.setattr(selection, "field_error", lambda task, outputs, answers: next(scripted))
    weighted_batches: list[bool] = []
    original_loss = trainer.TuneloopSFTTrainer.compute_loss

    def recording_loss(self, model, inputs, *args, **kwargs):
        if model.training:
            weighted_batches.append("loss_weights" in inputs)
        return original_loss(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(trainer.TuneloopSFTTrainer, "compute_loss", recording_loss)
    output = StringIO()
    config = write_config(tmp_path / "train.yaml", SFT, validation_fraction=0.2, field_error_rows=3, value_weight=3)
    result = train(TASK, data, str(tiny_base), config, console=Console(file=output, width=200))

    assert weighted_batches and all(weighted_batches)  # the weights reached the loss at every step
    history = json.loads((result.run_dir / "log_history.json").read_text())
    assert [(h["step"], h["eval_field_error"]) for h in history if "eval_field_error" in h] == [
        (2, 0.5),
        (4, 0.25),
        (5, 0.75),
    ]
    assert generated == [4, 3, 3, 3]  # the warm-up times 4 answers; of 8 rows held back, 3 at each evaluation
    kept = json.loads((result.run_dir / "result.json").read_text())["kept"]
    assert kept["step"] == 4 and kept["field_error"] == 0.25 and kept["rows"] == 3
    assert "kept the adapter of step 4 of 5: field error 25.0% on 3 validation rows" in output.getvalue()
    assert result.version.metrics["kept_step"] == 4

    registered = load_file(result.version.adapter_path / "adapter_model.safetensors")
    at_step_4 = load_file(result.run_dir / "checkpoints" / "checkpoint-4" / "adapter_model.safetensors")
    at_step_5 = load_file(result.run_dir / "checkpoints" / "checkpoint-5" / "adapter_model.safetensors")
    assert registered.keys() == at_step_4.keys()
    assert all(torch.equal(registered[name], at_step_4[name]) for name in registered)
    assert not all(torch.equal(registered[name], at_step_5[name]) for name in registered)


def test_without_field_error_rows_nothing_is_generated_and_the_last_adapter_is_registered(
    tiny_base: Path, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tuneloop.train import selection, train

    generated: list[int] = []
    monkeypatch.setattr(selection, "generate_answers", lambda *args: generated.append(1) or [])
    sft = {**SFT, "max_steps": 2, "eval_steps": 1}
    result = train(TASK, data, str(tiny_base), write_config(tmp_path / "train.yaml", sft, field_error_rows=0))
    history = json.loads((result.run_dir / "log_history.json").read_text())
    assert [h["step"] for h in history if "eval_loss" in h] == [1, 2] and generated == []
    assert not any("eval_field_error" in h for h in history)
    assert "kept" not in json.loads((result.run_dir / "result.json").read_text())
    assert not (result.run_dir / "best_adapter").exists()
    registered = load_file(result.version.adapter_path / "adapter_model.safetensors")
    last = load_file(result.run_dir / "checkpoints" / "checkpoint-2" / "adapter_model.safetensors")
    assert all(torch.equal(registered[name], last[name]) for name in registered)


def test_the_field_error_counts_every_field_of_an_invalid_answer_and_skips_rows_without_gold() -> None:
    from tuneloop.train.selection import field_error

    task = load_task(TASK)
    gold = task.answer_json(ANSWER)
    one_wrong = task.answer_json({**ANSWER, "account_last4": "0043"})
    outputs = [gold, one_wrong, "not an answer", gold]
    answers = [gold, gold, gold, "no gold here"]
    assert field_error(task, outputs, answers) == pytest.approx((0 + 1 + 6) / 18)
    assert math.isnan(field_error(task, [gold], ["no gold here"]))  # nothing to score


def test_batched_left_padded_generation_answers_as_one_prompt_at_a_time(tiny_base: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneloop.bases import align_special_tokens
    from tuneloop.train.attention import register
    from tuneloop.train.data import SourceRow, validation_prompts
    from tuneloop.train.selection import generate_answers

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    model = AutoModelForCausalLM.from_pretrained(tiny_base, attn_implementation=register()).train()
    align_special_tokens(model, tokenizer)
    prompts = [p["prompt_ids"] for p in validation_prompts([SourceRow(r["messages"], "") for r in rows(3)], tokenizer)]
    assert len({len(p) for p in prompts}) > 1  # different lengths: the batch is padded
    batched = generate_answers(model, tokenizer, prompts, max_new_tokens=8)
    alone = [generate_answers(model, tokenizer, [p], max_new_tokens=8)[0] for p in prompts]
    assert batched == alone and all(batched)
    assert model.training  # the model is back in the mode it was in
