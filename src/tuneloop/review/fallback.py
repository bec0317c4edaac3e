"""Sending a request to a fallback model that is behind an upstream (``openai/gpt-4o``, ``http://…/v1#m``).

``tuneloop serve`` answers a fallback to one of its own models itself; a fallback to an API model goes
through the upstream named in ``config.yaml`` (its key from the upstream's ``api_key_env``), like evals
and relabelling do.
"""

from __future__ import annotations

from typing import Any

import httpx

from tuneloop.capture.upstreams import Upstream, get_upstream, upstream_for_base_url
from tuneloop.protocol import OpenAIError
from tuneloop.registry.ids import EndpointRef

NOT_FORWARDED = ("metadata", "store", "stream", "stream_options")


async def call_endpoint(ref: EndpointRef, request: dict[str, Any]) -> dict[str, Any]:
    """``request`` (a chat completion body) sent to the endpoint ``ref`` names; its whole completion back.

    The completion's ``model`` is written ``upstream/model`` so it names where the answer came from.
    An error answer raises OpenAIError with the endpoint's status and message.
    """
    upstream: Upstream | None
    if ref.base_url is not None:
        upstream = upstream_for_base_url(ref.base_url)
        base_url, label = ref.base_url, ref.base_url
    else:
        upstream = get_upstream(ref.upstream or "")
        base_url, label = upstream.base_url, upstream.name
    headers = {}
    key = upstream.api_key() if upstream is not None else None
    if key:
        headers["authorization"] = f"Bearer {key}"
    body = {name: value for name, value in request.items() if name not in NOT_FORWARDED}
    body["model"] = ref.model
    timeout = upstream.timeout_s if upstream is not None else 60.0
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            response = await client.post(f"{base_url}/chat/completions", json=body, headers=headers)
    except httpx.HTTPError as exc:
        raise OpenAIError(502, f"fallback {ref}: {type(exc).__name__}: {exc}", code="upstream_unavailable") from None
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if response.status_code != 200 or not isinstance(payload, dict):
        detail = (payload or {}).get("error", {}) if isinstance(payload, dict) else {}
        message = detail.get("message") if isinstance(detail, dict) else None
        raise OpenAIError(
            response.status_code if response.status_code >= 400 else 502,
            f"fallback {ref} answered {response.status_code}: {message or response.text[:200]}",
            code="upstream_error",
        )
    answered = payload.get("model") if isinstance(payload.get("model"), str) else ref.model
    payload["model"] = f"{label}/{answered}" if ref.base_url is None else f"{label}#{answered}"
    return payload
