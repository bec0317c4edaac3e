"""Upstreams: OpenAI-compatible APIs that tuneloop calls by name (``openai/gpt-4o-mini``), and the one
place that turns an endpoint id into URL, key, timeout and retries (:func:`resolve_endpoint`).

They are configured in ``$TUNELOOP_HOME/config.yaml``::

    upstreams:
      openai:   {base_url: https://api.openai.com/v1, api_key_env: OPENAI_API_KEY}
      local:    {base_url: http://127.0.0.1:8000/v1, self_hosted: true}
      together: {base_url: https://api.together.xyz/v1, api_key_env: TOGETHER_API_KEY, timeout_s: 120}

``openai`` is built in (base URL from ``OPENAI_BASE_URL`` when set, key from ``OPENAI_API_KEY``); a
config entry of that name replaces it. Keys are never written in the file, only the name of the
environment variable that holds one, so the config can be shared and committed. ``self_hosted: true``
marks an upstream you run yourself (tuneloop serve, vLLM): evals cost it by machine time, not by a
price per token.

An upstream you run several copies of (replicas of ``tuneloop serve``, vLLM, any OpenAI-compatible server)
lists them under ``base_urls`` instead of ``base_url``::

      local:
        base_urls: [http://10.0.0.1:8000/v1, http://10.0.0.2:8000/v1]
        self_hosted: true
        health_check_s: 5          # every replica's GET /models, this often (2 s timeout)
        eject_after_failures: 3    # consecutive failed tries or health checks take a replica out
        eject_for_s: 10            # out at least this long; back at the first health check that answers
        affinity_margin: 4         # see tuneloop.capture.replicas

The gateway balances calls over them (``capture/replicas.py``). Every other caller (evals, relabelling, a
serve-time fallback) talks to one endpoint: ``Upstream.base_url``, the first replica.

Every stage that calls an endpoint goes through here: evals and relabelling with the official ``openai``
client (:meth:`Endpoint.client`), a serve-time fallback with :func:`post_chat_completion` (async httpx).
The gateway's hot path forwards on its own aiohttp session (``capture/forwarding.py``) but resolves its
upstreams from the same definitions.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tuneloop.config import config_entry_error, get_settings, read_config_file
from tuneloop.errors import TuneloopError
from tuneloop.generation import GenerationParams
from tuneloop.protocol import OpenAIError

if TYPE_CHECKING:
    import openai

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_RETRIES = 2
UPSTREAM_KEYS = (
    "base_url (or base_urls), api_key_env, timeout_s, max_retries, self_hosted, health_check_s, "
    "eject_after_failures, eject_for_s, affinity_margin"
)


class Upstream(BaseModel):
    """One OpenAI-compatible API: where it is (one base URL, or several replicas), which environment
    variable holds its key, how patient to be, and how the gateway treats its replicas."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    # Written `base_url: <url>` (one) or `base_urls: [<url>, ...]` (replicas); held as the tuple either way.
    base_urls: tuple[str, ...] = Field(min_length=1)
    api_key_env: str | None = None
    timeout_s: float = Field(default=DEFAULT_TIMEOUT_S, gt=0)
    max_retries: int = Field(default=DEFAULT_MAX_RETRIES, ge=0, le=10)
    self_hosted: bool = False
    # Replica pools (the gateway; ignored with one base URL): see tuneloop.capture.replicas.
    health_check_s: float = Field(default=5.0, ge=0.5, le=3600)
    eject_after_failures: int = Field(default=3, ge=1, le=1000)
    eject_for_s: float = Field(default=10.0, ge=0.1, le=3600)
    affinity_margin: int = Field(default=4, ge=0, le=10_000)

    @model_validator(mode="before")
    @classmethod
    def _one_url_or_several(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "base_url" not in data:
            # With a misspelt key (url:), say that, rather than that base_url is missing.
            unknown = isinstance(data, dict) and set(data) - set(cls.model_fields)
            if isinstance(data, dict) and "base_urls" not in data and not unknown:
                raise ValueError("base_url (one server) or base_urls (a list of replicas) is required")
            return data
        if "base_urls" in data:
            raise ValueError("give base_url (one server) or base_urls (replicas), not both")
        url = data["base_url"]
        if not isinstance(url, str):
            raise ValueError("base_url takes one URL; list several replicas under base_urls")
        # Checked here so the message names the key the user wrote (base_urls[0] would not be it).
        return {**{k: v for k, v in data.items() if k != "base_url"}, "base_urls": (_http_url(url, "base_url"),)}

    @field_validator("base_urls", mode="before")
    @classmethod
    def _a_list(cls, urls: Any) -> Any:
        if isinstance(urls, str):
            raise ValueError("a list of URLs ([http://a:8000/v1, http://b:8000/v1]); one URL goes under base_url")
        if isinstance(urls, (list, tuple)) and not urls:
            raise ValueError("an empty list: name at least one URL")
        return urls

    @field_validator("base_urls")
    @classmethod
    def _http_urls(cls, urls: tuple[str, ...]) -> tuple[str, ...]:
        checked = tuple(_http_url(url, f"item {index}") for index, url in enumerate(urls))
        if len(set(checked)) != len(checked):
            raise ValueError("a replica is listed twice")
        return checked

    @property
    def base_url(self) -> str:
        """The first replica: the one endpoint of an upstream for callers that use one (evals, relabelling)."""
        return self.base_urls[0]

    def api_key(self) -> str | None:
        """The key from the environment, or None when the upstream needs none or it is unset."""
        if not self.api_key_env:
            return None
        return os.environ.get(self.api_key_env) or None


def _http_url(url: str, what: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{what}: {url!r} is not an http(s) URL")
    return url.rstrip("/")


def builtin_upstreams() -> dict[str, Upstream]:
    base_url = os.environ.get("OPENAI_BASE_URL") or OPENAI_DEFAULT_BASE_URL
    return {"openai": Upstream(name="openai", base_url=base_url, api_key_env="OPENAI_API_KEY")}


def load_upstreams(config: Mapping[str, Any] | None = None) -> dict[str, Upstream]:
    """The built-in upstreams, overridden and extended by the config file's ``upstreams`` section."""
    config = read_config_file() if config is None else config
    section = config.get("upstreams") or {}
    source = get_settings().config_file
    if not isinstance(section, dict):
        raise TuneloopError("must be a mapping of name: {base_url, api_key_env}", where=f"{source}: upstreams")
    upstreams = builtin_upstreams()
    for name, entry in section.items():
        where = f"{source}: upstreams.{name}"
        if not isinstance(entry, dict):
            raise TuneloopError(
                "must be a mapping with base_url (or base_urls) and optionally api_key_env", where=where
            )
        try:
            upstreams[str(name)] = Upstream.model_validate({**entry, "name": str(name)})
        except ValidationError as exc:
            raise config_entry_error(exc, where, UPSTREAM_KEYS) from None
    return upstreams


def get_upstream(name: str) -> Upstream:
    upstreams = load_upstreams()
    if name not in upstreams:
        raise TuneloopError(
            f"no upstream named {name!r}",
            where=f"model {name}/…",
            hint=f"known upstreams: {', '.join(sorted(upstreams))}; add one under `upstreams:` in "
            f"{get_settings().config_file}, or give the endpoint as http://host:port/v1#model",
        )
    return upstreams[name]


def upstream_for_base_url(base_url: str) -> Upstream | None:
    """The configured upstream at this URL (any of its replicas), if any: a bare endpoint URL borrows its key
    and timeouts."""
    wanted = base_url.rstrip("/")
    return next((upstream for upstream in load_upstreams().values() if wanted in upstream.base_urls), None)


class EndpointName(Protocol):
    """A parsed endpoint id (``registry.ids.EndpointRef``): ``upstream/model`` or ``http://host/v1#model``."""

    model: str
    upstream: str | None
    base_url: str | None


@dataclass(frozen=True)
class Endpoint:
    """Where a model behind an OpenAI-compatible API answers, with what key and how patiently."""

    name: str  # as the user wrote it: openai/gpt-4o-mini, http://127.0.0.1:8000/v1#m
    base_url: str
    model: str  # the model's name at that endpoint
    api_key: str | None
    timeout_s: float
    max_retries: int
    upstream: Upstream | None  # the configured upstream it is (or whose URL it has), if any

    @property
    def upstream_name(self) -> str | None:
        return self.upstream.name if self.upstream is not None else None

    def require_key(self, where: str) -> Endpoint:
        """Itself, or TuneloopError when its upstream names a key variable that is not set."""
        upstream = self.upstream
        if upstream is not None and upstream.api_key_env and self.api_key is None:
            raise TuneloopError(
                f"{upstream.api_key_env} is not set, and upstream {upstream.name!r} needs its API key from it",
                where=where,
                hint=f"export {upstream.api_key_env}=... (or change api_key_env under upstreams.{upstream.name} "
                "in config.yaml)",
            )
        return self

    def client(self, max_retries: int | None = None) -> openai.OpenAI:
        """The official client for this endpoint (it retries connection errors, 408/409/429 and 5xx)."""
        import openai

        # A placeholder key for endpoints that need none: the client refuses to start without one, and
        # the user's OPENAI_API_KEY must not be sent to an arbitrary URL.
        return openai.OpenAI(
            base_url=self.base_url,
            api_key=self.api_key or "no-key",
            timeout=self.timeout_s,
            max_retries=self.max_retries if max_retries is None else max_retries,
        )


def resolve_endpoint(ref: EndpointName, name: str | None = None) -> Endpoint:
    """The endpoint a parsed id names: an upstream from config.yaml, or a bare URL that borrows the key
    and timeouts of a configured upstream at the same URL."""
    upstream: Upstream | None
    if ref.upstream is not None:
        upstream = get_upstream(ref.upstream)
        base_url = upstream.base_url
    else:
        base_url = ref.base_url or ""
        upstream = upstream_for_base_url(base_url)
    return Endpoint(
        name=name or str(ref),
        base_url=base_url,
        model=ref.model,
        api_key=upstream.api_key() if upstream is not None else None,
        timeout_s=upstream.timeout_s if upstream is not None else DEFAULT_TIMEOUT_S,
        max_retries=upstream.max_retries if upstream is not None else DEFAULT_MAX_RETRIES,
        upstream=upstream,
    )


# OpenAI's reasoning models refuse temperature/top_p and count hidden reasoning tokens against the
# output limit, so a task's small max_tokens would cut them off before they answer.
_REASONING_MODEL = re.compile(r"^(o\d|gpt-5)")


def sampling_arguments(model: str, params: GenerationParams) -> dict[str, Any]:
    """The chat-completion arguments that carry ``params`` to an API model (none for reasoning models)."""
    if _REASONING_MODEL.match(model):
        return {}
    arguments: dict[str, Any] = {"temperature": params.temperature, "top_p": params.top_p}
    arguments["max_tokens"] = params.max_tokens
    if params.stop:
        arguments["stop"] = params.stop
    if params.seed is not None:
        arguments["seed"] = params.seed
    return arguments


# tuneloop's own capture fields stay here; a fallback is asked for its whole answer.
NOT_FORWARDED = ("metadata", "store", "stream", "stream_options")


async def call_endpoint(ref: EndpointName, request: dict[str, Any]) -> dict[str, Any]:
    """``request`` (a chat completion body) sent to the endpoint ``ref`` names; its whole completion back.

    The completion's ``model`` is written ``upstream/model`` so it names where the answer came from.
    An error answer raises OpenAIError with the endpoint's status and message.
    """
    endpoint = resolve_endpoint(ref)
    label = endpoint.upstream_name if ref.upstream is not None else endpoint.base_url
    headers = {"authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
    body = {name: value for name, value in request.items() if name not in NOT_FORWARDED}
    body["model"] = ref.model
    try:
        async with httpx.AsyncClient(timeout=endpoint.timeout_s) as client:
            response = await client.post(f"{endpoint.base_url}/chat/completions", json=body, headers=headers)
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
