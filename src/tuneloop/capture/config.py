"""The gateway's configuration: routes over the upstreams, auth, redaction and how calls are logged.

A YAML file (``tuneloop gateway --config gateway.yaml``); every section is optional::

    upstreams:                      # added to (and overriding) those in $TUNELOOP_HOME/config.yaml
      local: {base_url: http://127.0.0.1:8000/v1, self_hosted: true}
      served:                       # a replica pool: calls balanced over several servers
        base_urls: [http://10.0.0.1:8000/v1, http://10.0.0.2:8000/v1]
        health_check_s: 5           # each replica's GET /models this often (2 s timeout)
        eject_after_failures: 3     # consecutive failed tries or health checks take a replica out
        eject_for_s: 10             # out at least this long, then back at the first check that answers
        affinity_margin: 4          # calls more in flight a replica with the model loaded may have
    routes:                         # first match wins; `upstream/model` names need no route
      - match: "openai/*"           # the part after "openai/" is the model the upstream receives
        upstream: openai
        fallbacks: ["local/liability-extraction@prod"]
        retries: 2                  # default: the upstream's max_retries
        backoff_ms: 100             # doubled per retry, with jitter, capped at 2 s
      - match: extractor            # an exact name, sent upstream as `model`
        upstream: local
        model: liability-extraction@prod
    auth: auto                      # auto | required | disabled (see docs/capture.md)
    redact:
      emails: true
      card_numbers: true
      patterns: [{name: ssn, regex: '\\b\\d{3}-\\d{2}-\\d{4}\\b'}]
    logging:
      queue_size: 10000             # records held in memory at most
      batch_size: 256
      flush_ms: 50
      policy: block                 # block | drop, when the queue is full (the store is slow)
      durable: false                # journal every call to disk before answering; replayed at start
      fsync: batch                  # batch | always
    rollouts:                       # canaries and shadows of aliases (tuneloop models canary/shadow)
      refresh_s: 1                  # how often the active ones are re-read from the store
      shadow_max_in_flight: 32      # mirrored calls at once; past it a call is not mirrored (counted)
    watch:                          # figures, the canary guard and drift, computed in the gateway
      enabled: true                 # false when a `tuneloop monitor watch` process does it instead
      every_s: 10
      shadow_window_s: 3600
      drift: [liability-extraction@prod]   # models whose drift is watched (none by default)
      drift_every_s: 300
      drift_baseline: 7d
      drift_window: 1d
    limits:                         # what one client may send (413 beyond)
      max_request_bytes: 8388608    # a chat completion's body (8 MiB)
      max_upload_bytes: 33554432    # a POST /v1/tuneloop/logs body (32 MiB)
      max_upload_records: 1000      # records in one upload
      max_model_labels: 500         # distinct `model` label values in the metrics

Upstream definitions are the one kind from :mod:`tuneloop.upstreams` (base URL or replicas, the environment
variable that holds the key, timeout, retries, the pool's health settings); keys are never written in a
config file. How a pool picks a replica, ejects and re-admits one: :mod:`tuneloop.capture.replicas`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tuneloop.capture.redaction import PatternTooCostly, check_pattern
from tuneloop.config import get_settings, read_config_file
from tuneloop.durations import parse_duration
from tuneloop.errors import TuneloopError
from tuneloop.store.keys import AuthMode
from tuneloop.upstreams import Upstream, load_upstreams

DEFAULT_PORT = 4000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Route(_Strict):
    match: str = Field(min_length=1)
    upstream: str
    model: str | None = None
    fallbacks: list[str] = Field(default_factory=list)
    retries: int | None = Field(default=None, ge=0, le=10)
    backoff_ms: float = Field(default=100.0, ge=0, le=60_000)
    timeout_s: float | None = Field(default=None, gt=0)

    @field_validator("match")
    @classmethod
    def _one_wildcard_at_the_end(cls, match: str) -> str:
        if "*" in match[:-1]:
            raise ValueError(f"{match!r}: only a trailing * is supported (e.g. 'openai/*')")
        return match

    def matches(self, model: str) -> bool:
        if self.match.endswith("*"):
            return model.startswith(self.match[:-1])
        return model == self.match

    def upstream_model(self, model: str) -> str:
        """What the upstream receives: ``model`` if set, else the name after the route's prefix."""
        if self.model is not None:
            return self.model
        if self.match.endswith("*"):
            return model[len(self.match) - 1 :]
        return model


