"""Text that clients (or models, or upstreams) chose reaches the operator's terminal as plain, visible text:
never rich markup (a stray `[/bold]` crashed `tuneloop logs list`), never a live control sequence."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from test_datasets import answer, log_call
from tuneloop.cli.main import app
from tuneloop.review import queue
from tuneloop.terminal import json_text, printable

HOSTILE = [
    "[/bold]",
    "[bold red]shouting",
    "[link=https://evil.example]click[/link]",
    "\x1b]0;owned\x07\x1b[2J\x1b[31mred",  # retitle the window, clear the screen, colour
    "\x9b31mcsi",  # the one-byte C1 CSI
    "invoice\u202efdp.exe",  # a right-to-left override
    "ends in a backslash \\",
    "ends in three \\\\\\",
    ":thumbs_up: [",
    "tab\there\rback\x08space\x7fdel",
]
# What must never reach the terminal raw: C0/C1 controls but newline, DEL, bidi controls.
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")

runner = CliRunner(env={"COLUMNS": "400"})  # wide enough that rich does not fold a cell


def assert_shown_plainly(output: str, texts: list[str]) -> None:
    assert not RAW_CONTROL.search(output), repr(RAW_CONTROL.search(output).group())
    for text in texts:
        assert printable(text) in output, (text, output)


def test_logs_list_and_show_print_client_text_plainly() -> None:
    for number, text in enumerate(HOSTILE):
        log_call(f"letter {number}", answer(), tags={"env": text}, model=text)
    listed = runner.invoke(app, ["logs", "list", "--limit", str(len(HOSTILE))])
    assert listed.exit_code == 0, listed.output
    assert_shown_plainly(listed.output, [*HOSTILE, *(f"env={text}" for text in HOSTILE)])

    shown = runner.invoke(app, ["logs", "show", "1"])
    assert shown.exit_code == 0, shown.output
    assert not RAW_CONTROL.search(shown.output)
    assert json.loads(shown.output)["model_requested"] == HOSTILE[0]  # still JSON, the same values

    exported = runner.invoke(app, ["logs", "export"])
    assert exported.exit_code == 0 and not RAW_CONTROL.search(exported.output)
    assert [json.loads(line)["model_requested"] for line in exported.output.splitlines()] == HOSTILE


@pytest.mark.parametrize("text", HOSTILE)
def test_review_list_and_show_print_client_text_plainly(text: str) -> None:
    item_id = queue.create_item(
        task="liability-extraction",
        request={"model": text, "messages": [{"role": "user", "content": f"Payoff {text}"}]},
        draft_text=f"not json {text}",
        draft_fields=None,
        failed_checks=[f"servicer: {text}"],
        model=text,
    )
    listed = runner.invoke(app, ["review", "list"])
    assert listed.exit_code == 0, listed.output
    assert_shown_plainly(listed.output, [text, f"servicer: {text}"])

    shown = runner.invoke(app, ["review", "show", str(item_id)])
    assert shown.exit_code == 0, shown.output
    assert_shown_plainly(shown.output, [f"model {text}", f"Payoff {text}", f"not json {text}", f"servicer: {text}"])

    as_json = runner.invoke(app, ["review", "show", str(item_id), "--json"])
    assert as_json.exit_code == 0 and not RAW_CONTROL.search(as_json.output)
    assert json.loads(as_json.output)["model"] == text


def test_json_text_escapes_what_json_dumps_leaves_raw() -> None:
    value = {"text": "\x1b\x9b\u202e\u2066é😀\n"}
    text = json_text(value)
    assert json.loads(text) == value and "é😀" in text
    assert not RAW_CONTROL.search(text)
