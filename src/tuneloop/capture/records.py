"""One captured LLM call: built cheaply on the request path, turned into a ``requests`` row off it.

The gateway and the SDK hand over a :class:`CallRecord` with the bodies as they were (decoded request,
raw response bytes). Parsing the response, reassembling a stream, counting tokens, pricing and
redaction all happen later, in the log writer's thread (:func:`record_to_row`), so none of it adds
to a client's latency.
"""

from __future__ import annotations

import base64
import logging
import secrets
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa

from tuneloop.capture.redaction import Redactor
from tuneloop.cost import PriceTable
from tuneloop.protocol import is_error_body, reassemble_sse, usage_counts
from tuneloop.store.models import RequestLog, utcnow

log = logging.getLogger(__name__)

MAX_RAW_BODY_CHARS = 100_000  # a non-JSON body (an HTML error page, say) is kept up to this size
TAGS_HEADER = "x-tuneloop-tags"


def new_capture_id() -> str:
    return secrets.token_hex(16)  # 128 random bits, as uuid4().hex, without building a UUID object


@dataclass
class CallRecord:
    """Everything about one call, as known when it ends."""

    model_requested: str
    request: dict[str, Any]
    status: str  # "ok" | "error"
    http_status: int | None = None
    capture_id: str = field(default_factory=new_capture_id)
    created_at: datetime = field(default_factory=utcnow)
    upstream: str | None = None
    upstream_model: str | None = None  # the name the upstream received
    error: str | None = None
    # The response: raw bytes as received (JSON, or an SSE stream when ``stream``), or already decoded.
    response_body: bytes | None = None
    response: dict[str, Any] | None = None
    stream: bool = False
    latency_ms: float | None = None
    ttft_ms: float | None = None
    overhead_ms: float | None = None
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    api_key_id: int | None = None
    attempts: list[dict[str, Any]] | None = None
    # A rollout this call took part in (tuneloop.registry.rollouts): its id and arm; a shadow call also
    # names the production call it mirrors (its capture_id) and holds the field-by-field comparison.
    rollout_id: int | None = None
    rollout_arm: str | None = None
    shadow_of: str | None = None
    comparison: dict[str, Any] | None = None
    # The task's checks on this answer, when known without the response (a shadow call is checked by the
    # gateway, never by the upstream's policy); else read from the response's ``tuneloop.checks``.
    checks_passed: bool | None = None
    # Set by the journal in durable mode: which segment holds this record.
    journal_segment: int | None = field(default=None, repr=False, compare=False)
    # Set by :func:`redacted_record` (durable mode redacts before journaling). Never read from an upload:
    # a client cannot claim its record is redacted already.
    redacted: bool = field(default=False, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (journal lines, uploads to a gateway); :meth:`from_json` reverses it."""
        data = asdict(self)
        data.pop("journal_segment")
        data.pop("redacted")
        data["created_at"] = self.created_at.isoformat()
        body = data.pop("response_body")
        if body is not None:
            try:
                data["response_text"] = body.decode("utf-8")
            except UnicodeDecodeError:
                data["response_b64"] = base64.b64encode(body).decode("ascii")
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CallRecord:
        values = dict(data)
        text, encoded = values.pop("response_text", None), values.pop("response_b64", None)
        values["response_body"] = (
            text.encode("utf-8") if text is not None else base64.b64decode(encoded) if encoded is not None else None
        )
        values["created_at"] = datetime.fromisoformat(values["created_at"])
        known = set(cls.__dataclass_fields__) - {"journal_segment", "redacted"}
        return cls(**{key: value for key, value in values.items() if key in known})


def parse_tags(header: str | None, metadata: dict[str, Any] | None) -> tuple[list[str], dict[str, str]]:
    """Tags and key/values from OpenAI's ``metadata`` and the ``x-tuneloop-tags`` header.

    The header is a comma-separated list of ``key=value`` pairs and bare labels
    (``task=liability-extraction, env=prod, nightly``). Every pair lands in the metadata (the header
    wins over the body) and in the tag list as ``key=value``, bare labels only in the tag list.
    """
    pairs: dict[str, str] = {str(k): str(v) for k, v in (metadata or {}).items()}
    labels: list[str] = []
    for part in (header or "").split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        if sep and key.strip():
            pairs[key.strip()] = value.strip()
        else:
            labels.append(part)
    tags = [f"{key}={value}" for key, value in pairs.items()] + [label for label in labels if label not in pairs]
    return tags, pairs


def decode_response(record: CallRecord) -> tuple[dict[str, Any] | None, str | None]:
    """The logged response as a dict, and an error sent inside a stream (if any)."""
    if record.response is not None:
        return record.response, None
    body = record.response_body
    if not body:
        return None, None
    if record.stream:  # also a stream cut short: what arrived is reassembled
        completion, stream_error = reassemble_sse(body)
        message = stream_error.get("message") if stream_error else None
        return completion, str(message) if message else None
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError:  # also invalid UTF-8
        return {"raw": body[:MAX_RAW_BODY_CHARS].decode("utf-8", "replace")}, None
    return decoded if isinstance(decoded, dict) else {"raw": decoded}, None


def answering_model(upstream: str, sent_model: str | None, response: dict[str, Any] | None) -> str:
    """``upstream/model`` of the model that answered (the response's ``model``: a tuneloop server names the
    immutable version an alias resolved to), else of the name the upstream received."""
    answered_by = response.get("model") if response and isinstance(response.get("model"), str) else None
    return f"{upstream}/{answered_by or sent_model}"


def resolved_model(record: CallRecord, response: dict[str, Any] | None) -> str | None:
    """The answering model of a logged call (see :func:`answering_model`); None if no upstream was tried."""
    return None if record.upstream is None else answering_model(record.upstream, record.upstream_model, response)


def redacted_record(record: CallRecord, redactor: Redactor) -> CallRecord:
    """A copy of ``record`` with what clients and upstreams wrote redacted: request, response, error, tags,
    metadata, every try (its error), the model names. The response is decoded first (a stream reassembled):
    only decoded strings can be redacted without breaking the JSON around them.

    Returns ``record`` itself when it is redacted already or nothing is to be redacted. Should redaction
    fail, the copy keeps none of the call's content (nothing unredacted is stored or journaled).
    """
    if record.redacted or not redactor.enabled:
        return record
    try:
        response, stream_error = decode_response(record)
        status, error = record.status, record.error
        if stream_error is not None:  # as record_to_row would make it
            status, error = "error", error or f"error in the stream: {stream_error}"
        text = redactor.text
        return replace(
            record,
            model_requested=text(record.model_requested),
            upstream_model=text(record.upstream_model) if record.upstream_model else record.upstream_model,
            request=redactor.json(record.request),
            status=status,
            error=text(error) if error else error,
            response_body=None,
            response=redactor.json(response),
            tags=redactor.json(record.tags),
            metadata=redactor.json(record.metadata),
            attempts=redactor.json(record.attempts),
            redacted=True,
        )
    except Exception as exc:
        log.exception("could not redact a captured call; storing it without its content")
        return replace(
            record,
            model_requested="[REDACTED]",
            upstream_model=None,
            request={"redaction_failed": True},
            error=f"tuneloop could not redact this call ({type(exc).__name__}), so its content was not kept",
            response_body=None,
            response=None,
            tags=[],
            metadata={},
            attempts=None,
            redacted=True,
        )


def record_to_row(record: CallRecord, prices: PriceTable | None, redactor: Redactor | None) -> dict[str, Any]:
    """The ``requests`` row (column names) for a record: tokens, cost, resolved model, redaction."""
    if redactor is not None:  # first: every column below comes from what may be stored
        record = redacted_record(record, redactor)
    response, stream_error = decode_response(record)
    status, error = record.status, record.error
    if stream_error is not None:
        status, error = "error", error or f"error in the stream: {stream_error}"
    usage = response.get("usage") if response and not is_error_body(response) else None
    prompt_tokens, completion_tokens, cached_tokens = usage_counts(usage)
    answered_by = response.get("model") if response and isinstance(response.get("model"), str) else None
    model_resolved = resolved_model(record, response)
    cost, price_version = None, None
    if prices is not None and prompt_tokens is not None and completion_tokens is not None:
        for model in (answered_by, record.upstream_model):
            priced = prices.lookup(model, record.upstream) if model else None
            if priced is not None:
                cost = priced[1].request_cost(prompt_tokens, completion_tokens, cached_tokens or 0)
                price_version = prices.version
                break
    request, error_text = record.request, error
    row = {
        "capture_id": record.capture_id,
        "created_at": record.created_at,
        "task": record.metadata.get("task"),
        "model_requested": record.model_requested[:255],
        "model_resolved": model_resolved[:255] if model_resolved else None,
        "upstream": record.upstream,
        "status": status,
        "http_status": record.http_status,
        "error": error_text,
        "request": request,
        "response": response,
        "latency_ms": record.latency_ms,
        "ttft_ms": record.ttft_ms,
        "overhead_ms": record.overhead_ms,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "cached_tokens": cached_tokens,
        "cost_usd": cost,
        "price_table_version": price_version,
        "tags": record.tags,
        "metadata": record.metadata,
        "api_key_id": record.api_key_id,
        "attempts": record.attempts,
        "checks_passed": record.checks_passed if record.checks_passed is not None else checks_passed(record, response),
        "rollout_id": record.rollout_id,
        "rollout_arm": record.rollout_arm,
        "shadow_of": record.shadow_of,
        "comparison": record.comparison,
    }
    return storable_row(row)  # NUL, over-long strings, out-of-range numbers: see storable_row


def checks_passed(record: CallRecord, response: dict[str, Any] | None) -> bool | None:
    """Whether the answer passed its task's checks: the ``tuneloop.checks`` the policy (gateway or a tuneloop
    server) added, or False for a 422 ``check_failed`` (the policy rejected it); None when no checks ran."""
    if response is not None:
        extension = response.get("tuneloop")
        checks = extension.get("checks") if isinstance(extension, dict) else None
        if isinstance(checks, dict) and isinstance(checks.get("passed"), bool):
            return checks["passed"]
    if record.http_status == 422 and record.error and "failed the checks" in record.error:
        return False
    return None


# --- what the store can hold -------------------------------------------------------------------------
#
# PostgreSQL refuses NUL (U+0000) in text and JSONB, strings longer than a VARCHAR's length and integers beyond
# 32 bits in INTEGER columns; orjson (which writes the JSON columns) refuses integers beyond 64 bits and nesting
# deeper than it recurses. One such value used to fail its whole batch again and again. Rows are made storable
# the same way on SQLite and PostgreSQL, so a call logs the same on both: NUL becomes U+FFFD, over-long strings
# are cut to their column, out-of-range integers become NULL (JSON: a string), over-deep JSON a marker string.

NUL_REPLACEMENT = "\ufffd"
MAX_JSON_DEPTH = 200  # orjson stops at 255 levels; uploads deeper than this are refused, logged calls cut here
TOO_DEEP = f"[tuneloop: nested deeper than {MAX_JSON_DEPTH} levels, not stored]"
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**64 - 1)  # orjson writes unsigned 64-bit integers too


def _request_columns() -> tuple[dict[str, int | None], set[str]]:
    """From the ``requests`` table: text columns (name → length, None for TEXT) and 32-bit integer columns."""
    texts: dict[str, int | None] = {}
    integers: set[str] = set()
    for column in RequestLog.__table__.columns:
        kind = column.type
        if isinstance(kind, sa.String):
            texts[column.name] = kind.length
        elif type(kind) is sa.Integer:
            integers.add(column.name)
    return texts, integers


TEXT_COLUMNS, INT32_COLUMNS = _request_columns()
JSON_COLUMNS = ("request", "response", "tags", "metadata", "attempts", "comparison")


def storable_text(value: str, limit: int | None = None) -> str:
    """``value`` without NUL characters (U+FFFD instead), cut to ``limit`` characters."""
    if "\x00" in value:
        value = value.replace("\x00", NUL_REPLACEMENT)
    return value if limit is None or len(value) <= limit else value[:limit]


def storable_json(value: Any) -> Any:
    """``value`` as the store can hold it: NUL in strings and keys replaced, integers beyond 64 bits as strings,
    nesting beyond :data:`MAX_JSON_DEPTH` replaced by a marker; unchanged (the same object) when nothing is."""
    try:
        encoded = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:  # too deep, an integer too big, a type JSON has no name for
        return _clean_json(value, 0)
    # May also match an escaped backslash followed by "u0000": then the walk finds nothing to change.
    return _clean_json(value, 0) if b"\\u0000" in encoded else value


def _clean_json(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        value = storable_text(value)
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (only Python's own json lets one in): U+FFFD too
            value = value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
        return value
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int):
        return value if INT64[0] <= value <= INT64[1] else str(value)
    if depth >= MAX_JSON_DEPTH:
        return TOO_DEEP
    if isinstance(value, dict):
        return {storable_text(str(key)): _clean_json(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_clean_json(item, depth + 1) for item in value]
    return storable_text(str(value))


def storable_row(row: dict[str, Any]) -> dict[str, Any]:
    """A ``requests`` row (as :func:`record_to_row` builds it) made storable; see the comment above.

    Runs on the log writer's thread, which shares the GIL with the request path: the usual row (nothing to
    change) costs one orjson pass over its JSON values, all columns at once, and a look at each short column.
    """
    for name, limit in TEXT_COLUMNS.items():
        value = row.get(name)
        if value is not None and (
            type(value) is not str or "\x00" in value or (limit is not None and len(value) > limit)
        ):
            row[name] = storable_text(value if isinstance(value, str) else str(value), limit)
    for name in INT32_COLUMNS:
        value = row.get(name)
        if value is not None and not (type(value) is int and INT32[0] <= value <= INT32[1]):
            row[name] = None
    values = tuple(row.get(name) for name in JSON_COLUMNS)
    try:
        clean = b"\\u0000" not in orjson.dumps(values)
    except orjson.JSONEncodeError:
        clean = False
    if not clean:
        for name, value in zip(JSON_COLUMNS, values, strict=True):
            if value is not None:
                row[name] = storable_json(value)
    return row


# --- uploads (POST /v1/tuneloop/logs) ----------------------------------------------------------------


class InvalidRecord(ValueError):
    """An uploaded record that is not a captured call: ``field`` names where (``created_at``, ``tags[2]``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


CAPTURE_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


def record_from_upload(data: Any) -> CallRecord:
    """A :class:`CallRecord` from an uploaded JSON object (:meth:`CallRecord.to_json`'s shape), checked so that
    the store will take it; raises :class:`InvalidRecord` naming the first field that is wrong.

    Content is kept as sent apart from what :func:`storable_row` changes for every call (NUL characters).
    Unknown fields are ignored, so an SDK newer than its gateway can still upload.
    """
    if not isinstance(data, dict):
        raise InvalidRecord("", f"must be a JSON object (a captured call), not {_json_kind(data)}")
    text_limits = TEXT_COLUMNS
    values: dict[str, Any] = {}
    values["model_requested"] = _text(data, "model_requested", text_limits["model_requested"], required=True)
    values["request"] = _json_object(data, "request", required=True)
    status = data.get("status")
    if status not in ("ok", "error"):
        raise InvalidRecord("status", f'must be "ok" or "error", not {_shown(status)}')
    values["status"] = status
    values["http_status"] = _integer(data, "http_status", 100, 599)
    capture_id = data.get("capture_id")
    if capture_id is not None:
        if not (isinstance(capture_id, str) and 0 < len(capture_id) <= 64 and set(capture_id) <= CAPTURE_ID_CHARS):
            raise InvalidRecord(
                "capture_id", "must be 1 to 64 letters, digits or - _ . : (omit it and the gateway makes one)"
            )
        values["capture_id"] = capture_id
    values["created_at"] = _aware_datetime(data.get("created_at"))
    values["upstream"] = _text(data, "upstream", text_limits["upstream"])
    values["upstream_model"] = _text(data, "upstream_model", text_limits["model_resolved"])
    values["error"] = _text(data, "error", None)
    response_text, response_b64 = _text(data, "response_text", None), _text(data, "response_b64", None)
    if response_text is not None and response_b64 is not None:
        raise InvalidRecord("response_b64", "send response_text or response_b64, not both")
    if response_text is not None:
        values["response_body"] = response_text.encode("utf-8")  # JSON as parsed here has no lone surrogates
    elif response_b64 is not None:
        try:
            values["response_body"] = base64.b64decode(response_b64, validate=True)
        except ValueError:
            raise InvalidRecord("response_b64", "must be base64 (the response's bytes)") from None
    values["response"] = _json_object(data, "response")
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRecord("stream", f"must be true or false, not {_shown(stream)}")
    values["stream"] = stream
    for name in ("latency_ms", "ttft_ms", "overhead_ms"):
        values[name] = _milliseconds(data, name)
    values["tags"] = _tags(data.get("tags"))
    values["metadata"] = _metadata(data.get("metadata"), text_limits["task"])
    values["attempts"] = _attempts(data.get("attempts"))
    return CallRecord(**values)


def _json_kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _text(data: dict[str, Any], name: str, limit: int | None, *, required: bool = False) -> str | None:
    value = data.get(name)
    if value is None:
        if required:
            raise InvalidRecord(name, "is required (a string)")
        return None
    if not isinstance(value, str):
        raise InvalidRecord(name, f"must be a string, not {_json_kind(value)}")
    if limit is not None and len(value) > limit:
        raise InvalidRecord(name, f"is {len(value)} characters long; the store keeps at most {limit}")
    return value


def _integer(data: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidRecord(name, f"must be an integer from {low} to {high}, not {_shown(value)}")
    return value


def _milliseconds(data: dict[str, Any], name: str) -> float | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e12:
        raise InvalidRecord(name, f"must be a number of milliseconds (0 or more), not {_shown(value)}")
    return float(value)


def _aware_datetime(value: Any) -> datetime:
    expected = "must be a timezone-aware ISO datetime, e.g. 2025-01-31T12:00:00+00:00"
    if not isinstance(value, str):
        raise InvalidRecord("created_at", f"{expected}, not {_json_kind(value)}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRecord("created_at", f"{expected}, not {_shown(value)}") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise InvalidRecord("created_at", f"{expected} (this one has no offset: {_shown(value)})")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00+01:00 is before the first representable UTC time
        raise InvalidRecord("created_at", f"{_shown(value)} is out of range once converted to UTC") from None


def _json_object(data: dict[str, Any], name: str, *, required: bool = False) -> dict[str, Any] | None:
    value = data.get(name)
    if value is None:
        if required:
            raise InvalidRecord(name, "is required (a JSON object)")
        return None
    if not isinstance(value, dict):
        raise InvalidRecord(name, f"must be a JSON object, not {_json_kind(value)}")
    check_depth(value, name)
    return value


def check_depth(value: Any, name: str) -> None:
    """Refuses nesting deeper than :data:`MAX_JSON_DEPTH`, without recursion (uploads may nest ~1000 levels)."""
    level: list[Any] = [value]
    depth = 0
    while level:
        depth += 1
        if depth > MAX_JSON_DEPTH:
            raise InvalidRecord(name, f"is nested deeper than {MAX_JSON_DEPTH} levels")
        level = [
            child
            for item in level
            for child in (item.values() if isinstance(item, dict) else item if isinstance(item, list) else ())
            if isinstance(child, dict | list)
        ]


def _tags(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidRecord("tags", f"must be an array of strings, not {_json_kind(value)}")
    for index, tag in enumerate(value):
        if not isinstance(tag, str):
            raise InvalidRecord(f"tags[{index}]", f"must be a string, not {_json_kind(tag)}")
    return value


def _metadata(value: Any, task_limit: int | None) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRecord("metadata", f"must be an object of strings, not {_json_kind(value)}")
    for key, item in value.items():
        if not isinstance(item, str):
            raise InvalidRecord(f"metadata.{key}", f"must be a string, not {_json_kind(item)}")
    task = value.get("task")
    if task is not None and task_limit is not None and len(task) > task_limit:
        raise InvalidRecord("metadata.task", f"is {len(task)} characters long; the store keeps at most {task_limit}")
    return value


def _attempts(value: Any) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise InvalidRecord("attempts", f"must be an array of objects, not {_json_kind(value)}")
    for index, attempt in enumerate(value):
        if not isinstance(attempt, dict):
            raise InvalidRecord(f"attempts[{index}]", f"must be an object, not {_json_kind(attempt)}")
        check_depth(attempt, f"attempts[{index}]")
    return value