class RedactPattern(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    regex: str
    replace: str | None = None

    @field_validator("regex")
    @classmethod
    def _compiles(cls, regex: str) -> str:
        try:
            re.compile(regex)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return regex

    @model_validator(mode="after")
    def _bounded_time(self) -> RedactPattern:
        # Client text goes through this pattern on the log writer's thread: refuse one that could backtrack
        # without bound (tuneloop.capture.redaction explains the rule).
        try:
            check_pattern(self.regex)
        except PatternTooCostly as exc:
            raise ValueError(f"pattern {self.name!r} ({self.regex}) is refused: {exc}") from None
        return self


class RedactConfig(_Strict):
    emails: bool = False
    card_numbers: bool = False
    patterns: list[RedactPattern] = Field(default_factory=list)

    @property
    def enabled(self) -> bool:
        return self.emails or self.card_numbers or bool(self.patterns)


class LoggingConfig(_Strict):
    queue_size: int = Field(default=10_000, ge=1, le=10_000_000)
    batch_size: int = Field(default=256, ge=1, le=100_000)
    flush_ms: float = Field(default=50.0, gt=0, le=60_000)
    policy: Literal["block", "drop"] = "block"
    durable: bool = False
    journal_dir: Path | None = None
    fsync: Literal["batch", "always"] = "batch"

    @model_validator(mode="after")
    def _durable_blocks(self) -> LoggingConfig:
        if self.durable and self.policy == "drop":
            raise ValueError("durable: true loses nothing, so it cannot drop: use policy: block")
        return self

    def journal_path(self) -> Path:
        return self.journal_dir or get_settings().home / "capture" / "journal"


class LimitsConfig(_Strict):
    """What one client may send: bodies past these are refused with 413 before more of them is read."""

    max_request_bytes: int = Field(default=8 << 20, ge=1024, le=1 << 30)
    max_upload_bytes: int = Field(default=32 << 20, ge=1024, le=1 << 30)
    max_upload_records: int = Field(default=1000, ge=1, le=1_000_000)
    # Metrics are labelled by the answering model only when the gateway knows it (a route names it, or its
    # upstream lists it); the rest, and any beyond this many, are counted under `other`.
    max_model_labels: int = Field(default=500, ge=1, le=100_000)


class RolloutsConfig(_Strict):
    refresh_s: float = Field(default=1.0, gt=0, le=3600)
    shadow_max_in_flight: int = Field(default=32, ge=1, le=100_000)


class WatchConfig(_Strict):
    enabled: bool = True
    every_s: float = Field(default=10.0, ge=0.1, le=86_400)
    shadow_window_s: float = Field(default=3600.0, gt=0)
    drift: list[str] = Field(default_factory=list)
    drift_every_s: float = Field(default=300.0, ge=1)
    drift_baseline: str = "7d"
    drift_window: str = "1d"

    @field_validator("drift_baseline", "drift_window")
    @classmethod
    def _a_duration(cls, text: str) -> str:
        try:
            parse_duration(text, "watch")
        except TuneloopError as exc:
            raise ValueError(f"{exc.message}: {exc.hint}") from None
        return text


class GatewayConfig(_Strict):
    """Everything ``tuneloop gateway`` needs besides host and port."""

    upstreams: dict[str, Upstream]
    routes: list[Route] = Field(default_factory=list)
    auth: AuthMode = "auto"
    redact: RedactConfig = Field(default_factory=RedactConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    rollouts: RolloutsConfig = Field(default_factory=RolloutsConfig)
    watch: WatchConfig = Field(default_factory=WatchConfig)
    # Seconds between reloads of the API keys from the store (new keys also load on first sight).
    keys_refresh_s: float = Field(default=5.0, gt=0)
    # Serve the web UI (tuneloop.ui, docs/ui.md) under /ui of the gateway.
    ui: bool = False
    source: str = "<defaults>"

    @model_validator(mode="after")
    def _routes_name_known_upstreams(self) -> GatewayConfig:
        for index, route in enumerate(self.routes):
            if route.upstream not in self.upstreams:
                known = ", ".join(sorted(self.upstreams))
                raise ValueError(f"routes[{index}].upstream: no upstream named {route.upstream!r} (known: {known})")
        return self


_SECTION_KEYS = {
    "upstreams",
    "routes",
    "auth",
    "redact",
    "logging",
    "limits",
    "rollouts",
    "watch",
    "keys_refresh_s",
    "ui",
}


def load_gateway_config(
    path: Path | None = None, *, sections: Mapping[str, Any] | None = None, logging: Mapping[str, Any] | None = None
) -> GatewayConfig:
    """The gateway config from ``path`` (or defaults), with upstreams from config.yaml merged under it.

    ``sections`` (from code: the demo, tests) replace the file's top-level sections; ``logging`` replaces
    single keys of the logging section (CLI flags such as ``--durable``). Problems are reported as
    ``file: section.key: message``.
    """
    if path is not None and not path.exists():
        raise TuneloopError("file not found", where=str(path), hint="check the path given to --config")
    data: dict[str, Any] = read_config_file(path) if path is not None else {}
    data.update(sections or {})
    source = str(path) if path is not None else "<defaults>"
    unknown = sorted(set(data) - _SECTION_KEYS)
    if unknown:
        raise TuneloopError(
            f"unknown section {unknown[0]!r}", where=source, hint="sections: " + ", ".join(sorted(_SECTION_KEYS))
        )
    upstreams = _merged_upstreams(data.get("upstreams"), source)
    logging_section = {**(data.get("logging") or {}), **(logging or {})}
    values = {**data, "upstreams": upstreams, "logging": logging_section, "source": source}
    try:
        return GatewayConfig(**values)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = _describe_loc(error["loc"])
        message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"].removeprefix("Value error, ")
        raise TuneloopError(message, where=f"{source}: {key}" if key else source) from None


def _merged_upstreams(section: Any, source: str) -> dict[str, Upstream]:
    # One definition of an upstream: config.yaml's (and the built-in openai), then this file's on top.
    upstreams = load_upstreams()
    if section is None:
        return upstreams
    try:
        from_file = load_upstreams({"upstreams": section})
    except TuneloopError as exc:
        # load_upstreams names config.yaml as the place; here the entry came from the gateway file.
        if exc.where:
            exc.where = exc.where.replace(str(get_settings().config_file), source)
        raise
    return {**upstreams, **{name: up for name, up in from_file.items() if name in section}}


def _describe_loc(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        parts.append(f"[{item}]" if isinstance(item, int) else ("." if parts else "") + str(item))
    return "".join(parts)
