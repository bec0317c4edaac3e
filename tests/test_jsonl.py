"""The project's one JSONL reader/writer: validation with file:line and field, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneloop.data.jsonl import read_rows, write_rows
from tuneloop.errors import TuneloopError

CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "{}"}]}


def _write_lines(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_round_trip_keeps_rows_and_order(tmp_path):
    rows = [{"id": f"r{i}", **CHAT, "metadata": {"text": "naïve – ünïcode", "i": i}} for i in range(3)]
    path = tmp_path / "sub" / "rows.jsonl"
    assert write_rows(path, rows) == 3
    assert read_rows(path) == rows
    assert "naïve" in path.read_text(encoding="utf-8")  # readable, not \\u-escaped
    assert [p.name for p in path.parent.iterdir()] == ["rows.jsonl"]


def test_blank_lines_are_skipped_but_counted_in_line_numbers(tmp_path):
    path = _write_lines(tmp_path / "d.jsonl", json.dumps(CHAT), "", "   ", '{"messages": "oops"}')
    with pytest.raises(TuneloopError) as info:
        read_rows(path)
    assert info.value.where == f"{path}:4"
    assert "`messages`" in info.value.message


@pytest.mark.parametrize(
    ("line", "field"),
    [
        (
            json.dumps({"messages": [*CHAT["messages"], {"role": "bot", "content": "c"}]}),
            "messages[2].role",
        ),
        ('{"messages": [{"role": "user", "content": 3}]}', "messages[0].content"),
        ('{"messages": [{"content": "a"}]}', "messages[0].role"),
        ('{"messages": ["hello"]}', "messages[0]"),
        ('{"messages": []}', "messages"),
        ('{"id": 1}', "messages"),
    ],
)
def test_bad_messages_name_the_file_line_and_field(tmp_path, line, field):
    path = _write_lines(tmp_path / "d.jsonl", json.dumps(CHAT), line)
    with pytest.raises(TuneloopError) as info:
        read_rows(path)
    assert info.value.where == f"{path}:2"
    assert f"`{field}`" in info.value.message
    assert f"{path}:2" in str(info.value)


@pytest.mark.parametrize(("line", "expected"), [('{"messages": [', "invalid JSON"), ("[1, 2]", "JSON object")])
def test_lines_that_are_not_json_objects_are_reported(tmp_path, line, expected):
    path = _write_lines(tmp_path / "d.jsonl", line)
    with pytest.raises(TuneloopError, match=expected) as info:
        read_rows(path)
    assert info.value.where == f"{path}:1"


def test_rows_without_messages_can_be_read_when_not_required(tmp_path):
    path = _write_lines(tmp_path / "pred.jsonl", '{"id": "a", "output": {"x": 1}}')
    assert read_rows(path, require_messages=False) == [{"id": "a", "output": {"x": 1}}]


def test_missing_file_is_a_tuneloop_error(tmp_path):
    with pytest.raises(TuneloopError, match="not found"):
        read_rows(tmp_path / "absent.jsonl")


def test_failed_write_leaves_no_file_and_no_temp_file(tmp_path):
    def rows_then_failure():
        yield CHAT
        raise RuntimeError("upstream broke")

    path = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError):
        write_rows(path, rows_then_failure())
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_previous_file_intact(tmp_path):
    path = tmp_path / "out.jsonl"
    write_rows(path, [CHAT])
    before = path.read_bytes()
    with pytest.raises(TuneloopError, match="row 2"):
        write_rows(path, [CHAT, {"bad": object()}])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]
