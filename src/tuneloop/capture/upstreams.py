"""Upstreams: OpenAI-compatible APIs that tuneloop calls by name (``openai/gpt-4o-mini``).

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
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tuneloop.config import config_entry_error, get_settings, read_config_file
from tuneloop.errors import TuneloopError

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"


class Upstream(BaseModel):
    """One OpenAI-compatible API: where it is, which environment variable holds its key, how patient to be."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    base_url: str
    api_key_env: str | None = None
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=2, ge=0, le=10)
    self_hosted: bool = False

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{url!r} is not an http(s) URL")
        return url.rstrip("/")

    def api_key(self) -> str | None:
        """The key from the environment, or None when the upstream needs none or it is unset."""
        if not self.api_key_env:
            return None
        return os.environ.get(self.api_key_env) or None


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
            raise TuneloopError("must be a mapping with base_url (and optionally api_key_env)", where=where)
        try:
            upstreams[str(name)] = Upstream.model_validate({**entry, "name": str(name)})
        except ValidationError as exc:
            raise config_entry_error(exc, where, "base_url, api_key_env, timeout_s, max_retries, self_hosted") from None
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
    """The configured upstream at this URL, if any: a bare endpoint URL borrows its key and timeouts."""
    wanted = base_url.rstrip("/")
    return next((upstream for upstream in load_upstreams().values() if upstream.base_url == wanted), None)
