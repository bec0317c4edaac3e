"""The one reader and writer of dataset JSONL files (datasets, imports, gold files, predictions).

A row is one JSON object per line. Dataset rows carry OpenAI chat ``messages`` (a list of
``{"role", "content"}``); other files (predictions, gold answers) may be read with
``require_messages=False``. Problems are reported as :class:`TuneloopError` with
``where="file:line"`` and the offending field named, so a user can fix the file directly.
Writes are atomic: a temp file in the same folder, then ``os.replace``, so a failed or
interrupted write never leaves a half-written file behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tuneloop.errors import TuneloopError

CHAT_ROLES = ("system", "user", "assistant", "tool")


def read_rows(path: str | os.PathLike[str], *, require_messages: bool = True) -> list[dict[str, Any]]:
    """Read a JSONL file into a list of dicts; blank lines are skipped.

    With ``require_messages`` (the default) every row must hold a ``messages`` list of
    ``{"role": str, "content": str}`` objects with a known role.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TuneloopError(
            "file not found", where=str(path), hint="check the path, or create the file first"
        ) from None
    except UnicodeDecodeError as exc:
        raise TuneloopError(
            f"not UTF-8 text ({exc.reason})", where=str(path), hint="save the file as UTF-8 JSONL"
        ) from None
    rows: list[dict[str, Any]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        row = _parse_line(line, where)
        if require_messages:
            _check_messages(row, where)
        rows.append(row)
    return rows


def write_rows(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> int:
    """Write rows as JSONL atomically; returns the number of rows written.

    Creates missing parent folders. If serialising any row fails (or the iterable raises),
    the target file is left untouched and no temp file remains.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            for count, row in enumerate(rows, start=1):
                handle.write(_dump_row(row, count, path))
                handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        # Also on KeyboardInterrupt: never leave the temp file behind.
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return count


def _dump_row(row: Any, index: int, path: Path) -> str:
    if not isinstance(row, dict):
        raise TuneloopError(f"row {index} is a {type(row).__name__}, not a JSON object", where=str(path))
    try:
        # ensure_ascii=False keeps documents readable; insertion order keeps output deterministic.
        return json.dumps(row, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TuneloopError(f"row {index} cannot be written as JSON: {exc}", where=str(path)) from None


def _parse_line(line: str, where: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise TuneloopError(
            f"invalid JSON at column {exc.colno}: {exc.msg}",
            where=where,
            hint="each line must be one complete JSON object (JSON Lines)",
        ) from None
    if not isinstance(row, dict):
        raise TuneloopError(
            f"expected a JSON object, got {_json_type(row)}",
            where=where,
            hint='each line must look like {"messages": [...]}',
        )
    return row


def _check_messages(row: dict[str, Any], where: str) -> None:
    messages = row.get("messages")
    if messages is None:
        raise TuneloopError(
            "missing field `messages`",
            where=where,
            hint='add "messages": [{"role": "user", "content": "..."}, ...] (OpenAI chat format)',
        )
    if not isinstance(messages, list) or not messages:
        raise TuneloopError(f"field `messages` must be a non-empty list, got {_json_type(messages)}", where=where)
    for index, message in enumerate(messages):
        field = f"messages[{index}]"
        if not isinstance(message, dict):
            raise TuneloopError(f"field `{field}` must be an object, got {_json_type(message)}", where=where)
        role = message.get("role")
        if not isinstance(role, str):
            raise TuneloopError(f"field `{field}.role` is missing or not a string", where=where)
        if role not in CHAT_ROLES:
            raise TuneloopError(
                f"field `{field}.role` is {role!r}", where=where, hint=f"use one of {', '.join(CHAT_ROLES)}"
            )
        if not isinstance(message.get("content"), str):
            raise TuneloopError(f"field `{field}.content` is missing or not a string", where=where)


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")
