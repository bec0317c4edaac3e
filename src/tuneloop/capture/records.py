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
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import orjson

from tuneloop.capture.redaction import Redactor
from tuneloop.cost import PriceTable
from tuneloop.protocol import is_error_body, reassemble_sse, usage_counts
from tuneloop.store.models import utcnow

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
    # Set by the journal in durable mode: which segment holds this record.
    journal_segment: int | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (journal lines, uploads to a gateway); :meth:`from_json` reverses it."""
        data = asdict(self)
        data.pop("journal_segment")
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
        known = set(cls.__dataclass_fields__) - {"journal_segment"}
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


def record_to_row(record: CallRecord, prices: PriceTable | None, redactor: Redactor | None) -> dict[str, Any]:
    """The ``requests`` row (column names) for a record: tokens, cost, resolved model, redaction."""
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
    if redactor is not None and redactor.enabled:
        request, response = redactor.json(request), redactor.json(response)
        error_text = redactor.text(error_text) if error_text else error_text
    return {
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
    }
