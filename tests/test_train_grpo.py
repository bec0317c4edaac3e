"""GRPO from the task's own score: the reward on real answers of the demo task, and a real GRPO run.

The run continues a registered SFT version of a tiny in-process model. A tiny base trained only through LoRA
for a few steps answers nothing but noise, so every sampled answer would be invalid, every reward -1, and
GRPO (which learns from differences within a prompt's group) would have nothing to learn from. So the base
is first trained in full, briefly, to answer in the task's JSON with a servicer picked at random: its
samples then differ (valid or not, right servicer or not), which is all GRPO needs to move the adapter.
"""

from __future__ import annotations

import json
import random
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from test_train_support import SERVICERS, TASK, make_tiny_base, rows, write_config, write_jsonl
from tuneloop.errors import TuneloopError
from tuneloop.task import load_task
from tuneloop.train.reward import CHECK_PENALTY, INVALID_REWARD, VALID_FLOOR, TaskReward, answer_reward


@pytest.fixture(scope="module")
def document() -> tuple[str, dict[str, Any]]:
    """A real document of the demo task that states all six fields, and its verified answer."""
    from tuneloop.demo.synth import synthesize

    for row in synthesize(load_task(TASK), 40, seed=3):
        gold = row["metadata"]["fields"]
        if all(value is not None for value in gold.values()):
            return row["messages"][1]["content"], gold
    raise AssertionError("no document of the synthetic set states every field")


def test_the_reward_is_the_tasks_field_score_with_checks_as_penalties(document: tuple[str, dict[str, Any]]) -> None:
    from tuneloop.evals.scoring import score_record

    task = load_task(TASK)
    _, gold = document

    def reward(answer: dict[str, Any] | str) -> float:
        return answer_reward(task, answer if isinstance(answer, str) else json.dumps(answer), gold).value

    exact = reward(task.answer_json(gold))
    assert exact == 1.0
    assert reward("```json\n" + task.answer_json(gold) + "\n```") == 1.0  # read as evals read answers
    # One field wrong of six: 5/6, the record's share of right fields (1 - its field error in evals).
    servicer_wrong = {**gold, "servicer": "Somebody Else Mortgage"}
    assert reward(servicer_wrong) == pytest.approx(5 / 6)
    score = score_record(task, "x", json.dumps(servicer_wrong), gold)
    assert 1 - score.errors / len(task.field_names) == pytest.approx(5 / 6)  # the same scorer as evals
    # Numbers within the task's tolerance (payoff 0.005) are right; beyond it, wrong.
    assert reward({**gold, "payoff_amount": gold["payoff_amount"] + 0.004}) == 1.0
    assert reward({**gold, "payoff_amount": gold["payoff_amount"] + 0.02}) == pytest.approx(5 / 6)
    # Not JSON, cut short, or not fitting the schema: the lowest reward, alone.
    assert reward("The payoff amount is $1,234.56.") == INVALID_REWARD
    assert reward(task.answer_json(gold)[:-12]) == INVALID_REWARD
    assert reward({**gold, "account_last4": "123456"}) == INVALID_REWARD  # the schema's pattern
    assert reward({**gold, "balance": 1.0}) == INVALID_REWARD  # additionalProperties: false
    # A failed check costs CHECK_PENALTY on top of the wrong field: a rate of 61 % is out of range [0, 30].
    out_of_range = answer_reward(task, json.dumps({**gold, "interest_rate": 61.25}), gold)
    assert out_of_range.valid and out_of_range.failed_checks == ["interest_rate: 61.25 is outside [0, 30]"]
    assert out_of_range.value == pytest.approx(5 / 6 - CHECK_PENALTY)
    # A date the comparator reads but the schema's format refuses: every field right, one failed check.
    written = {**gold, "next_due_date": date.fromisoformat(gold["next_due_date"]).strftime("%B %d, %Y")}
    assert reward(written) == pytest.approx(1 - CHECK_PENALTY)
    # Many failed checks never bring a valid answer down to an invalid one.
    absurd = {**gold, "payoff_amount": -5.0, "escrow_balance": 99_000_000.0, "interest_rate": 99.0}
    assert reward(absurd) == VALID_FLOOR > INVALID_REWARD
    assert 1.0 > 5 / 6 > 5 / 6 - CHECK_PENALTY > VALID_FLOOR > INVALID_REWARD  # the order the scale promises


