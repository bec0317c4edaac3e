"""Routing: which upstream (and which model name there) answers a requested model, and what to fall back to.

A requested name goes through the configured routes in order; the first whose ``match`` fits wins and
its ``fallbacks`` follow it. A name with no route but an upstream prefix (``local/liability-extraction@3``,
read by the one model-id grammar) goes to that upstream as is. Fallback names are resolved the same way
(their own routes' fallbacks are not followed, so fallbacks cannot loop).
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneloop.capture.config import GatewayConfig, Route
from tuneloop.errors import TuneloopError
from tuneloop.protocol import OpenAIError
from tuneloop.registry.ids import EndpointRef, parse_model_id
from tuneloop.upstreams import Upstream

MAX_BACKOFF_MS = 2000.0
_CACHE_LIMIT = 4096


@dataclass(frozen=True)
class Target:
    """One model at one upstream, with the patience to have with it."""

    upstream: Upstream
    model: str  # the name the upstream receives
    retries: int
    backoff_ms: float
    timeout_s: float

    @property
    def label(self) -> str:
        return f"{self.upstream.name}/{self.model}"


class Router:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self._cache: dict[str, list[Target]] = {}

    def targets_for(self, requested: str) -> list[Target]:
        """The targets to try, in order; raises a 404 ``OpenAIError`` when nothing serves the name."""
        targets = self._cache.get(requested)
        if targets is not None:
            return targets
        route = self._route_for(requested)
        primary = self._target(requested, route)
        if primary is None:
            raise OpenAIError(
                404,
                f"the gateway has no route for model {requested!r}: name it as <upstream>/<model> "
                f"(upstreams: {', '.join(sorted(self.config.upstreams))}) or add a route for it",
                param="model",
                code="model_not_found",
            )
        targets = [primary]
        for name in route.fallbacks if route else []:
            fallback = self._target(name, self._route_for(name))
            if fallback is None:
                raise OpenAIError(
                    500,
                    f"fallback {name!r} of route {route.match!r} names no upstream; fix the gateway config",
                    type="server_error",
                    code="bad_gateway_config",
                )
            targets.append(fallback)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()  # clients may send any names; keep the cache bounded
        self._cache[requested] = targets
        return targets

    def _route_for(self, model: str) -> Route | None:
        return next((route for route in self.config.routes if route.matches(model)), None)

    def _target(self, model: str, route: Route | None) -> Target | None:
        if route is not None:
            upstream = self.config.upstreams[route.upstream]
            upstream_model = route.upstream_model(model)
            retries = upstream.max_retries if route.retries is None else route.retries
            timeout_s = route.timeout_s or upstream.timeout_s
            return Target(upstream, upstream_model, retries, route.backoff_ms, timeout_s)
        try:
            ref = parse_model_id(model)
        except TuneloopError:
            return None
        # Endpoint URLs named by clients are refused: the gateway only calls upstreams its config names.
        if not isinstance(ref, EndpointRef) or ref.upstream is None or ref.upstream not in self.config.upstreams:
            return None
        upstream = self.config.upstreams[ref.upstream]
        return Target(upstream, ref.model, upstream.max_retries, 100.0, upstream.timeout_s)

    def listed_routes(self) -> list[str]:
        """Exact route names (those without a wildcard), for ``/v1/models``."""
        return [route.match for route in self.config.routes if not route.match.endswith("*")]
