"""Prompt distillation: a version trained with a short system prompt (or none) in place of its task's
instructions records it, and is served and evaluated with it, so requests that send the full instructions
stop paying their prefill.

Versions are trained for real on the tiny in-process base (``tiny_base``), served by the real server on
loopback (transformers backend) and asked through the official ``openai`` client.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from rich.console import Console
from typer.testing import CliRunner

from test_train_support import TASK, rows, write_config, write_jsonl
from tuneloop.errors import TuneloopError
from tuneloop.serve.backends import Adapter, TrainedPrompt, served_messages
from tuneloop.task import Task, load_task
from tuneloop.train.data import SourceRow, encode_conversation, with_system_prompt

SHORT = "Extract the liability fields as JSON."
SFT = {
    "max_steps": 2,
    "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 1,
    "learning_rate": 5e-3,
    "logging_steps": 1,
    "save_steps": 2,
    "eval_strategy": "no",
    "bf16": False,
}


@pytest.fixture(scope="module")
def task() -> Task:
    return load_task(TASK)


def adapter(prompt: str, replaces: str) -> Adapter:
    return Adapter(id=f"{TASK}@9", peft_dir=Path("unused"), prompt=TrainedPrompt(system=prompt, replaces=replaces))


# --- the rewrite, on its own -----------------------------------------------------------------------


def test_only_a_chat_opening_with_exactly_the_instructions_gets_the_trained_prompt(task: Task) -> None:
    instructions = task.system_prompt()
    full = task.build_messages({"text": "Newrez: payoff $1,200.00 for loan ending 0042."})
    user = full[1]
    short, none = adapter(SHORT, instructions), adapter("", instructions)

    assert served_messages(full, short) == [{"role": "system", "content": SHORT}, user]
    assert served_messages(full, none) == [user]  # an empty trained prompt: no system message at all
    # Whitespace at the ends is not a different prompt; a developer message is a system message.
    padded = [{"role": "developer", "content": f"\n  {instructions}\n"}, user]
    assert served_messages(padded, short) == [{"role": "developer", "content": SHORT}, user]
    assert full[0]["content"] == instructions  # the caller's chat is not changed in place

    # Anything else passes as it was sent: other instructions, a changed word, no system message, the
    # instructions further down, a version trained with the task's own prompt, the bare base.
    other = [{"role": "system", "content": "Answer in French."}, user]
    edited = [{"role": "system", "content": instructions.replace("JSON", "YAML")}, user]
    later = [user, {"role": "assistant", "content": "{}"}, {"role": "system", "content": instructions}, user]
    for chat in (other, edited, [user], later):
        assert served_messages(chat, short) is chat
    assert served_messages(full, Adapter(id=f"{TASK}@1", peft_dir=Path("unused"))) is full
    assert served_messages(full, None) is full


def test_distilled_rows_keep_their_labels_and_pack_exactly(tiny_base: Path, task: Task) -> None:
    """With a short system prompt or none, labels still cover exactly each answer, and a packed batch
    (shared prefix or none) gives each example the logits it has alone."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneloop.train.attention import register
    from tuneloop.train.collate import PaddingFreeCollator
    from tuneloop.train.data import IGNORE_INDEX

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    model = AutoModelForCausalLM.from_pretrained(tiny_base, attn_implementation=register()).eval()
    source = [SourceRow(row["messages"], f"row {i}") for i, row in enumerate(rows(3, seed=5))]
    foreign = SourceRow([{"role": "system", "content": "Other."}, *source[0].messages[1:]], "foreign")
    for prompt, shares_prefix in (("", False), (SHORT, True)):
        distilled, changed = with_system_prompt([*source, foreign], task.system_prompt(), prompt)
        assert changed == 3 and distilled[-1] is foreign  # a row with other instructions is kept as it is
        roles = [m["role"] for m in distilled[0].messages]
        assert roles == (["user", "assistant"] if not prompt else ["system", "user", "assistant"])
        items = [encode_conversation(tokenizer, row.messages) for row in distilled[:3]]
        for item, row in zip(items, distilled, strict=False):
            labelled = [token for token in item.labels if token != IGNORE_INDEX]
            assert tokenizer.decode(labelled) == row.messages[-1]["content"] + "<|im_end|>"
        examples = [{"input_ids": item.input_ids, "labels": item.labels} for item in items]
        batch = PaddingFreeCollator()(examples)
        prefix = batch["shared_prefix_length"]
        assert (prefix > 0) == shares_prefix
        segments = batch["cu_seq_lens_q"].tolist()[1 if prefix else 0 :]
        with torch.no_grad():
            packed = model(
                input_ids=batch["input_ids"],
                position_ids=batch["position_ids"],
                cu_seq_lens_q=batch["cu_seq_lens_q"],
                shared_prefix_length=prefix,
                use_cache=False,
            ).logits[0]
            for index, example in enumerate(examples):
                alone = model(input_ids=torch.tensor([example["input_ids"]])).logits[0]
                start, end = segments[index], segments[index + 1]
                torch.testing.assert_close(packed[start:end], alone[prefix:], atol=1e-5, rtol=1e-5)