def test_a_check_the_verified_answer_fails_too_is_not_held_against_the_right_answer() -> None:
    task = load_task(TASK)
    gold = {"payoff_amount": 100.0, "escrow_balance": 900.0, "next_due_date": None, "interest_rate": None,
            "account_last4": "0042", "servicer": "Newrez"}  # fmt: skip
    assert task.run_checks(gold)  # the data break the rule payoff >= escrow
    right = answer_reward(task, task.answer_json(gold), gold)
    assert right.value == 1.0 and right.failed_checks == []
    worse = answer_reward(task, task.answer_json({**gold, "interest_rate": 45.0}), gold)
    assert worse.value == pytest.approx(5 / 6 - CHECK_PENALTY) and len(worse.failed_checks) == 1


def test_task_reward_scores_a_batch_as_trls_grpo_trainer_passes_it(document: tuple[str, dict[str, Any]]) -> None:
    task = load_task(TASK)
    _, gold = document
    verified = task.answer_json(gold)
    completions = [
        [{"role": "assistant", "content": verified}],
        [{"role": "assistant", "content": json.dumps({**gold, "servicer": None})}],
        [{"role": "assistant", "content": "{"}],
    ]
    logged: dict[str, float] = {}
    score = TaskReward(task)
    values = score(
        prompts=[[{"role": "user", "content": "..."}]] * 3,
        completions=completions,
        verified=[verified] * 3,
        log_metric=logged.__setitem__,
        trainer_state=None,
    )
    assert values == pytest.approx([1.0, 5 / 6, -1.0])
    assert logged["task/invalid_share"] == pytest.approx(1 / 3)
    assert logged["task/field_agreement"] == pytest.approx((1 + 5 / 6 + 0) / 3)
    assert score.__name__ == "task_score"  # TRL logs it as rewards/task_score/mean


def test_a_free_text_task_has_no_field_score_to_reward(tmp_path: Path) -> None:
    from tuneloop.train import train

    text_task = load_task("message-summary")  # the packaged free-text task (output: text, a rubric)
    with pytest.raises(TuneloopError, match="no field score"):
        answer_reward(text_task, "A summary.", {})
    with pytest.raises(TuneloopError, match="free text") as error:
        train(text_task, tmp_path / "rows.jsonl", method="grpo", parent="message-summary@1")
    assert error.value.where == "--method grpo" and "dpo" in (error.value.hint or "")


def said(result: Any) -> str:
    """What a refused command told the user: its output, or the TuneloopError main() prints (exit 2)."""
    assert result.exit_code != 0 and (result.exit_code == 2 or isinstance(result.exception, TuneloopError))
    return result.output + str(result.exception)


