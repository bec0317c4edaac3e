"""The model-id grammar: the one place that says what a model name means.

==============================================  =================================================
``smollm2-135m-instruct``, ``hf:org/name``, path  a base model (``BaseRef``)
``liability-extraction@3``                      version 3 of a task's fine-tune: immutable
``liability-extraction@sha256:0123456789ab``    a version named by content hash (12+ hex digits)
``liability-extraction@prod``                   an alias; resolves to a version, never stored as one
``openai/gpt-4o-2024-08-06``                    a model behind a configured upstream
``http://127.0.0.1:8000/v1#model``              a model behind an OpenAI-compatible URL
==============================================  =================================================

An upstream prefix wins over ``@``: ``local/liability-extraction@prod`` is the model
``liability-extraction@prod`` behind the upstream ``local``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tuneloop.errors import TuneloopError

TASK_PART = r"[a-z0-9][a-z0-9._-]{0,63}"
ALIAS_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
HASH_PATTERN = re.compile(r"^sha256:[0-9a-f]{12,64}$")
_UPSTREAM = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)/(.+)$")


@dataclass(frozen=True)
class BaseRef:
    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class VersionRef:
    """``task@N``, ``task@sha256:…`` or ``task@alias``; exactly one of the three is set."""

    task: str
    number: int | None = None
    content_hash: str | None = None  # with the "sha256:" prefix
    alias: str | None = None

    @property
    def is_immutable(self) -> bool:
        return self.alias is None

    def __str__(self) -> str:
        return f"{self.task}@{self.number if self.number is not None else self.content_hash or self.alias}"


@dataclass(frozen=True)
class EndpointRef:
    """A model behind an upstream: a configured one by name, or an OpenAI-compatible base URL."""

    model: str
    upstream: str | None = None
    base_url: str | None = None

    def __str__(self) -> str:
        return f"{self.base_url}#{self.model}" if self.base_url else f"{self.upstream}/{self.model}"


ModelRef = BaseRef | VersionRef | EndpointRef


def parse_model_id(text: str) -> ModelRef:
    """Parse a model name; a malformed one raises TuneloopError naming the model id."""
    name = text.strip()
    if not name:
        raise TuneloopError("empty model name", hint="name a base, a task version (task@3) or upstream/model")
    if "://" in name:
        base_url, _, model = name.partition("#")
        if not model:
            raise TuneloopError(
                "an endpoint URL must name its model after '#'",
                where=f"model {name}",
                hint="write it as http://host:port/v1#model-name",
            )
        return EndpointRef(model=model, base_url=base_url.rstrip("/"))
    if name.startswith("hf:") or name.startswith(("/", "./", "../", "~")) or _is_existing_path(name):
        return BaseRef(name)
    upstream = _UPSTREAM.match(name)
    if upstream and "@" not in upstream.group(1):
        return EndpointRef(model=upstream.group(2), upstream=upstream.group(1))
    if "@" in name:
        return _parse_version(name)
    return BaseRef(name)


def _parse_version(name: str) -> VersionRef:
    task, _, ref = name.partition("@")
    if not re.fullmatch(TASK_PART, task):
        raise TuneloopError(
            f"{task!r} is not a task name (lowercase letters, digits, '.', '_', '-')", where=f"model {name}"
        )
    if ref.isdigit():
        number = int(ref)
        if number < 1:
            raise TuneloopError("versions count from 1", where=f"model {name}")
        return VersionRef(task, number=number)
    if ref.startswith("sha256:"):
        if not HASH_PATTERN.match(ref):
            raise TuneloopError(
                "a content hash needs 12 to 64 lowercase hex digits after sha256:", where=f"model {name}"
            )
        return VersionRef(task, content_hash=ref)
    if ALIAS_PATTERN.match(ref):
        return VersionRef(task, alias=ref)
    raise TuneloopError(
        f"{ref!r} is neither a version number, a sha256: hash nor an alias",
        where=f"model {name}",
        hint="write task@3, task@sha256:<hex> or task@prod",
    )


def _is_existing_path(name: str) -> bool:
    """Whether ``name`` is a file or folder here; a name no filesystem accepts (too long, a NUL) is not."""
    try:
        return Path(name).exists()
    except (OSError, ValueError):
        return False