def test_a_trained_prompt_needs_rows_that_hold_the_instructions(tiny_base: Path, tmp_path: Path) -> None:
    from tuneloop.train import train

    foreign = [{**row, "messages": [{"role": "system", "content": "Other."}, *row["messages"][1:]]} for row in rows(8)]
    data = write_jsonl(tmp_path / "foreign.jsonl", foreign)
    with pytest.raises(TuneloopError, match="no row opens with them") as caught:
        train(TASK, data, str(tiny_base), write_config(tmp_path / "t.yaml", SFT), system_prompt="")
    assert caught.value.where == f"{data}:1" and "--system-prompt" in (caught.value.hint or "")


# --- trained, registered, served, evaluated --------------------------------------------------------


@pytest.fixture(scope="module")
def module_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("distillation-home")


@pytest.fixture(autouse=True)
def _use_module_home(tuneloop_home: Path, module_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The versions and the server outlive one test: the module's tests share one TUNELOOP_HOME.
    monkeypatch.setenv("TUNELOOP_HOME", str(module_home))


@pytest.fixture(scope="module")
def versions(tiny_base: Path, module_home: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same data trained three times: with the task's instructions (``tuneloop train`` as always), with
    no system prompt (``--system-prompt ""`` on the command line) and with a short one (the library call)."""
    from tuneloop.cli.main import app
    from tuneloop.registry.versions import resolve_version
    from tuneloop.train import train

    folder = tmp_path_factory.mktemp("distillation-data")
    data = write_jsonl(folder / "train.jsonl", rows(16, split="train"))
    config = write_config(folder / "train.yaml", SFT)
    previous = os.environ.get("TUNELOOP_HOME")
    os.environ["TUNELOOP_HOME"] = str(module_home)
    try:
        full = train(TASK, data, str(tiny_base), config).version
        args = ["train", "--task", TASK, "--data", str(data), "--base", str(tiny_base), "--config", str(config)]
        result = CliRunner().invoke(app, [*args, "--system-prompt", ""])
        assert result.exit_code == 0, result.output
        assert "prompt distillation: trained with no system prompt" in result.output
        none = resolve_version(f"{TASK}@2")
        short = train(TASK, data, str(tiny_base), config, system_prompt=f"  {SHORT}\n").version
    finally:
        if previous is not None:
            os.environ["TUNELOOP_HOME"] = previous
    return {"full": full, "none": none, "short": short, "data": data}


def test_the_version_records_its_trained_prompt_and_what_it_stands_for(
    versions: dict[str, Any], task: Task, tmp_path: Path
) -> None:
    from tuneloop.cli.main import app
    from tuneloop.registry.versions import build_identity, content_hash, read_chat_template, resolve_version

    instructions = task.system_prompt()
    full, none, short = versions["full"], versions["none"], versions["short"]
    assert (full.system_prompt, full.distilled_from) == (instructions, None)
    assert (none.system_prompt, none.distilled_from) == ("", instructions)
    assert (short.system_prompt, short.distilled_from) == (SHORT, instructions)  # stripped
    assert len({full.content_hash, none.content_hash, short.content_hash}) == 3
    for info in (none, short):
        metadata = json.loads((info.artifact_path / "tuneloop.json").read_text())
        assert metadata["prompt"] == {"system": info.system_prompt, "input": "{text}", "distilled_from": instructions}
        assert resolve_version(info.id).distilled_from == instructions  # verified against its files
    assert "distilled_from" not in json.loads((full.artifact_path / "tuneloop.json").read_text())["prompt"]
    # A run without --system-prompt hashes exactly as before distillation existed.
    identity = {
        "scheme": "tuneloop-version-v1",
        "adapter": build_identity(
            full.adapter_path,
            base_id=full.base_id,
            base_weights_hash=full.base_weights_hash,
            chat_template=None,
            system_prompt="",
            input_template="",
            decoding={},
        )["adapter"],
        "base": {"id": full.base_id, "weights_sha256": full.base_weights_hash},
        "chat_template": read_chat_template(full.adapter_path),
        "prompt": {"system": instructions, "input": task.input},
        "decoding": dict(sorted(full.decoding.items())),
    }
    assert content_hash(identity) == full.content_hash

    shown = CliRunner().invoke(app, ["models", "show", short.id], env={"COLUMNS": "300"})
    assert shown.exit_code == 0, shown.output
    assert "prompt distillation" in shown.output and repr(SHORT) in shown.output
    assert "distilled from" in shown.output and instructions[:40] in shown.output
    plain = CliRunner().invoke(app, ["models", "show", full.id], env={"COLUMNS": "300"})
    assert "(the task's instructions)" in plain.output and "distilled from" not in plain.output


@pytest.fixture(scope="module")
def server(versions: dict[str, Any], tiny_base: Path, module_home: Path) -> Iterator[Any]:
    from tuneloop.serve.app import start_background_server
    from tuneloop.serve.engine import build_engine

    previous = os.environ.get("TUNELOOP_HOME")
    os.environ["TUNELOOP_HOME"] = str(module_home)
    engine = build_engine(backend="transformers", base=str(tiny_base), max_batch_size=1, alias_refresh_s=0.0)
    running = start_background_server(engine)
    yield running
    running.stop()
    if previous is not None:
        os.environ["TUNELOOP_HOME"] = previous


def prompt_tokens(tiny_base: Path, messages: list[dict[str, str]]) -> int:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_served_with_the_trained_prompt_through_the_openai_client(
    versions: dict[str, Any], server: Any, tiny_base: Path, task: Task
) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)
    messages = task.build_messages({"text": "Mr. Cooper: payoff $52,310.00 for loan ending 7781."})
    user = messages[1:]

    def ask(model: str, chat: list[dict[str, str]]) -> Any:
        return client.chat.completions.create(model=model, messages=chat, max_tokens=2)  # type: ignore[arg-type]

    answers = {name: ask(versions[name].id, messages) for name in ("full", "none", "short")}
    used = {name: answer.usage.prompt_tokens for name, answer in answers.items()}
    assert used["full"] == prompt_tokens(tiny_base, messages)
    assert used["none"] == prompt_tokens(tiny_base, user)
    assert used["short"] == prompt_tokens(tiny_base, [{"role": "system", "content": SHORT}, *user])
    assert used["none"] < used["short"] < used["full"]
    extension = {name: (answer.model_extra or {})["tuneloop"] for name, answer in answers.items()}
    assert "prompt" not in extension["full"]
    assert extension["none"]["prompt"] == extension["short"]["prompt"] == "trained"

    # A client that sends other instructions gets what it sent, on a distilled version too.
    other = [{"role": "system", "content": "Answer with JSON."}, *user]
    answer = ask(versions["none"].id, other)
    assert answer.usage.prompt_tokens == prompt_tokens(tiny_base, other)
    assert "prompt" not in (answer.model_extra or {})["tuneloop"]

    # Streamed: the same prompt, counted in the usage chunk.
    stream = client.chat.completions.create(
        model=versions["short"].id,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = [chunk.usage for chunk in stream if chunk.usage is not None]
    assert usage[-1].prompt_tokens == used["short"]


def test_evals_of_a_distilled_version_use_its_trained_prompt(
    versions: dict[str, Any], tiny_base: Path, task: Task, tmp_path: Path
) -> None:
    from tuneloop.data.jsonl import write_rows
    from tuneloop.evals.runner import EvalOptions, run_eval
    from tuneloop.evals.store import run_results

    gold = rows(2, seed=11)
    data = tmp_path / "gold.jsonl"
    write_rows(data, gold)
    models = [versions["full"].id, versions["none"].id]
    report = run_eval(task, str(data), models, EvalOptions(max_tokens=2), console=Console(file=io.StringIO()))
    for row, (full, none) in zip(gold, _pairs(run_results(report.run_id), models), strict=True):
        chat = row["messages"][:-1]
        assert full.prompt_tokens == prompt_tokens(tiny_base, chat)
        assert none.prompt_tokens == prompt_tokens(tiny_base, chat[1:])


def _pairs(results: list[Any], models: list[str]) -> list[tuple[Any, Any]]:
    by_model = {model: {r.example_id: r for r in results if r.model == model} for model in models}
    first, second = by_model[models[0]], by_model[models[1]]
    return [(first[key], second[key]) for key in sorted(first)]