def _answering_base(folder: Path) -> Path:
    """The tiny base, trained in full for a few seconds to answer a chat (no system message) in the task's
    JSON: every field null but a servicer drawn at random, so sampled answers differ in their reward."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    task = load_task(TASK)
    make_tiny_base(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    rng = random.Random(0)
    chats = [
        [row["messages"][1], {"role": "assistant", "content": task.answer_json({"servicer": rng.choice(SERVICERS)})}]
        for row in rows(32, seed=11)
    ]
    encoded = [tokenizer.apply_chat_template(chat, tokenize=False) for chat in chats]
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in encoded]
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-2)
    model.train()
    for step in range(80):
        batch = [ids[(step * 8 + i) % len(ids)] for i in range(8)]
        width = max(map(len, batch))
        inputs = torch.tensor([b + [tokenizer.pad_token_id] * (width - len(b)) for b in batch])
        labels = torch.tensor([b + [-100] * (width - len(b)) for b in batch])
        model(input_ids=inputs, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def test_grpo_continues_a_version_and_registers_it_with_its_parent_and_reward_curve(tmp_path: Path) -> None:
    from tuneloop.cli.main import app
    from tuneloop.registry.versions import list_versions
    from tuneloop.train import train

    base = _answering_base(tmp_path / "base")
    data = write_jsonl(tmp_path / "train.jsonl", rows(16, split="train") + rows(2, seed=7, split="test"))
    sft = {"max_steps": 2, "per_device_train_batch_size": 8, "learning_rate": 1e-4, "logging_steps": 1}
    sft |= {"eval_strategy": "no", "save_strategy": "no", "bf16": False}
    config = write_config(tmp_path / "sft.yaml", sft, field_error_rows=0, validation_fraction=0)
    # The parent, trained with no system prompt (prompt distillation): short prompts, and a path GRPO keeps.
    parent = train(TASK, data, str(base), config, system_prompt="").version
    assert parent.id == f"{TASK}@1" and parent.system_prompt == ""

    runner = CliRunner()
    command = ["train", "--method", "grpo", "--task", TASK, "--data", str(data), "--parent", parent.id]
    # Refused before any model is loaded, each naming what and where.
    bad_row = {**rows(1)[0], "messages": [*rows(1)[0]["messages"][:-1], {"role": "assistant", "content": "{oops"}]}
    bad = write_jsonl(tmp_path / "bad.jsonl", [*rows(3), bad_row])
    refused = said(runner.invoke(app, [*command[:-4], "--data", str(bad), "--parent", parent.id]))
    assert f"{bad}:4" in refused and "not a valid answer" in refused
    typo = tmp_path / "typo.yaml"
    typo.write_text("grpo:\n  max_steps: 2\n  num_generation: 4\n")
    refused = said(runner.invoke(app, [*command, "--config", str(typo)]))
    assert f"{typo}:3" in refused and "did you mean 'num_generations'" in refused
    refused = said(runner.invoke(app, command[:-2]))
    assert "no --parent names one" in refused
    for arguments, where in (({"resume": True}, "--resume"), ({"base": "smollm2-135m-instruct"}, "--base")):
        with pytest.raises(TuneloopError) as error:
            train(TASK, data, method="grpo", parent=parent.id, **arguments)
        assert error.value.where.startswith(where) and "leave out" in (error.value.hint or "")

    grpo = tmp_path / "grpo.yaml"
    grpo.write_text("grpo:\n  max_steps: 3\n  learning_rate: 1.0e-3\n")
    result = runner.invoke(app, [*command, "--config", str(grpo)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert f"{TASK}@2 registered" in result.output and "mean reward" in result.output

    version = list_versions(TASK)[-1]
    assert version.id == f"{TASK}@2"
    assert version.config["method"] == "grpo"
    assert version.config["parent"] == {"id": parent.id, "content_hash": parent.content_hash}
    assert version.config["generation"] == "transformers"  # vLLM is not installed here
    assert version.config["train"]["grpo"]["num_generations"] == 4 and version.config["train"]["lora"]["r"] == 4
    assert version.dataset_ref is not None and version.dataset_ref.startswith(f"{data.resolve()}#sha256:")
    assert version.config["prompts"]["prompts"] == 16 and version.config["prompts"]["left_out_test_rows"] == 2
    # Served as its parent: the distilled (empty) system prompt standing for the task's instructions.
    assert version.system_prompt == "" and version.distilled_from == parent.distilled_from
    metrics = version.metrics
    assert metrics["steps"] == 3 and -1.0 <= metrics["final_mean_reward"] <= 1.0
    assert metrics["first_mean_reward"] is not None and metrics["final_invalid_share"] is not None
    curve = version.artifact_path / "reward_curve.png"
    assert curve.read_bytes()[:4] == b"\x89PNG"
    shown = runner.invoke(app, ["models", "show", version.id], env={"COLUMNS": "250"})
    assert shown.exit_code == 0, shown.output
    for text in (f"grpo, from {parent.id}", "grpo config", '"num_generations": 4', str(curve)):
        assert text in shown.output, text
    history = json.loads((Path(version.config["run_dir"]) / "log_history.json").read_text())
    assert [h["step"] for h in history if "reward" in h] == [1, 2, 3]
    # The adapter moved: GRPO trained the parent's LoRA (same tensors, other values).
    from safetensors.torch import load_file

    before = load_file(parent.adapter_path / "adapter_model.safetensors")
    after = load_file(version.adapter_path / "adapter_model.safetensors")
    assert before.keys() == after.keys()
    assert any((before[name] - after[name]).abs().max() > 0 for name in before)

    # --time-budget holds: a budget already spent stops training at the first step, and the version says so.
    stopped = train(TASK, data, method="grpo", parent=parent.id, config=grpo, time_budget="1s")
    assert stopped.metrics["budget_stopped_at_step"] == 1 and stopped.metrics["steps"] == 1
